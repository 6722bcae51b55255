"Chapter 8 across notebooks: pseudonyms, DP-SGD and its accountant, the membership attack, the deletion test, the CLI."
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recbook.data import leave_one_out, load_dataset
from recbook.evaluation import EvaluationError, load_recommender
from recbook.privacy import (PSEUDONYM_KEY_ENV, SMOKE_PRIVATE, SMOKE_PRIVATE_TOWERS, PrivateTwoTower,
                             analytic_gaussian_epsilon, deletion_summary, deletion_test, membership,
                             membership_attack, members_only, new_pseudonym_key, popularity_curve,
                             popularity_penalised, pseudonym_key, pseudonyms, train_private, write_pseudonym_key)
from recbook.training import build_network

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    ds = load_dataset("beauty-tiny")
    return ds, leave_one_out(ds)


def test_pseudonyms_are_keyed_stable_and_distinct(tiny):
    ds, _ = tiny
    key = bytes.fromhex(new_pseudonym_key())
    names = pseudonyms(ds.user_ids, key)
    assert len(set(names)) == len(names) and names == pseudonyms(ds.user_ids, key)
    assert all(n.startswith("u") and len(n) == 21 for n in names)
    assert pseudonyms(ds.user_ids[:5], bytes.fromhex(new_pseudonym_key())) != names[:5]
    assert not set(map(str, ds.user_ids)) & set(names)


def test_the_key_comes_from_the_environment_or_a_private_file(tmp_path, monkeypatch):
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    with pytest.raises(EvaluationError, match=PSEUDONYM_KEY_ENV):
        pseudonym_key()
    path = write_pseudonym_key(tmp_path / "keys" / "pseudonyms.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(pseudonym_key(path)) == 32
    with pytest.raises(EvaluationError, match="already there"):
        write_pseudonym_key(path)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, path.read_text().strip())
    assert pseudonym_key() == pseudonym_key(path)
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "not hex")
    with pytest.raises(EvaluationError, match="hexadecimal"):
        pseudonym_key()
    with pytest.raises(EvaluationError, match="no pseudonym key file"):
        pseudonym_key(tmp_path / "missing.key")


def test_the_private_network_computes_chapter_3s_user_vectors_with_the_batch_first(tiny):
    ds, split = tiny
    network = build_network("twotower", ds, SMOKE_PRIVATE_TOWERS, seed=0).eval()
    private = PrivateTwoTower(network, negatives=8).eval()
    ids = torch.stack([torch.as_tensor(np.pad(h[-20:], (20 - len(h[-20:]), 0))) for h in split.train[:16]])
    with torch.no_grad():
        torch.testing.assert_close(private.user_vectors(ids), network.encode(ids), atol=1e-5, rtol=1e-5)
    state = private.standard_state()
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


def test_a_users_loss_depends_on_that_users_data_alone(tiny):
    "Per-user independence, which makes a sampled row a user: changing one user's items leaves the others' losses."
    ds, split = tiny
    network = build_network("twotower", ds, SMOKE_PRIVATE_TOWERS, seed=0)
    private = PrivateTwoTower(network, negatives=8).eval()
    rows = torch.stack([torch.as_tensor(np.pad(h[-21:], (21 - len(h[-21:]), 0))) for h in split.train[:6]])
    changed = rows.clone()
    changed[0, -3:] = torch.tensor([5, 6, 7])
    torch.manual_seed(0)
    before = private(rows)
    torch.manual_seed(0)
    after = private(changed)
    torch.testing.assert_close(before[1:], after[1:])
    assert not torch.isclose(before[0], after[0])


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_opacus_accountants_against_the_analytic_gaussian_mechanism(sigma, steps):
    "Full-batch Gaussian steps have an exact epsilon: PRV must match it, RDP (an upper bound) must not be below it."
    from opacus.accountants import PRVAccountant, RDPAccountant

    exact = analytic_gaussian_epsilon(sigma, 1e-5, steps)
    spent = {}
    for name, accountant in (("prv", PRVAccountant()), ("rdp", RDPAccountant())):
        for _ in range(steps): accountant.step(noise_multiplier=sigma, sample_rate=1.0)
        spent[name] = accountant.get_epsilon(1e-5)
    assert spent["prv"] == pytest.approx(exact, rel=0.02)
    assert spent["rdp"] >= exact - 1e-6


