"""Chapter 4: batching, schedule, exact resume, determinism, DDP on two processes, the train CLI, fine-tuning."""
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recbook.data import leave_one_out, load_dataset
from recbook.evaluation import EvaluationError, load_recommender
from recbook.towers import TowerConfig, TwoTower
from recbook.pretraining import left_padded
from recbook.training import (Interrupted, TrainConfig, epoch_batches, fine_tune, fit, next_item_batch, warmup_cosine)

BIN = Path(sys.executable).parent
TOWERS = TowerConfig(hidden=16, layers=1, heads=2, max_length=12, dropout=0.1, id_dropout=0.1)
TRAINING = TrainConfig(epochs=2, batch_size=32, warmup_steps=3, checkpoint_every=4, patience=5)


@pytest.fixture(scope="module")
def tiny():
    ds = load_dataset("beauty-tiny")
    return ds, leave_one_out(ds)


def network(ds, seed=0):
    torch.manual_seed(seed)
    return TwoTower(ds.n_items, TOWERS)


def test_epoch_batches_cover_everything_once_and_cut_padding():
    lengths = np.random.default_rng(0).integers(1, 50, 1000)
    batches = epoch_batches(lengths, 32, seed=1, epoch=3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = epoch_batches(lengths, 32, seed=1, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again)), "the order depends only on (seed, epoch)"
    assert not np.array_equal(np.concatenate(batches), np.concatenate(epoch_batches(lengths, 32, seed=1, epoch=4)))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_order = np.random.default_rng(0).permutation(1000)
    padded_random = sum(len(b) * lengths[b].max() for b in np.array_split(random_order, len(batches)))
    assert padded < 0.7 * padded_random, (padded, padded_random)


def test_next_item_batch_shifts_by_one():
    sequences = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    inputs, targets = next_item_batch(left_padded(sequences, 10 + 1), [0, 1])
    assert inputs.tolist() == [[1, 2, 3], [0, 0, 5]] and targets.tolist() == [[2, 3, 4], [0, 0, 6]]
    inputs, targets = next_item_batch(left_padded(sequences, 2 + 1), [0])  # long histories keep their newest items
    assert inputs.tolist() == [[2, 3]] and targets.tolist() == [[3, 4]]
    inputs, targets = next_item_batch(left_padded(sequences, 10 + 1), [1])  # all-padding columns are dropped
    assert inputs.tolist() == [[5]] and targets.tolist() == [[6]]


def test_prefix_examples_train_on_their_last_target_only():
    prefixes = [np.array([1, 2]), np.array([1, 2, 3]), np.array([1, 2, 3, 4])]  # what `fit` cuts from [1, 2, 3, 4]
    inputs, targets = next_item_batch(left_padded(prefixes, 10 + 1), [0, 1, 2], last_only=True)
    assert inputs.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3]] and targets.tolist() == [[0, 0, 2], [0, 0, 3], [0, 0, 4]]
    with pytest.raises(EvaluationError, match="examples"): TrainConfig(examples="windows")
    with pytest.raises(EvaluationError, match="length_window"): TrainConfig(length_window=0)


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_config_checks():
    with pytest.raises(EvaluationError, match="loss"):
        TrainConfig(loss="bpr")
    with pytest.raises(EvaluationError, match="batch_size"):
        TrainConfig(batch_size=0)


def _weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_training_learns_and_is_deterministic(tiny):
    ds, split = tiny
    a, b = network(ds), network(ds)
    history, best = fit(a, split, TRAINING, device="cpu")
    fit(b, split, TRAINING, device="cpu")
    assert list(history.index) == [1, 2] and best in (1, 2)
    assert history["train_loss"].iloc[-1] < np.log(ds.n_items), "the loss must fall below a uniform guess"
    assert all(torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values()))


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(tiny, tmp_path, loss):
    ds, split = tiny
    config = replace(TRAINING, loss=loss, random_negatives=16)
    uninterrupted = network(ds)
    fit(uninterrupted, split, config, out_dir=tmp_path / "a", device="cpu")
    killed = network(ds)
    with pytest.raises(Interrupted):
        fit(killed, split, config, out_dir=tmp_path / "b", device="cpu", stop_after_steps=6)  # epoch 1 has 15 steps
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert saved["loop"]["epoch"] == 1 and saved["loop"]["batch"] == 4, "the checkpoint at step 4, mid-epoch"
    resumed = network(ds, seed=123)  # fresh weights: everything must come from the checkpoint
    history, _ = fit(resumed, split, config, out_dir=tmp_path / "b", device="cpu")
    assert list(history.index) == [1, 2]
    for (name, x), y in zip(_weights(uninterrupted).items(), _weights(resumed).values()):
        assert torch.equal(x, y), name


