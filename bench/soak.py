"""Soak (issue 12, point 4): hours of service compressed into `--minutes` of steady traffic and deployments.

A staging environment of the SDA gets an open-loop `--rate` req/s (default 50) of mixed traffic —
48 % `GET /status/{a job}`, 48 % `GET /health`, 4 % `POST /process-drawing` (sample_01), so the
worker and the queues run too — and a deployment every `--every` seconds, every other one faulty
(`--set-env BACKOUT_FAULT=errors=1.0`, rolled back by the error-rate alarm), on a 10 % canary.
Every `--sample` seconds: the RSS of the supervisor and of each worker process, the open file
descriptors of the supervisor and the largest of any worker, and the size of every SQLite WAL in
the state dir.

Figures: the RSS slope (MB/h, least squares after the first fifth of the run: imports and caches
warm up then) of the supervisor and of each worker process that lived through at least half the
run, the same once each process first reached its median RSS (an API instance's one jump at its
first upload, which may come late in the run, is warm-up, not growth), the supervisor's growth
over the run and what holds it (the slope of each part of `backout_supervisor_memory_bytes`, which
the sampler scrapes from `/metrics`), the fd and WAL maxima, the 5xx answered by a version other than a faulty canary
(must be 0), and each deployment's outcome (faulty → RolledBack, healthy → Succeeded, the live
aliases on the winner).

`python -m bench.soak [--minutes 30] [--rate 50] [--every 300] [--sample 10] [--json PATH]`;
`python -m bench --only soak` (`--quick`: 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.crash_deployments import ENV_EXTRA, HOOKS
from bench.deploy import OpenLoad
from bench.faultenv import FaultEnv
from bench.platform import Figure

BENCHMARKS = ("soak",)
FAULT = "BACKOUT_FAULT=errors=1.0"
MB = 1024 * 1024
METRIC_MEMORY = 600  # seconds of metrics the supervisor keeps in memory (MetricStore's `memory`)


@dataclass
class Samples:
    """What the sampler saw: per process key, (seconds since start, RSS bytes); fds; WAL bytes."""

    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    supervisor_fds: list[int] = field(default_factory=list)
    worker_fds_max: list[int] = field(default_factory=list)
    wal_max: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    parts: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # the supervisor's, from /metrics


class Sampler:
    def __init__(self, env: FaultEnv, every: float) -> None:
        self.env, self.every = env, every
        self.samples = Samples()
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def sample(self) -> None:
        s, t = self.samples, time.monotonic() - self.t0
        fds = []
        procs = self.env.processes()
        for key, p in procs.items():
            try:  # read first: a process gone meanwhile leaves no empty series behind
                rss, n = p.memory_info().rss, p.num_fds()
                s.rss.setdefault(key, []).append((t, rss))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if key == "supervisor":
                s.supervisor_fds.append(n)
            else:
                fds.append(n)
        s.worker_fds_max.append(max(fds, default=0))
        s.processes.append(len(procs))
        s.wal_max.append(max(self.env.wal_bytes().values(), default=0))
        for part, n in supervisor_memory(self.env).items():
            s.parts.setdefault(part, []).append((t, n))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                return


def supervisor_memory(env: FaultEnv) -> dict[str, int]:
    """What holds the supervisor's memory, as its `/metrics` says (`backout_supervisor_memory_bytes`)."""
    assert env.http is not None
    try:
        r = env.http.get("/metrics")
        r.raise_for_status()
    except httpx.HTTPError:
        return {}
    return {s.labels["part"]: int(s.value) for fam in text_string_to_metric_families(r.text)
            if fam.name == "backout_supervisor_memory_bytes" for s in fam.samples}


def slope_mb_per_h(series: list[tuple[float, int]], skip: float) -> float | None:
    """Least-squares slope of RSS over time after `skip` seconds, in MB per hour."""
    pts = [(t, r) for t, r in series if t >= skip]
    if len(pts) < 3:
        return None
    t, r = np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)
    return float(np.polyfit(t / 3600.0, r / MB, 1)[0])


