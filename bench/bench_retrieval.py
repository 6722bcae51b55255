"""Benchmark: top-10 retrieval from catalogues of up to 1,000,000 items: exact search against IVF and HNSW.

Builds synthetic catalogues shaped like a trained Beauty model's item vectors (`recbook.serving.synthetic_catalogue`)
and, for each size and index kind, sweeps the index's search knob (`recbook.serving.scale_check`): build seconds,
index size, p50/p99 single-query latency on one thread and recall@10 against exact search, which is the baseline in
the same run. Target (issue 6): p99 <= 10 ms at recall@10 >= 0.95 for 1,000,000 items. The queries are the model's
user vectors for test users. FAISS runs on the CPU whatever GPU the machine has, so the record is
bench/results/retrieval-cpu.json (with --quick: a temporary file, never a record).

    python bench/bench_retrieval.py [--model DIR] [--sizes 10000 100000 1000000] [--queries 1000]
    python bench/bench_retrieval.py --quick          # a sanity run in seconds (beauty-tiny, small catalogues)

Without --model, a two-tower model is trained first as the serving chapter does (Beauty, 3 epochs).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np
import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import load_recommender
from recbook.serving import fastest_at_recall, scale_check

K = 10
TARGET = {"items": 1_000_000, "p99_ms": 10.0, f"recall@{K}": 0.95}
SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (2_000, 20_000)


def model_to_serve(model_dir, quick: bool, work) -> Path:
    """`model_dir` if given, else a two-tower model trained here as the serving chapter does: Beauty for 3 epochs, or
    (quick) one epoch of the smoke configuration on beauty-tiny. Shared with bench_serving.py."""
    if model_dir: return Path(model_dir)
    out = Path(work) / "model"
    data = ["--dataset", "beauty-tiny", "--smoke", "--epochs", "1"] if quick else ["--dataset", "beauty", "--epochs", "3"]
    print(f"no --model: training a two-tower model ({' '.join(data)}) into {out}", flush=True)
    subprocess.run([sys.executable, "-m", "recbook", "train", "--model", "twotower", "--out", str(out), *data],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def record_path(name: str, quick: bool) -> Path:
    "Where a benchmark writes its JSON record: bench/results/, except that a --quick sanity run never overwrites one."
    return Path(tempfile.gettempdir()) / f"{name}-quick.json" if quick else RESULTS / f"{name}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a `recbook train` model directory (default: train one first)")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"catalogue sizes (default {' '.join(map(str, SIZES))})")
    parser.add_argument("--queries", type=int, help="query users: recall over all, latency per query (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 200 queries: a sanity run")
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    n_queries = args.queries or (200 if args.quick else 1000)

    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as work:
        model_dir = model_to_serve(args.model, args.quick, work)
        model = load_recommender(model_dir)
        split = leave_one_out(load_dataset(model.dataset))
        pool = split.users("test")
        users = np.random.default_rng(args.seed).choice(pool, n_queries, replace=n_queries > len(pool))
        queries = np.asarray(model.user_vectors([split.history("test")[u] for u in users]), dtype=np.float32)
        item_vectors = np.asarray(model.item_vectors(), dtype=np.float32)

    table = scale_check(item_vectors, queries, sizes, K, seed=args.seed, latency_queries=n_queries)
    best = fastest_at_recall(table, TARGET[f"recall@{K}"], K)
    exact = best[best["index"] == "exact"].set_index("items")
    approximate = best[best["index"] != "exact"]
    verdicts = []
    for items, rows in approximate.groupby("items"):
        fastest = rows.loc[rows["p99 ms"].idxmin()]
        verdicts.append({"items": int(items), "index": fastest["index"], "setting": fastest["setting"],
                         "p99_ms": float(fastest["p99 ms"]), f"recall@{K}": float(fastest[f"recall@{K}"]),
                         "build_s": float(fastest["build s"]), "index_mb": float(fastest["MB"]),
                         "exact_p99_ms": float(exact.loc[items, "p99 ms"]),
                         "speedup_vs_exact_p99": float(exact.loc[items, "p99 ms"] / fastest["p99 ms"]),
                         "meets_latency": bool(fastest["p99 ms"] <= TARGET["p99_ms"])})

    device = torch.device("cpu")
    print(f"Top-{K} retrieval, {model.kind} model of {model.dataset} ({item_vectors.shape[1]}-d vectors), "
          f"{len(queries):,} queries, {describe(device)}, FAISS {faiss.__version__} (latency: 1 thread)")
    print(table.round(4).to_string(index=False))
    print(f"\nfastest setting with recall@{K} >= {TARGET[f'recall@{K}']} per size and index:")
    print(best.round(4).to_string(index=False))
    largest = max(sizes)
    at_largest = next((v for v in verdicts if v["items"] == largest), None)
    met = None
    if at_largest is None:
        print(f"\n{largest:,} items: no approximate index reached recall@{K} >= {TARGET[f'recall@{K}']}")
    else:
        met = at_largest["meets_latency"] if largest == TARGET["items"] else None
        verdict = ("target met" if met else "target NOT met") if met is not None else \
            f"the target is defined at {TARGET['items']:,} items, not measured here"
        print(f"\n{largest:,} items: {at_largest['index']} ({at_largest['setting']}) p99 {at_largest['p99_ms']:.2f} ms "
              f"at recall@{K} {at_largest[f'recall@{K}']:.3f}, {at_largest['speedup_vs_exact_p99']:.1f}x faster than "
              f"exact search (p99 {at_largest['exact_p99_ms']:.2f} ms); target p99 <= {TARGET['p99_ms']} ms: {verdict}")

    record = {"benchmark": "top-k retrieval at scale", "model": str(args.model or f"trained here ({model.dataset})"),
              "model_kind": model.kind, "dataset": model.dataset, "dim": int(item_vectors.shape[1]), "k": K,
              "queries": len(queries), "sizes": list(sizes), "quick": args.quick, "target": TARGET,
              "target_met": met, "fastest_at_target_recall": verdicts, "table": table.to_dict(orient="records"),
              "faiss": {"version": faiss.__version__, "build_threads": faiss.omp_get_max_threads(), "latency_threads": 1},
              **provenance(device)}
    out = record_path("retrieval-cpu", args.quick)
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
