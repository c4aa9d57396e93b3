"""Canary-vs-stable judges: regressions that no fixed threshold in the manifest anticipates.

The latency judge compares the new version's p99 duration with the stable version's over the same
sliding window (or, when the stable version no longer takes traffic, with its p99 over the window
before the deployment began): ALARM when the canary is both `factor` times slower and at least
`min_delta_ms` slower, once it has `min_samples` invocations. This is the procedure's
"Performance Degradation" scenario without asking anyone to guess a limit in advance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from backout.control.alarms import ALARM, INSUFFICIENT_DATA, OK, Evaluation, MetricSource
from backout.platforms.base import NS_LAMBDA, MetricQuery


def _p99_and_count(source: MetricSource, fn: str, version: int, start: float, end: float) -> tuple[float | None, float]:
    dims = {"FunctionName": fn, "ExecutedVersion": str(version)}
    period = max(1, int(end - start) + 1)
    # one bucket covering [start, end): the smallest aligned period that contains the window
    while int(start // period) != int((end - 1e-9) // period):
        period *= 2
    q = MetricQuery.of(NS_LAMBDA, "Duration", dims, start, end, period, "p99")
    pts = source.metrics(q)
    if not pts:
        return None, 0.0
    return pts[-1].value, pts[-1].sample_count


@dataclass
class LatencyJudge:
    function: str
    canary: int
    stable: int
    deployment_start: float
    window: float = 60.0
    min_samples: int = 20
    factor: float = 3.0
    min_delta_ms: float = 1000.0
    baseline: float | None = None
    _baseline_done: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return f"latency-judge:{self.function}"

    def evaluate(self, source: MetricSource, now: float | None = None) -> Evaluation:
        now = time.time() if now is None else now
        start = max(self.deployment_start, now - self.window)
        if not self._baseline_done:
            self.baseline, _ = _p99_and_count(
                source, self.function, self.stable, self.deployment_start - 300, self.deployment_start
            )
            self._baseline_done = True
        c_p99, c_n = _p99_and_count(source, self.function, self.canary, start, now + 1)
        s_p99, s_n = _p99_and_count(source, self.function, self.stable, start, now + 1)
        ref, ref_label = (
            (s_p99, f"stable v{self.stable} p99 now")
            if s_n >= self.min_samples
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
                now - start,
                f"latency judge: not enough data ({need}) on {subject}",
                now,
                samples=c_n,
            )
        limit = max(ref * self.factor, ref + self.min_delta_ms)
        state = ALARM if c_p99 > limit else OK
        op = ">" if state == ALARM else "≤"
        detail = (
            f"p99 {c_p99:.0f} ms {op} {limit:.0f} ms (max of {self.factor:g}× and +{self.min_delta_ms:g} ms "
            f"over {ref_label} {ref:.0f} ms) over {now - start:.0f} s on {subject}"
        )
        return Evaluation(
            self.name,
            state,
            c_p99,
            limit,
            "GreaterThanThreshold",
            now - start,
            detail,
            now,
            samples=c_n,
            breaching=int(state == ALARM),
            evaluated=1,
        )


@dataclass
class JudgeChange:
    previous: str | None
    evaluation: Evaluation


@dataclass
class JudgeSet:
    judges: list[LatencyJudge]
    current: dict[str, Evaluation] = field(default_factory=dict)

    def evaluate(self, source: MetricSource, now: float | None = None) -> list[JudgeChange]:
        changes = []
        for j in self.judges:
            ev = j.evaluate(source, now)
            prev = self.current.get(j.name)
            self.current[j.name] = ev
            if prev is None or prev.state != ev.state:
                changes.append(JudgeChange(None if prev is None else prev.state, ev))
        return changes

    def alarming(self) -> list[Evaluation]:
        return [e for e in self.current.values() if e.state == ALARM]
