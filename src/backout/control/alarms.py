"""Alarm rules evaluated over a metric source, with CloudWatch's semantics, once a second.

A rule watches one metric statistic, or the ratio of two (metric math `100 * errors / invocations`),
over `evaluation_periods` periods of `period` seconds, and is in ALARM when `datapoints_to_alarm` of
them breach `threshold` under `comparison`; `treat_missing_data` says what a period without data means.
Unlike CloudWatch, periods of a summable statistic (Sum, SampleCount, Minimum, Maximum, Average, a
trimmed count between absolute values such as `TC(250:)`) *slide*: they end at the evaluation instant
rather than on a period boundary, built client-side from 1 s datapoints, so a rule evaluated every
second sees a failure within a second or two of it reaching the metric store, not after a 60 s period
closes, and the sums are exact.

Percentiles (p50, p90, p99 …) of per-second datapoints cannot be merged into the percentile of a
window, so a percentile rule keeps CloudWatch's own semantics: *tumbling* periods of
`period_at_least(period)` seconds aligned to the epoch, the newest one still filling (it holds the
data up to the evaluation instant; under `min_samples` it counts as missing and the look-back
reaches the previous, complete one).

`min_samples` guards small numbers: a period whose denominator (or sample count, for one metric)
has not reached it counts as missing, so 1 failure out of 2 invocations is "not enough data",
never "50 % error rate".

Queries are those CloudWatch accepts (periods of 1, 5, 10, 30 s or multiples of 60 s) and every
query of one evaluation goes in ONE call: each rule *plans* its queries (`plan_rule`: one per
metric statistic over its whole look-back range, 1 s for summable statistics, or 60 s multiples
beyond `HIGH_RESOLUTION_RANGE` where CloudWatch keeps no sub-minute data), `Fetched.fetch` merges
identical series and asks the source once (`metrics(queries) -> series`, GetMetricData), and each
rule *decides* from the fetched series (`decide_rule`). `AlarmSet.evaluate` is plan + one call +
decide; `backout.control.analysis.evaluate_all` does the same for alarms and judges together.

Query budget per evaluation (GetMetricData takes 500 queries per call and charges per metric):
`default_rules` plans 2 per function (Errors and Invocations of its canary version) + 1 for `api-5xx` (1
per HTTP function when their canary versions differ) + 1 per DLQ + 1 per configured p99 duration limit +
1 per configured queue-age limit; with `confirm_with_judge` the ceilings add 1 (the API's Count; their
Errors/Invocations/5XXError are the same series as the thresholds'). Each alarm of the environment's
`alarms` table plans 1 (1 per function when it is one per function). The judges
(`backout.control.analysis`) ask, in an evaluation after a second has closed, per changed function with
an event source 4 (errors: Errors and Invocations of both versions) + 2 (latency: Duration of both
versions), 4 for the API's 5xx (5XXError and Count of both versions; the HTTP function's Errors are
shared), 2 per DLQ consumer (its DLQ arrivals per version; the invocations are the errors judge's
series) and 2 per function with a p99 duration limit (the slow-requests judge: Duration's `TC(limit:)`
of both versions; the invocations are the errors judge's). The SDA manifest (`backout.toml`: 4 functions
of which 3 have an event source, one HTTP function, one DLQ, no limits) in prod, every function changed:
2×4 + 1 + 1 + 1 = 11 for the alarms, + 3×4 + 4 + 2 + 3×2 = 24 for the judges: 35 queries in an
evaluation after a second closed, 11 in the others — one call each (with `consistent_metrics` the errors
judges also read the second still filling, so they ask in every evaluation).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from backout.manifest import AlarmSpec, Manifest, parse_duration
from backout.platforms.base import (
    DLQ_ARRIVALS,
    LIVE_ALIAS,
    MAX_QUERIES,
    NS_ALARM_STATE,
    NS_API,
    NS_BACKOUT,
    NS_LAMBDA,
    NS_SQS,
    Datapoint,
    MetricQuery,
    period_at_least,
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
SUMMABLE = ("Sum", "SampleCount", "Minimum", "Maximum", "Average")  # exact over any union of periods
HIGH_RESOLUTION_RANGE = 3 * 3600  # CloudWatch keeps sub-minute periods 3 h: 10,800 points at 1 s
MAX_POINTS = 10_800  # points per query beyond which a coarser (60 s multiple) period is asked
CLOUDWATCH_ALARM_WINDOW = 10.0  # the window holding an existing CloudWatch alarm's state datapoint (now)


class MetricSource(Protocol):
    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        """GetMetricData: one series per query, oldest datapoint first (the Platform method)."""
        ...


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

    @property
    def percentile(self) -> bool:
        """Percentiles of parts do not give the percentile of the whole: they need aligned periods."""
        return not summable(self.statistic)

    def query(self, start: float, end: float, period: int) -> MetricQuery:
        return MetricQuery(self.namespace, self.metric, self.dimensions, start, end, period, self.statistic)


def trimmed_count(statistic: str) -> bool:
    """CloudWatch's trimmed count between absolute values, `TC(250:)` (samples > 250) or `TC(100:900)`:
    a count, so it adds up over periods like a Sum (bounds in percent, `TC(10%:90%)`, do not)."""
    return statistic[:3].upper() == "TC(" and statistic.endswith(")") and "%" not in statistic


def summable(statistic: str) -> bool:
    """Whether the statistic of a union of periods follows from the parts' (sliding windows need it)."""
    return statistic in SUMMABLE or trimmed_count(statistic)