def test_tensorboard_logs(tiny, tmp_path):
    ds, split = tiny
    fit(network(ds), split, replace(TRAINING, epochs=1), device="cpu", log_dir=tmp_path / "tb")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def _recbook(*args, env=None, timeout=600):
    return subprocess.run([str(BIN / "recbook"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("kind", ["sasrec", "twotower", "bert4rec"])
def test_train_cli_writes_a_model_that_evaluate_reads(tmp_path, kind):
    out = tmp_path / kind
    result = _recbook("train", "--model", kind, "--dataset", "beauty-tiny", "--out", str(out), "--smoke")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == kind and 0 <= metrics["test NDCG@10"] <= metrics["test HR@10"] <= 1
    assert (out / "history.csv").is_file()
    evaluated = _recbook("evaluate", "--model", str(out), "--dataset", "beauty-tiny", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["NDCG@10"] == pytest.approx(metrics["test NDCG@10"], abs=1e-6)


def test_train_cli_bad_input(tmp_path):
    result = _recbook("train", "--model", "sasrec", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "recbook: error:" in result.stderr and "missing" in result.stderr
    result = _recbook("train", "--model", "twotower", "--dataset", "beauty-tiny", "--out", str(tmp_path / "o"),
                      "--smoke", "--text-encoder", str(tmp_path))
    assert result.returncode == 2 and "not a text encoder directory" in result.stderr


def test_ddp_on_two_cpu_processes(tmp_path):
    "torchrun starts two processes on the gloo backend; they train on disjoint batches and end with equal weights."
    out = tmp_path / "ddp"
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "recbook",
                             "train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(out), "--smoke"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "recommender.json").is_file()
    model = load_recommender(out)
    ds = load_dataset("beauty-tiny")
    assert model(None, [ds.sequences[0][:3]]).shape == (1, ds.n_items + 1)


def test_fine_tune_on_extra_sequences(tmp_path):
    base = tmp_path / "base"
    assert _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(base), "--smoke").returncode == 0
    before = load_recommender(base)
    extra = [np.array([3, 5, 7, 9, 11])] * 20
    out = fine_tune(base, extra, tmp_path / "tuned", epochs=1)
    after = load_recommender(out)
    meta = json.loads((out / "recommender.json").read_text())
    assert meta["fitted_on"] == "train+feedback" and meta["extra_sequences"] == 20
    assert not np.allclose(before.item_vectors(), after.item_vectors())
    with pytest.raises(EvaluationError, match="outside"):
        fine_tune(base, [np.array([0, 10**6])], tmp_path / "bad")


def _state(folder):
    return torch.load(Path(folder) / "weights.pt", map_location="cpu", weights_only=True)


def test_the_same_seed_on_the_command_line_repeats_a_run_exactly(tmp_path):
    """`recbook train --seed S` twice: identical weights, history, metrics and per-user ranks (CPU). The first run
    encodes the catalogue's text (loading an encoder draws random numbers), the second reads the cache: seeding must
    not depend on which happened. Another seed starts from other weights."""
    env = {"RECBOOK_CACHE": str(tmp_path / "cache")}
    for name, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        result = _recbook("train", "--model", "twotower", "--dataset", "beauty-tiny", "--out", str(tmp_path / name),
                          "--smoke", "--seed", seed, env=env)
        assert result.returncode == 0, result.stderr
    a, b, c = (json.loads((tmp_path / name / "run.json").read_text()) for name in "abc")
    for x, y in zip(_state(tmp_path / "a").values(), _state(tmp_path / "b").values()):
        assert torch.equal(x, y)
    assert a["test_ranks"] == b["test_ranks"] and a["seed"] == b["seed"] == 3
    untimed = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert untimed(a["history"]) == untimed(b["history"])
    timing = ("train_seconds", "seconds_per_epoch")
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == {k: v for k, v in b["metrics"].items() if k not in timing}
    assert any(not torch.equal(x, y) for x, y in zip(_state(tmp_path / "a").values(), _state(tmp_path / "c").values()))
    assert untimed(a["history"]) != untimed(c["history"])


def test_initial_weights_depend_on_the_seed_alone(tiny):
    "Whatever random numbers were drawn before (an encoder loaded, another model built), a seed gives one network."
    from recbook.training import SMOKE_TOWERS, build_network

    ds, _ = tiny
    torch.rand(7)
    first = build_network("sasrec", ds, SMOKE_TOWERS, seed=5).state_dict()
    torch.rand(1000)
    again = build_network("sasrec", ds, SMOKE_TOWERS, seed=5).state_dict()
    other = build_network("sasrec", ds, SMOKE_TOWERS, seed=6).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_run_record_holds_what_a_paired_comparison_needs(tmp_path):
    from recbook.training import RUN_RECORD, dataset_fingerprint, library_code_hash, read_run_record, record_is_current

    ds = load_dataset("beauty-tiny")
    assert _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(tmp_path / "m"),
                    "--smoke").returncode == 0
    record = read_run_record(tmp_path / "m" / RUN_RECORD)
    assert record["code_sha256"] == library_code_hash() and record["dataset"]["fingerprint"] == dataset_fingerprint(ds)
    assert record["kind"] == "sasrec" and record["training"]["seed"] == 0 and record["versions"]["torch"]
    assert len(record["test_ranks"]) == len(leave_one_out(ds).users("test"))
    assert record["metrics"]["test NDCG@10"] == json.loads((tmp_path / "m" / "metrics.json").read_text())["test NDCG@10"]
    assert record_is_current(record, ds)
    assert not record_is_current({**record, "code_sha256": "0" * 64}), "other code: stale"
    assert not record_is_current(record, load_dataset("beauty")), "other data: not this record's"
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(EvaluationError, match="broken.json"):
        read_run_record(tmp_path / "broken.json")


def test_code_hash_covers_what_a_run_executes_and_nothing_else(tmp_path):
    "Rewording a docstring or changing code no run reaches keeps the hash; changing a function a run calls moves it."
    import shutil

    import recbook
    from recbook.training import RECORD_MODULES, code_hash, library_code_hash

    library = Path(recbook.__file__).parent
    for module in RECORD_MODULES: shutil.copy(library / f"{module}.py", tmp_path)
    before, covered = code_hash(tmp_path)
    assert before == library_code_hash()
    assert {"train_model", "fit", "left_padded", "leave_one_out", "Split", "run_text_pretraining"} <= set(covered)
    assert "read_raw" not in covered, "the data enters a record by its fingerprint"
    assert "write_dataset" not in covered and "ensure_runs" not in covered

    def edited(module, old, new):
        path = tmp_path / f"{module}.py"
        text = path.read_text()
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new))
        return code_hash(tmp_path)[0]

    assert edited("pretraining", '"Right-align sequences', '"Right-align (reworded) sequences') == before
    assert edited("data", '"Save `ds` in the recbook schema', '"Save `ds` in the schema') == before
    assert edited("data", "    stats = dataset_stats(ds)\n", "    stats = dict(dataset_stats(ds))\n") == before, "write_dataset: no run calls it"
    assert edited("pretraining", "out = torch.zeros(len(sequences), length, dtype=torch.long)",
                  "out = torch.zeros((len(sequences), length), dtype=torch.long)") != before


def test_ensure_runs_trains_only_what_is_missing_or_stale(tmp_path):
    from recbook.training import CHAPTER_VARIANTS, default_settings, ensure_runs, write_run_record
    from recbook.pretraining import SMOKE_CONFIG

    ds = load_dataset("beauty-tiny")
    variants = [v for v in CHAPTER_VARIANTS if v.name in ("sasrec", "twotower-minilm-text-only")]
    said = []

    def one_epoch(kind):
        towers, training = default_settings(kind, smoke=True)
        return towers, replace(training, epochs=1)

    args = (ds, variants, [0], tmp_path / "records", tmp_path / "work", one_epoch, SMOKE_CONFIG, "cpu")
    table = ensure_runs(*args, say=said.append)
    assert sorted(table.variant) == ["sasrec", "twotower-minilm-text-only"] and table["current"].all()
    assert sum(line.startswith("training") for line in said) == 2
    trained_on = {r["variant"]: json.loads(Path(r["record"]).read_text())["training"]["examples"] for _, r in table.iterrows()}
    assert trained_on == {"sasrec": "prefixes", "twotower-minilm-text-only": "sequences"}, "each kind its own settings"
    said.clear()
    ensure_runs(*args, say=said.append)
    assert not said, "nothing to train when every record is current"
    stale = tmp_path / "records" / "sasrec-seed0.json"
    write_run_record(stale, {**json.loads(stale.read_text()), "code_sha256": "0" * 64})
    marker = tmp_path / "work" / "sasrec-seed0" / "request.json"  # its work folder too was left by other code
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "code_sha256": "0" * 64}))
    before = (tmp_path / "work" / "sasrec-seed0" / "checkpoint.pt").stat().st_mtime_ns
    table = ensure_runs(*args, say=said.append)
    assert said[0].startswith("training sasrec seed 0") and len(said) == 2 and table["current"].all()
    assert (tmp_path / "work" / "sasrec-seed0" / "checkpoint.pt").stat().st_mtime_ns != before, "retrained, not resumed"
    assert json.loads(marker.read_text())["code_sha256"] != "0" * 64


