"""Benchmark: /recommend top-10 through the real HTTP server, with micro-batching against without, in one run.

Starts `recbook serve` (a child process, one torch/FAISS thread) on a model directory three times: batched (the
default, up to 64 requests per pass of the user tower), batched with /recommend through FastAPI's routing
(--no-fast-path), and unbatched (--max-batch 1), each with its answer cache off so that
every request reaches the model. Each server gets a warm-up, then the same closed-loop load test (`recbook.serving.
load_test`: test users' histories, `--concurrency` keep-alive connections). Reports p50/p99/p99.9 latency,
requests/s, errors (must be 0) and the mean batch size; then the batched server once more under an open loop
(`--open-rate` requests per second whatever the answers do: the latency users see at that traffic). Target (issue
6): p99 <= 20 ms, batched. The load generator shares the machine with the server. Writes bench/results/serving-{device}.json (with --quick: a temporary file).

    python bench/bench_serving.py [--model DIR] [--requests 10000] [--concurrency 32] [--open-rate 1000]
    python bench/bench_serving.py --quick            # a sanity run in seconds (beauty-tiny, 500 requests)

Without --model, a two-tower model is trained first as the serving chapter does (Beauty, 3 epochs).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_retrieval import model_to_serve, record_path
from benchlib import describe, provenance
from recbook.data import atomic_write, leave_one_out, load_dataset
from recbook.evaluation import default_device, load_recommender
from recbook.serving import BackgroundServer, call, load_test

K = 10
TARGET_P99_MS = 20.0
WARMUP_REQUESTS = 200
BATCHED, ROUTED, UNBATCHED = "batched", "batched, FastAPI route only", "unbatched (max_batch 1)"


def measure(model_dir, max_batch: int, warmup: list, payloads: list, concurrency: int, work: Path,
            rate: float | None = None, fast_path: bool = True) -> dict:
    "One server, one warm-up, one load test (closed loop, or open loop at `rate` requests/s): latencies and batching."
    name = f"{max_batch}-{'fast' if fast_path else 'routed'}-{rate or 'closed'}"
    args = ["--max-batch", max_batch, "--cache-size", 0] + ([] if fast_path else ["--no-fast-path"])
    with BackgroundServer(model_dir, feedback=work / f"feedback-{name}.jsonl", exit_after=3600, args=args,
                          log=work / f"server-{name}.log") as server:
        load_test(server.url, "/recommend", warmup, concurrency)  # first passes pay for lazy initialisation
        _, before = call(server.url, "/healthz")
        result = load_test(server.url, "/recommend", payloads, concurrency, rate=rate, max_seconds=1800)
        _, after = call(server.url, "/healthz")
    latencies = result.pop("latencies")
    batches = after["batches"] - before["batches"]
    return {**result, "p99.9 ms": float(np.percentile(latencies, 99.9)) if len(latencies) else float("nan"),
            "max_batch": max_batch, "fast_path": fast_path, "mean_batch": (after["batched_requests"] - before["batched_requests"]) / max(batches, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a `recbook train` model directory (default: train one first)")
    parser.add_argument("--requests", type=int, help="requests per load test (default 10000; 500 with --quick)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections kept busy (default 32)")
    parser.add_argument("--open-rate", type=float, default=1000,
                        help="requests/s of the open-loop run: the latency users see at that traffic (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="beauty-tiny and 500 requests: a sanity run")
    args = parser.parse_args()
    n_requests = args.requests or (500 if args.quick else 10_000)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as work:
        work = Path(work)
        model_dir = model_to_serve(args.model, args.quick, work)
        model = load_recommender(model_dir)
        split = leave_one_out(load_dataset(model.dataset))
        pool = split.users("test")
        wanted = n_requests + WARMUP_REQUESTS
        users = np.random.default_rng(args.seed).choice(pool, wanted, replace=wanted > len(pool))
        payloads = [{"history": split.history("test")[u].tolist(), "k": K} for u in users]
        warmup, measured = payloads[:WARMUP_REQUESTS], payloads[WARMUP_REQUESTS:]
        runs = {name: measure(model_dir, max_batch, warmup, measured, args.concurrency, work, fast_path=fast)
                for name, max_batch, fast in ((BATCHED, 64, True), (ROUTED, 64, False), (UNBATCHED, 1, True))}
        open_loop = f"batched, open loop {args.open_rate:g}/s"
        runs[open_loop] = measure(model_dir, 64, warmup, measured, args.concurrency, work, rate=args.open_rate)

    device = default_device()  # where the server runs the user tower
    batched, unbatched = runs[BATCHED], runs[UNBATCHED]
    print(f"/recommend top-{K}, {model.kind} model of {model.dataset}, {n_requests:,} requests per run, "
          f"{args.concurrency} connections (closed loop), answer cache off, {describe(device)}")
    columns = ["requests_per_s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "mean_batch"]
    print(f"{'server':<32}" + "".join(f"{c:>15}" for c in columns))
    for name, run in runs.items():
        print(f"{name:<32}" + "".join(f"{run[c]:>15.2f}" if isinstance(run[c], float) else f"{run[c]:>15}" for c in columns))
    throughput_ratio = batched["requests_per_s"] / unbatched["requests_per_s"]
    p99_ratio = unbatched["p99 ms"] / batched["p99 ms"]
    fast_path_ratio = batched["requests_per_s"] / runs[ROUTED]["requests_per_s"]
    met = batched["p99 ms"] <= TARGET_P99_MS and batched["errors"] == 0
    print(f"batching: {throughput_ratio:.2f}x the requests/s, p99 {p99_ratio:.2f}x lower; "
          f"target p99 <= {TARGET_P99_MS:g} ms with no errors: {'met' if met else 'NOT met'} "
          f"(batched p99 {batched['p99 ms']:.2f} ms, closed loop: latency = {args.concurrency} connections / throughput)")
    print(f"fast path: {fast_path_ratio:.2f}x the requests/s of the FastAPI route (p99 {runs[ROUTED]['p99 ms']:.2f} ms there)")
    opened = runs[open_loop]
    open_met = opened["p99 ms"] <= TARGET_P99_MS and opened["errors"] == 0
    print(f"open loop at {args.open_rate:g} requests/s: p99 {opened['p99 ms']:.2f} ms; target: {'met' if open_met else 'NOT met'}")

    record = {"benchmark": "HTTP serving, /recommend", "model": str(args.model or f"trained here ({model.dataset})"),
              "model_kind": model.kind, "dataset": model.dataset, "k": K, "requests": n_requests,
              "concurrency": args.concurrency, "warmup_requests": WARMUP_REQUESTS, "quick": args.quick,
              "server": {"threads": 1, "cache_size": 0}, "runs": runs,
              "batched_vs_unbatched": {"throughput_ratio": throughput_ratio, "p99_ratio": p99_ratio},
              "fast_path_vs_route": {"throughput_ratio": fast_path_ratio},
              "target": {"p99_ms": TARGET_P99_MS, "errors": 0}, "target_met": met,
              "open_loop": {"rate": args.open_rate, "p99_ms": opened["p99 ms"], "target_met": open_met}, **provenance(device)}
    out = record_path(f"serving-{device.type}", args.quick)
    with atomic_write(out) as f: json.dump(record, f, indent=1)
    print(f"wrote {out}")
    errors = {name: run["errors"] for name, run in runs.items() if run["errors"]}
    if errors: print(f"ERRORS: {errors}; first failures: {[runs[n]['failures'] for n in errors]}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
