"""Alarm rules evaluated over a metric source, with CloudWatch's semantics, once a second.

A rule watches one metric statistic, or the ratio of two (metric math `100 * errors / invocations`),
over `evaluation_periods` periods of `period` seconds, and is in ALARM when `datapoints_to_alarm` of
them breach `threshold` under `comparison`; `treat_missing_data` says what a period without data
means. Unlike CloudWatch, periods *slide*: they end at the evaluation instant rather than on a
period boundary, and the source holds per-second data, so a rule evaluated every second sees a
failure within a second or two of it reaching the metric store, not after a 60 s period closes.

`min_samples` guards small numbers: a period whose denominator (or sample count, for one metric)
has not reached it counts as missing, so 1 failure out of 2 invocations is "not enough data",
never "50 % error rate".

The source is anything with `metrics(MetricQuery) -> list[Datapoint]` (the Platform method).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backout.manifest import Manifest, parse_duration
from backout.platforms.base import (
    DLQ_ARRIVALS,
    NS_API,
    NS_BACKOUT,
    NS_LAMBDA,
    NS_SQS,
    Datapoint,
    MetricQuery,
)

log = logging.getLogger(__name__)

OK = "OK"
ALARM = "ALARM"
INSUFFICIENT_DATA = "INSUFFICIENT_DATA"

# comparison → (test, symbol when breaching, symbol when not)
COMPARISONS: dict[str, tuple[Any, str, str]] = {
    "GreaterThanThreshold": (lambda v, t: v > t, ">", "≤"),
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "≥", "<"),
    "LessThanThreshold": (lambda v, t: v < t, "<", "≥"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "≤", ">"),
}
TREAT_MISSING = ("missing", "notBreaching", "breaching", "ignore")
EXTRA_LOOKBACK_PERIODS = 2  # CloudWatch looks a little further back than N when data is missing
DEFAULT_MIN_SAMPLES = 20


class MetricSource(Protocol):
    def metrics(self, query: MetricQuery) -> list[Datapoint]: ...


@dataclass(frozen=True)
class MetricStat:
    """One metric, exact dimensions, one statistic (`Sum`, `Average`, `p99` …)."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str = "Sum"

    @staticmethod
    def of(namespace: str, metric: str, dimensions: dict[str, str], statistic: str = "Sum") -> MetricStat:
        dims = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        return MetricStat(namespace, metric, dims, statistic)