def settled_at(series: list[tuple[float, int]]) -> float:
    """When a process first reached its median RSS: its own warm-up (lazy imports at the first
    upload, caches) is over by then, and a process that keeps growing still shows it afterwards."""
    median = float(np.median([r for _, r in series]))
    return next(t for t, r in series if r >= median)


def per_minute(series: list[tuple[float, int]]) -> list[float]:
    """The first RSS sample of each minute, in MB: the shape of the curve in a line."""
    out: dict[int, float] = {}
    for t, r in series:
        out.setdefault(int(t // 60), round(r / MB, 1))
    return [out[m] for m in sorted(out)]


@dataclass
class Deployed:
    deployment: str
    faulty: bool
    status: str = ""
    target: int | None = None
    winner: int | None = None
    aliases_agree: bool = False


def deploy_one(env: FaultEnv, k: int, faulty: bool) -> Deployed:
    args = ["deploy", "--no-wait", "--json", "--strategy", "Soak", "--set-env", f"SOAK_RUN={k}",
            "--description", f"soak {k}"]
    if faulty:
        args += ["--set-env", FAULT]
    dep_id = json.loads(env.cli(*args).stdout)["deployment"]["id"]
    d = env.wait_terminal(dep_id, timeout=600)["deployment"]
    out = Deployed(dep_id, faulty, d["status"], d["target_release"])
    out.winner = d["target_release"] if d["status"] == "Succeeded" else d["stable_release"]
    out.aliases_agree = all(w == {str(out.winner): 100.0} for w in env.weights().values())
    return out


def build_env(root: Path, hold_s: int) -> FaultEnv:
    strategy = f'\n[strategies.Soak]\nsteps = [{{ weight = 10, hold = "{hold_s}s" }}, {{ weight = 100 }}]\n'
    return FaultEnv(root, env_extra=ENV_EXTRA, manifest_extra=strategy, replace=HOOKS)


def run_soak(env: FaultEnv, minutes: float, rate: float, every: float, sample: float,
             log: Any = None) -> dict[str, Any]:
    """Traffic, deployments and sampling on a started environment; the figures."""
    duration = minutes * 60.0
    load = OpenLoad(env.gateway_url, rate=rate, post_share=0.04)
    sampler = Sampler(env, sample)
    deployed: list[Deployed] = []
    load.start()
    sampler.start()
    t0 = time.monotonic()
    try:
        k = 0
        while True:
            at = min(every / 5.0, 60.0) + k * every  # the first one after a short warm-up
            if at >= duration - min(every, 60.0) * 0.5 and k:
                break
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            d = deploy_one(env, k, faulty=k % 2 == 1)
            deployed.append(d)
            if log:
                print(f"{time.monotonic() - t0:6.0f} s  {d.deployment} {'faulty ' if d.faulty else 'healthy'}"
                      f" → {d.status} r{d.winner} aliases agree: {d.aliases_agree}", file=log, flush=True)
            k += 1
        rest = t0 + duration - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    finally:
        sampler.stop()
        load.stop()
    return figures(load, sampler.samples, deployed, duration, env)


def figures(load: OpenLoad, s: Samples, deployed: list[Deployed], duration: float, env: FaultEnv) -> dict[str, Any]:
    faulty_targets = {str(d.target) for d in deployed if d.faulty}
    skip = duration / 5.0
    slopes, settled = {}, {}
    for key, series in s.rss.items():
        lived = series[-1][0] - series[0][0]
        if key == "supervisor" or lived >= duration / 2:
            v = slope_mb_per_h(series, skip)
            if v is not None:
                slopes[key] = round(v, 1)
            w = slope_mb_per_h(series, max(skip, settled_at(series)))
            if w is not None:
                settled[key] = round(w, 1)
    sup = s.rss.get("supervisor", [(0.0, 0)])
    after = [r for t, r in sup if t >= skip] or [sup[0][1]]
    # the metric store fills its in-memory window (METRIC_MEMORY) first: the slope once it is full
    late_from, window_filled = max(skip, METRIC_MEMORY + 60), duration > 2 * METRIC_MEMORY
    late = slope_mb_per_h(sup, late_from) if window_filled else None
    answers = load.answers
    bad = [a for a in answers if a.status >= 500 and a.version not in faulty_targets]
    return {
        "minutes": round(duration / 60, 1),
        "requests": len(answers),
        "rate_sent": round(len(answers) / duration, 1),
        "status_counts": {str(c): n for c, n in sorted(Counter(a.status for a in answers).items())},
        "5xx_outside_faulty_canaries": len(bad),
        "5xx_by_faulty_canaries": sum(1 for a in answers if a.status >= 500 and a.version in faulty_targets),
        "deployments": [d.__dict__ for d in deployed],
        "deployments_as_expected": sum(
            (d.status == ("RolledBack" if d.faulty else "Succeeded")) and d.aliases_agree for d in deployed),
        "rss_slope_mb_per_h": slopes,
        "rss_slope_once_settled_mb_per_h": settled,
        "supervisor_rss_slope_after_metric_window_mb_per_h": None if late is None else round(late, 1),
        # what grew: each part's slope over the same span as the line above (server/memory.py: usage)
        "supervisor_parts_slope_after_metric_window_mb_per_h": {
            part: round(v, 1) for part, series in s.parts.items()
            if (v := slope_mb_per_h(series, late_from)) is not None} if window_filled else {},
        "supervisor_parts_mb": {part: {"first": round(series[0][1] / MB, 2), "last": round(series[-1][1] / MB, 2),
                                       "max": round(max(n for _, n in series) / MB, 2)}
                                for part, series in s.parts.items()},
        "supervisor_rss_mb_each_minute": per_minute(sup),
        "supervisor_rss_mb": {"first": round(sup[0][1] / MB, 1), "after_warmup": round(after[0] / MB, 1),
                              "last": round(sup[-1][1] / MB, 1), "max": round(max(r for _, r in sup) / MB, 1)},
        "supervisor_fds": {"first": s.supervisor_fds[0] if s.supervisor_fds else 0,
                           "max": max(s.supervisor_fds, default=0), "last": (s.supervisor_fds or [0])[-1]},
        "worker_fds_max": max(s.worker_fds_max, default=0),
        "processes_max": max(s.processes, default=0),
        "wal_max_mb": round(max(s.wal_max, default=0) / MB, 2),
        "wal_last": {k: round(v / MB, 2) for k, v in env.wal_bytes().items()},
        "samples": len(s.supervisor_fds),
        "jobs_accepted": len(load.jobs),
    }


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "soak" not in only:
        return []
    minutes, every, sample, hold = (3.0, 60.0, 5.0, 10) if quick else (30.0, 300.0, 10.0, 60)
    with tempfile.TemporaryDirectory(prefix="backout-soak-") as d:
        env = build_env(Path(d), hold)
        try:
            f = run_soak(env, minutes, 50.0, every, sample, log=sys.stdout)
        finally:
            env.close()
    sup = f["rss_slope_mb_per_h"].get("supervisor", 0.0)
    return [Figure(f"soak: supervisor RSS slope ({minutes:g} min at 50 req/s)", sup, "MB/h", detail=f),
            Figure("soak: 5xx outside the faulty canaries", f["5xx_outside_faulty_canaries"], "answers",
                   target="= 0", ok=f["5xx_outside_faulty_canaries"] == 0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--every", type=float, default=300.0, help="seconds between deployments")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--hold", type=int, default=60, help="the canary step's hold (s)")
    ap.add_argument("--json", dest="json_path", default="")
    ap.add_argument("--keep", default="", help="run in this directory and keep it (state, logs)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backout-soak-") as d:
        env = build_env(Path(a.keep) if a.keep else Path(d), a.hold)
        try:
            f = run_soak(env, a.minutes, a.rate, a.every, a.sample, log=sys.stdout)
        finally:
            env.close()
    print(json.dumps(f, indent=2))
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(f, indent=2))
    return 0 if f["5xx_outside_faulty_canaries"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
