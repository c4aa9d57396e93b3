"""Canary-vs-stable judges: regressions that no fixed threshold in the manifest anticipates.

The latency judge compares the new version's p99 duration with the stable version's over the same
period (or, when the stable version no longer takes traffic, with its p99 before the deployment
began): ALARM when the canary is both `factor` times slower and at least `min_delta_ms` slower,
once it has `min_samples` invocations. This is the procedure's "Performance Degradation" scenario
without asking anyone to guess a limit in advance.

Percentiles of per-second datapoints cannot be merged, so the periods are CloudWatch's: aligned to
the epoch, `period_at_least(window)` long. The judge reads the one still filling (cut at the
deployment's start and at now) and the one before it, and decides on the newest in which the canary
has `min_samples`. Like the alarms, a judge plans its queries (2 per evaluation: canary and stable
p99; +1 on the first, the stable baseline over the `BASELINE_SECONDS` before the deployment) and
decides from one batched call: `evaluate_all` evaluates alarms and judges with ONE metrics call.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from backout.control.alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmSet,
    Evaluation,
    Fetched,
    MetricSource,
    StateChange,
    fetch_for,
)
from backout.platforms.base import NS_LAMBDA, Datapoint, MetricQuery, period_at_least

log = logging.getLogger(__name__)

BASELINE_SECONDS = 300.0  # how far before the deployment the stable baseline looks


def _floor(t: float, period: int) -> float:
    return float(math.floor(t / period) * period)


@dataclass
class LatencyJudge:
    function: str
    canary: str
    stable: str
    deployment_start: float
    window: float = 60.0
    min_samples: int = 20
    factor: float = 3.0
    min_delta_ms: float = 1000.0
    baseline: float | None = None  # given → kept; otherwise fetched on the first evaluation
    _baseline_done: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._baseline_done = self.baseline is not None

    @property
    def name(self) -> str:
        return f"latency-judge:{self.function}"

    @property
    def period(self) -> int:
        """The aligned period the p99s are compared over: the smallest legal one ≥ `window`."""
        return period_at_least(self.window)

    def _top(self, now: float) -> float:
        """The start of the period holding the last second before `now` (the one still filling)."""
        return _floor(math.ceil(now) - 1, self.period)

    def _p99(self, version: str, start: float, end: float) -> MetricQuery:
        dims = {"FunctionName": self.function, "ExecutedVersion": str(version)}
        return MetricQuery.of(NS_LAMBDA, "Duration", dims, start, end, self.period, "p99")

    def _current(self, version: str, now: float) -> MetricQuery:
        """The period still filling and the one before it, none of it before the deployment."""
        return self._p99(version, max(self.deployment_start, self._top(now) - self.period), now)

    def _baseline_query(self) -> MetricQuery:
        ds = self.deployment_start
        return self._p99(self.stable, _floor(ds - BASELINE_SECONDS, self.period), ds)

    def plan(self, now: float) -> list[MetricQuery]:
        """The judge's queries at `now`: canary and stable p99 (+ the baseline until it is known)."""
        qs = [] if self._baseline_done else [self._baseline_query()]
        if now > self.deployment_start:
            qs += [self._current(self.canary, now), self._current(self.stable, now)]
        return qs

    def _pick_baseline(self, points: list[Datapoint]) -> float | None:
        """The newest period before the deployment with `min_samples`, else the fullest one."""
        enough = [d for d in points if d.sample_count >= self.min_samples]
        if enough:
            return enough[-1].value
        return max(points, key=lambda d: d.sample_count).value if points else None

    def decide(self, fetched: Fetched, now: float) -> Evaluation:
        """The judge's verdict at `now` from series fetched for `plan(now)`."""
        if not self._baseline_done:
            self.baseline = self._pick_baseline(fetched.series(self._baseline_query()))
            self._baseline_done = True
        canary: dict[float, Datapoint] = {}
        stable: dict[float, Datapoint] = {}
        if now > self.deployment_start:
            canary = {d.timestamp: d for d in fetched.series(self._current(self.canary, now))}
            stable = {d.timestamp: d for d in fetched.series(self._current(self.stable, now))}
        top = self._top(now)
        newest_first = [t for t in (top, top - self.period) if t + self.period > self.deployment_start]
        # the newest period where the canary has enough invocations, else the newest one
        chosen = next((t for t in newest_first if t in canary and canary[t].sample_count >= self.min_samples), top)
        start = max(self.deployment_start, chosen)
        window = max(0.0, min(chosen + self.period, now) - start)
        c = canary.get(chosen)
        c_p99, c_n = (None, 0.0) if c is None else (c.value, c.sample_count)
        s = stable.get(chosen)
        ref, ref_label = (
            (s.value, f"stable v{self.stable} p99 now")
            if s is not None and s.sample_count >= self.min_samples
            else (self.baseline, f"stable v{self.stable} p99 before the deployment")
        )
        subject = f"{self.function} v{self.canary}"
        if c_p99 is None or c_n < self.min_samples or ref is None:
            need = f"{c_n:.0f}/{self.min_samples} invocations" if ref is not None else "no stable baseline"
            return Evaluation(
                self.name,
                INSUFFICIENT_DATA,
                c_p99,
                0.0,
                "GreaterThanThreshold",
                window,
                f"latency judge: not enough data ({need}) on {subject}",
                now,
                samples=c_n,
            )
        limit = max(ref * self.factor, ref + self.min_delta_ms)
        state = ALARM if c_p99 > limit else OK
        op = ">" if state == ALARM else "≤"
        detail = (
            f"p99 {c_p99:.0f} ms {op} {limit:.0f} ms (max of {self.factor:g}× and +{self.min_delta_ms:g} ms "
            f"over {ref_label} {ref:.0f} ms) over {window:.0f} s on {subject}"
        )
        return Evaluation(
            self.name,
            state,
            c_p99,
            limit,
            "GreaterThanThreshold",
            window,
            detail,
            now,
            samples=c_n,
            breaching=int(state == ALARM),
            evaluated=1,
        )

    def evaluate(self, source: MetricSource, now: float | None = None) -> Evaluation:
        """plan + one `source.metrics` call + decide."""
        now = time.time() if now is None else now
        return self.decide(Fetched.fetch(source, self.plan(now)), now)