def test_the_analytic_epsilon_solves_the_gaussian_privacy_curve():
    "At the epsilon returned, Balle and Wang's delta(epsilon) is the delta asked for; T steps are one step of sigma/sqrt(T)."
    from scipy.stats import norm

    for sigma, delta in [(1.0, 1e-5), (0.7, 1e-3), (3.0, 1e-6)]:
        eps = analytic_gaussian_epsilon(sigma, delta)
        curve = norm.cdf(1 / (2 * sigma) - eps * sigma) - np.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)
        assert curve == pytest.approx(delta, rel=1e-6)
    assert analytic_gaussian_epsilon(2.0, 1e-5, steps=16) == pytest.approx(analytic_gaussian_epsilon(0.5, 1e-5))
    assert analytic_gaussian_epsilon(1.0, 1e-5, steps=4) > analytic_gaussian_epsilon(1.0, 1e-5) > analytic_gaussian_epsilon(2.0, 1e-5)


@pytest.fixture(scope="module")
def private_runs(tiny):
    ds, split = tiny
    members = membership(len(ds.sequences))
    runs = {}
    for epsilon in (None, 2.0):
        network = build_network("twotower", ds, SMOKE_PRIVATE_TOWERS, seed=0)
        runs[epsilon] = train_private(network, split, members, replace(SMOKE_PRIVATE, epsilon=epsilon), device="cpu")
    return members, runs


def test_dp_sgd_spends_the_target_epsilon_and_training_without_dp_spends_none(private_runs):
    members, runs = private_runs
    accounting = runs[2.0]["accounting"]
    assert accounting["epsilon"] == pytest.approx(2.0, rel=0.05) and accounting["accountant"] == "prv"
    assert accounting["delta"] == pytest.approx(1 / accounting["users"]) and accounting["users"] <= members.sum()
    assert accounting["noise_multiplier"] > 0.5 and runs[None]["accounting"]["epsilon"] is None
    from opacus.accountants import PRVAccountant  # the record's sigma, q and steps give its epsilon again

    again = PRVAccountant()
    again.history = [(accounting["noise_multiplier"], accounting["sample_rate"], accounting["steps"])]
    assert again.get_epsilon(accounting["delta"]) == pytest.approx(accounting["epsilon"], rel=1e-3)
    assert accounting["steps"] == SMOKE_PRIVATE.epochs * round(1 / accounting["sample_rate"])
    for run in runs.values():
        assert np.isfinite(run["history"]["train_loss"]).all() and len(run["history"]) == SMOKE_PRIVATE.epochs


def test_the_membership_attack_reports_an_auc_with_its_interval(tiny, private_runs):
    ds, split = tiny
    members, runs = private_runs
    attack = membership_attack(runs[None]["network"], split, members)
    low, auc, high = attack["AUC"][1], attack["AUC"][0], attack["AUC"][2]
    assert 0 <= low <= auc <= high <= 1 and attack["members"] + attack["non-members"] <= len(ds.sequences)
    assert attack["member loss"] > 0 and attack["non-member loss"] > 0


def test_the_attack_finds_members_of_a_model_that_memorised_them(tiny):
    "A known signal: a model trained long, without dropout, on a few users fits them better than the rest."
    ds, split = tiny
    members = np.zeros(len(ds.sequences), dtype=bool)
    members[:120] = True
    network = build_network("twotower", ds, replace(SMOKE_PRIVATE_TOWERS, dropout=0.0), seed=0)
    run = train_private(network, split, members, replace(SMOKE_PRIVATE, epsilon=None, epochs=40, learning_rate=1e-2),
                        device="cpu")
    attack = membership_attack(run["network"], split, members)
    assert attack["AUC"][1] > 0.5 and attack["member loss"] < attack["non-member loss"], attack