def test_ensure_runs_builds_what_a_variant_needs_once(tmp_path):
    "Chapter 2's text BERT is pretrained once for all seeds; a BERT4Rec start is trained even if only its record exists."
    from recbook.pretraining import SMOKE_CONFIG
    from recbook.training import CHAPTER_VARIANTS, SMOKE_TOWERS, SMOKE_TRAINING, ensure_runs

    ds = load_dataset("beauty-tiny")
    pick = lambda *names: [v for v in CHAPTER_VARIANTS if v.name in names]
    said = []
    run = lambda variants, seeds, work: ensure_runs(ds, variants, seeds, tmp_path / "records", tmp_path / work,
                                                    lambda kind: (SMOKE_TOWERS, replace(SMOKE_TRAINING, epochs=1)),
                                                    SMOKE_CONFIG, "cpu", say=said.append)
    run(pick("twotower-own-bert"), [0, 1], "work")
    assert sum(line.startswith("pretraining") for line in said) == 1
    run(pick("bert4rec"), [0], "work")
    said.clear()
    table = run(pick("twotower-minilm-bert4rec-ids"), [0], "fresh-work")  # the bert4rec record is current, its model is not here
    assert [line.split(" -> ")[0] for line in said if line.startswith("training")] == \
        ["training bert4rec seed 0", "training twotower-minilm-bert4rec-ids seed 0"]
    assert table["current"].all() and len(table) == 4


