"""Are the training defaults tuned to Beauty alone? SASRec with `recbook train`'s defaults against ItemKNN on other shops.

Issue 12 asks that a reader who brings their own data gets a good model from the defaults: above ItemKNN, a strong
baseline on small sparse catalogues once its recency decay is chosen on validation. Amazon Sports and Toys (the
S3-Rec benchmark files, item ids only, `../shared/data/amazon-sports-toys/`) are the test: larger and sparser than
Beauty, and never used to choose anything. For each dataset this trains SASRec exactly as `recbook train --model
sasrec` does (chapter 4's `default_settings("sasrec")`, seed 0), fits MostPopular and ItemKNN (its decay chosen on
validation), scores all three on test by full ranking, compares SASRec with ItemKNN user by user, and writes one
record per dataset to results/defaults-elsewhere/. Runs resume from their checkpoints under --work.

    python bench/defaults_elsewhere.py [--datasets Toys_and_Games Sports_and_Outdoors] [--data DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchlib import provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device, evaluate_full, fit_baseline
from recbook.training import (RUN_RECORD, dataset_fingerprint, default_settings, itemknn_on_validation,
                              library_code_hash, paired_comparison, read_run_record, train_model)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["Toys_and_Games", "Sports_and_Outdoors"])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-sports-toys"))
    parser.add_argument("--work", default="/tmp/recbook-runs/defaults-elsewhere")
    parser.add_argument("--out", default=str(ROOT / "results" / "defaults-elsewhere"))
    args = parser.parse_args()
    device = default_device()
    for name in args.datasets:
        ds = load_dataset(Path(args.data) / f"{name}.txt.gz")
        split = leave_one_out(ds)
        started = time.perf_counter()
        train_model("sasrec", ds, Path(args.work) / name, *default_settings("sasrec"), device, log=False)
        record = read_run_record(Path(args.work) / name / RUN_RECORD)
        sasrec_seconds = time.perf_counter() - started
        knn, knn_valid = itemknn_on_validation(split, ds.n_items, device=device)
        rows = {"SASRec (recbook train defaults)": {**{k: v for k, v in record["metrics"].items() if k.startswith("test")},
                                                   "valid NDCG@10": record["metrics"]["valid NDCG@10"],
                                                   "best_epoch": record["metrics"]["best_epoch"],
                                                   "epochs_run": record["metrics"]["epochs_run"]}}
        ranks = {"SASRec (recbook train defaults)": record["test_ranks"]}
        for label, baseline in [("MostPopular", fit_baseline("pop", split, "test", ds.n_items)),
                                (f"ItemKNN (decay {knn.recency_decay}, chosen on validation)", knn)]:
            metrics, ranks[label] = evaluate_full(baseline, split, "test", ks=(10, 20), device=device, return_ranks=True)
            rows[label] = {f"test {k}": v for k, v in metrics.items() if k != "users"}
        knn_label = next(label for label in rows if label.startswith("ItemKNN"))
        result = {"dataset": name, "users": len(ds.sequences), "items": ds.n_items,
                  "fingerprint": dataset_fingerprint(ds), "library_code_sha256": library_code_hash(),
                  "run_record_code_sha256": record["code_sha256"], "towers": record["model_settings"],
                  "training": record["training"], "itemknn_valid_NDCG@10_by_decay": knn_valid, "models": rows,
                  "sasrec_vs_itemknn": paired_comparison(ranks["SASRec (recbook train defaults)"], ranks[knn_label]),
                  "sasrec_seconds": round(sasrec_seconds, 1), **provenance(device)}
        out = Path(args.out) / f"{name}.json"
        with atomic_write(out) as f: json.dump(result, f, indent=1, default=float)
        print(name, json.dumps({label: {k: round(v, 4) for k, v in row.items() if k in ("test HR@10", "test NDCG@10")}
                                for label, row in rows.items()}), "->", out)


if __name__ == "__main__":
    main()
