"""The pre-flight check of `deploy`: would a threshold fire on a canary exactly as healthy as the stable version?

The procedure's thresholds (error rate > `error_rate_threshold` — 10 % by default, 5 % in the
repository's prod —, API 5xx > 5 per 5 min, any DLQ arrival the new version received last) assume a
stable version with almost no failures. Before traffic shifts, this check measures the stable
version's own rates over the last `preflight_window` (one batched metrics call: Invocations/Errors
per function, Count/5XXError of the API, the DLQ arrivals its consumers received last) and simulates
each threshold rule on a canary with those rates, at the strategy's weights and holds (`RUNS` seeded
runs, per-second Poisson traffic, the rule's sliding window and minimum count). A rule that fires in
at least `judge_alpha` of the runs is a warning, with the probability and the *expected* (mean) time
to the false alarm; `deploy` shows it and it is kept as the deployment's `preflight` event.

The mean is over every run, those that never fired within the simulated time (`HORIZON` at least)
counted at its end: when some did not fire it is a lower bound, shown as "≥". With `confirm_with_judge`
an alarm that a judge confirms only waits for it while traffic is split; at 100 % (where no judge can
compare) it acts alone, and ceilings and alarms no judge watches always do: those would roll the
healthy canary back.

`first_breach` (vectorised over runs) is also what `bench/detection.py` simulates backout's
thresholds with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from backout.control.alarms import dlq_scopes
from backout.control.analysis import default_judges
from backout.manifest import Manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_API, NS_BACKOUT, NS_LAMBDA, MetricQuery, Metrics

RUNS = 100
HORIZON = 900  # seconds simulated at least (the time to a false alarm may lie past the holds)


def first_breach(requests: np.ndarray, failures: np.ndarray, window: int, threshold: float,
                 min_requests: float = 0.0, rate: bool = True, where: np.ndarray | None = None) -> np.ndarray:
    """Per run (rows), the first second (column index) at whose end a sliding `window`-second sum of
    `failures` breaches: as a percentage of `requests` > `threshold` with at least `min_requests`
    (`rate`), or as a count > `threshold`; -1 where it never does. Windows start at second 0, as the
    deployment's alarms do. `where` (per second): only the seconds it marks count."""
    def sliding(x: np.ndarray) -> np.ndarray:
        c = np.cumsum(x, axis=1)
        c[:, window:] -= c[:, :-window].copy()
        return c

    f = sliding(failures.astype(float))
    if rate:
        n = sliding(requests.astype(float))
        hit = (n >= max(min_requests, 1e-9)) & (100.0 * f > threshold * np.maximum(n, 1e-9))
    else:
        hit = f > threshold
    if where is not None:
        hit &= where
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), first, -1)


@dataclass(frozen=True)
class Finding:
    """One threshold against the stable version's own rates."""

    alarm: str
    stable_rate: float  # failures per request (or per second for DLQ arrivals)
    requests_per_second: float
    probability: float  # of a false alarm during the strategy's holds
    mean_seconds: float | None  # expected time to the false alarm (None: no run fired in the simulated time)
    mean_at_least: bool  # some runs never fired in the simulated time: `mean_seconds` is a lower bound
    warn: bool
    sentence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights(steps: list[tuple[float, float]], seconds: int) -> np.ndarray:
    """The canary's weight (fraction) in every second of the holds; after them, that of the last
    step with a hold (how long a canary held there would take to fire an alarm)."""
    w = np.zeros(seconds)
    t = 0
    last = 0.0
    for weight, hold in steps:
        n = min(int(math.ceil(hold)), seconds - t)
        if n > 0:
            w[t : t + n] = last = weight / 100.0
            t += n
    w[t:] = last
    return w