def test_committed_run_records_are_current():
    "The book's tables are built from results/: a record made by other library code or other data is stale."
    from recbook.training import read_run_record, record_is_current

    from recbook.training import CHAPTER_VARIANTS, FULL_TEXT_BERT, _requested, default_settings

    folder = Path(__file__).resolve().parent.parent / "results" / "beauty"
    records = sorted(folder.glob("*.json"))
    assert records, "results/beauty holds the book's run records"
    ds, variants = load_dataset("beauty"), {v.name: v for v in CHAPTER_VARIANTS}
    for path in records:
        record = read_run_record(path)
        variant = variants[record["variant"]]
        assert path.name == f"{variant.name}-seed{record['seed']}.json"
        towers, training = default_settings(variant.kind)
        chapter_request = _requested(variant, towers, replace(training, seed=record["seed"]), FULL_TEXT_BERT)
        assert record_is_current(record, ds, chapter_request), f"{path.name} is stale: rerun `recbook runs` for it"


def test_committed_tuned_and_elsewhere_records_are_current():
    """Chapter 4's section on the defaults: the tuned model's records (its configuration, three seeds) and the
    defaults-on-other-shops records were made by today's library code, on today's Beauty."""
    from recbook.training import (default_settings, library_code_hash, load_train_config, read_run_record,
                                  record_is_current)

    root = Path(__file__).resolve().parent.parent / "results"
    tuned = sorted((root / "tuned").glob("twotower-seed*.json"))
    assert [p.name for p in tuned] == [f"twotower-seed{s}.json" for s in range(3)]
    towers, training = load_train_config(root / "tuned" / "tuned-twotower.json", *default_settings("twotower"))
    ds = load_dataset("beauty")
    for seed, path in enumerate(tuned):
        record = read_run_record(path)
        assert record_is_current(record, ds), f"{path.name} is stale: train it again with recbook train --config"
        assert record["training"] == asdict(replace(training, seed=seed)), f"{path.name}: not the tuned configuration"
        assert {k: record["model_settings"][k] for k in ("dropout", "id_dropout")} == \
            {"dropout": towers.dropout, "id_dropout": towers.id_dropout}
    elsewhere = sorted((root / "defaults-elsewhere").glob("*.json"))
    assert elsewhere, "results/defaults-elsewhere holds bench/defaults_elsewhere.py's records"
    for path in elsewhere:
        assert json.loads(path.read_text())["library_code_sha256"] == library_code_hash(), f"{path.name} is stale"