def _floor(t: float, period: int) -> float:
    """The start of the epoch-aligned period holding instant `t`."""
    return float(math.floor(t / period) * period)


def _merge_key(q: MetricQuery) -> tuple[Any, ...]:
    """Queries with one key ask the same series; an unaligned start or end is part of the key, as
    widening it would change the first or last period's content (the store clips it there)."""
    return (q.namespace, q.metric, q.dimensions, q.statistic, q.period,
            q.start if q.start % q.period else None, q.end if q.end % q.period else None)


def merge_queries(queries: Iterable[MetricQuery]) -> list[MetricQuery]:
    """One query per series: those with the same key become one over the union of their ranges
    (first-seen order kept), so rules and judges watching one metric share it."""
    merged: dict[tuple[Any, ...], MetricQuery] = {}
    for q in queries:
        k = _merge_key(q)
        have = merged.get(k)
        if have is None:
            merged[k] = q
        elif have.start > q.start or have.end < q.end:
            merged[k] = MetricQuery(q.namespace, q.metric, q.dimensions, min(have.start, q.start),
                                    max(have.end, q.end), q.period, q.statistic)
    return list(merged.values())


@dataclass(frozen=True)
class Fetched:
    """The series one batched metrics call answered, looked up by the query a rule planned."""

    answers: dict[MetricQuery, list[Datapoint]] = field(default_factory=dict)

    @classmethod
    def fetch(cls, source: MetricSource, queries: Iterable[MetricQuery]) -> Fetched:
        """Merge `queries` and ask `source` once (once per `MAX_QUERIES` beyond GetMetricData's limit;
        not at all for none)."""
        merged = merge_queries(queries)
        answers: dict[MetricQuery, list[Datapoint]] = {}
        for i in range(0, len(merged), MAX_QUERIES):
            batch = merged[i : i + MAX_QUERIES]
            got = source.metrics(batch)
            if len(got) != len(batch):
                raise ValueError(f"metric source answered {len(got)} series for {len(batch)} queries")
            answers.update(zip(batch, got, strict=True))
        return cls(answers)

    @property
    def queries(self) -> list[MetricQuery]:
        return list(self.answers)

    def series(self, q: MetricQuery) -> list[Datapoint]:
        """The datapoints of `q`: its own answer, or those of the merged query that covers it."""
        got = self.answers.get(q)
        if got is not None:
            return got
        key = _merge_key(q)
        for asked, points in self.answers.items():
            if _merge_key(asked) == key and asked.start <= q.start and q.end <= asked.end:
                lo = _floor(q.start, q.period)
                return [d for d in points if lo <= d.timestamp < q.end]
        raise KeyError(f"{q.namespace} {q.metric} {dict(q.dimensions)} {q.statistic} was not fetched")