def check(manifest: Manifest, env_name: str, platform: Metrics, stable: dict[str, str],
          steps: list[tuple[float, float]], now: float, seed: int = 0,
          target: dict[str, str] | None = None) -> list[Finding]:
    """Every threshold rule of `default_rules` with the stable versions' measured rates. `target`: the new
    versions (which functions change, so which alarms a judge confirms); by default every function changes."""
    env = manifest.environment(env_name)
    target = target or {fn: f"{v}-new" for fn, v in stable.items()}
    judged = {a for j in default_judges(manifest, env_name, target, stable, now) for a in j.confirms}
    window = float(env.preflight_window)
    end = float(math.floor(now))
    fns = [fn for fn in stable if fn in manifest.functions]
    http = [fn for fn in fns if manifest.functions[fn].http_events]
    dlqs = sorted({q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue})
    period = 1 if window <= 10_800 else 60  # GetMetricData's 1 s points reach 3 h back
    whole = int(window // period) * period
    qs: list[MetricQuery] = []
    for fn in fns:
        dims = {"FunctionName": fn, "ExecutedVersion": stable[fn]}
        qs += [MetricQuery.of(NS_LAMBDA, m, dims, end - whole, end, period) for m in ("Invocations", "Errors")]
    api_dims = {"ApiName": manifest.service.name, "Stage": env_name,
                "ExecutedVersion": stable[http[0]] if http else ""}
    if http:
        qs += [MetricQuery.of(NS_API, m, api_dims, end - whole, end, period) for m in ("Count", "5XXError")]
    # as the DLQ rule counts them: the arrivals the stable consumer received last (the whole queue when no
    # deployed function consumes it)
    scopes = [(q, name, dims) for q in dlqs for name, dims in dlq_scopes(manifest, q, stable)]
    qs += [MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, dims, end - whole, end, period) for _, _, dims in scopes]
    got = platform.metrics(qs) if qs else []
    sums = [sum(p.value for p in pts) for pts in got]
    # rates per second over the time the stable version has had traffic in the window, not the window
    first = min((p.timestamp for pts in got for p in pts if p.value > 0), default=end - whole)
    whole = max(1, int(end - first))
    hold = int(sum(math.ceil(h) for _, h in steps))
    seconds = max(hold, HORIZON)
    w = _weights(steps, seconds)
    rng = np.random.default_rng(seed)
    out: list[Finding] = []
    alarm_window = int(round(float(env.alarm_window)))

    def simulate(name: str, lam: float, p: float, win: int, threshold: float, min_n: float, rate: bool,
                 what: str, shared: bool = False) -> None:
        n = rng.poisson(lam * (1.0 if shared else w), size=(RUNS, seconds))
        f = rng.binomial(n, min(max(p, 0.0), 1.0))
        first = first_breach(n, f, win, threshold, min_n, rate)
        alone = None  # an alarm that never waits for a judge
        if env.confirm_with_judge and "ceiling" not in name and name in judged:
            at_100 = _alone(w, win)  # where it would act alone all the same
            alone = first_breach(n, f, win, threshold, min_n, rate, where=at_100) if at_100.any() \
                else np.full(RUNS, -1)
        _finding(out, env, name, lam, p, first, hold, seconds, what, alone)

    for i, fn in enumerate(fns):
        inv, err = sums[2 * i], sums[2 * i + 1]
        if inv > 0:
            what = f"stable v{stable[fn]} of {fn} fails {100 * err / inv:.2g} % of {inv / whole:.3g} invocations/s"
            simulate(f"error-rate:{fn}", inv / whole, err / inv, alarm_window, float(env.error_rate_threshold),
                     env.min_invocations, True, what)
            if env.confirm_with_judge:
                simulate(f"error-rate-ceiling:{fn}", inv / whole, err / inv, alarm_window,
                         float(env.error_rate_ceiling), env.min_invocations, True, what)
    k = 2 * len(fns)
    if http:
        count, fivexx = sums[k], sums[k + 1]
        k += 2
        if count > 0:
            what = (f"stable v{api_dims['ExecutedVersion']} answers {100 * fivexx / count:.2g} % of "
                    f"{count / whole:.3g} requests/s with a 5xx")
            name = "api-5xx" if len({stable[fn] for fn in http}) == 1 else f"api-5xx:{http[0]}"
            simulate(name, count / whole, fivexx / count, int(round(float(env.api_5xx_period))),
                     float(env.api_5xx_threshold), 0, False, what)
    for j, (q, name, dims) in enumerate(scopes):
        arrivals = sums[k + j] / whole
        if arrivals <= 0:
            continue
        if "ExecutedVersion" in dims:  # the canary's own arrivals: its share of the consumer's messages
            simulate(name, arrivals, 1.0, seconds, 0.0, 0, False,
                     f"{q} receives {arrivals * 60:.2g} messages/min that stable v{dims['ExecutedVersion']} "
                     "received last")
        else:  # no deployed consumer: the rule counts every arrival, the stable version's too
            simulate(name, arrivals, 1.0, seconds, 0.0, 0, False,
                     f"{q} receives {arrivals * 60:.2g} messages/min", shared=True)
    return out


def _alone(w: np.ndarray, window: int) -> np.ndarray:
    """Per second, whether an alarm's `window` ending there lies wholly at 100 % (from second 0, as the
    deployment's windows): no judge can confirm what it saw, so it acts alone (`analysis.unjudged`)."""
    split = np.concatenate([[0], np.cumsum(w < 1.0)])  # seconds below 100 % before each second
    t = np.arange(w.size)
    return split[t + 1] - split[np.maximum(t - window + 1, 0)] == 0


def _finding(out: list[Finding], env: Any, name: str, lam: float, p: float, first: np.ndarray, hold: int,
             simulated: int, what: str, alone: np.ndarray | None) -> None:
    """`simulated`: the seconds each run lasted; `alone`: per run, the first second it fires where it would act
    alone all the same (-1: nowhere; None: it never waits for a judge)."""
    fired = first >= 0
    within = fired & (first < max(hold, 1))
    probability = float(np.mean(within))
    # a run that never fired counts at the end of the simulated time: the mean is then a lower bound
    mean_s = float(np.mean(np.where(fired, first + 1.0, simulated))) if fired.any() else None
    at_least = not bool(fired.all())
    warn = probability >= float(env.judge_alpha)
    if mean_s is None:
        when = f"no run fired it within the {simulated} s simulated"
    elif at_least:
        when = (f"mean ≥ {mean_s:.0f} s: {int((~fired).sum())} of {first.size} runs did not fire it within the "
                f"{simulated} s simulated")
    else:
        when = f"mean after {mean_s:.0f} s"
    p_alone = 0.0 if alone is None else float(np.mean((alone >= 0) & (alone < max(hold, 1))))
    if alone is None:
        consequence = "it would roll the healthy canary back"
    elif p_alone == 0:
        consequence = "it waits for its judge (confirm_with_judge)"
    else:
        consequence = (f"at 100 %, where no judge can compare, it would roll the healthy canary back (P ≈ "
                       f"{100 * p_alone:.0f} %)" + ("; below 100 % it waits for its judge (confirm_with_judge)"
                                                    if p_alone < probability else ""))
    sentence = (f"{name}: {what}; a canary as healthy fires it with P ≈ {100 * probability:.0f} % during the "
                f"{hold} s of holds ({when}): {consequence}")
    out.append(Finding(name, p, lam, probability, mean_s, at_least, warn, sentence))
