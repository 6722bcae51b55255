"""Benchmark: `recbook recommend` for every Beauty user, and the ONNX user tower against PyTorch's.

Issue 18's target: top-20 for all 22,363 Beauty users, written to a Parquet file, in under 10 s on the 2-core CPU.
The baseline in the same run is the obvious loop a reader would write first: `recbook.load(DIR).recommend_users([u])`
one user at a time, timed on a sample and scaled to all users. Then the serving-side comparison: one history and a
batch of 64 through the exported ONNX graph on ONNX Runtime (one thread) against PyTorch, median of repeats.
Writes bench/results/recommend-{device}.json.

    python bench/bench_recommend.py --model DIR [--k 20] [--sample 300]

DIR is a trained Beauty model directory (chapter 4's `recbook runs` work folder, or `recbook train --out DIR`).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import RESULTS, describe, provenance
from recbook.privacy import PSEUDONYM_KEY_ENV, new_pseudonym_key
from recbook.data import atomic_write
from recbook.evaluation import default_device, load_recommender
from recbook.serving import OnnxRecommender, export_onnx, recommend_to_file
from recbook.training import load_trained


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained Beauty model directory")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--sample", type=int, default=300, help="users timed one at a time for the naive baseline")
    parser.add_argument("--out", help="record path (default bench/results/recommend-{device}.json)")
    args = parser.parse_args()
    device = default_device()
    # user ids are written as keyed pseudonyms (chapter 8): a throwaway key unless the environment names one
    os.environ.setdefault(PSEUDONYM_KEY_ENV, new_pseudonym_key())
    with tempfile.TemporaryDirectory() as tmp:
        written = recommend_to_file(args.model, Path(tmp) / "recs.parquet", k=args.k)
        size_mb = (Path(tmp) / "recs.parquet").stat().st_size / 2**20
        model = load_trained(args.model)
        users = [str(u) for u in model.dataset.user_ids]
        sample = [users[i] for i in np.random.default_rng(0).choice(len(users), args.sample, replace=False)]
        start = time.perf_counter()
        for user in sample: model.recommend_users([user], args.k)
        naive_per_user = (time.perf_counter() - start) / len(sample)
        export_started = time.perf_counter()
        export_onnx(args.model, Path(tmp) / "onnx")
        export_seconds = time.perf_counter() - export_started
        onnx_model = OnnxRecommender(Path(tmp) / "onnx", threads=1)
        scorer = load_recommender(args.model).freeze_items()  # as the server runs it: the item table computed once
    histories = list(model.dataset.sequences)
    latency, described = {}, describe(device)
    torch.set_num_threads(1)  # what one serving process gets
    with torch.no_grad():
        items = scorer.item_tensor()  # computed once, as a server holds it: each path costs a user tower and a product
        for label, batch in [("1 history", histories[:1]), ("64 histories", histories[:64])]:
            latency[label] = {
                "pytorch_ms": median_ms(lambda: (scorer.user_tensor(batch) @ items.T).topk(10), 50),
                "onnxruntime_ms": median_ms(lambda: onnx_model.top_k(batch, 10), 50)}
    result = {"benchmark": "recbook recommend, all users; ONNX user tower vs PyTorch", "model": str(args.model),
              "model_kind": scorer.kind, "dataset": model.dataset.name, "users": written["users"], "k": args.k,
              "rows": written["rows"], "parquet_mb": round(size_mb, 1), "seconds_all_users": written["seconds"],
              "users_per_second": written["users"] / written["seconds"],
              "naive_loop_seconds_per_user": naive_per_user, "naive_loop_seconds_all_users_estimated":
                  naive_per_user * written["users"], "speedup_over_naive_loop":
                  naive_per_user * written["users"] / written["seconds"], "target_seconds": 10.0,
              "onnx_export_seconds": export_seconds, "latency_top10": latency, **provenance(device)}
    out = Path(args.out) if args.out else RESULTS / f"recommend-{device.type}.json"
    with atomic_write(out) as f: json.dump(result, f, indent=1)
    print(f"recbook recommend on {described}: {written['users']:,} users x top-{args.k} in "
          f"{written['seconds']:.1f} s ({result['users_per_second']:,.0f} users/s; target < 10 s); "
          f"one user at a time: {naive_per_user * 1000:.1f} ms/user, {result['naive_loop_seconds_all_users_estimated']:.0f} s "
          f"for all ({result['speedup_over_naive_loop']:.0f}x slower)")
    print(f"{'top-10 latency, median ms':<28}{'PyTorch':>10}{'ONNX Runtime':>14}")
    for label, row in latency.items(): print(f"{label:<28}{row['pytorch_ms']:>10.2f}{row['onnxruntime_ms']:>14.2f}")
    print("wrote", out)


if __name__ == "__main__":
    main()
