"""The local platform's metric window under a supervisor's traffic, on a simulated clock (issue 12).

What the supervisor's MetricStore holds and costs at `--rate` invocations a second for `--minutes`
simulated minutes, with a new release every `--every` simulated seconds (its series appear, the old
ones stop), as in the soak: three functions, four dimension sets each (function, live alias, version,
alias + version), Invocations / Errors / Duration / ConcurrentExecutions, flushed once a second to
the platform db. Figures:

* Python's small-object allocator (`sys._debugmallocstats`): the bytes in allocated blocks the store
  holds (beyond the imports') and the arenas, once the 10-minute window has filled and at the end
  (arenas gained after the window are fragmentation, which a long-lived process never gives back);
* the time of one `flush` (the supervisor's once-a-second tick) and of the queries the alarms, the
  canary judges and `backout metrics` make.

`python -m bench.metric_window [--minutes 30] [--rate 50] [--every 300]`; `python -m bench --only
metric_window` (`--quick`: 12 simulated minutes). Runs in-process in ~15 s; no supervisor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backout.platforms.base import NS_LAMBDA, MetricQuery
from backout.platforms.local.metrics import MetricStore
from bench.platform import Figure

BENCHMARKS = ("metric_window",)
FUNCTIONS = ("api", "worker", "repair")
METRICS = ("Invocations", "Errors", "Duration", "ConcurrentExecutions")
WINDOW = 600  # the store's `memory`: seconds held in memory


def allocator() -> tuple[int, int]:
    """(arenas, bytes in allocated blocks) of Python's small-object allocator, from its own report."""
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    text = b"".join(chunks).decode()

    def field(name: str) -> int:
        m = re.search(rf"# {name}\s*=\s*([\d,]+)", text)
        assert m is not None, name
        return int(m.group(1).replace(",", ""))

    return field("arenas allocated current"), field("bytes in allocated blocks")


def _keys(store: MetricStore, version: int) -> list[list[tuple[Any, str]]]:
    out = []
    for fn in FUNCTIONS:
        for dims in ({"FunctionName": fn}, {"FunctionName": fn, "Resource": f"{fn}:live"},
                     {"FunctionName": fn, "ExecutedVersion": str(version)},
                     {"FunctionName": fn, "Resource": f"{fn}:live", "ExecutedVersion": str(version)}):
            out.append([(store.series_key(NS_LAMBDA, m, dims), m) for m in METRICS])
    return out


def measure(minutes: float, rate: float, every: float, seed: int = 1) -> dict[str, Any]:
    rnd = random.Random(seed)
    base = allocator()  # the imports' own small objects, before the store exists
    with tempfile.TemporaryDirectory(prefix="backout-metric-window-") as d:
        store = MetricStore(Path(d) / "platform.db", memory=WINDOW)
        end = time.time() - 60
        start = end - minutes * 60
        t, last_sec, version = start, int(start), 1
        groups = {1: _keys(store, 1)}
        flush_ms: list[float] = []
        at_window: tuple[int, int] | None = None
        while t < end:
            t += 1 / rate
            v = version if version == 1 or rnd.random() < 0.9 else version - 1  # a 10 % canary split
            for group in groups[v]:
                store.record_many([(k, rnd.lognormvariate(3, 0.8) if m == "Duration" else
                                    float(rnd.random() < 0.01) if m == "Errors" else 1.0, "Count")
                                   for k, m in group], t)
            if int(t) != last_sec:
                last_sec = int(t)
                t0 = time.perf_counter()
                store.flush(now=t)
                flush_ms.append((time.perf_counter() - t0) * 1000)
                if (last_sec - int(start)) % int(every) == 0:
                    version += 1
                    groups[version] = _keys(store, version)
                if at_window is None and t - start >= WINDOW + 60:
                    at_window = allocator()
        final = allocator()
        assert at_window is not None, "run at least 11 simulated minutes"
        alias = {"FunctionName": "api", "Resource": "api:live"}  # all of the function's traffic
        queries = {
            "5-min p99 of Duration (alarm)": MetricQuery.of(NS_LAMBDA, "Duration", alias, end - 300, end, 60, "p99"),
            "5-min error sum (alarm)": MetricQuery.of(NS_LAMBDA, "Errors", alias, end - 300, end, 60, "Sum"),
            "60 one-second error sums (judge)": MetricQuery.of(NS_LAMBDA, "Errors", alias, end - 60, end, 1, "Sum"),
            "10-min p90 of Duration (backout metrics)":
                MetricQuery.of(NS_LAMBDA, "Duration", alias, end - 600, end, 600, "p90"),
        }
        query_us = {}
        for name, q in queries.items():
            n, t0 = 300, time.perf_counter()
            for _ in range(n):
                store.query(q)
            query_us[name] = round((time.perf_counter() - t0) / n * 1e6, 1)
        series = len(store.list_metrics())
        store.close()
    return {
        "simulated_minutes": minutes, "rate": rate, "releases": version,
        "series": series,
        "small_object_mb_held_after_window": round((at_window[1] - base[1]) / 1e6, 2),
        "small_object_mb_held_at_end": round((final[1] - base[1]) / 1e6, 2),
        "arenas_after_window": at_window[0], "arenas_at_end": final[0],
        "flush_ms": {"median": round(statistics.median(flush_ms), 3),
                     "p99": round(sorted(flush_ms)[int(len(flush_ms) * 0.99)], 3)},
        "query_us": query_us,
    }


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "metric_window" not in only:
        return []
    f = measure(12.0 if quick else 30.0, 50.0, 300.0)
    return [
        Figure("metric window: arenas gained after the window filled", f["arenas_at_end"] - f["arenas_after_window"],
               "MiB", target="= 0", ok=f["arenas_at_end"] == f["arenas_after_window"], detail=f),
        Figure("metric window: flush, median", f["flush_ms"]["median"], "ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metric_window", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="simulated minutes (at least 11)")
    ap.add_argument("--rate", type=float, default=50.0, help="invocations per simulated second")
    ap.add_argument("--every", type=float, default=300.0, help="simulated seconds between releases")
    a = ap.parse_args(argv)
    if a.minutes < 11 or a.rate <= 0 or a.every < 1:
        ap.error("--minutes must be at least 11, --rate positive and --every at least 1")
    print(json.dumps(measure(a.minutes, a.rate, a.every), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