@dataclass(frozen=True)
class AlarmRule:
    """Either `metric`, or `numerator` and `denominator` (value = 100 × num ÷ den, in percent).

    `period=None` means one window from `since` to now (e.g. "DLQ arrivals since the deployment
    started"); otherwise every window starts no earlier than `since` when it is set.
    `min_samples` defaults to 20 for a ratio (minimum invocations) and 0 for one metric.
    `label`, `unit`, `subject` and `samples_label` only shape the detail sentence."""

    name: str
    threshold: float
    metric: MetricStat | None = None
    numerator: MetricStat | None = None
    denominator: MetricStat | None = None
    comparison: str = "GreaterThanThreshold"
    period: float | None = 60.0
    evaluation_periods: int = 1
    datapoints_to_alarm: int | None = None
    treat_missing_data: str = "missing"
    min_samples: int | None = None
    since: float | None = None
    kind: str = "custom"
    label: str = ""
    unit: str = ""
    subject: str = ""
    samples_label: str = "samples"

    def __post_init__(self) -> None:
        if (self.metric is None) == (self.numerator is None or self.denominator is None):
            raise ValueError(f"alarm {self.name}: give either metric, or numerator and denominator")
        if self.metric is not None and (self.numerator or self.denominator):
            raise ValueError(f"alarm {self.name}: metric excludes numerator/denominator")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"alarm {self.name}: comparison must be one of {', '.join(COMPARISONS)}")
        if self.treat_missing_data not in TREAT_MISSING:
            known = ", ".join(TREAT_MISSING)
            raise ValueError(f"alarm {self.name}: treat_missing_data must be one of {known}")
        if self.evaluation_periods < 1 or not 1 <= self.m <= self.evaluation_periods:
            raise ValueError(f"alarm {self.name}: need 1 <= datapoints_to_alarm <= evaluation_periods")
        if self.period is None and (self.since is None or self.evaluation_periods != 1):
            raise ValueError(f"alarm {self.name}: period=None needs `since` and one evaluation period")
        if self.period is not None and self.period <= 0:
            raise ValueError(f"alarm {self.name}: period must be positive")

    @property
    def is_ratio(self) -> bool:
        return self.metric is None

    @property
    def m(self) -> int:
        return self.evaluation_periods if self.datapoints_to_alarm is None else self.datapoints_to_alarm

    @property
    def guard(self) -> int:
        if self.min_samples is not None:
            return self.min_samples
        return DEFAULT_MIN_SAMPLES if self.is_ratio else 0


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of one rule. `value` and `window_seconds` are those of the newest period with
    data (None when there is none); `numerator`/`denominator` for ratios, `samples` the guard count."""

    alarm: str
    state: str
    value: float | None
    threshold: float
    comparison: str
    window_seconds: float
    detail: str
    ts: float
    numerator: float | None = None
    denominator: float | None = None
    samples: float | None = None
    breaching: int = 0  # breaching datapoints among those evaluated
    evaluated: int = 0  # datapoints evaluated (real + filled-in missing ones)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class _Point:
    """One period's datapoint; `value` None when missing (no data, or under the sample guard)."""

    start: float
    end: float
    value: float | None
    num: float | None = None
    den: float | None = None
    samples: float = 0.0


def _covering_period(start: float, end: float) -> int:
    """The smallest period (≥ the window) whose epoch-aligned bucket holds all of [start, end).

    Metric sources group samples into periods aligned to multiples of the period (as
    GetMetricStatistics does); a sliding window rarely starts on one, and two partial buckets cannot
    be merged exactly for a percentile. With this period the window is one bucket: one exact datapoint.
    """
    lo, hi = math.ceil(start), math.ceil(end)
    width = max(1, hi - lo)
    for p in range(width, width + 100_000):
        if lo // p == (hi - 1) // p:
            return p
    return hi + 1


def _combine(points: Sequence[Datapoint], statistic: str) -> tuple[float, float] | None:
    """(value, sample count) of the datapoints a source returned for one window."""
    if not points:
        return None
    n = sum(p.sample_count for p in points)
    if len(points) == 1:
        return points[0].value, n
    if statistic in ("Sum", "SampleCount"):
        return sum(p.value for p in points), n
    if statistic == "Minimum":
        return min(p.value for p in points), n
    if statistic == "Maximum":
        return max(p.value for p in points), n
    if statistic == "Average":
        return (sum(p.value * p.sample_count for p in points) / n if n else points[-1].value), n
    # A percentile of a union never exceeds the largest of the parts' percentiles: an upper bound.
    return max(p.value for p in points), n


def _query(source: MetricSource, stat: MetricStat, start: float, end: float) -> tuple[float, float] | None:
    q = MetricQuery(stat.namespace, stat.metric, stat.dimensions, start, end, _covering_period(start, end),
                    stat.statistic)
    return _combine(source.metrics(q), stat.statistic)


def _point(rule: AlarmRule, source: MetricSource, start: float, end: float) -> _Point:
    if rule.is_ratio:
        assert rule.numerator is not None and rule.denominator is not None
        den = _query(source, rule.denominator, start, end)
        if den is None or den[0] <= 0:
            return _Point(start, end, None, 0.0, 0.0 if den is None else den[0], 0.0)
        num = _query(source, rule.numerator, start, end)
        num_v = 0.0 if num is None else num[0]  # no error datapoints while invocations exist: 0 errors
        if den[0] < rule.guard:
            return _Point(start, end, None, num_v, den[0], den[0])
        return _Point(start, end, 100.0 * num_v / den[0], num_v, den[0], den[0])
    assert rule.metric is not None
    got = _query(source, rule.metric, start, end)
    if got is None:
        return _Point(start, end, None)
    value, n = got
    if n < rule.guard:
        return _Point(start, end, None, samples=n)
    return _Point(start, end, value, samples=n)


