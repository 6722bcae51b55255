"""Benchmark: how much of a training epoch is the full softmax alone? The floor under chapter 4's epoch times.

Issue 15 asks for SASRec at 8 s per epoch and the two-tower model at 12 s on the 2-core CPU, with validation accuracy
unchanged, i.e. with the full softmax over Beauty's 12,101 items that chapter 4 chose on validation. This benchmark
times, for every batch of one epoch of `fit`'s own batching (whole training sequences, batch 64, similar lengths
together), the full-softmax loss and its backward pass alone: the real positions' user vectors scored against every
item (`TwoTower.logits`, `full_softmax_loss`, 64-d vectors, as in training) and the gradients back to both, on random
vectors — no transformer, no item tower, no optimiser. In the same run it times one whole training epoch of each
model with chapter 4's whole-history settings (`FULL_TRAINING`), so the floor is read as a share of an epoch on the
same machine at the same moment, and times the loss's three matrix products alone (scores and the two gradients,
into buffers made beforehand): the arithmetic no exact implementation can skip. Prints a table and writes bench/results/softmax-floor-<device>.json.

    python bench/bench_softmax_floor.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device
from recbook.pretraining import left_padded
from recbook.towers import full_softmax_loss
from recbook.training import FULL_TOWERS, FULL_TRAINING, build_network, epoch_batches, fit, next_item_batch

TARGETS = {"sasrec": 8.0, "twotower": 12.0}  # seconds per epoch on the 2-core CPU (issue 15)


def softmax_seconds(network, split, device, seed: int = 0, products_only: bool = False) -> float:
    """One epoch's full-softmax loss + backward, batch by batch as `fit` makes them, on random vectors. With
    `products_only`, just its three matrix products (scores, and the two gradients) into buffers made beforehand: the
    arithmetic that no implementation of the exact loss can skip."""
    sequences = [s for s in split.train if len(s) > 1]
    max_length = network.config.max_length
    lengths = np.array([min(len(s) - 1, max_length) for s in sequences])
    padded = left_padded(sequences, max_length + 1)
    generator = torch.Generator().manual_seed(seed)
    items = torch.randn(network.n_items, network.config.hidden, generator=generator).to(device).requires_grad_()
    batches = [next_item_batch(padded, rows)[1] for rows in epoch_batches(lengths, FULL_TRAINING.batch_size, seed, 1)]
    positions = [targets.flatten()[targets.flatten() != 0].to(device) for targets in batches]
    users = [torch.randn(len(t), network.config.hidden, generator=generator).to(device).requires_grad_()
             for t in positions]
    if products_only:
        with torch.no_grad():
            buffers = [(torch.empty(len(u), len(items), device=device), torch.empty_like(u)) for u in users]
            item_gradient = torch.empty_like(items)
            if device.type == "cuda": torch.cuda.synchronize()
            start = time.perf_counter()
            for u, (scores, user_gradient) in zip(users, buffers):
                torch.matmul(u, items.T, out=scores)
                torch.matmul(scores, items, out=user_gradient)
                torch.matmul(scores.T, u, out=item_gradient)
            if device.type == "cuda": torch.cuda.synchronize()
            return time.perf_counter() - start
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for user_vectors, targets in zip(users, positions):
        full_softmax_loss(network.logits(user_vectors, items), targets).backward()
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timings of the softmax floor (the median is kept)")
    args = parser.parse_args()
    device = default_device()
    ds = load_dataset("beauty")
    split = leave_one_out(ds)
    rows = {}
    for kind in ("sasrec", "twotower"):
        towers = replace(FULL_TOWERS, text_encoder="minilm" if kind == "twotower" else None)
        network = build_network(kind, ds, towers, device, seed=0)
        floor = statistics.median(softmax_seconds(network, split, device) for _ in range(args.repeats))
        products = statistics.median(softmax_seconds(network, split, device, products_only=True)
                                     for _ in range(args.repeats))
        history, _ = fit(network, split, replace(FULL_TRAINING, epochs=1), device=device)
        epoch = float(history["seconds"].iloc[0])
        rows[kind] = {"softmax_seconds_per_epoch": floor, "products_seconds_per_epoch": products,
                      "epoch_seconds": epoch, "softmax_share": floor / epoch,
                      "target_seconds": TARGETS[kind], "floor_above_target": floor > TARGETS[kind]}
    print(f"One training epoch on full Beauty ({len(split.train):,} users, {ds.n_items:,} items, whole histories, "
          f"batch {FULL_TRAINING.batch_size}), {describe(device)}")
    print(f"{'model':<10}{'full softmax alone, s':>24}{'its 3 products, s':>19}{'whole epoch, s':>16}{'share':>8}"
          f"{'target, s':>11}")
    for kind, row in rows.items():
        print(f"{kind:<10}{row['softmax_seconds_per_epoch']:>24.2f}{row['products_seconds_per_epoch']:>19.2f}"
              f"{row['epoch_seconds']:>16.2f}{row['softmax_share']:>8.0%}{row['target_seconds']:>11.1f}")
    record = {"benchmark": "full-softmax floor of a training epoch", "dataset": "beauty", "repeats": args.repeats,
              "batch_size": FULL_TRAINING.batch_size, "hidden": FULL_TOWERS.hidden, "rows": rows,
              **provenance(device)}
    out = RESULTS / f"softmax-floor-{device.type}.json"
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
