"""Benchmark: the book's SASRec epoch beside RecBole 1.2.1's, on the same device and split, in the same run.

Chapter 4 quotes RecBole's seconds per epoch; issue 15 asks for the speed-up to be measured side by side instead of
against a constant. When RecBole is installed —

    pip install --no-deps recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2 colorama tabulate

— this writes the dataset's interactions as RecBole atomic files, with each item's position in its user's history as
the time field (real timestamps have same-day ties), so that RecBole's leave-one-out split (`LS: valid_and_test`,
ordered by time, grouped by user) is the book's. It trains RecBole's SASRec with the settings that gave test NDCG@10
.0556 on Beauty (hidden 64, inner 256, 2 layers, 2 heads, dropout 0.5, full-softmax CE loss, batch 256, Adam at
1e-3, at most 50 items), timing each training epoch alone; then the book's SASRec for as many epochs with chapter 4's
defaults (every prefix an example, as RecBole does) and with whole histories (one example per user). RecBole's
numpy-2 incompatibilities are patched here, not in RecBole. Each of the three is measured in a fresh process of its
own, so that none inherits another's threads, allocator or library settings. Prints the seconds per epoch and the
speed-ups, and writes bench/results/recbole-<device>.json; without RecBole it says so and writes nothing.

    python bench/bench_recbole.py [--epochs 2] [--dataset beauty]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchlib import RESULTS, describe, provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device
from recbook.training import FULL_TOWERS, FULL_TRAINING, build_network, default_settings, fit

RECBOLE_SETTINGS = {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.5,
                    "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
                    "loss_type": "CE", "train_neg_sample_args": None, "train_batch_size": 256, "learning_rate": 1e-3,
                    "MAX_ITEM_LIST_LENGTH": 50}


def write_atomic_files(ds, folder: Path) -> None:
    "The dataset's histories as RecBole's `<name>/<name>.inter`: user, item and the item's position as its time."
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    rows += [f"{user}\t{item}\t{position}" for user, sequence in enumerate(ds.sequences)
             for position, item in enumerate(sequence)]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "data.inter").write_text("\n".join(rows) + "\n")


def recbole_epochs(dataset: str, epochs: int) -> list[float]:
    "Seconds of each of RecBole SASRec's first `epochs` training epochs (evaluation not included)."
    with tempfile.TemporaryDirectory(prefix="recbole-") as folder:
        os.chdir(folder)  # RecBole writes its logs under the working directory (this process is RecBole's alone)
        return _recbole_epochs(load_dataset(dataset), epochs, default_device(), Path(folder))


def _recbole_epochs(ds, epochs: int, device: torch.device, folder: Path) -> list[float]:
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, name): setattr(np, name, value)  # removed in numpy 2; RecBole's config reads them
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    write_atomic_files(ds, folder)
    settings = {**RECBOLE_SETTINGS, "data_path": str(folder), "checkpoint_dir": str(folder / "saved"),
                "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
                "use_gpu": device.type == "cuda", "gpu_id": "0", "seed": 0, "reproducibility": True,
                "show_progress": False, "state": "WARNING", "epochs": epochs, "worker": 0}
    config = Config(model="SASRec", dataset="data", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    seconds = []
    for epoch in range(epochs):
        if device.type == "cuda": torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch_idx=epoch, show_progress=False)
        if device.type == "cuda": torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def book_epochs(dataset: str, epochs: int, prefixes: bool) -> list[float]:
    "Seconds of each of the book's SASRec training epochs: chapter 4's defaults, or whole histories."
    ds, device = load_dataset(dataset), default_device()
    towers, training = default_settings("sasrec") if prefixes else (FULL_TOWERS, FULL_TRAINING)
    network = build_network("sasrec", ds, towers, device, seed=0)
    history, _ = fit(network, leave_one_out(ds), replace(training, epochs=epochs, patience=epochs), device=device)
    return history["seconds"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dataset", default="beauty")
    args = parser.parse_args()
    if importlib.util.find_spec("recbole") is None:
        print("RecBole is not installed: nothing to compare (see this script's docstring for the install line)")
        return
    device = default_device()
    ds = load_dataset(args.dataset)  # relative dataset paths are read before RecBole's process changes folder
    args.dataset = str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset
    runs = {"RecBole 1.2.1 SASRec (prefixes)": (recbole_epochs, ()),
            "recbook SASRec, chapter 4's defaults (prefixes)": (book_epochs, (True,)),
            "recbook SASRec, whole histories": (book_epochs, (False,))}
    seconds = {}
    for name, (measure, extra) in runs.items():  # each in a fresh process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            seconds[name] = pool.submit(measure, args.dataset, args.epochs, *extra).result()
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    recbole = medians["RecBole 1.2.1 SASRec (prefixes)"]
    print(f"SASRec training epochs on {ds.name} ({len(ds.sequences):,} users, {ds.n_items:,} items), {describe(device)}, "
          f"median of {args.epochs}")
    print(f"{'':<52}{'s / epoch':>10}{'RecBole / this':>16}")
    for name, median in medians.items():
        print(f"{name:<52}{median:>10.2f}{recbole / median:>15.1f}x")
    record = {"benchmark": "SASRec epoch, recbook beside RecBole", "dataset": ds.name, "epochs": args.epochs,
              "recbole_settings": RECBOLE_SETTINGS, "seconds": seconds, "median_seconds": medians,
              "speedup_vs_recbole": {name: recbole / median for name, median in medians.items()},
              "recbole_version": importlib.metadata.version("recbole"), **provenance(device)}
    out = RESULTS / f"recbole-{device.type}.json" if args.dataset == "beauty" else \
        RESULTS / f"recbole-{Path(ds.name).name}-{device.type}.json"
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