def _windows(rule: AlarmRule, now: float) -> list[tuple[float, float]]:
    """Evaluation range, newest period first: sliding periods ending at `now`, none before `since`."""
    if rule.period is None:
        assert rule.since is not None
        return [(rule.since, now)] if now > rule.since else []
    out = []
    for k in range(rule.evaluation_periods + EXTRA_LOOKBACK_PERIODS):
        end = now - k * rule.period
        start = end - rule.period
        if rule.since is not None:
            if end <= rule.since:
                break
            start = max(start, rule.since)
        out.append((start, end))
    return out


def _fmt(v: float, unit: str) -> str:
    if unit == "%":
        return f"{v:.1f} %"
    s = f"{v:.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:.1f}"
    return f"{s} {unit}" if unit else s


def _fmt_threshold(t: float, unit: str) -> str:
    s = f"{t:g}"
    return f"{s} {unit}" if unit else s


def _describe(rule: AlarmRule, p: _Point | None, filled_breaching: bool, note: str) -> str:
    """One line like `error rate 31.0 % (9/29) > 5 % over 60 s on worker v7`; the symbol tells on
    which side of the threshold the shown value is."""
    label = rule.label or rule.name
    where = f" on {rule.subject}" if rule.subject else ""
    window = 0.0 if p is None else p.end - p.start
    over = f" over {window:.0f} s" if window else ""
    if rule.period is None:
        over += " since the deployment started"
    periods = f" ({note})" if note else ""
    if p is None or p.value is None:
        if p is not None and rule.guard and p.samples < rule.guard:
            have = p.den if rule.is_ratio and p.den is not None else p.samples
            what = f"not enough data ({have:.0f} {rule.samples_label}, needs {rule.guard})"
        else:
            what = "no data"
        if filled_breaching:
            what += ", treated as breaching"
        return f"{label}: {what}{over}{periods}{where}"
    test, sym_breach, sym_ok = COMPARISONS[rule.comparison]
    sym = sym_breach if test(p.value, rule.threshold) else sym_ok
    ratio = f" ({p.num:.0f}/{p.den:.0f})" if rule.is_ratio else ""
    value = _fmt(p.value, rule.unit)
    return f"{label} {value}{ratio} {sym} {_fmt_threshold(rule.threshold, rule.unit)}{over}{periods}{where}"