def test_tune_shares_one_study_between_processes(tmp_path):
    "--jobs 2: two processes, each its share of the trials, on one study; their random first trials differ."
    best = tmp_path / "best.json"
    result = _recbook("tune", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--trials", "3", "--epochs", "1",
                      "--jobs", "2", "--out", str(best))
    assert result.returncode == 0, result.stderr
    trials = json.loads(best.read_text())["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2], "every trial of every process is in the one study"
    assert len({t["learning_rate"] for t in trials}) == 3, "each process samples with a seed of its own"


def test_tune_then_train_with_its_configuration(tmp_path):
    best = tmp_path / "best.json"
    result = _recbook("tune", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--trials", "3", "--epochs", "2",
                      "--out", str(best))
    assert result.returncode == 0, result.stderr
    found = json.loads(best.read_text())
    assert len(found["trials"]) == 3 and 0 < found["valid NDCG@10"] <= 1 and found["training"]["epochs"] == 2
    assert found["training"]["seed"] == 0, "the seed of the search travels with its configuration"
    assert {"learning_rate", "batch_size", "weight_decay"} <= set(found["training"]) and "dropout" in found["towers"]
    result = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--config", str(best),
                      "--out", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "m" / "run.json").read_text())
    assert record["training"]["learning_rate"] == found["training"]["learning_rate"]
    assert record["model_settings"]["dropout"] == found["towers"]["dropout"]
    assert record["training"]["examples"] == "prefixes", "tune and train start from SASRec's own defaults"
    # the best trial's validation figure is reproduced by training its configuration (same seed, same code)
    assert record["metrics"]["valid NDCG@10"] == pytest.approx(found["valid NDCG@10"], abs=1e-9)


def test_train_config_errors_name_the_file_and_setting(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": {"learning_rat": 0.1}}))
    result = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--config", str(bad),
                      "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "bad.json" in result.stderr and "learning_rat" in result.stderr
    bad.write_text("[1]")
    result = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--config", str(bad),
                      "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "bad.json" in result.stderr


def test_evaluate_refuses_a_model_trained_on_other_data(tmp_path):
    "A beauty-tiny model scored on Beauty used to print metrics without a word; its run record says what it saw."
    out = tmp_path / "m"
    assert _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(out), "--smoke").returncode == 0
    result = _recbook("evaluate", "--model", str(out), "--dataset", "beauty")
    assert result.returncode == 2 and "trained on dataset 'beauty-tiny'" in result.stderr and "'beauty'" in result.stderr
    copy = tmp_path / "copy"  # the same data written to a folder: the same fingerprint, so it is accepted
    assert _recbook("prepare", "--dataset", "beauty-tiny", "--out", str(copy)).returncode == 0
    result = _recbook("evaluate", "--model", str(out), "--dataset", str(copy), "--json")
    assert result.returncode == 0, result.stderr
    (out / "run.json").unlink()  # a model without a record (older versions): the item count still has to match
    result = _recbook("evaluate", "--model", str(out), "--dataset", "beauty")
    assert result.returncode == 2 and "scores 560 items" in result.stderr



def test_a_model_finds_its_data_folder_from_anywhere_and_refuses_changed_data(tmp_path):
    "A model trained on `--dataset mydata` records the folder's absolute location and the data's fingerprint."
    from recbook.data import load_dataset, write_dataset
    from recbook.serving import FeedbackStore, RecommendationService

    (tmp_path / "shop").mkdir()
    write_dataset(load_dataset("beauty-tiny"), tmp_path / "shop" / "mydata")
    trained = subprocess.run([sys.executable, "-m", "recbook", "train", "--model", "sasrec", "--dataset", "mydata",
                              "--out", str(tmp_path / "m"), "--smoke", "--epochs", "1"], cwd=tmp_path / "shop",
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((tmp_path / "m" / "recommender.json").read_text())["dataset"] == str(tmp_path / "shop" / "mydata")
    service = RecommendationService.from_dir(tmp_path / "m")  # this test runs elsewhere: the location is absolute
    assert service.dataset.n_items == load_dataset("beauty-tiny").n_items
    service.feedback.close()
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    for item in (1, 2): store.append({"user": "u", "item": item})
    store.close()
    tiny = load_dataset("beauty-tiny")  # the folder now holds other data: each history in reverse order
    write_dataset(replace(tiny, sequences=[s[::-1] for s in tiny.sequences]), tmp_path / "shop" / "mydata")
    for command in (["evaluate", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "shop" / "mydata")],
                    ["finetune", "--model", str(tmp_path / "m"), "--feedback", str(tmp_path / "feedback.sqlite"),
                     "--out", str(tmp_path / "m2")],
                    ["serve", "--model", str(tmp_path / "m"), "--exit-after", "1"]):
        result = _recbook(*command)
        assert result.returncode == 2 and "other data" in result.stderr and "fingerprint" in result.stderr, (
            command[0], result.stderr[-1500:])
        assert str(tmp_path / "shop" / "mydata") in result.stderr

