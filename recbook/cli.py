"""The `recbook` command line.

This is the one module that is not exported from a notebook: it only wires the chapters' functions to
sub-commands, importing each chapter lazily so that `recbook data stats` does not pay for torch.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
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
    "The main job on the shipped data: data summary -> pretrained text encoder -> two-tower training -> evaluation."
    from recbook.data import atomic_write, dataset_stats, load_dataset, save_overview_plots, stats_table

    started = time.perf_counter()  # the record's total is the whole command's, data step included
    out = Path(args.out)
    ds = load_dataset(args.dataset)
    stats = dataset_stats(ds)
    print(f"== 1. data: {ds}\n")
    print(stats_table(stats).to_string())
    plots = save_overview_plots(ds, out / "plots")
    with atomic_write(out / "data_summary.json") as f:
        json.dump(stats, f, indent=1)
    print(f"\nwrote {out / 'data_summary.json'}")
    for path in plots:
        print(f"wrote {path}")
    if args.data_only: return

    import torch

    from recbook.data import leave_one_out
    from recbook.evaluation import default_device, evaluate_full, fit_baseline, load_recommender
    from recbook.towers import catalogue_text_vectors
    from recbook.training import (FULL_TOWERS, FULL_TRAINING, QUICKSTART_TRAINING, cold_start_metrics,
                                  itemknn_on_validation, library_code_hash, run_provenance, train_model)

    seconds = {"data": round(time.perf_counter() - started, 1)}
    device = default_device()
    towers = replace(FULL_TOWERS, text_encoder="minilm")
    # a GPU trains chapter 4's full configuration in about a minute; a CPU gets the shorter one, chosen to fit 10 minutes
    training = FULL_TRAINING if device.type == "cuda" else QUICKSTART_TRAINING
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the weights load in a second: no bar for it in the job's output
    print(f"\n== 2. pretrained language model: MiniLM (a 6-layer BERT sentence encoder) reads {ds.n_items:,} item texts")
    with torch.inference_mode():  # encoding only: no autograd bookkeeping (the vectors are the same numbers)
        vectors = catalogue_text_vectors(ds.items["text"].tolist(), "minilm", device=device)
    seconds["text vectors"] = round(time.perf_counter() - started - seconds["data"], 1)
    print(f"{vectors.shape[0] - 1:,} text vectors of {vectors.shape[1]} dimensions, cached for the next run "
          f"({seconds['text vectors']:.0f} s)")

    print(f"\n== 3. training: the two-tower model (MiniLM text + item IDs, causal transformer user tower), "
          f"at most {training.epochs} epochs, {training.loss} softmax, best validation epoch kept")
    model_dir = out / "model"
    mark = time.perf_counter()
    train_model("twotower", ds, model_dir, towers, training, device=device, progress=True, log=False)
    seconds["training"] = round(time.perf_counter() - mark, 1)
    print(f"wrote {model_dir} ({seconds['training']:.0f} s)")

    print("\n== 4. evaluation: test split, full ranking over all items, history removed")
    mark = time.perf_counter()
    split = leave_one_out(ds)
    knn, knn_valid = itemknn_on_validation(split, ds.n_items, device=device)
    rows = {}
    for name, model in [("MostPopular", fit_baseline("pop", split, "test", ds.n_items)),
                        (f"ItemKNN (decay {knn.recency_decay}, chosen on validation)", knn),
                        ("two-tower (this run)", load_recommender(model_dir))]:
        metrics, ranks = evaluate_full(model, split, "test", ks=(10,), device=device, return_ranks=True)
        rows[name] = {**{k: v for k, v in metrics.items() if k != "users"}, **cold_start_metrics(model, split, ranks=ranks)}
    seconds["evaluation"] = round(time.perf_counter() - mark, 1)
    columns = ["HR@10", "NDCG@10", "MRR@10", "cold NDCG@10"]
    width = max(map(len, rows)) + 2
    print(f"{'model':<{width}}" + "".join(f"{c:>14}" for c in columns))
    for name, metrics in rows.items():
        print(f"{name:<{width}}" + "".join(f"{metrics[c]:>14.4f}" for c in columns))
    seconds["total"] = round(time.perf_counter() - started, 1)
    ours, knn_row = rows["two-tower (this run)"], rows[next(n for n in rows if n.startswith("ItemKNN"))]
    beats = ours["NDCG@10"] > knn_row["NDCG@10"] and ours["HR@10"] > knn_row["HR@10"]
    print(f"\nthe two-tower model is {'above' if beats else 'NOT above'} ItemKNN on both test NDCG@10 and HR@10; "
          f"{seconds['total']:.0f} s in all on {run_provenance(device)['device']}")
    results = {"format": 1, "dataset": ds.name, "seconds": seconds, "model": str(model_dir),
               "towers": vars(towers), "training": vars(training), "itemknn_validation": knn_valid,
               "test": rows, "two_tower_above_itemknn": beats, "code_sha256": library_code_hash(),
               **run_provenance(device), "torch_threads": torch.get_num_threads()}
    with atomic_write(out / "results.json") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"wrote {out / 'results.json'}; serve the model with: recbook serve --model {model_dir}")


def pretrain(args) -> None:
    from recbook.data import load_dataset
    from recbook.pretraining import FULL_CONFIG, SMOKE_CONFIG, run_text_pretraining

    ds = load_dataset(args.dataset)
    history = run_text_pretraining(ds, args.out, SMOKE_CONFIG if args.smoke else FULL_CONFIG)
    print(history.round(4).to_string())
    print(f"wrote {args.out}")


def _refuse_another_runs_checkpoint(out: Path, kind: str, towers, training, init_from) -> None:
    """`train --out DIR` resumes DIR's checkpoint: only if that checkpoint is of this very run (same model, settings,
    seed and code), else its weights would be reported under another configuration. The request is noted in DIR."""
    from dataclasses import asdict

    from recbook.training import library_code_hash

    request = {"model": kind, "towers": asdict(towers), "training": asdict(training),
               "init_from": str(init_from) if init_from else None, "code_sha256": library_code_hash()}
    marker = out / "train-request.json"
    if (out / "checkpoint.pt").is_file() and marker.is_file() and json.loads(marker.read_text()) != request:
        raise ValueError(f"{out} holds the checkpoint of another run (other model, settings, seed or code, see "
                         f"{marker}); give another --out, or delete {out} to start afresh")
    from recbook.data import atomic_write

    with atomic_write(marker) as f: json.dump(request, f, indent=1)


def train(args) -> None:
    from recbook.data import load_dataset

    from recbook.training import default_settings, library_code_hash, load_train_config, train_model

    library_code_hash()  # fixed now, before training: the run record names the code that was loaded
    towers, training = default_settings(args.model, args.smoke)
    if args.config: towers, training = load_train_config(args.config, towers, training)
    if args.text_encoder: towers = replace(towers, text_encoder=args.text_encoder)
    if args.epochs: training = replace(training, epochs=args.epochs)
    if args.seed is not None: training = replace(training, seed=args.seed)
    if args.dp_epsilon is not None: return _train_private(args)
    if args.adapt not in (None, "frozen"): return _train_adapted(args, towers, training)
    _refuse_another_runs_checkpoint(Path(args.out), args.model, towers, training, args.init_from)
    metrics = train_model(args.model, load_dataset(args.dataset), args.out, towers, training, progress=args.progress,
                          init_from=args.init_from)
    width = max(map(len, metrics))
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}")
    print(f"wrote {args.out}")


def _train_adapted(args, towers, training) -> None:
    "`train --adapt lora|full`: chapter 4's model with the encoder frozen, then a few epochs with it adapted."
    from recbook.adaptation import ADAPT_TRAINING, ALL_LINEAR_MODULES, ATTENTION_MODULES, AdaptConfig, train_adapted
    from recbook.data import leave_one_out, load_dataset

    if args.model != "twotower": raise ValueError(f"--adapt {args.adapt} adapts a text encoder: it needs --model twotower")
    adapt = AdaptConfig(args.adapt, top_layers=args.adapt_layers, rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                        target_modules=ALL_LINEAR_MODULES if args.lora_targets == "all" else ATTENTION_MODULES)
    adapt_training = replace(ADAPT_TRAINING, seed=training.seed)
    if args.smoke: adapt_training = replace(adapt_training, epochs=1, warmup_steps=2, patience=1)
    if args.adapt_epochs: adapt_training = replace(adapt_training, epochs=args.adapt_epochs, patience=args.adapt_epochs)
    if not towers.text_encoder: towers = replace(towers, text_encoder="minilm")
    ds = load_dataset(args.dataset)
    result = train_adapted(ds, leave_one_out(ds), args.out, towers, adapt, training, adapt_training,
                           progress=args.progress)
    print(f"stage 1 (encoder frozen): best epoch {result['base']['best_epoch']}, "
          f"valid NDCG@10 {result['base']['valid NDCG@10']:.4f}")
    print(f"stage 2 ({args.adapt}): best epoch {result['best_epoch']}, {result['seconds_per_epoch']:.1f} s per epoch, "
          f"{result['trainable_encoder_parameters']:,} trainable encoder parameters")
    for name, value in result["test"].items():
        print(f"test {name:<10} {value:.4f}" if isinstance(value, float) else f"test {name:<10} {value}")
    print(f"wrote {args.out} (an ordinary two-tower model directory: recbook serve reads it)")


def _train_private(args) -> None:
    "`train --dp-epsilon E`: chapter 8's model (text, no item IDs) trained with DP-SGD on every user."
    from recbook.privacy import train_private_model

    if args.model != "twotower": raise ValueError("--dp-epsilon trains chapter 8's private model: it needs --model twotower")
    # a start from weights trained without DP, or settings the private model does not read, would void or fake the guarantee
    ignored = [flag for flag, value in (("--adapt", args.adapt not in (None, "frozen")), ("--init-from", args.init_from),
                                        ("--config", args.config), ("--text-encoder", args.text_encoder)) if value]
    if ignored: raise ValueError(f"--dp-epsilon cannot be combined with {', '.join(ignored)}: the private model trains "
                                 "from scratch with chapter 8's settings")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty; --dp-epsilon writes a new model directory (give an empty or new --out)")
    say = (lambda line: print(line, flush=True)) if args.progress else None
    result = train_private_model(args.dataset, args.out, args.dp_epsilon, args.smoke, args.seed or 0, args.epochs, say)
    accounting = result["accounting"]
    print(f"DP-SGD: epsilon {accounting['epsilon']:.3f} at delta {accounting['delta']:.2e} ({accounting['accountant']} "
          f"accountant), noise multiplier {accounting['noise_multiplier']:.3f}, {accounting['steps']} steps, "
          f"{accounting['users']:,} users (the unit of privacy)")
    for name, value in result["test"].items():
        print(f"test {name:<10} {value:.4f}" if isinstance(value, float) else f"test {name:<10} {value}")
    print(f"wrote {args.out}")


def keygen(args) -> None:
    from recbook.privacy import write_pseudonym_key

    path = write_pseudonym_key(args.out)
    print(f"wrote a new pseudonym key to {path} (readable by you only); keep it out of the repository")


def pseudonyms(args) -> None:
    import csv

    from recbook.privacy import pseudonym_key, pseudonyms as names

    ids = args.ids
    if args.file:
        from recbook.serving import read_user_ids

        ids = [*ids, *read_user_ids(args.file)]
    if not ids: raise ValueError("give user ids, or --file with one per line (or a CSV with a 'user' column)")
    writer = csv.writer(sys.stdout)
    writer.writerow(["user", "pseudonym"])
    writer.writerows(zip(ids, names(ids, _pseudonym_key(args))))


def privacy(args) -> None:
    from recbook.privacy import ensure_privacy_runs

    epsilons = [None if e == "none" else float(e) for e in args.epsilons]
    table = ensure_privacy_runs(args.dataset, args.records, epsilons, args.seeds, args.smoke, args.threads,
                                say=lambda line: print(line, flush=True))
    print(table.to_string())


def _epsilon(value: str) -> float:
    try: epsilon = float(value)
    except ValueError: raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}") from None
    if not (epsilon > 0 and math.isfinite(epsilon)): raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return epsilon


def _epsilon_or_none(value: str) -> str:
    if value != "none": _epsilon(value)
    return value


def adaptations(args) -> None:
    from recbook.adaptation import CHAPTER_ROWS, ensure_adaptation_runs, ensure_query_records

    known = {r.name: r for r in CHAPTER_ROWS}
    unknown = [name for name in args.rows or [] if name not in known]
    if unknown: raise ValueError(f"unknown row(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    rows = [known[name] for name in args.rows] if args.rows else list(CHAPTER_ROWS)
    say = lambda line: print(line, flush=True)
    table = ensure_adaptation_runs(args.dataset, args.records, args.work, rows, args.seeds, args.smoke, say=say)
    print(table.to_string())
    if args.queries:
        print(ensure_query_records(args.dataset, args.records, args.work, smoke=args.smoke, say=say).to_string())


def runs(args) -> None:
    from functools import partial

    from recbook.data import load_dataset
    from recbook.pretraining import FULL_CONFIG, SMOKE_CONFIG
    from recbook.training import CHAPTER_VARIANTS, default_settings, ensure_runs

    known = {v.name: v for v in CHAPTER_VARIANTS}
    unknown = [name for name in args.variants or [] if name not in known]
    if unknown: raise ValueError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    variants = [known[name] for name in args.variants] if args.variants else list(CHAPTER_VARIANTS)
    if any(v.init_from_bert4rec for v in variants) and not any(v.kind == "bert4rec" for v in variants):
        variants.insert(0, known["bert4rec"])  # behaviour pretraining starts from the same seed's BERT4Rec run
    table = ensure_runs(load_dataset(args.dataset), variants, args.seeds, args.records, args.work,
                        partial(default_settings, smoke=args.smoke), SMOKE_CONFIG if args.smoke else FULL_CONFIG,
                        progress=args.progress,
                        say=lambda line: print(line, flush=True))
    columns = ["variant", "seed", "test HR@10", "test NDCG@10", "best_epoch", "seconds_per_epoch", "current"]
    print(table[columns].round(4).to_string(index=False))


def tune(args) -> None:
    from recbook.data import atomic_write, load_dataset
    from recbook.training import default_settings, tune as search

    towers, training = default_settings(args.model, args.smoke)
    if args.text_encoder: towers = replace(towers, text_encoder=args.text_encoder)
    best = search(args.model, load_dataset(args.dataset), args.trials, args.epochs, args.timeout, towers, training,
                  seed=args.seed, jobs=args.jobs, journal=args.journal)
    with atomic_write(Path(args.out)) as f: json.dump(best, f, indent=1)
    print("\n".join(f"trial {t['number']:>3}  {t['state']:<8}  valid NDCG@10 "
                    + (f"{t['valid NDCG@10']:.4f}" if t["valid NDCG@10"] is not None else "  -   ")
                    + "  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.items()
                                       if k not in ("number", "state", "valid NDCG@10")) for t in best["trials"]))
    print(f"best validation NDCG@10 {best['valid NDCG@10']:.4f}: {json.dumps({k: best[k] for k in ('towers', 'training')})}")
    print(f"wrote {args.out}; train it with: recbook train --model {args.model} --dataset {args.dataset} --config {args.out}")


def evaluate(args) -> None:
    from recbook.data import leave_one_out, load_dataset
    from recbook.evaluation import evaluate_recommender, fit_baseline, load_recommender

    ds = load_dataset(args.dataset)
    split = leave_one_out(ds)
    if args.model in ("pop", "itemknn"):
        model = fit_baseline(args.model, split, args.split, ds.n_items)
    else:
        from recbook.training import check_trained_on

        model = load_recommender(args.model)
        check_trained_on(args.model, model, ds)
    report = {"model": args.model, "dataset": ds.name,
              **evaluate_recommender(model, ds, split, args.split, k=args.k, seed=args.seed)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        width = max(map(len, report))
        for name, value in report.items():
            print(f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}")


def _pseudonym_key(args) -> bytes:
    """The pseudonym key of a command that writes user ids (chapter 8): `--pseudonym-key FILE`, else the environment's
    RECBOOK_PSEUDONYM_KEY; checked now, so that a missing key stops the command before it starts. A key from a file is
    put in this process's environment, where the server's worker processes find it."""
    import os

    from recbook.privacy import PSEUDONYM_KEY_ENV, pseudonym_key

    key = pseudonym_key(args.pseudonym_key)
    os.environ[PSEUDONYM_KEY_ENV] = key.hex()
    return key


def serve(args) -> None:
    from recbook.serving import ServeConfig, run_server

    _pseudonym_key(args)  # the feedback store keeps pseudonyms of user ids

    config = ServeConfig(index=args.index, max_batch=args.max_batch, cache_size=args.cache_size,
                         fast_path=not args.no_fast_path, search_process=not args.search_thread)
    run_server(args.model, host=args.host, port=args.port, feedback=args.feedback, config=config,
               exit_after=args.exit_after, threads=args.threads, workers=args.workers,
               exit_with_parent=args.exit_with_parent)


def finetune(args) -> None:
    from recbook.serving import finetune_from_feedback

    feedback = args.feedback or Path(args.model) / "feedback.sqlite"
    result = finetune_from_feedback(args.model, feedback, args.out, epochs=args.epochs, seed=args.seed)
    print(f"fine-tuned {args.model} on {result['sequences']} feedback sequences ({result['events']} events in "
          f"{feedback}); wrote {result['model']}")


def recommend(args) -> None:
    from recbook.serving import recommend_to_file

    written = recommend_to_file(args.model, args.out, users=args.users, k=args.k, exclude_seen=not args.include_seen,
                                skip_unknown=args.skip_unknown, dataset=args.dataset, progress=not args.quiet,
                                key=_pseudonym_key(args))
    skipped = f"; {written['skipped_unknown']} unknown ids skipped" if written["skipped_unknown"] else ""
    print(f"wrote top-{written['k']} for {written['users']:,} users ({written['rows']:,} rows) to {written['out']} in "
          f"{written['seconds']:.1f} s{skipped}")


def export(args) -> None:
    from recbook.serving import ONNX_MODEL, export_onnx

    out = export_onnx(args.model, args.onnx)
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))} to {out}; "
          f"run {ONNX_MODEL} with onnxruntime (recbook.serving.OnnxRecommender)")


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1: raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536: raise argparse.ArgumentTypeError(f"must be 1..65535, got {value!r}")
    return int(value)


PSEUDONYM_KEY_HELP = ("file of the key that turns user ids into pseudonyms (`recbook keygen` makes one; default: the "
                      "RECBOOK_PSEUDONYM_KEY environment variable)")


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

    tr = commands.add_parser("train", help="train sasrec, bert4rec or the two-tower model from chapter 4's defaults for it; resumes from --out's checkpoint")
    tr.add_argument("--model", required=True, choices=["twotower", "sasrec", "bert4rec"], help="what to train")
    tr.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    tr.add_argument("--out", required=True, help="model directory to write (recbook evaluate --model DIR reads it)")
    tr.add_argument("--smoke", action="store_true", help="the small configuration: seconds on a CPU")
    tr.add_argument("--text-encoder", help="twotower: 'minilm' (default) or a `recbook pretrain` directory")
    tr.add_argument("--init-from", help="twotower/sasrec: a bert4rec model directory whose item embeddings start the IDs")
    tr.add_argument("--config", help="JSON file of tower/training settings, e.g. what `recbook tune` wrote")
    tr.add_argument("--epochs", type=int, help="at most this many epochs (default: the configuration's)")
    tr.add_argument("--seed", type=int, help="random seed (default: the configuration's, 0 unless --config sets it)")
    tr.add_argument("--progress", action="store_true", help="progress bars and a line per epoch")
    tr.add_argument("--adapt", choices=["frozen", "lora", "full"], help="twotower: keep the text encoder frozen "
                    "(the default), or adapt its top layers with LoRA or in full after training with it frozen")
    tr.add_argument("--adapt-layers", type=_positive, default=1, help="--adapt: the encoder's top layers that train (default 1)")
    tr.add_argument("--lora-rank", type=_positive, default=8, help="--adapt lora: rank r (default 8; alpha = 2r)")
    tr.add_argument("--lora-targets", choices=["attention", "all"], default="attention",
                    help="--adapt lora: query and value maps (default), or all six linear maps of a layer")
    tr.add_argument("--adapt-epochs", type=_positive, help="--adapt: epochs of the second stage (default 3)")
    tr.add_argument("--dp-epsilon", type=_epsilon, help="twotower: train chapter 8's private model (text, no item IDs) "
                    "with DP-SGD, a user as the unit of privacy, spending this epsilon at delta = 1/users")
    tr.set_defaults(func=train)

    kg = commands.add_parser("keygen", help="write a new secret key for pseudonymous user ids (chapter 8)")
    kg.add_argument("--out", required=True, help="key file to create, outside the repository; never overwritten")
    kg.set_defaults(func=keygen)

    ps = commands.add_parser("pseudonyms", help="the keyed pseudonyms of user ids, as CSV (what `recommend` and the "
                             "feedback store name users by)")
    ps.add_argument("ids", nargs="*", help="user ids")
    ps.add_argument("--file", help="a file of user ids: one per line, or a CSV with a 'user' column")
    ps.add_argument("--pseudonym-key", help=PSEUDONYM_KEY_HELP)
    ps.set_defaults(func=pseudonyms)

    pv = commands.add_parser("privacy", help="train chapter 8's privacy levels x seeds whose run records are missing or stale")
    pv.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    pv.add_argument("--records", required=True, help="folder of run records (the book's: results/privacy)")
    pv.add_argument("--epsilons", nargs="+", type=_epsilon_or_none, default=["1", "3", "8", "none"],
                    help="privacy levels; 'none' trains without DP (default 1 3 8 none)")
    pv.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    pv.add_argument("--threads", type=_positive, help="torch threads per run (default: torch's)")
    pv.add_argument("--smoke", action="store_true", help="the small configuration: seconds on a CPU")
    pv.set_defaults(func=privacy)

    ad = commands.add_parser("adaptations", help="train chapter 7's rows x seeds whose run records are missing or stale")
    ad.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    ad.add_argument("--records", required=True, help="folder of run records (the book's: results/adaptation)")
    ad.add_argument("--work", required=True, help="folder for models and checkpoints; an interrupted run resumes there")
    ad.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ad.add_argument("--rows", nargs="+", help="only these rows (default: all of chapter 7's)")
    ad.add_argument("--queries", action="store_true", help="also the typed-query benchmark of the seed-0 models")
    ad.add_argument("--smoke", action="store_true", help="the small configuration: seconds on a CPU")
    ad.set_defaults(func=adaptations)

    rn = commands.add_parser("runs", help="train the chapter's variants x seeds whose run records are missing or stale")
    rn.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    rn.add_argument("--records", required=True, help="folder of run records (the book's: results/beauty)")
    rn.add_argument("--work", required=True, help="folder for models and checkpoints; an interrupted run resumes there")
    rn.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    rn.add_argument("--variants", nargs="+", help="only these variants (default: all of chapter 4's)")
    rn.add_argument("--smoke", action="store_true", help="the small configuration: seconds on a CPU")
    rn.add_argument("--progress", action="store_true", help="progress bars and a line per epoch")
    rn.set_defaults(func=runs)

    tu = commands.add_parser("tune", help="search learning rate, batch size and regularisation on the validation split")
    tu.add_argument("--model", required=True, choices=["twotower", "sasrec"], help="what to tune")
    tu.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    tu.add_argument("--out", required=True, help="JSON file for the best configuration (recbook train --config reads it)")
    tu.add_argument("--trials", type=_positive, default=20, help="at most this many trials (default 20)")
    tu.add_argument("--epochs", type=_positive, default=20, help="at most this many epochs per trial (default 20)")
    tu.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    tu.add_argument("--text-encoder", help="twotower: 'minilm' (default) or a `recbook pretrain` directory")
    tu.add_argument("--smoke", action="store_true", help="the small model sizes: seconds on a CPU")
    tu.add_argument("--seed", type=int, default=0, help="random seed of the search and of every trial (default 0)")
    tu.add_argument("--jobs", type=_positive, default=1,
                    help="trials trained at once, one process each (default 1; only 1 repeats a search exactly)")
    tu.add_argument("--journal", help="keep the search in this file: the same command again resumes it, counting the "
                                      "trials that ended there towards --trials")
    tu.set_defaults(func=tune)

    ev = commands.add_parser("evaluate", help="every evaluation metric for a baseline or a saved model")
    ev.add_argument("--model", required=True, help="pop, itemknn, or a model directory (with recommender.json)")
    ev.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    ev.add_argument("--k", type=int, default=10, help="list length for the @K metrics (default 10)")
    ev.add_argument("--split", choices=["valid", "test"], default="test", help="which held-out item (default test)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sampled negatives and impressions")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=evaluate)

    srv = commands.add_parser("serve", help="serve a model directory over HTTP: /recommend, /search, /items, /feedback")
    srv.add_argument("--model", required=True, help="a `recbook train` model directory (twotower or sasrec)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    srv.add_argument("--feedback", help="feedback store, SQLite, shared by every server process (default: "
                     "MODEL/feedback.sqlite); a JSON-lines log X.jsonl of an earlier version is imported into X.sqlite")
    srv.add_argument("--index", choices=["auto", "exact", "ivf", "hnsw"], default="auto",
                     help="item index (default auto: exact search up to 200,000 items, IVF above)")
    srv.add_argument("--max-batch", type=_positive, default=64, help="requests computed together (1 = no batching)")
    srv.add_argument("--cache-size", type=int, default=4096, help="answers cached for repeated requests (0 = none)")
    srv.add_argument("--no-fast-path", action="store_true",
                     help="answer /recommend through FastAPI's routing too (slower; for comparison)")
    srv.add_argument("--search-thread", action="store_true",
                     help="encode /search queries on a thread of the server process, not in a process of their own at "
                          "a lower CPU priority (slower /recommend under mixed traffic; for comparison)")
    srv.add_argument("--threads", type=_positive, default=1, help="torch and FAISS threads per process (default 1)")
    srv.add_argument("--workers", type=_positive, default=1,
                     help="server processes on one port, each with the model, sharing the feedback store (default 1)")
    srv.add_argument("--pseudonym-key", help=PSEUDONYM_KEY_HELP)
    srv.add_argument("--exit-after", type=float, help="stop by itself after this many seconds (demos and tests)")
    srv.add_argument("--exit-with-parent", action="store_true",
                     help="stop when the process that started this one ends, even by SIGKILL (notebooks and tests)")
    srv.set_defaults(func=serve)

    ft = commands.add_parser("finetune", help="continue training a model on the feedback its server logged")
    ft.add_argument("--model", required=True, help="the model directory that was served")
    ft.add_argument("--feedback", help="feedback store or an old JSON-lines log (default: MODEL/feedback.sqlite)")
    ft.add_argument("--out", required=True, help="new model directory to write")
    ft.add_argument("--epochs", type=_positive, default=1, help="epochs over training data + feedback (default 1)")
    ft.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ft.set_defaults(func=finetune)

    rec = commands.add_parser("recommend", help="top-k for every user (or a file of user ids) to a Parquet or CSV file")
    rec.add_argument("--model", required=True, help="a `recbook train` model directory (twotower or sasrec)")
    rec.add_argument("--dataset", help="the data the model was trained on (default: what its directory records); "
                     "other data is refused")
    rec.add_argument("--users", default="all", help="'all' (default), or a file of user pseudonyms: one per line, or a CSV "
                     "with a 'user' column")
    rec.add_argument("--k", type=_positive, default=20, help="items per user (default 20)")
    rec.add_argument("--out", required=True, help="output file, .parquet (needs pyarrow) or .csv, written atomically")
    rec.add_argument("--include-seen", action="store_true", help="keep items the user already has (default: left out)")
    rec.add_argument("--skip-unknown", action="store_true", help="leave unknown user ids out (counted) instead of failing")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.add_argument("--pseudonym-key", help=PSEUDONYM_KEY_HELP)
    rec.set_defaults(func=recommend)

    ex = commands.add_parser("export", help="the user tower as ONNX, with the item vectors, for serving without PyTorch")
    ex.add_argument("--model", required=True, help="a `recbook train` model directory (twotower or sasrec)")
    ex.add_argument("--onnx", required=True, help="folder to write user_tower.onnx, item_vectors.npy and onnx.json to")
    ex.set_defaults(func=export)

    quick = commands.add_parser("quickstart", help="the main job on the shipped data: data, pretrained text encoder, training, evaluation (minutes on a CPU)")
    quick.add_argument("--dataset", default="beauty", help=DATASET_HELP)
    quick.add_argument("--out", default="recbook-output", help="where to write results (default recbook-output)")
    quick.add_argument("--data-only", action="store_true", help="only the data summary and plots (seconds)")
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
