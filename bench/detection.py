"""Issue 10's benchmark: false rollbacks and detection of the threshold alarms against the sequential judge.

One seeded run of simulated deployments, `--runs` (1,000) per row: 50 req/s (Poisson per second),
10 % of them on the canary, the 10-minute hold of `Canary10Percent10Minutes`; each request fails with
probability p in the stable version and p_c in the canary (one HTTP function, so every failure is a
Lambda error and a 502). Rows: stable p = 0, 0.5, 1, 2 %; canary healthy (p_c = p), 1.5×, 3×, 20 %,
50 % failing. Detectors, side by side, each deciding from the counts so far (at the end of a second,
or of an evaluation interval for the open-seconds judge):

* **CloudWatch 60 s** — the alarm of the AWS SAM guide for CodeDeploy's safe Lambda deployments
  (`AliasErrorMetricGreaterThanZeroAlarm`): the new version's Errors Sum > 0 in 2 of 2 one-minute
  periods, aligned with the deployment's start (an optimistic alignment), decided when the second
  period closes;
* **thresholds (today)** — backout's `default_rules` for the repository's `prod`: error rate > 5 %
  over a sliding 60 s with ≥ 20 invocations, API 5xx > 5 over a sliding 5 minutes (both on the
  canary only), simulated with `backout.control.preflight.first_breach`;
* **judge, closed seconds** — the errors judge of `backout.control.analysis` (`log_lr` and
  `log_e_value` over its `ALTERNATIVES`) as it runs on AWS, at 1/α per judge with α = 0.01 shared by
  the 3 judges this service gets (errors, API 5xx, latency: the 5xx judge sees no 5xx other than the
  errors and the latency judge no durations here, so neither is simulated; with no duration limit the
  service has no slow-requests judge); it reads a second once it
  is 1 s old (`judge_settle`), so it decides a second after the counts it decides on, and the canary
  requests of that second count;
* **judge, open seconds** — the same judge as it runs on the local platform (`open_seconds`): at
  every evaluation (`TICKS` = 4 a second, the deployer's 0.25 s) it judges the invocations completed
  since the last one, and decides at that evaluation;
* **default (prod)** — what prod ships on the local platform: `confirm_with_judge` (a threshold rolls
  back only with its judge while the traffic is split, as throughout the hold simulated here, so it adds
  nothing to the judge; at 100 % it would act alone) and the ceilings (error rate or 5xx rate
  > 50 % over 60 s with ≥ 20 invocations): judge (open seconds) ∪ ceilings. (On AWS: the closed-second
  judge ∪ the same ceilings.)

Traffic is drawn per evaluation interval (Poisson, 50/`TICKS` per interval); the per-second detectors
see its sums.

Reported per row and detector: the share of deployments rolled back within the hold (for a healthy
canary: false rollbacks) and the canary requests until the decision (median, p90) of those rolled back.

`python -m bench.detection [--runs 1000] [--seed 10]` (also `python -m bench --only detection`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from backout.control.analysis import ALTERNATIVES, log_e_value, log_lr
from backout.control.preflight import first_breach

BENCHMARKS = ("detection",)
RATE, WEIGHT, HOLD = 50.0, 0.10, 600
STABLE = (0.0, 0.005, 0.01, 0.02)
CANARIES: tuple[tuple[str, Any], ...] = (
    ("healthy", lambda p: p), ("1.5×", lambda p: 1.5 * p), ("3×", lambda p: 3.0 * p),
    ("20 %", lambda p: 0.20), ("50 %", lambda p: 0.50),
)
DETECTORS = ("CloudWatch 60 s", "thresholds (today)", "judge, closed seconds", "judge, open seconds",
             "default (prod)")
JUDGES, ALPHA, SETTLE = 3, 0.01, 1  # the simulated service's judges share α; seconds a second waits
TICKS = 4  # evaluations per second on the local platform (the deployer's EVAL_INTERVAL, 0.25 s)
CEILING, MIN_INVOCATIONS = 50.0, 20


@dataclass(frozen=True)
class Row:
    stable: float
    canary_label: str
    canary: float
    rolled_back: dict[str, float]  # detector → share of deployments rolled back within the hold
    median: dict[str, float | None]  # detector → canary requests to the decision
    p90: dict[str, float | None]


def _judge(n_c: np.ndarray, c: np.ndarray, e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The interval (a second, or the part of one between two evaluations) whose counts made the
    e-value reach JUDGES/ALPHA (-1: never), per run."""
    runs, seconds = c.shape
    sums = np.zeros((runs, ALTERNATIVES.size))
    first = np.full(runs, -1)
    q = np.where(n > 0, n_c / np.maximum(n, 1), 0.0)
    bound = np.log(JUDGES / ALPHA)
    m = c + e
    for t in range(seconds):
        live = first < 0
        if not live.any():
            break
        idx = np.nonzero(live & (m[:, t] > 0))[0]  # an interval without events leaves every LR at 1
        if idx.size == 0:
            continue
        sums[idx] += log_lr(ALTERNATIVES, c[idx, t], m[idx, t], q[idx, t])
        first[idx[log_e_value(sums[idx]) >= bound]] = t
    return first


