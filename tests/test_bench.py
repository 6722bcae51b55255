"""The benchmarks' one command for a GPU machine, checked on the CPU without training (its --dry-run)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_plans_the_records_first_within_its_budget(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    plan = (tmp_path / "summary.txt").read_text().splitlines()
    steps = [line.split()[1] for line in plan if line.startswith("plan")]
    assert steps == ["records", "bench-evaluation", "bench-training"], "the most wanted benchmarks after the records"
    assert [line.split()[1] for line in plan if line.startswith("skipped")] == \
        ["bench-sampled-softmax", "bench-pretraining"], "the rest wait for a --benchmarks-only call"
    runs = [line for line in result.stdout.splitlines() if "recbook runs --dataset beauty --records " + str(tmp_path / "results" / "beauty") in line]
    assert len(runs) == 15 and {line.split("--seeds ")[1].split()[0] for line in runs} == {"0", "1", "2"}, \
        "one process per (seed, chain of variants)"
    assert sum("twotower-minilm-bert4rec-ids" in line and "--variants bert4rec " in line for line in runs) == 3, \
        "the two-tower model started from BERT4Rec's IDs runs after that seed's BERT4Rec, in its process"
    limits = [int(line.split("limit ")[1].split("s)")[0]) for line in plan if line.startswith("plan")]
    assert all(limit > 0 for limit in limits) and sum(limits) <= 560, "even if every step used its whole limit"
    assert sorted(p.name for p in (tmp_path / "results" / "beauty").glob("*.json")) == \
        sorted(p.name for p in (ROOT / "results" / "beauty").glob("*.json")), "committed records are copied first"


def test_gpu_suite_benchmarks_only_plans_every_benchmark(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--dry-run", "--benchmarks-only", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    plan = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[1] for line in plan if line.startswith("plan")] == \
        ["bench-evaluation", "bench-training", "bench-sampled-softmax", "bench-pretraining"]
    assert "recbook runs" not in result.stdout


def test_gpu_suite_stops_with_a_clear_message_without_torch(tmp_path):
    if subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("this machine's system python has torch: no python without it to try")
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": "/usr/bin/python3", "PYTHONNOUSERSITE": "1"})
    assert result.returncode == 1 and "missing modules" in result.stdout + result.stderr


def test_pretraining_benchmark_counts_flops_and_writes_a_record(tmp_path):
    out = tmp_path / "pretraining.json"
    result = subprocess.run([sys.executable, "bench_pretraining.py", "--smoke", "--dataset", "beauty-tiny", "--epochs", "2",
                             "--out", str(out)], cwd=ROOT / "bench", capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    record = json.loads(out.read_text())
    flops = record["flops_per_token"]
    # hand count for the smoke BERT (hidden 64, 2 layers, feed-forward 256): per layer 4 projections of 64 x 64 and
    # two feed-forward matrices of 64 x 256, with their biases, and two LayerNorms
    per_layer = 4 * (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 2 * 2 * 64
    assert flops["non_embedding_parameters"] == 2 * per_layer and flops["dense"] == 6 * 2 * per_layer
    assert flops["total"] == flops["dense"] + flops["attention"] + flops["masked-LM head"]
    assert record["tokens_per_s"] > 0 and record["mfu"] is None and record["git_commit"] is not None


def test_gpu_defaults_checks_its_data_and_plans_in_one_budget(tmp_path):
    script = ROOT / "bench" / "gpu_defaults.sh"
    missing = subprocess.run(["bash", str(script), str(tmp_path / "nothing"), str(tmp_path / "out"), "--dry-run"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "Toys_and_Games.txt.gz" in missing.stderr
    for name in ("Toys_and_Games", "Sports_and_Outdoors"): (tmp_path / f"{name}.txt.gz").write_bytes(b"")
    plan = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "out"), "--dry-run", "--budget", "500"],
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0 and "limit 500s" in plan.stdout and "Sports_and_Outdoors" in plan.stdout
