"""The `recbook` command line.

This is the one module that is not exported from a notebook: it only wires the chapters' functions to
sub-commands, importing each chapter lazily so that `recbook data stats` does not pay for torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATASET_HELP = "beauty (shipped), beauty-tiny (derived), or a dataset directory/file"


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    parser.add_argument("--k-core", type=int, default=5, help="minimum interactions per user and item (default 5)")


def data_stats(args) -> None:
    from recbook.data import dataset_stats, load_dataset, stats_table

    stats = dataset_stats(load_dataset(args.dataset, k=args.k_core))
    print(json.dumps(stats, indent=1) if args.json else stats_table(stats).to_string())


def prepare(args) -> None:
    from recbook.data import load_dataset, write_dataset

    ds = load_dataset(args.dataset, k=args.k_core)
    for path in write_dataset(ds, args.out):
        print(path)
    print(ds)


def quickstart(args) -> None:
    from recbook.data import atomic_write, dataset_stats, load_dataset, save_overview_plots, stats_table

    out = Path(args.out)
    ds = load_dataset(args.dataset)
    stats = dataset_stats(ds)
    print(f"== {ds}\n")
    print(stats_table(stats).to_string())
    plots = save_overview_plots(ds, out / "plots")
    with atomic_write(out / "data_summary.json") as f:
        json.dump(stats, f, indent=1)
    print(f"\nwrote {out / 'data_summary.json'}")
    for path in plots:
        print(f"wrote {path}")


def pretrain(args) -> None:
    from recbook.data import load_dataset
    from recbook.pretraining import FULL_CONFIG, SMOKE_CONFIG, run_text_pretraining

    ds = load_dataset(args.dataset)
    history = run_text_pretraining(ds, args.out, SMOKE_CONFIG if args.smoke else FULL_CONFIG)
    print(history.round(4).to_string())
    print(f"wrote {args.out}")


def evaluate(args) -> None:
    from recbook.data import leave_one_out, load_dataset
    from recbook.evaluation import evaluate_recommender, fit_baseline, load_recommender

    ds = load_dataset(args.dataset)
    split = leave_one_out(ds)
    if args.model in ("pop", "itemknn"):
        model = fit_baseline(args.model, split, args.split, ds.n_items)
    else:
        model = load_recommender(args.model)  # evaluate_recommender checks that it fits this dataset's catalogue
    report = {"model": args.model, "dataset": ds.name,
              **evaluate_recommender(model, ds, split, args.split, k=args.k, seed=args.seed)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        width = max(map(len, report))
        for name, value in report.items():
            print(f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recbook", description="E-commerce user-interest modelling with BERT-style "
                                     "transformers: the recbook course's library.")
    parser.add_argument("--version", action="version", version=f"recbook {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="print a dataset's statistics")
    _add_dataset(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=data_stats)

    prep = commands.add_parser("prepare", help="preprocess a dataset and write it in the recbook schema")
    _add_dataset(prep)
    prep.add_argument("--out", required=True, help="output directory")
    prep.set_defaults(func=prepare)

    pre = commands.add_parser("pretrain", help="train a WordPiece tokenizer and a small text BERT on item texts")
    pre.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    pre.add_argument("--out", required=True, help="model directory to write (save_pretrained format)")
    pre.add_argument("--smoke", action="store_true", help="the small configuration: seconds on a CPU")
    pre.set_defaults(func=pretrain)

    ev = commands.add_parser("evaluate", help="every evaluation metric for a baseline or a saved model")
    ev.add_argument("--model", required=True, help="pop, itemknn, or a model directory (with recommender.json)")
    ev.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    ev.add_argument("--k", type=int, default=10, help="list length for the @K metrics (default 10)")
    ev.add_argument("--split", choices=["valid", "test"], default="test", help="which held-out item (default test)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sampled negatives and impressions")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=evaluate)

    quick = commands.add_parser("quickstart", help="the main job on the shipped data: summary and plots")
    quick.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    quick.add_argument("--out", default="recbook-output", help="where to write results (default recbook-output)")
    quick.set_defaults(func=quickstart)
    return parser


def _version() -> str:
    from recbook import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from recbook.data import DatasetError

    try:
        args.func(args)
    except (DatasetError, ValueError) as error:  # DatasetError, EvaluationError: bad input, said plainly
        print(f"recbook: error: {error}", file=sys.stderr)
        return 2
    return 0
