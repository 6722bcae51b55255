"""Chapter 7: the adapted item tower starts exactly at the frozen model, LoRA adapters save, load and merge with equal
scores, every row of the chapter trains in smoke mode, new items leave training, the typed-query benchmark, the CLI."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recbook.adaptation import (ADAPTER_DIR, ALL_LINEAR_MODULES, CHAPTER_ROWS, AdaptConfig, adaptation_code_hash,
                                adapted_network, ensure_adaptation_runs, ensure_query_records, forget_ids,
                                fused_vectors, history_with_query_vectors, hold_out_items, intent_queries,
                                known_and_new_metrics, lower_layer_states, run_top_layers, save_adapted, bert_of)
from recbook.data import leave_one_out, load_dataset
from recbook.evaluation import EvaluationError, load_recommender
from recbook.pretraining import SMOKE_CONFIG, encode_texts, run_text_pretraining
from recbook.towers import TwoTowerRecommender, load_text_encoder
from recbook.training import SMOKE_TOWERS, SMOKE_TRAINING, build_network, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "beauty-tiny, its split, a small text BERT and a trained frozen two-tower model on it."
    ds = load_dataset("beauty-tiny")
    split = leave_one_out(ds)
    bert = tmp_path_factory.mktemp("bert") / "text-bert"
    run_text_pretraining(ds, bert, SMOKE_CONFIG)
    network = build_network("twotower", ds, replace(SMOKE_TOWERS, text_encoder=str(bert)), device="cpu", seed=0)
    fit(network, split, replace(SMOKE_TRAINING, epochs=1), device="cpu")
    return ds, split, str(bert), network


def test_cached_lower_layers_reproduce_the_frozen_vectors(tiny):
    ds, _, bert, _ = tiny
    model, tokenizer = load_text_encoder(bert)
    texts = ds.items["text"].tolist()[:64]
    states, lengths = lower_layer_states(model, tokenizer, texts, top_layers=2)  # the embeddings output: all layers run
    with torch.no_grad(): vectors = run_top_layers(bert_of(model).encoder.layer, states, lengths)
    assert np.abs(vectors.numpy() - encode_texts(model, tokenizer, texts)).max() < 1e-5
    with pytest.raises(EvaluationError, match="cannot adapt the top 3"):
        lower_layer_states(model, tokenizer, texts, top_layers=3)


@pytest.mark.parametrize("adapt", [AdaptConfig("lora"), AdaptConfig("full"),
                                   AdaptConfig("lora", rank=4, target_modules=ALL_LINEAR_MODULES, top_layers=2)],
                         ids=["lora-qv", "full", "lora-all-2-layers"])
def test_adapted_model_starts_at_the_frozen_one_and_merges_to_equal_scores(tiny, tmp_path, adapt):
    ds, split, _, frozen = tiny
    texts = ds.items["text"].tolist()
    adapted, peft_model, _ = adapted_network(frozen, texts, adapt, device="cpu")
    histories = split.history("test")
    with torch.no_grad():
        start = TwoTowerRecommender(adapted)(None, histories) - TwoTowerRecommender(frozen)(None, histories)
    assert start.abs().max() < 1e-4
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad and n.startswith("items.top.")}
    if adapt.mode == "lora": assert trainable and all("lora_" in n for n in trainable)
    else: assert len(trainable) == sum(1 for n, _ in adapted.items.top.named_parameters())
    fit(adapted, split, replace(SMOKE_TRAINING, epochs=1, loss="sampled", learning_rate=1e-2), device="cpu")
    saved = save_adapted(adapted, peft_model, adapt, tmp_path / "model", texts, ds.name)
    merged = load_recommender(saved)
    with torch.no_grad():
        unmerged, served = TwoTowerRecommender(adapted)(None, histories), merged(None, histories)
        moved = (unmerged - TwoTowerRecommender(frozen)(None, histories)).abs().max()
    assert (unmerged - served).abs().max() < 1e-4 and moved > 1e-3
    if adapt.mode == "lora":  # peft's own format, loadable by peft onto a fresh encoder
        from peft import PeftModel

        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (saved / ADAPTER_DIR).iterdir()}
        config = json.loads((saved / ADAPTER_DIR / "adapter_config.json").read_text())
        assert config["r"] == adapt.rank and set(config["target_modules"]) == set(adapt.target_modules)
        fresh, _ = load_text_encoder(frozen.config.text_encoder)
        PeftModel.from_pretrained(bert_of(fresh), str(saved / ADAPTER_DIR))
    assert merged.query_vectors(["nail polish"]).shape == (1, frozen.config.hidden)


def test_bad_adaptation_settings_are_named():
    with pytest.raises(EvaluationError, match="adapt mode must be one of"): AdaptConfig("prefix")
    with pytest.raises(EvaluationError, match="top_layers"): AdaptConfig("lora", top_layers=0)
    with pytest.raises(EvaluationError, match="rank"): AdaptConfig("lora", rank=0)


def test_frozen_mode_and_id_only_models_have_nothing_to_adapt(tiny):
    ds, _, _, frozen = tiny
    with pytest.raises(EvaluationError, match="nothing to adapt"):
        adapted_network(frozen, ds.items["text"].tolist(), AdaptConfig("frozen"))
    ids_only = build_network("sasrec", ds, SMOKE_TOWERS, device="cpu")
    with pytest.raises(EvaluationError, match="no text tower"):
        adapted_network(ids_only, ds.items["text"].tolist(), AdaptConfig("lora"))


def test_new_items_leave_training_and_lose_their_ids(tiny):
    ds, split, _, frozen = tiny
    held, new = hold_out_items(split, ds.n_items, share=0.1, seed=3)
    assert len(new) == round(0.1 * ds.n_items) and np.array_equal(new, np.unique(new))
    assert not np.isin(np.concatenate(held.train + held.valid), new).any()
    assert [list(t) for t in held.test] == [list(t) for t in split.test]
    assert np.array_equal(hold_out_items(split, ds.n_items, share=0.1, seed=3)[1], new)  # the same items every time
    network = build_network("twotower", ds, frozen.config, device="cpu")
    forget_ids(network, new)
    assert network.items.ids.weight[torch.as_tensor(new)].abs().sum() == 0
    targets = np.array([1, 2, 3, 4])
    metrics = known_and_new_metrics(np.array([0, 20, 1, 30]), targets, new_items=[2, 4])
    assert metrics["known"]["users"] == 2 and metrics["known"]["HR@10"][0] == 1.0
    assert metrics["new"]["users"] == 2 and metrics["new"]["HR@10"][0] == 0.0
    with pytest.raises(EvaluationError, match="share"): hold_out_items(split, ds.n_items, share=1.5)


def test_the_new_arrivals_shelf_ranks_new_targets_among_new_items_only(tiny):
    from recbook.adaptation import new_item_shelf_ranks
    from recbook.towers import SASRecRecommender

    ds, split, _, frozen = tiny
    held, new = hold_out_items(split, ds.n_items, share=0.2, seed=1)
    new_target_users = [u for u in held.users("test") if held.test[u][0] in set(new)]
    ranks = new_item_shelf_ranks(TwoTowerRecommender(frozen), held, new)
    assert len(ranks) == len(new_target_users) and (ranks < len(new)).all()  # at most the shelf's other items above
    ids_only = SASRecRecommender(forget_ids(build_network("sasrec", ds, SMOKE_TOWERS, device="cpu"), new))
    tied = new_item_shelf_ranks(ids_only, held, new)  # every new item scores 0: ties count against the model
    seen = [len(set(held.history("test")[u]) & set(new)) for u in new_target_users]  # none: new items left histories
    assert not any(seen) and (tied == len(new) - 1).all()


def test_typed_queries_never_give_the_title_and_combine_with_the_history(tiny):
    ds, split, _, frozen = tiny
    items = [split.test[u][0] for u in split.users("test")[:20]]
    leaves, with_brand = intent_queries(ds, items), intent_queries(ds, items, with_brand=True)
    titles = ds.items.loc[items, "title"].tolist()
    assert all(leaf and leaf in b for leaf, b in zip(leaves, with_brand))
    assert not any(q == t for q, t in zip(with_brand, titles))
    served = TwoTowerRecommender(frozen)
    histories = [split.history("test")[u] for u in split.users("test")[:20]]
    combined = history_with_query_vectors(served, histories, leaves)
    alone = history_with_query_vectors(served, [[]] * len(leaves), leaves)
    assert np.allclose(alone, served.query_vectors(leaves), atol=1e-5)
    assert not np.allclose(combined, served.user_vectors(histories), atol=1e-3)
    with pytest.raises(EvaluationError, match="20 histories but 3 queries"):
        history_with_query_vectors(served, histories, leaves[:3])
    # late fusion as one vector ranks exactly as the standardised score mixture
    rng = np.random.default_rng(0)
    h, q, v = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(30, 8))
    z = lambda s: (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True)
    mixture = 0.7 * z(h @ v.T) + 0.3 * z(q @ v.T)
    assert np.array_equal(np.argsort(-mixture, 1), np.argsort(-(fused_vectors(h, q, v, 0.3) @ v.T), 1))


def test_every_row_of_the_chapter_trains_in_smoke_mode_and_keeps_its_records(tmp_path):
    records, work = tmp_path / "records", tmp_path / "work"
    said = []
    table = ensure_adaptation_runs("beauty-tiny", records, work, seeds=(0,), smoke=True, say=said.append)
    assert len(table) == len(CHAPTER_ROWS) and (table["seeds"] == 1).all()
    for row in CHAPTER_ROWS:
        record = json.loads((records / f"{row.name}-seed0.json").read_text())
        assert record["code_sha256"] == adaptation_code_hash() and record["row"] == row.name
        assert {"known", "new", "all"} <= record["metrics"].keys() and record["peak_memory_gb"] > 0
        assert record["new_items"]["count"] == round(0.05 * record["dataset"]["items"])
    encoder = {r: json.loads((records / f"{r}-seed0.json").read_text())["trainable_encoder_parameters"]
               for r in ("frozen", "lora-r8-qv", "lora-r16-all", "full-top")}
    assert encoder["frozen"] == 0 < encoder["lora-r8-qv"] < encoder["lora-r16-all"] < encoder["full-top"]
    said.clear()
    ensure_adaptation_runs("beauty-tiny", records, work, seeds=(0,), smoke=True, say=said.append)
    assert said == [], "current records are kept, not retrained"
    queries = ensure_query_records("beauty-tiny", records, work, rows=("frozen",), smoke=True, say=said.append)
    record = json.loads((records / "queries" / "frozen-seed0.json").read_text())
    assert [i["intent"] for i in record["intents"]] == ["leaf category", "category + brand"]
    assert 0 <= record["intents"][0]["fusion_weight"] <= 1 and len(queries) == 8


def test_cli_trains_and_serves_an_adapted_model(tiny, tmp_path):
    out = tmp_path / "lora"
    done = subprocess.run([sys.executable, "-m", "recbook", "train", "--model", "twotower", "--dataset", "beauty-tiny",
                           "--smoke", "--text-encoder", tiny[2], "--adapt", "lora", "--lora-rank", "4",
                           "--lora-targets", "all", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage 2 (lora)" in done.stdout and (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 4
    from recbook.serving import RecommendationService

    service = RecommendationService.from_dir(out)
    try: assert len(service.search_batch([("shampoo", 5)])[0]["items"]) == 5
    finally: service.close()
    bad = subprocess.run([sys.executable, "-m", "recbook", "train", "--model", "sasrec", "--dataset", "beauty-tiny",
                          "--smoke", "--adapt", "lora", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "needs --model twotower" in bad.stderr


def test_committed_records_are_current_and_complete():
    """The chapter's tables are built from results/adaptation/: every record there was made by today's code, as asked;
    every row has its seed-0 record and every benchmarked row its query record."""
    from recbook.adaptation import QUERY_ROWS, _request, chapter_settings, query_code_hash
    from recbook.training import dataset_fingerprint

    folder = ROOT / "results" / "adaptation"
    records = sorted(folder.glob("*-seed*.json"))
    missing = [r.name for r in CHAPTER_ROWS if not (folder / f"{r.name}-seed0.json").is_file()]
    missing += [f"queries/{r}" for r in QUERY_ROWS if not (folder / "queries" / f"{r}-seed0.json").is_file()]
    assert not missing, f"missing chapter 7 records {missing}: run `recbook adaptations --records {folder} --queries`"
    beauty = load_dataset("beauty")
    rows = {r.name: r for r in CHAPTER_ROWS}
    for path in records:
        record = json.loads(path.read_text())
        assert record["code_sha256"] == adaptation_code_hash(), f"{path.name}: made by other code; rerun it"
        assert record["request"] == json.loads(json.dumps(_request(rows[record["row"]], record["seed"],
                                                                   chapter_settings()))), path.name
        assert record["dataset"]["fingerprint"] == dataset_fingerprint(beauty)
        assert len(record["test_ranks"]) == record["metrics"]["all"]["users"]
        metrics = record["metrics"]
        assert metrics["known"]["users"] + metrics["new"]["users"] == metrics["all"]["users"]
        assert metrics["shelf"]["users"] == metrics["new"]["users"]
    for path in sorted((folder / "queries").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["code_sha256"] == query_code_hash(), f"queries/{path.name}: stale"
        assert record["dataset"]["fingerprint"] == dataset_fingerprint(beauty)