def evaluate(rule: AlarmRule, source: MetricSource, now: float | None = None,
             previous_state: str | None = None) -> Evaluation:
    """Evaluate `rule` at `now` (default: the current time). `previous_state` matters only for
    `treat_missing_data="ignore"`, which keeps it when the data present cannot decide."""
    now = time.time() if now is None else now
    test = COMPARISONS[rule.comparison][0]
    n, m = rule.evaluation_periods, rule.m

    # Newest first; stop as soon as N real datapoints are found (the usual case: one or two queries).
    points: list[_Point] = []
    real: list[_Point] = []
    for start, end in _windows(rule, now):
        p = _point(rule, source, start, end)
        points.append(p)
        if p.value is not None:
            real.append(p)
            if len(real) == n:
                break
    newest = points[0] if points else None
    shown = real[0] if real else newest

    breaching_real = sum(1 for p in real if test(p.value, rule.threshold))
    missing = n - len(real) if len(real) < n else 0
    tmd = rule.treat_missing_data
    filled_breaching = False
    if len(real) >= n:
        state = ALARM if breaching_real >= m else OK
        evaluated, breaching = n, breaching_real
    elif tmd == "breaching":
        breaching, evaluated = breaching_real + missing, n
        state = ALARM if breaching >= m else OK
        filled_breaching = missing > 0
    elif tmd == "notBreaching":
        breaching, evaluated = breaching_real, n
        state = ALARM if breaching >= m else OK
    elif tmd == "ignore":
        breaching, evaluated = breaching_real, len(real)
        if breaching_real >= m:
            state = ALARM
        elif breaching_real + missing < m:  # even all-breaching missing data could not alarm
            state = OK
        else:
            state = previous_state or INSUFFICIENT_DATA
    else:  # "missing": decide on the real datapoints alone; none at all → INSUFFICIENT_DATA
        breaching, evaluated = breaching_real, len(real)
        if not real:
            state = INSUFFICIENT_DATA
        else:
            state = ALARM if breaching_real >= min(m, len(real)) else OK

    note = f"{breaching} of {evaluated} periods breaching, {m} needed" if n > 1 else ""
    detail = _describe(rule, shown, filled_breaching and (shown is None or shown.value is None), note)
    return Evaluation(
        alarm=rule.name,
        state=state,
        value=None if shown is None else shown.value,
        threshold=rule.threshold,
        comparison=rule.comparison,
        window_seconds=0.0 if shown is None else round(shown.end - shown.start, 3),
        detail=detail,
        ts=now,
        numerator=shown.num if shown is not None and rule.is_ratio else None,
        denominator=shown.den if shown is not None and rule.is_ratio else None,
        samples=None if shown is None else shown.samples,
        breaching=breaching,
        evaluated=evaluated,
    )


@dataclass(frozen=True)
class StateChange:
    """A rule whose state differs from its previous evaluation (`previous` None on the first one)."""

    rule: AlarmRule
    previous: str | None
    evaluation: Evaluation

    @property
    def state(self) -> str:
        return self.evaluation.state


@dataclass
class AlarmSet:
    """The rules of one deployment and each one's current state.

    `evaluate()` returns only the changes, so the deployer stores each with its value, threshold
    and window; a rule whose source raises keeps its state (logged, in `errors`)."""

    rules: list[AlarmRule]
    _current: dict[str, Evaluation] = field(default_factory=dict, init=False, repr=False)
    errors: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = {x for x in names if names.count(x) > 1}
        if dupes:
            raise ValueError(f"duplicate alarm names: {', '.join(sorted(dupes))}")

    def evaluate(self, source: MetricSource, now: float | None = None) -> list[StateChange]:
        now = time.time() if now is None else now
        changes: list[StateChange] = []
        for rule in self.rules:
            prev = self._current.get(rule.name)
            try:
                ev = evaluate(rule, source, now, previous_state=None if prev is None else prev.state)
            except Exception as e:  # a flaky metric source must not kill the deployer's loop
                with self._lock:
                    self.errors[rule.name] = f"{type(e).__name__}: {e}"
                log.warning("alarm %s: metrics unavailable: %s", rule.name, e)
                continue
            with self._lock:
                self._current[rule.name] = ev
                self.errors.pop(rule.name, None)
            if prev is None or prev.state != ev.state:
                changes.append(StateChange(rule, None if prev is None else prev.state, ev))
        return changes

    @property
    def current(self) -> dict[str, Evaluation]:
        """The latest evaluation of every rule evaluated so far (a copy: safe to read from any thread)."""
        with self._lock:
            return dict(self._current)

    def alarming(self) -> list[Evaluation]:
        return [e for e in self.current.values() if e.state == ALARM]


# --- the procedure's default rules -------------------------------------------------------------
def _seconds(v: Any) -> float:
    return parse_duration(v) if isinstance(v, str) else float(v)