def test_committed_privacy_records_are_current():
    "Every record in results/privacy/ was made by today's code and request; its epsilon is the one asked for."
    from recbook.privacy import _privacy_request, load_privacy_records, privacy_code_hash

    records = load_privacy_records(ROOT / "results" / "privacy")
    assert records, "no privacy records"
    for record in records:
        assert record["code_sha256"] == privacy_code_hash(), f"{record['row']} seed {record['seed']}: made by other code"
        assert record["request"] == _privacy_request(record["epsilon"], record["seed"], False)
        if record["epsilon"] is not None:
            assert record["accounting"]["epsilon"] == pytest.approx(record["epsilon"], rel=0.05)
            assert record["accounting"]["delta"] == pytest.approx(1 / record["accounting"]["users"])


def test_members_only_hides_the_non_members_targets(tiny):
    ds, split = tiny
    members = membership(len(ds.sequences))
    kept = members_only(split, members)
    assert set(kept.users("test")) == set(np.flatnonzero(members)) & set(split.users("test"))
    assert 0.7 < members.mean() < 0.9 and np.array_equal(members, membership(len(ds.sequences)))


def test_the_deletion_test_passes_occlusion_by_construction(tiny, private_runs):
    "Occlusion names the item whose removal costs the most: its named drop is never below a random item's."
    ds, split = tiny
    from recbook.towers import TwoTowerRecommender

    model = TwoTowerRecommender(private_runs[1][None]["network"], ds.name)
    tests = deletion_test(model, [split.history("test")[u] for u in range(60)], window=20)
    occlusion = tests[tests.method == "occlusion"]
    assert len(occlusion) > 30 and (occlusion["named drop"] >= occlusion["random drop"] - 1e-5).all()
    summary = deletion_summary(tests)
    assert summary.loc["occlusion", "passes"] and set(summary.index) == {"similarity", "occlusion"}


def test_popularity_re_ranking_keeps_the_ranking_at_zero_and_spreads_exposure(tiny, private_runs):
    ds, split = tiny
    from recbook.towers import TwoTowerRecommender

    model = TwoTowerRecommender(private_runs[1][None]["network"], ds.name)
    counts = np.bincount(np.concatenate(split.history("test")), minlength=ds.n_items + 1)
    rows, histories = np.arange(5), [split.history("test")[u] for u in range(5)]
    same = popularity_penalised(model, counts, 0.0)(rows, histories)
    assert torch.equal(same[:, 1:].argsort(dim=1, descending=True)[:, :10], model(rows, histories)[:, 1:].argsort(dim=1, descending=True)[:, :10])
    curve = popularity_curve(model, split, ds.n_items, weights=(0.0, 2.0), parts=("test",))
    assert curve.set_index("weight").loc[2.0, "average popularity"] < curve.set_index("weight").loc[0.0, "average popularity"]


