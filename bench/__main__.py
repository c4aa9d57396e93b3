"""`python -m bench` (what `make bench` runs): every benchmark, then a table of the figures.

Options: `--only throughput,latency,queue,weights,memory,deploy,sda,sda_accuracy,sqs,wrapper,detection,lease,
crash_deployments,crash_jobs,soak,backup,metric_window` (crash_deployments, crash_jobs, soak and metric_window:
issue 12, figures in RELIABILITY.md),
`--quick` (shorter runs, for a smoke check), `--json PATH` (also write the figures and the machine as JSON).
BENCHMARKS.md explains each figure and records a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from bench import (
    backup,
    crash_deployments,
    crash_jobs,
    deploy,
    detection,
    lease,
    metric_window,
    platform,
    sda,
    sda_accuracy,
    soak,
    sqs_endpoint,
    wrapper,
)

# each: BENCHMARKS (names) and run(only, quick) -> list[Figure]; lease: driver death → every alias back
# on stable (shared state, lease, guard); backup: the local platform's pre-deployment backup
MODULES = (platform, deploy, sda, sda_accuracy, sqs_endpoint, wrapper, detection, crash_deployments, crash_jobs, soak,
           lease, backup, metric_window)
NAMES = tuple(n for m in MODULES for n in m.BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="backout's benchmarks (issues 2 and 4)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(NAMES)}")
    p.add_argument("--quick", action="store_true", help="shorter runs (a smoke check, not a measurement)")
    p.add_argument("--json", dest="json_path", default="", help="also write the results to this file")
    a = p.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()} or None
    unknown = (only or set()) - set(NAMES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    info = platform.machine()
    print(f"backout benchmarks — {info['date']}, {info['cores']} cores, {info['cpu']}, Python {info['python']}")
    print(f"load average before: {info['load_before']}", flush=True)
    t0 = time.monotonic()
    figures = [f for m in MODULES for f in m.run(only, quick=a.quick)]
    print()
    width = max(len(f.name) for f in figures)
    for f in figures:
        verdict = "" if f.ok is None else ("  ok" if f.ok else "  MISS")
        target = f"  (target {f.target})" if f.target else ""
        print(f"{f.name:<{width}}  {f.value:>10,.2f} {f.unit}{target}{verdict}")
        if f.detail:
            print(f"{'':<{width}}    {json.dumps(f.detail)}")
    print(f"\n{len(figures)} figures in {time.monotonic() - t0:.0f} s")
    if a.json_path:
        with open(a.json_path, "w") as fh:
            json.dump({"machine": info, "figures": [asdict(f) for f in figures]}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