@dataclass
class JudgeChange:
    previous: str | None
    evaluation: Evaluation


@dataclass
class JudgeSet:
    """The judges of one deployment and each one's current verdict; `evaluate` returns the changes.
    When the metrics call (or one judge) raises, the judge keeps its verdict (logged, in `errors`)."""

    judges: list[LatencyJudge]
    current: dict[str, Evaluation] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def plan(self, now: float) -> list[MetricQuery]:
        return [q for j in self.judges for q in j.plan(now)]

    def decide(self, fetched: Fetched, now: float) -> list[JudgeChange]:
        changes = []
        for j in self.judges:
            try:
                ev = j.decide(fetched, now)
            except Exception as e:  # one broken judge must not kill the deployer's loop
                self._failed(j, e)
                continue
            self.errors.pop(j.name, None)
            prev = self.current.get(j.name)
            self.current[j.name] = ev
            if prev is None or prev.state != ev.state:
                changes.append(JudgeChange(None if prev is None else prev.state, ev))
        return changes

    def evaluate(self, source: MetricSource, now: float | None = None) -> list[JudgeChange]:
        """plan + one `source.metrics` call + decide."""
        now = time.time() if now is None else now
        fetched = fetch_for(source, now, self)
        return [] if fetched is None else self.decide(fetched, now)

    def unavailable(self, error: Exception) -> None:
        for j in self.judges:
            self._failed(j, error)

    def _failed(self, j: LatencyJudge, e: Exception) -> None:
        self.errors[j.name] = f"{type(e).__name__}: {e}"
        log.warning("judge %s: metrics unavailable: %s", j.name, e)

    def alarming(self) -> list[Evaluation]:
        return [e for e in self.current.values() if e.state == ALARM]


def evaluate_all(
    source: MetricSource, alarms: AlarmSet, judges: JudgeSet, now: float | None = None
) -> list[StateChange | JudgeChange]:
    """One evaluation of a deployment's alarms and judges with ONE metrics call; the state changes
    (each has `previous` and `evaluation`), alarms first. A failed call changes nothing."""
    now = time.time() if now is None else now
    fetched = fetch_for(source, now, alarms, judges)
    if fetched is None:
        return []
    return [*alarms.decide(fetched, now), *judges.decide(fetched, now)]