def _recbook(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "recbook", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_cli_trains_a_private_model_that_serve_reads_and_makes_keys(tmp_path):
    out = tmp_path / "private"
    done = _recbook("train", "--model", "twotower", "--dataset", "beauty-tiny", "--smoke", "--dp-epsilon", "4",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epsilon 4.0" in done.stdout or "epsilon 3.9" in done.stdout, done.stdout
    meta = json.loads((out / "recommender.json").read_text())
    assert meta["privacy"]["epsilon"] == pytest.approx(4.0, rel=0.05) and load_recommender(out).kind == "twotower"
    bad = _recbook("train", "--model", "sasrec", "--dataset", "beauty-tiny", "--smoke", "--dp-epsilon", "4",
                   "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "--model twotower" in bad.stderr
    negative = _recbook("train", "--model", "twotower", "--dataset", "beauty-tiny", "--dp-epsilon", "-1",
                        "--out", str(tmp_path / "y"))
    assert negative.returncode == 2 and "positive number" in negative.stderr
    for extra in (["--adapt", "lora"], ["--init-from", str(out)]):
        refused = _recbook("train", "--model", "twotower", "--dataset", "beauty-tiny", "--smoke", "--dp-epsilon", "4",
                           "--out", str(tmp_path / "z"), *extra)
        assert refused.returncode == 2 and "cannot be combined" in refused.stderr and not (tmp_path / "z").exists()
    key = tmp_path / "secret" / "pseudonyms.key"
    assert _recbook("keygen", "--out", str(key)).returncode == 0 and len(pseudonym_key(key)) == 32
    listed = _recbook("pseudonyms", "114", "313", "--pseudonym-key", str(key))
    assert listed.returncode == 0 and listed.stdout.splitlines() == [
        "user,pseudonym", *(f"{u},{n}" for u, n in zip(["114", "313"], pseudonyms(["114", "313"], pseudonym_key(key))))]
    again = _recbook("keygen", "--out", str(key))
    assert again.returncode != 0 and "already there" in again.stderr


def test_commands_that_need_the_key_stop_without_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != PSEUDONYM_KEY_ENV}
    done = subprocess.run([sys.executable, "-m", "recbook", "recommend", "--model", str(tmp_path / "m"),
                           "--out", str(tmp_path / "r.csv")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and PSEUDONYM_KEY_ENV in done.stderr and "keygen" in done.stderr
    done = subprocess.run([sys.executable, "-m", "recbook", "serve", "--model", str(tmp_path / "m"), "--pseudonym-key",
                           str(tmp_path / "missing.key")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "missing.key" in done.stderr


def test_no_raw_user_id_in_anything_the_commands_write(tmp_path):
    """quickstart, train, recommend, serve (with feedback sent by the shop's raw ids) and finetune on a copy of
    beauty-tiny whose user ids are distinctive: no file they write, nor what they print, contains any of them."""
    import dataclasses
    import gzip

    from recbook.data import write_dataset
    from recbook.serving import BackgroundServer, call

    tiny = load_dataset("beauty-tiny")
    raw = np.arange(len(tiny.user_ids), dtype=np.int64) + 97_531_000_001  # cannot occur by chance in an artefact
    write_dataset(dataclasses.replace(tiny, user_ids=raw), tmp_path / "data")
    data, out = tmp_path / "data", tmp_path / "out"
    printed = []

    def run(*args):
        done = _recbook(*map(str, args))
        assert done.returncode == 0, (args, done.stderr[-2000:])
        printed.append(done.stdout + done.stderr)

    run("quickstart", "--dataset", data, "--out", out / "quickstart")
    run("train", "--model", "twotower", "--dataset", data, "--smoke", "--out", out / "model")
    run("recommend", "--model", out / "model", "--out", out / "recs.csv", "--quiet")
    run("recommend", "--model", out / "model", "--out", out / "recs.parquet", "--quiet")
    store = out / "feedback.sqlite"
    with BackgroundServer(out / "model", feedback=store, exit_after=300, log=out / "server.log") as server:
        ds = load_dataset(str(data))
        for user in raw[:5]:
            history = ds.items.asin.iloc[:2].tolist()
            status, answer = call(server.url, "/feedback", {"user": str(user), "item": ds.items.asin.iloc[3],
                                                            "event": "purchase", "history": history})
            assert status == 201, answer
            assert call(server.url, "/recommend", {"history": history, "k": 3})[0] == 200
    run("finetune", "--model", out / "model", "--feedback", store, "--out", out / "finetuned")
    needles = [str(u).encode() for u in raw]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10 and store.is_file() and (out / "finetuned" / "recommender.json").is_file()
    import pandas as pd

    assert set(pd.read_parquet(out / "recs.parquet").user) == set(pseudonyms(raw, pseudonym_key()))
    for path in files:
        content = path.read_bytes()
        if path.suffix == ".gz": content = gzip.decompress(content)
        leaked = [n.decode() for n in needles if n in content]
        assert not leaked, f"{path.relative_to(tmp_path)} holds raw user ids {leaked[:3]}"
    leaked = [n.decode() for n in needles if n.decode() in "".join(printed)]
    assert not leaked, f"the commands printed raw user ids {leaked[:3]}"