def _limits(*sources: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for src in sources:
        for k, v in (src or {}).items():
            if v is not None:
                out[k] = _seconds(v)
    return out


def default_rules(
    manifest: Manifest,
    env_name: str,
    functions: Iterable[str],
    canary_version: int,
    deployment_start: float,
) -> list[AlarmRule]:
    """The alarms of `rollback-procedures.md`, scoped to the new version so that an alarm already
    firing on the stable version cannot block the deployment that fixes it:

    - `error-rate:<fn>`: Errors ÷ Invocations of the canary > `error_rate_threshold` % over a sliding
      `alarm_window` (default 60 s), deciding only after `min_invocations`;
    - `api-5xx`: 5XX responses the canary served > `api_5xx_threshold` over a sliding
      `api_5xx_period` (only when the service has HTTP events);
    - `dlq-arrivals:<dlq>`: any message moved into a DLQ since the deployment started;
    - `duration-p99:<fn>`: p99 duration of the canary > a per-function limit, if configured
      (`duration_p99_limits = { fn = "3s" }` on the environment, or `duration_p99_limit` on the function);
    - `queue-age:<queue>`: age of the oldest message > a limit, if configured (`queue_age_limits`).
    Every window starts no earlier than `deployment_start`."""
    env = manifest.environment(env_name)
    v = str(canary_version)
    window = _seconds(getattr(env, "alarm_window", 60.0))
    fns = list(functions)
    rules: list[AlarmRule] = []

    for fn in fns:
        dims = {"FunctionName": fn, "ExecutedVersion": v}
        rules.append(AlarmRule(
            name=f"error-rate:{fn}", kind="error_rate",
            numerator=MetricStat.of(NS_LAMBDA, "Errors", dims, "Sum"),
            denominator=MetricStat.of(NS_LAMBDA, "Invocations", dims, "Sum"),
            threshold=float(env.error_rate_threshold), comparison="GreaterThanThreshold",
            period=window, treat_missing_data="missing", min_samples=env.min_invocations,
            since=deployment_start, label="error rate", unit="%", subject=f"{fn} v{v}",
            samples_label="invocations",
        ))

    if any(f.http_events for f in manifest.functions.values()):
        rules.append(AlarmRule(
            name="api-5xx", kind="api_5xx",
            metric=MetricStat.of(NS_API, "5XXError",
                                 {"ApiName": manifest.service.name, "Stage": env_name, "ExecutedVersion": v}),
            threshold=float(env.api_5xx_threshold), comparison="GreaterThanThreshold",
            period=float(env.api_5xx_period), treat_missing_data="notBreaching", min_samples=0,
            since=deployment_start, label="API 5xx", subject=f"{manifest.service.name} v{v}",
        ))

    dlqs = sorted({q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue})
    for dlq in dlqs:
        rules.append(AlarmRule(
            name=f"dlq-arrivals:{dlq}", kind="dlq_arrivals",
            metric=MetricStat.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": dlq}),
            threshold=0.0, comparison="GreaterThanThreshold", period=None,
            treat_missing_data="notBreaching", min_samples=0, since=deployment_start,
            label="DLQ arrivals", subject=dlq,
        ))

    p99 = _limits({n: getattr(f, "duration_p99_limit", None) for n, f in manifest.functions.items()},
                  getattr(env, "duration_p99_limits", None))
    for fn in fns:
        if fn in p99:
            rules.append(AlarmRule(
                name=f"duration-p99:{fn}", kind="duration_p99",
                metric=MetricStat.of(NS_LAMBDA, "Duration", {"FunctionName": fn, "ExecutedVersion": v},
                                     "p99"),
                threshold=p99[fn] * 1000.0, comparison="GreaterThanThreshold", period=window,
                treat_missing_data="missing", min_samples=env.min_invocations, since=deployment_start,
                label="duration p99", unit="ms", subject=f"{fn} v{v}", samples_label="invocations",
            ))

    for queue, limit in sorted(_limits(getattr(env, "queue_age_limits", None)).items()):
        rules.append(AlarmRule(
            name=f"queue-age:{queue}", kind="queue_age",
            metric=MetricStat.of(NS_SQS, "ApproximateAgeOfOldestMessage", {"QueueName": queue}, "Maximum"),
            threshold=limit, comparison="GreaterThanThreshold", period=window,
            treat_missing_data="notBreaching", min_samples=0, since=deployment_start,
            label="age of oldest message", unit="s", subject=queue,
        ))
    return rules