def _cloudwatch(c: np.ndarray) -> np.ndarray:
    """Errors > 0 in 2 consecutive aligned 60 s periods: the last second of the second period."""
    runs, seconds = c.shape
    per = c[:, : seconds // 60 * 60].reshape(runs, -1, 60).sum(axis=2) > 0
    both = per[:, 1:] & per[:, :-1]
    k = np.argmax(both, axis=1)
    return np.where(both.any(axis=1), (k + 2) * 60 - 1, -1)


def _earliest(*firsts: np.ndarray) -> np.ndarray:
    stacked = np.stack([np.where(f < 0, np.iinfo(np.int64).max, f) for f in firsts])
    m = stacked.min(axis=0)
    return np.where(m == np.iinfo(np.int64).max, -1, m)


def simulate_row(rng: np.random.Generator, p: float, p_c: float, runs: int) -> dict[str, np.ndarray]:
    """Per detector, the canary requests until each run's decision (NaN: no rollback in the hold).

    Traffic is drawn per evaluation interval (1/TICKS s); the per-second detectors see the sums."""
    ticks = (HOLD + SETTLE) * TICKS
    n_t = rng.poisson(RATE / TICKS, size=(runs, ticks))
    nc_t = rng.binomial(n_t, WEIGHT)
    c_t = rng.binomial(nc_t, p_c)
    e_t = rng.binomial(n_t - nc_t, p)

    def per_second(x: np.ndarray) -> np.ndarray:
        return x.reshape(runs, HOLD + SETTLE, TICKS).sum(axis=2)

    n, n_c, c, e = (per_second(x) for x in (n_t, nc_t, c_t, e_t))
    cw = _cloudwatch(c[:, :HOLD])
    rate = first_breach(n_c[:, :HOLD], c[:, :HOLD], 60, 5.0, MIN_INVOCATIONS)
    count = first_breach(n_c[:, :HOLD], c[:, :HOLD], 300, 5.0, rate=False)
    ceiling = first_breach(n_c[:, :HOLD], c[:, :HOLD], 60, CEILING, MIN_INVOCATIONS)
    closed = _judge(n_c[:, :HOLD], c[:, :HOLD], e[:, :HOLD], n[:, :HOLD])
    closed = np.where(closed >= 0, closed + SETTLE, -1)  # decided once the second is SETTLE s old
    hold = HOLD * TICKS
    opened = _judge(nc_t[:, :hold], c_t[:, :hold], e_t[:, :hold], n_t[:, :hold])  # decided at the interval's end

    def in_ticks(t: np.ndarray) -> np.ndarray:  # a per-second decision at the end of second t
        return np.where(t >= 0, (t + 1) * TICKS - 1, -1)

    decided = {"CloudWatch 60 s": in_ticks(cw), "thresholds (today)": in_ticks(_earliest(rate, count)),
               "judge, closed seconds": in_ticks(closed), "judge, open seconds": opened,
               "default (prod)": _earliest(opened, in_ticks(ceiling))}
    served = np.cumsum(nc_t, axis=1)
    out = {}
    for name, t in decided.items():
        ok = (t >= 0) & (t < ticks)
        out[name] = np.where(ok, served[np.arange(runs), np.clip(t, 0, ticks - 1)], np.nan)
    return out


def measure(runs: int = 1000, seed: int = 10) -> tuple[list[Row], float]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    rows = []
    for p in STABLE:
        for label, f in CANARIES:
            p_c = f(p)
            if label in ("1.5×", "3×") and p == 0:
                continue  # the same as healthy
            got = simulate_row(rng, p, p_c, runs)
            rolled = {k: float(np.mean(~np.isnan(v))) for k, v in got.items()}
            med = {k: (float(np.nanmedian(v)) if rolled[k] else None) for k, v in got.items()}
            p90 = {k: (float(np.nanpercentile(v, 90)) if rolled[k] else None) for k, v in got.items()}
            rows.append(Row(p, label, p_c, rolled, med, p90))
    return rows, time.perf_counter() - t0


def report(rows: list[Row], runs: int, seconds: float) -> str:
    head = "| stable | canary | " + " | ".join(DETECTORS) + " |"
    lines = [head, "|---|---|" + "---|" * len(DETECTORS)]
    for r in rows:
        cells = []
        for d in DETECTORS:
            share = f"{100 * r.rolled_back[d]:.1f} %"
            if r.median[d] is None:
                cells.append(share)
            else:
                cells.append(f"{share}: {r.median[d]:.0f} / {r.p90[d]:.0f}")
        canary = f"{r.canary_label} ({100 * r.canary:.2g} %)"
        lines.append(f"| {100 * r.stable:g} % | {canary} | " + " | ".join(cells) + " |")
    lines.append(f"\n{runs} deployments per row, {len(rows)} rows, {seconds:.1f} s")
    return "\n".join(lines)


def run(only: set[str] | None, quick: bool = False) -> list[Any]:
    """The figures for `python -m bench`: the default's worst false-rollback rate and its detections."""
    from bench.platform import Figure

    if only is not None and "detection" not in only:
        return []
    runs = 200 if quick else 1000
    rows, seconds = measure(runs)
    print(report(rows, runs, seconds), flush=True)
    d = "default (prod)"
    worst = max(r.rolled_back[d] for r in rows if r.canary_label == "healthy")
    three = next(r for r in rows if r.stable == 0.01 and r.canary_label == "3×")
    half = [r.median[d] or 0.0 for r in rows if r.canary_label == "50 %"]
    return [
        Figure("detection: false rollbacks, default", 100 * worst, "%", "≤ 1 %", worst <= 0.01),
        Figure("detection: 1 % → 3 %, canary requests (median)", three.median[d] or 0.0, "", "≤ 2000",
               three.median[d] is not None and three.median[d] <= 2000),
        Figure("detection: 50 % failing, canary requests (worst median)", max(half), "", "≤ 10", max(half) <= 10),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000, help="simulated deployments per row")
    ap.add_argument("--seed", type=int, default=10)
    a = ap.parse_args(argv)
    rows, seconds = measure(a.runs, a.seed)
    print(report(rows, a.runs, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
