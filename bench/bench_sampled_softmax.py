"""Benchmark: seconds per training step of the two-tower model against catalogue size, sampled vs full softmax.

Beauty's training sequences are spread over synthetic catalogues of 12,101 (Beauty's own size), 100,000 and
1,000,000 items (each Beauty item id mapped to a random id of the larger catalogue; the other items exist, with
random text vectors, but nobody bought them). For each size the book's training loop (`recbook.training.fit`) runs
the default two-tower model (MiniLM-sized 384-d text vectors + IDs) with the sampled softmax (the batch's targets +
256 random items) and, up to 100,000 items, with the full softmax, the baseline in the same run. A step's time is
the difference between a run of `--steps` steps and a run of a few steps, divided by the extra steps, after a first,
uncounted run (and, for the first size, after a whole uncounted measurement that warms the device): neither setup
nor warm-up is counted. All rows time the same batches. Target (issue 15): the sampled
step's time flat in catalogue size. Prints a table and writes bench/results/sampled-softmax-<device>.json.

    python bench/bench_sampled_softmax.py [--sizes 12101 100000 1000000] [--steps 45] [--full-up-to 100000] [--no-ids]

With --no-ids the item tower is text only (no ID embedding table, whose dense gradient and AdamW update grow with
the catalogue) and the record is sampled-softmax-no-ids-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import Split, atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device
from recbook.towers import TwoTower
from recbook.training import FULL_TOWERS, FULL_TRAINING, Interrupted, fit

WARM_STEPS = 5


def spread(split: Split, n_items: int, n_catalogue: int, seed: int = 0) -> Split:
    "The same sequences with item ids 1..n_items mapped to distinct random ids of a catalogue of `n_catalogue`."
    ids = np.zeros(n_items + 1, dtype=np.int64)
    ids[1:] = np.random.default_rng(seed).choice(np.arange(1, n_catalogue + 1), size=n_items, replace=False)
    parts = [[ids[s] for s in part] for part in (split.train, split.valid, split.test)]
    return Split(*parts, kind=split.kind)


def seconds_per_step(network: TwoTower, split: Split, loss: str, steps: int, device) -> float:
    "Time of `steps` steps of the book's loop less that of WARM_STEPS, per extra step (setup and warm-up cancel)."
    state = {k: v.clone() for k, v in network.state_dict().items()}
    times = []
    for n in (WARM_STEPS, WARM_STEPS, steps):  # the first run warms up (allocator, kernels) and is not counted
        network.load_state_dict(state)
        start = time.perf_counter()
        try:
            fit(network, split, replace(FULL_TRAINING, loss=loss, epochs=1), device=device, stop_after_steps=n)
        except Interrupted:
            pass
        if device.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (times[2] - times[1]) / (steps - WARM_STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12_101, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--no-ids", action="store_true", help="a text-only item tower: no ID embedding table")
    parser.add_argument("--full-up-to", type=int, default=100_000, help="largest catalogue for the full-softmax row")
    args = parser.parse_args()
    if args.steps <= WARM_STEPS: parser.error(f"--steps must exceed the {WARM_STEPS} steps that are not counted")
    device = default_device()
    ds = load_dataset("beauty")
    split = leave_one_out(ds)
    towers = replace(FULL_TOWERS, text_encoder="synthetic", use_ids=not args.no_ids)
    rows = []
    for size in args.sizes:
        catalogue = spread(split, ds.n_items, size)
        text = np.random.default_rng(1).standard_normal((size + 1, 384)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        text[0] = 0
        torch.manual_seed(0)
        network = TwoTower(size, towers, text)
        del text
        row = {"items": size}
        if size == args.sizes[0]:  # the device's first steps (library loading, kernel choice) would count for one row
            seconds_per_step(network, catalogue, "sampled", args.steps, device)
        for loss in ("sampled", "full"):
            if loss == "full" and size > args.full_up_to: continue
            row[f"{loss} s/step"] = seconds_per_step(network, catalogue, loss, args.steps, device)
            print(size, loss, round(row[f"{loss} s/step"], 4), flush=True)
        rows.append(row)
        del network
    base = rows[0]["sampled s/step"]
    for row in rows: row["sampled vs smallest"] = row["sampled s/step"] / base
    print(f"\nseconds per training step on {describe(device)} (batch {FULL_TRAINING.batch_size} users, Beauty's sequences)")
    print(f"{'items':>10} {'sampled':>10} {'full':>10} {'sampled/smallest':>17}")
    for row in rows:
        full = f"{row['full s/step']:.4f}" if "full s/step" in row else "-"
        print(f"{row['items']:>10,} {row['sampled s/step']:>10.4f} {full:>10} {row['sampled vs smallest']:>17.2f}")
    record = {"benchmark": "sampled vs full softmax step time against catalogue size", "steps": args.steps,
              "towers": asdict(towers),
              "training": {loss: asdict(replace(FULL_TRAINING, loss=loss, epochs=1)) for loss in ("sampled", "full")},
              "rows": rows, **provenance(device)}
    path = RESULTS / f"sampled-softmax{'-no-ids' if args.no_ids else ''}-{device.type}.json"
    with atomic_write(path) as f: json.dump(record, f, indent=1)
    print("record:", path)


if __name__ == "__main__":
    main()
