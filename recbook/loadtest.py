"""The load generator that chapter 6 and `bench/bench_serving.py` use: POST a list of requests over keep-alive
connections, in a closed or an open loop, and plot the latencies.

Like `cli.py`, this module is written by hand, not exported from a notebook: it is a client of the service, not part
of it, and chapter 6 uses it without teaching its code."""
import asyncio
import collections
import json
import math
import threading
import time
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["load_test", "plot_latency_histogram"]


async def _load_worker(host, port, path, payloads, latencies, statuses, failures, deadline, timeout, rate, origin):
    """One keep-alive HTTP/1.1 connection sending POSTs from the shared deque until it is empty or time is up. With a
    `rate`, request i is due at origin + i / rate and its latency counts from then, waiting for a free connection
    included (otherwise a slow server would hide its queue: "coordinated omission")."""
    reader = writer = None
    while payloads and time.monotonic() < deadline:
        number, body = payloads.popleft()
        due = None
        if rate:
            due = origin + number / rate
            if due > time.perf_counter(): await asyncio.sleep(due - time.perf_counter())
        request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            if writer is None: reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            start = time.perf_counter() if due is None else due
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
            await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), timeout)
            latencies.append((time.perf_counter() - start) * 1000)
            statuses[int(lines[0].split()[1])] += 1
            if fields.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, KeyError, ValueError) as error:
            failures.append(f"{type(error).__name__}: {error}")
            if writer is not None: writer.close()
            writer = None
    if writer is not None: writer.close()


def load_test(url: str, path: str, payloads: Sequence, concurrency: int = 32, rate: float | None = None,
              timeout: float = 10, max_seconds: float = 300) -> dict:
    """POST every payload (JSON) once over `concurrency` keep-alive connections. Without `rate`, each connection sends
    its next request as soon as the last is answered (a closed loop: it finds the throughput, and latency is mostly
    queueing); with `rate`, requests are sent at `rate` per second whatever the answers do (an open loop: the latency
    users would see at that traffic). Stops by itself after the last payload, or after `max_seconds`. Returns the
    latencies (ms), p50/p90/p99, the throughput and the errors (non-2xx answers, timeouts, connection failures)."""
    host, port = url.removeprefix("http://").split(":")
    queue = collections.deque(enumerate(json.dumps(p).encode() for p in payloads))
    latencies, statuses, failures = [], collections.Counter(), []

    async def main():
        deadline, origin = time.monotonic() + max_seconds, time.perf_counter() + 0.05
        await asyncio.gather(*(_load_worker(host, int(port), path, queue, latencies, statuses, failures, deadline,
                                            timeout, rate, origin) for _ in range(concurrency)))

    start = time.perf_counter()
    runner = threading.Thread(target=asyncio.run, args=(main(),))  # own thread and loop: safe inside Jupyter's loop
    runner.start()
    runner.join()
    seconds = time.perf_counter() - start
    lat = np.array(latencies)
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {"requests": len(payloads), "answered": len(lat), "ok": ok, "errors": len(payloads) - ok,
            "statuses": dict(statuses), "failures": failures[:5], "concurrency": concurrency, "rate": rate, "seconds": seconds,
            "requests_per_s": len(lat) / seconds, "p50 ms": float(np.percentile(lat, 50)) if len(lat) else math.nan,
            "p90 ms": float(np.percentile(lat, 90)) if len(lat) else math.nan,
            "p99 ms": float(np.percentile(lat, 99)) if len(lat) else math.nan,
            "max ms": float(lat.max()) if len(lat) else math.nan, "latencies": lat}


def plot_latency_histogram(runs: dict[str, np.ndarray], title: str = "request latency") -> Figure:
    "Histograms of request latencies (ms, log scale), one per run and labelled with its request count, with each run's p50\n    (dashed) and p99 (dotted)."
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    every = np.concatenate([np.asarray(v) for v in runs.values()])
    bins = np.logspace(np.log10(max(every.min(), 1e-2)), np.log10(every.max()), 60)
    for number, (name, lat) in enumerate(runs.items()):  # every run gets a colour: the default cycle repeats after 10
        color = f"C{number % 10}"
        ax.hist(lat, bins=bins, histtype="step", lw=1.5, color=color, label=f"{name} ({len(lat):,} requests)")
        ax.axvline(np.percentile(lat, 50), color=color, ls="--", lw=1)
        ax.axvline(np.percentile(lat, 99), color=color, ls=":", lw=1)
    ax.set(xscale="log", xlabel="latency, ms (log scale); dashed p50, dotted p99", ylabel="requests", title=title)
    ax.legend()
    return fig
