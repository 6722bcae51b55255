"""Benchmark: full Beauty training of the ID-only SASRec and the book's two-tower model, side by side in one run.

For each model: seconds per epoch, epochs to the best validation NDCG@10, wall time to that epoch, peak memory,
test metrics at that epoch, and the first training time at which test NDCG@10 reached RecBole's SASRec
(0.0556, measured on one H100 by issue 5's author). RecBole's own epoch times (17.4 s on an H100, 214 s on the
2-core CPU) are the baseline the speed-up is computed against. Writes bench/results/training-{device}.json.

    python bench/bench_training.py [--models sasrec twotower] [--epochs 50] [--seed 0] [--text-encoder minilm]
                                   [--learning-rate 1e-3] [--batch-size 64] [--dropout 0.3]

The two-tower model reads the catalogue's text with `--text-encoder` (default minilm, the PyPI-shipped sentence
encoder); SASRec is the ID-only baseline trained by the same loop in the same run.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, replace

import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device, evaluate_full
from recbook.towers import TwoTowerRecommender
from recbook.training import FULL_TOWERS, FULL_TRAINING, build_network, fit

RECBOLE = {"test NDCG@10": 0.0556, "test HR@10": 0.0922, "seconds_per_epoch": {"cuda": 17.4, "cpu": 214.0},
           "source": "RecBole 1.2.1 SASRec, full cross-entropy, hidden 64, 2 layers, max length 50, batch 256 (issue 5)"}


def peak_memory_mb(device) -> float:
    if device.type == "cuda": return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident set, in MiB


def run(kind: str, ds, split, towers, training, device) -> dict:
    network = build_network(kind, ds, towers, device, seed=training.seed)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    clock = {"train": 0.0}

    def test_each_epoch(net, row):  # the test metric per epoch, to find when RecBole's NDCG was first reached
        clock["train"] += row["seconds"]
        row["train seconds so far"] = clock["train"]
        row["test NDCG@10"] = evaluate_full(TwoTowerRecommender(net), split, "test", ks=(10,), device=device)["NDCG@10"]

    started = time.perf_counter()
    history, best = fit(network, split, training, device=device, on_epoch=test_each_epoch)
    wall = time.perf_counter() - started
    test = evaluate_full(TwoTowerRecommender(network), split, "test", ks=(10,), device=device)
    reached = history[history["test NDCG@10"] >= RECBOLE["test NDCG@10"]]
    return {"model": kind, "epochs_run": len(history), "best_epoch": int(best),
            "seconds_per_epoch_median": float(history["seconds"].median()),
            "train_seconds_to_best": float(history.loc[:best, "seconds"].sum()),
            "wall_seconds_total": wall, "peak_memory_mb": peak_memory_mb(device),
            "train_seconds_to_recbole_ndcg": float(reached["train seconds so far"].iloc[0]) if len(reached) else None,
            **{f"test {k}": v for k, v in test.items() if k != "users"},
            "history": history.reset_index().to_dict(orient="list")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sasrec", "twotower"])
    parser.add_argument("--epochs", type=int, default=FULL_TRAINING.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-encoder", default="minilm", help="the two-tower model's text encoder: minilm or a `recbook pretrain` directory")
    parser.add_argument("--learning-rate", type=float, default=FULL_TRAINING.learning_rate)
    parser.add_argument("--batch-size", type=int, default=FULL_TRAINING.batch_size)
    parser.add_argument("--dropout", type=float, default=FULL_TOWERS.dropout)
    args = parser.parse_args()
    device = default_device()
    ds = load_dataset("beauty")
    split = leave_one_out(ds)
    training = replace(FULL_TRAINING, epochs=args.epochs, seed=args.seed, learning_rate=args.learning_rate,
                       batch_size=args.batch_size)
    towers = replace(FULL_TOWERS, dropout=args.dropout)
    text_towers = replace(towers, text_encoder=args.text_encoder)
    results = [run(kind, ds, split, text_towers if kind == "twotower" else towers, training, device)
               for kind in args.models]
    recbole_epoch = RECBOLE["seconds_per_epoch"].get(device.type)
    print(f"Full Beauty training, {describe(device)}; RecBole SASRec: {recbole_epoch} s/epoch, test NDCG@10 0.0556")
    header = f"{'model':<10}{'s/epoch':>9}{'vs RecBole':>11}{'best ep':>8}{'s to best':>10}{'s to 0.0556':>12}{'NDCG@10':>9}{'HR@10':>8}{'peak MiB':>9}"
    print(header)
    for r in results:
        to_recbole = r["train_seconds_to_recbole_ndcg"]
        print(f"{r['model']:<10}{r['seconds_per_epoch_median']:>9.1f}{recbole_epoch / r['seconds_per_epoch_median']:>10.1f}x"
              f"{r['best_epoch']:>8}{r['train_seconds_to_best']:>10.0f}{'-' if to_recbole is None else f'{to_recbole:.0f}':>12}"
              f"{r['test NDCG@10']:>9.4f}{r['test HR@10']:>8.4f}{r['peak_memory_mb']:>9.0f}")
    record = {"benchmark": "full Beauty training", "dataset": "beauty",
              "towers": asdict(text_towers), "training": asdict(training),
              "results": results, "recbole": RECBOLE,
              "speedup_per_epoch_vs_recbole": {r["model"]: recbole_epoch / r["seconds_per_epoch_median"] for r in results},
              **provenance(device)}
    out = RESULTS / f"training-{device.type}.json"
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