@dataclass(frozen=True)
class AlarmRule:
    """Either `metric`, or `numerator` and `denominator` (value = 100 × num ÷ den, in percent).

    `period=None` means one window from `since` to now (e.g. "DLQ arrivals since the deployment
    started"), for a summable statistic only; otherwise every window starts no earlier than `since`
    when it is set. Windows slide, except on a percentile: aligned periods of `period_at_least(period)`.
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
        if self.period is None and any(st.percentile for st in self.stats):
            raise ValueError(f"alarm {self.name}: period=None needs a summable statistic"
                             f" ({', '.join(SUMMABLE)}), not a percentile")

    @property
    def is_ratio(self) -> bool:
        return self.metric is None

    @property
    def stats(self) -> tuple[MetricStat, ...]:
        """The statistics the rule reads: (metric,) or (denominator, numerator)."""
        if self.metric is not None:
            return (self.metric,)
        assert self.numerator is not None and self.denominator is not None
        return (self.denominator, self.numerator)

    @property
    def bucket(self) -> int | None:
        """The aligned period of a rule on a percentile (tumbling periods); None when it slides."""
        if self.period is None or not any(st.percentile for st in self.stats):
            return None
        return period_at_least(self.period)

    @property
    def m(self) -> int:
        return self.evaluation_periods if self.datapoints_to_alarm is None else self.datapoints_to_alarm

    @property
    def guard(self) -> int:
        if self.min_samples is not None:
            return self.min_samples
        return DEFAULT_MIN_SAMPLES if self.is_ratio else 0


@dataclass(frozen=True)
class CanaryEvidence:
    """What a judge knows about the canary against the stable version: the e-value of "the canary is
    no worse" (rejected at `threshold` = 1/α of the judge), the estimated rate ratio canary ÷ stable
    (None: no event compared yet, or ∞ when `low` is set: every event compared was the canary's) with
    its anytime-valid confidence interval (`high` None: unbounded), and the counts it rests on.
    An alarm's decision carries the evidence of the judge that watches the same signal. `kind`
    says what the counts are: `count` — events of requests; `latency` — seconds in which the slowest
    request was the canary's beyond the stable's (canary events) or not (stable events), beside each
    version's requests."""

    judge: str
    e_value: float
    threshold: float
    ratio: float | None
    low: float | None
    high: float | None
    canary_events: float
    canary_requests: float
    stable_events: float
    stable_requests: float
    seconds: float
    kind: str = "count"

    def sentence(self, named: bool = True) -> str:
        """`errors-judge:api: e-value 1.2e+03 ≥ 700, ratio 3.1 (CI 1.9–5.3), canary 41/802, stable
        120/7210 over 160 s` (without the judge's name when not `named`); a latency judge's counts say
        `the canary's slowest beyond the stable's in 10 of 12 s compared, requests canary 51, stable 50`."""
        op = "≥" if self.e_value >= self.threshold else "<"
        if self.low is None:  # no event yet in a second both versions served
            ratio = "no events to compare yet"
        else:  # no estimate but an interval: every event compared was the canary's
            ratio = f"ratio {fmt_ratio(self.ratio, '∞')} (CI {fmt_ratio(self.low, '0')}–{fmt_ratio(self.high, '∞')})"
        name = f"{self.judge}: " if named else ""
        if self.kind == "latency":
            counts = (f"the canary's slowest beyond the stable's in {self.canary_events:.0f} of "
                      f"{self.canary_events + self.stable_events:.0f} s compared, requests canary "
                      f"{self.canary_requests:.0f}, stable {self.stable_requests:.0f}")
        else:
            counts = (f"canary {self.canary_events:.0f}/{self.canary_requests:.0f}, stable "
                      f"{self.stable_events:.0f}/{self.stable_requests:.0f}")
        return (f"{name}e-value {fmt_e(self.e_value)} {op} {fmt_e(self.threshold)}, {ratio}, {counts} "
                f"over {self.seconds:.0f} s")


def fmt_e(v: float) -> str:
    """An e-value or its threshold: `3.2`, `700`, `1.2e+05`."""
    return f"{v:.3g}" if v < 1e4 else f"{v:.2e}"


def fmt_ratio(v: float | None, missing: str) -> str:
    """A rate ratio to two significant digits; `missing` (e.g. `∞` for an open upper bound) when None."""
    if v is None:
        return missing
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of one rule. `value` and `window_seconds` are those of the newest period with
    data (None when there is none); `numerator`/`denominator` for ratios, `samples` the guard count;
    `evidence` a judge's comparison of canary and stable (a judge's own, or for an alarm its judge's)."""

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
    evidence: CanaryEvidence | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["evidence"] = None if self.evidence is None else asdict(self.evidence)
        return out


@dataclass(frozen=True)
class _Point:
    """One period's datapoint; `value` None when missing (no data, or under the sample guard)."""

    start: float
    end: float
    value: float | None
    num: float | None = None
    den: float | None = None
    samples: float = 0.0


def _combine(points: Sequence[Datapoint], statistic: str) -> tuple[float, float] | None:
    """(value, sample count) of the datapoints a source returned for one window."""
    if not points:
        return None
    n = sum(p.sample_count for p in points)
    if len(points) == 1:
        return points[0].value, n
    if statistic in ("Sum", "SampleCount") or trimmed_count(statistic):
        return sum(p.value for p in points), n
    if statistic == "Minimum":
        return min(p.value for p in points), n
    if statistic == "Maximum":
        return max(p.value for p in points), n
    if statistic == "Average":
        return (sum(p.value * p.sample_count for p in points) / n if n else points[-1].value), n
    # A percentile of a union never exceeds the largest of the parts' percentiles: an upper bound.
    return max(p.value for p in points), n


def _resolution(start: float, end: float) -> int:
    """The period of a summable statistic's query over [start, end): 1 s (exact sliding windows)
    unless the range reaches past CloudWatch's 3 h of sub-minute data, then a multiple of 60 s."""
    if end - start <= HIGH_RESOLUTION_RANGE:
        return 1
    return max(60, period_at_least((end - start) / MAX_POINTS))


def _rule_query(rule: AlarmRule, stat: MetricStat, windows: Sequence[tuple[float, float]]) -> MetricQuery:
    """One query for `stat` over every window of the rule (they are all cut from its series)."""
    lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
    if rule.bucket is not None:  # the oldest period's aligned start, or `since` inside it (clipped)
        return stat.query(lo, hi, rule.bucket)
    period = _resolution(lo, hi)
    return stat.query(_floor(lo, period), hi, period)


def _window(points: Sequence[Datapoint], q: MetricQuery, start: float, end: float,
            aligned: bool) -> tuple[float, float] | None:
    """(value, sample count) of the window [start, end) from a fetched series.

    A sliding window takes the datapoints whose period starts at a second in it (exact at 1 s; within
    one period at coarser ones); an aligned window is the one period that holds it."""
    if aligned:
        t = _floor(start, q.period)
        inside = [d for d in points if d.timestamp == t]
    else:
        lo, hi = math.ceil(start), math.ceil(end)  # seconds s with start <= s < end
        inside = [d for d in points if lo <= d.timestamp < hi]
    return _combine(inside, q.statistic)


def _point(rule: AlarmRule, series: dict[MetricStat, tuple[MetricQuery, list[Datapoint]]],
           start: float, end: float) -> _Point:
    aligned = rule.bucket is not None

    def stat(s: MetricStat | None) -> tuple[float, float] | None:
        assert s is not None
        q, points = series[s]
        return _window(points, q, start, end, aligned)

    if rule.is_ratio:
        den = stat(rule.denominator)
        if den is None or den[0] <= 0:
            return _Point(start, end, None, 0.0, 0.0 if den is None else den[0], 0.0)
        num = stat(rule.numerator)
        num_v = 0.0 if num is None else num[0]  # no error datapoints while invocations exist: 0 errors
        if den[0] < rule.guard:
            return _Point(start, end, None, num_v, den[0], den[0])
        return _Point(start, end, 100.0 * num_v / den[0], num_v, den[0], den[0])
    got = stat(rule.metric)
    if got is None:
        return _Point(start, end, None)
    value, n = got
    if n < rule.guard:
        return _Point(start, end, None, samples=n)
    return _Point(start, end, value, samples=n)


def _windows(rule: AlarmRule, now: float) -> list[tuple[float, float]]:
    """Evaluation range, newest period first, none before `since`: sliding periods ending at `now`,
    or for a percentile the aligned periods up to the one still filling (cut at `now`)."""
    if rule.period is None:
        assert rule.since is not None
        return [(rule.since, now)] if now > rule.since else []
    step: float = rule.period
    top = now - rule.period
    if rule.bucket is not None:
        step = rule.bucket
        top = _floor(math.ceil(now) - 1, rule.bucket)  # the period holding the last second before now
    out = []
    for k in range(rule.evaluation_periods + EXTRA_LOOKBACK_PERIODS):
        start = top - k * step
        end = min(start + step, now)
        if rule.since is not None:
            if end <= rule.since:
                break
            start = max(start, rule.since)
        if end > start:
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


def plan_rule(rule: AlarmRule, now: float) -> list[MetricQuery]:
    """The queries `rule` needs at `now`: one per statistic over its whole look-back range."""
    windows = _windows(rule, now)
    return [_rule_query(rule, st, windows) for st in rule.stats] if windows else []


def evaluate(rule: AlarmRule, source: MetricSource, now: float | None = None,
             previous_state: str | None = None) -> Evaluation:
    """Evaluate `rule` at `now` (default: the current time) with one metrics call. `previous_state`
    matters only for `treat_missing_data="ignore"`, which keeps it when the data present cannot decide."""
    now = time.time() if now is None else now
    return decide_rule(rule, Fetched.fetch(source, plan_rule(rule, now)), now, previous_state)


def decide_rule(rule: AlarmRule, fetched: Fetched, now: float, previous_state: str | None = None) -> Evaluation:
    """Evaluate `rule` at `now` from series fetched for `plan_rule(rule, now)` (or a superset)."""
    test = COMPARISONS[rule.comparison][0]
    n, m = rule.evaluation_periods, rule.m

    windows = _windows(rule, now)
    series: dict[MetricStat, tuple[MetricQuery, list[Datapoint]]] = {}
    if windows:
        for st in rule.stats:
            q = _rule_query(rule, st, windows)
            series[st] = (q, fetched.series(q))

    # Newest first; stop as soon as N real datapoints are found.
    points: list[_Point] = []
    real: list[_Point] = []
    for start, end in windows:
        p = _point(rule, series, start, end)
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


class Planner(Protocol):
    """What one evaluation asks of the metrics (AlarmSet, JudgeSet), and how it records their absence."""

    def plan(self, now: float) -> list[MetricQuery]: ...

    def unavailable(self, error: Exception) -> None: ...


def fetch_for(source: MetricSource, now: float, *planners: Planner) -> Fetched | None:
    """Every planner's queries in one batched call; when that call fails, every planner keeps its
    states (recording the error) and None says there is nothing to decide from this time."""
    try:
        return Fetched.fetch(source, [q for p in planners for q in p.plan(now)])
    except Exception as e:  # a flaky metric source must not kill the deployer's loop
        for p in planners:
            p.unavailable(e)
        return None


@dataclass
class AlarmSet:
    """The rules of one deployment and each one's current state.

    `evaluate()` (or `plan` + `Fetched.fetch` + `decide`) returns only the changes, so the deployer
    stores each with its value, threshold and window; when the metrics call raises every rule keeps
    its state (logged, in `errors`)."""

    rules: list[AlarmRule]
    _current: dict[str, Evaluation] = field(default_factory=dict, init=False, repr=False)
    errors: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = {x for x in names if names.count(x) > 1}
        if dupes:
            raise ValueError(f"duplicate alarm names: {', '.join(sorted(dupes))}")

    def plan(self, now: float) -> list[MetricQuery]:
        """Every query the rules need at `now`, merged: what one evaluation asks in one call."""
        return merge_queries(q for rule in self.rules for q in plan_rule(rule, now))

    def decide(self, fetched: Fetched, now: float) -> list[StateChange]:
        """Evaluate every rule from `fetched` (holding at least `plan(now)`); only the changes."""
        changes: list[StateChange] = []
        for rule in self.rules:
            prev = self._current.get(rule.name)
            try:
                ev = decide_rule(rule, fetched, now, previous_state=None if prev is None else prev.state)
            except Exception as e:  # one broken rule must not kill the deployer's loop
                self._failed(rule, e)
                continue
            with self._lock:
                self._current[rule.name] = ev
                self.errors.pop(rule.name, None)
            if prev is None or prev.state != ev.state:
                changes.append(StateChange(rule, None if prev is None else prev.state, ev))
        return changes

    def evaluate(self, source: MetricSource, now: float | None = None) -> list[StateChange]:
        """plan + one `source.metrics` call + decide."""
        now = time.time() if now is None else now
        fetched = fetch_for(source, now, self)
        return [] if fetched is None else self.decide(fetched, now)

    def unavailable(self, error: Exception) -> None:
        """The batched call failed: every rule keeps its state, each with the error in `errors`."""
        for rule in self.rules:
            self._failed(rule, error)

    def _failed(self, rule: AlarmRule, e: Exception) -> None:
        with self._lock:
            self.errors[rule.name] = f"{type(e).__name__}: {e}"
        log.warning("alarm %s: metrics unavailable: %s", rule.name, e)

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


def dlq_scopes(manifest: Manifest, dlq: str, versions: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """(rule name, dimensions) of the DLQ rule: arrivals last received by the new version of the deployed
    functions that consume the DLQ's source queues; one rule per consumer when their versions differ
    (ExecutedVersion carries no function name). No deployed consumer: the whole queue."""
    sources = {n for n, q in manifest.queues.items() if q.dead_letter_queue == dlq}
    consumers = [fn for fn, f in manifest.functions.items()
                 if fn in versions and any(e.queue in sources for e in f.queue_events)]
    scoped = sorted({str(versions[fn]) for fn in consumers})
    if not scoped:
        return [(f"dlq-arrivals:{dlq}", {"QueueName": dlq})]
    if len(scoped) == 1:
        return [(f"dlq-arrivals:{dlq}", {"QueueName": dlq, "ExecutedVersion": scoped[0]})]
    return [(f"dlq-arrivals:{dlq}:{fn}", {"QueueName": dlq, "ExecutedVersion": str(versions[fn])}) for fn in consumers]


def _error_rate_rule(fn: str, v: str, name: str, kind: str, label: str, threshold: float, window: float,
                     min_samples: int, since: float) -> AlarmRule:
    """Errors ÷ Invocations of one function version, in %, over a sliding window: the procedure's threshold
    rule and the ceiling under confirm_with_judge differ only in name, kind and threshold."""
    dims = {"FunctionName": fn, "ExecutedVersion": v}
    return AlarmRule(
        name=name, kind=kind,
        numerator=MetricStat.of(NS_LAMBDA, "Errors", dims, "Sum"),
        denominator=MetricStat.of(NS_LAMBDA, "Invocations", dims, "Sum"),
        threshold=threshold, comparison="GreaterThanThreshold", period=window, treat_missing_data="missing",
        min_samples=min_samples, since=since, label=label, unit="%", subject=f"{fn} v{v}",
        samples_label="invocations",
    )


def _http_functions(manifest: Manifest, versions: dict[str, str]) -> list[str]:
    """The deployed functions that answer the API (their versions are the gateway's ExecutedVersion)."""
    return [fn for fn in versions if fn in manifest.functions and manifest.functions[fn].http_events]


def default_rules(
    manifest: Manifest,
    env_name: str,
    versions: dict[str, str],
    deployment_start: float,
) -> list[AlarmRule]:
    """The alarms of `rollback-procedures.md`, scoped to the new version of each function (`versions`:
    function → its canary version) so that an alarm already firing on the stable version cannot
    block the deployment that fixes it:

    - `error-rate:<fn>`: Errors ÷ Invocations of the canary > `error_rate_threshold` % over a sliding
      `alarm_window` (default 60 s), deciding only after `min_invocations`;
    - `api-5xx`: 5XX responses the canary served > `api_5xx_threshold` over a sliding
      `api_5xx_period` (only when the service has HTTP events); the gateway's ExecutedVersion is
      that of the HTTP function, so when HTTP functions have different canary versions there is one
      `api-5xx:<fn>` per function (the dimension carries no function name: a number shared with
      another HTTP function's version counts its responses too);
    - `dlq-arrivals:<dlq>`: any message moved into a DLQ since the deployment started that the new
      version of its consumer received last (`{QueueName, ExecutedVersion}`: the stable version's late
      failures are not the canary's); a message with no known receiver counts for the queue only; a
      DLQ whose source queues no deployed function consumes is watched as a whole;
    - `duration-p99:<fn>`: p99 duration of the canary > a per-function limit, if configured
      (`duration_p99_limits = { fn = "3s" }` on the environment, or `duration_p99_limit` on the function;
      held in seconds, compared in the metric's milliseconds),
      over aligned periods of `alarm_window` (a percentile cannot slide);
    - `queue-age:<queue>`: age of the oldest message > a limit, if configured (`queue_age_limits`);
    - `cloudwatch:<alarm>`: an existing CloudWatch alarm the aws environment names (`aws.alarms`) is in
      ALARM when read (the platform answers the `NS_ALARM_STATE` metric from describe_alarms at each
      evaluation: one datapoint, now, 1 in ALARM);
    - the environment's own alarms on any metric (`[environments.X.alarms.NAME]`, `custom_rules`).
    Every window starts no earlier than `deployment_start`."""
    env = manifest.environment(env_name)
    window = _seconds(getattr(env, "alarm_window", 60.0))
    fns = list(versions)
    rules: list[AlarmRule] = []

    for fn in fns:
        rules.append(_error_rate_rule(fn, str(versions[fn]), f"error-rate:{fn}", "error_rate", "error rate",
                                      float(env.error_rate_threshold), window, env.min_invocations,
                                      deployment_start))

    http = _http_functions(manifest, versions)
    http_versions = sorted({str(versions[fn]) for fn in http})
    service = manifest.service.name
    api_rules = ([("api-5xx", http_versions[0], service)] if len(http_versions) == 1
                 else [(f"api-5xx:{fn}", str(versions[fn]), fn) for fn in http])
    for name, v, who in api_rules:
        rules.append(AlarmRule(
            name=name, kind="api_5xx",
            metric=MetricStat.of(NS_API, "5XXError", {"ApiName": service, "Stage": env_name, "ExecutedVersion": v}),
            threshold=float(env.api_5xx_threshold), comparison="GreaterThanThreshold",
            period=float(env.api_5xx_period), treat_missing_data="notBreaching", min_samples=0,
            since=deployment_start, label="API 5xx", subject=f"{who} v{v}",
        ))

    dlqs = sorted({q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue})
    for dlq in dlqs:
        for name, dims in dlq_scopes(manifest, dlq, versions):
            rules.append(AlarmRule(
                name=name, kind="dlq_arrivals",
                metric=MetricStat.of(NS_BACKOUT, DLQ_ARRIVALS, dims),
                threshold=0.0, comparison="GreaterThanThreshold", period=None,
                treat_missing_data="notBreaching", min_samples=0, since=deployment_start,
                label="DLQ arrivals", subject=dlq,
            ))

    if env.confirm_with_judge:  # the thresholds wait for their judge; these never do
        rules += ceiling_rules(manifest, env_name, versions, deployment_start)

    p99 = manifest.duration_p99_limits(env_name)  # seconds; the Duration metric is in ms
    for fn in fns:
        if fn in p99:
            rules.append(AlarmRule(
                name=f"duration-p99:{fn}", kind="duration_p99",
                metric=MetricStat.of(NS_LAMBDA, "Duration",
                                     {"FunctionName": fn, "ExecutedVersion": str(versions[fn])}, "p99"),
                threshold=p99[fn] * 1000.0, comparison="GreaterThanThreshold", period=window,
                treat_missing_data="missing", min_samples=env.min_invocations, since=deployment_start,
                label="duration p99", unit="ms", subject=f"{fn} v{versions[fn]}", samples_label="invocations",
            ))

    for queue, limit in sorted(_limits(getattr(env, "queue_age_limits", None)).items()):
        rules.append(AlarmRule(
            name=f"queue-age:{queue}", kind="queue_age",
            metric=MetricStat.of(NS_SQS, "ApproximateAgeOfOldestMessage", {"QueueName": queue}, "Maximum"),
            threshold=limit, comparison="GreaterThanThreshold", period=window,
            treat_missing_data="notBreaching", min_samples=0, since=deployment_start,
            label="age of oldest message", unit="s", subject=queue,
        ))

    for name in (env.aws.alarms if getattr(env, "aws", None) is not None else []):
        rules.append(AlarmRule(
            name=f"cloudwatch:{name}", kind="cloudwatch_alarm",
            metric=MetricStat.of(NS_ALARM_STATE, "AlarmState", {"AlarmName": name}, "Maximum"),
            threshold=0.0, comparison="GreaterThanThreshold", period=CLOUDWATCH_ALARM_WINDOW,
            treat_missing_data="notBreaching", min_samples=0, since=deployment_start,
            label="CloudWatch alarm state (1 = ALARM)", subject=name,
        ))
    return rules + custom_rules(manifest, env_name, versions, deployment_start)


def custom_rules(manifest: Manifest, env_name: str, versions: dict[str, str],
                 deployment_start: float) -> list[AlarmRule]:
    """The environment's alarms on any metric, each as CloudWatch would evaluate it. In a dimension's value
    `{version}` is the new version of the function (so that a stable version's own alarm cannot roll back the
    canary), `{function}` its name, `{alias}` the live alias's name. An alarm with `function` watches that
    function's new version as `NAME`; one with a placeholder and no `function` is one rule per deployed function,
    `NAME:FUNCTION` (the name form of the procedure's own per-function rules)."""
    rules: list[AlarmRule] = []
    for name, spec in manifest.environment(env_name).alarms.items():
        if spec.function is not None:
            scopes = [(name, spec.function)] if spec.function in versions else []
        elif spec.per_function:
            scopes = [(f"{name}:{fn}", fn) for fn in versions]
        else:
            scopes = [(name, None)]
        for rule_name, fn in scopes:
            rules.append(_custom_rule(spec, rule_name, fn, None if fn is None else str(versions[fn]),
                                      deployment_start))
    return rules


def _custom_rule(spec: AlarmSpec, name: str, fn: str | None, version: str | None, since: float) -> AlarmRule:
    values = {"{alias}": LIVE_ALIAS, "{function}": fn or "", "{version}": version or ""}
    dims = {}
    for k, v in spec.dimensions.items():
        for placeholder, value in values.items():
            v = v.replace(placeholder, value)
        dims[k] = v
    subject = ", ".join(f"{k}={v}" for k, v in dims.items())
    return AlarmRule(
        name=name, kind="custom",
        metric=MetricStat.of(spec.namespace, spec.metric, dims, spec.statistic),
        threshold=spec.threshold, comparison=spec.comparison, period=spec.period,
        evaluation_periods=spec.evaluation_periods, datapoints_to_alarm=spec.datapoints_to_alarm,
        treat_missing_data=spec.treat_missing_data, min_samples=spec.min_samples, since=since,
        label=f"{spec.namespace} {spec.metric} {spec.statistic}", subject=subject,
    )


def ceiling_rules(manifest: Manifest, env_name: str, versions: dict[str, str],
                  deployment_start: float) -> list[AlarmRule]:
    """The hard ceilings of an environment whose alarms wait for their judge (`confirm_with_judge`):
    a canary error rate (`error-rate-ceiling:<fn>`) or API 5xx rate (`api-5xx-ceiling`, of the
    responses the canary's HTTP function version answered) above `error_rate_ceiling` % over the
    sliding `alarm_window`, with at least `min_invocations`, rolls back at once. No healthy version
    fails half its requests, so no comparison is needed to act on that."""
    env = manifest.environment(env_name)
    window = _seconds(env.alarm_window)
    ceiling = float(env.error_rate_ceiling)
    rules: list[AlarmRule] = []
    for fn in versions:
        rules.append(_error_rate_rule(fn, str(versions[fn]), f"error-rate-ceiling:{fn}", "ceiling",
                                      "error rate (ceiling)", ceiling, window, env.min_invocations,
                                      deployment_start))
    http = _http_functions(manifest, versions)
    for v in sorted({str(versions[fn]) for fn in http}):
        dims = {"ApiName": manifest.service.name, "Stage": env_name, "ExecutedVersion": v}
        many = len({str(versions[fn]) for fn in http}) > 1
        rules.append(AlarmRule(
            name=f"api-5xx-ceiling:v{v}" if many else "api-5xx-ceiling", kind="ceiling",
            numerator=MetricStat.of(NS_API, "5XXError", dims, "Sum"),
            denominator=MetricStat.of(NS_API, "Count", dims, "Sum"),
            threshold=ceiling, period=window, min_samples=env.min_invocations, since=deployment_start,
            label="API 5xx rate (ceiling)", unit="%", subject=f"{manifest.service.name} v{v}",
            samples_label="requests",
        ))
    return rules