def test_train_refuses_to_resume_another_runs_checkpoint(tmp_path):
    out = tmp_path / "m"
    assert _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(out), "--smoke").returncode == 0
    again = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(out), "--smoke")
    assert again.returncode == 0, "the same run: resumes (here: is already finished)"
    other = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(out), "--smoke", "--seed", "1")
    assert other.returncode == 2 and "checkpoint of another run" in other.stderr and str(out) in other.stderr


def test_recbook_load_recommends_by_the_shops_ids(tmp_path):
    "The one-line API after chapter 4: a new user's few items, or known users from their whole history."
    import recbook

    assert _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--out", str(tmp_path / "m"), "--smoke",
                    "--epochs", "1").returncode == 0
    model = recbook.load(tmp_path / "m")
    ds = model.dataset
    history = [ds.items.asin[4], ds.items.asin[9]]
    top = model.recommend(history, k=7)
    assert list(top.columns) == ["rank", "item", "id", "title", "score"] and list(top["rank"]) == list(range(1, 8))
    assert not set(top["item"]) & set(history) and top["score"].is_monotonic_decreasing
    assert set(model.recommend(history, k=ds.n_items, exclude_seen=False)["item"]) >= set(history)
    users = model.recommend_users([ds.user_ids[3], ds.user_ids[0]], k=4)
    assert list(users["user"]) == [ds.user_ids[3]] * 4 + [ds.user_ids[0]] * 4
    assert not set(users[users["user"] == ds.user_ids[3]]["id"]) & set(ds.sequences[3].tolist()), "whole history left out"
    with pytest.raises(EvaluationError, match=r"unknown item\(s\) 'B000NOTREAL', 999999 \(2 of the 3 given\)"):
        model.recommend(["B000NOTREAL", history[0], 999999])
    with pytest.raises(EvaluationError, match=r"unknown user\(s\) 'nobody'"):
        model.recommend_users(["nobody"])
    with pytest.raises(EvaluationError, match="k must be in"):
        model.recommend(history, k=0)


def test_tune_resumes_from_its_journal(tiny, tmp_path):
    "--journal: a stopped search, run again, keeps its ended trials, retrains the interrupted one and stops at --trials."
    import fcntl
    from recbook.training import _journal_storage, _tune_study, default_settings, tune

    towers, training = default_settings("sasrec", True)
    search = lambda trials, journal, epochs=1: tune("sasrec", tiny[0], trials, epochs, towers=towers, training=training,
                                                    journal=journal)
    first = search(2, tmp_path / "stopped.log")
    in_memory = tune("sasrec", tiny[0], 2, 1, towers=towers, training=training)
    assert [t["valid NDCG@10"] for t in first["trials"]] == [t["valid NDCG@10"] for t in in_memory["trials"]], \
        "a journal changes nothing for a search that is not stopped"
    cut_short = _tune_study(0, _journal_storage(tmp_path / "stopped.log"), "tune", load=True).ask()  # left running
    learning_rate = cut_short.suggest_float("learning_rate", 3e-4, 5e-3, log=True)
    resumed = search(3, tmp_path / "stopped.log")
    assert [t["state"] for t in resumed["trials"]] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert resumed["trials"][:2] == first["trials"], "ended trials are kept as they were"
    assert resumed["trials"][3]["learning_rate"] == learning_rate, "the interrupted trial's settings are trained again"
    assert resumed["trials"][3]["dropout"] not in {t["dropout"] for t in first["trials"]}, \
        "the resumed sampler does not propose the first start's settings again"
    assert search(3, tmp_path / "stopped.log")["trials"] == resumed["trials"], "nothing is left to run"
    with pytest.raises(EvaluationError, match=r"stopped\.log: holds another search \(its epochs differ\)"):
        search(3, tmp_path / "stopped.log", epochs=2)
    with open(tmp_path / "stopped.lock", "w") as lock:  # another search at work on the same journal
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(EvaluationError, match="another search is using this journal"):
            search(4, tmp_path / "stopped.log")
