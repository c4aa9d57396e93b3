"""Alarm rules over the local platform's real metric store (per-second samples, exact statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backout.control.alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmRule,
    AlarmSet,
    MetricStat,
    default_rules,
    evaluate,
)
from backout.manifest import Manifest, load_manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_API, NS_BACKOUT, NS_LAMBDA, NS_SQS, Datapoint, MetricQuery
from backout.platforms.local.metrics import MetricStore

T0 = 1_700_000_000.0  # a round epoch second: periods line up with it in the tests below
ROOT = Path(__file__).resolve().parents[2]

MANIFEST = """
[service]
name = "sda"
[functions.api]
handler = "app.api"
events = [{ http = "POST /jobs" }]
[functions.worker]
handler = "app.worker"
events = [{ queue = "jobs" }]
[queues.jobs]
max_receive_count = 3
dead_letter_queue = "jobs-dlq"
[queues.jobs-dlq]
[environments.prod]
gateway_port = 0
control_port = 0
error_rate_threshold = 5.0
api_5xx_threshold = 5
api_5xx_period = "5m"
"""


class Source:
    """The Platform's `metrics` method over a real MetricStore."""

    def __init__(self) -> None:
        self.store = MetricStore(db_path=None)
        self.queries: list[MetricQuery] = []

    def metrics(self, query: MetricQuery) -> list[Datapoint]:
        self.queries.append(query)
        return self.store.query(query)

    def invocations(self, fn: str, version: int, ts: float, n: int, errors: int = 0) -> None:
        for i in range(n):
            for dims in ({"FunctionName": fn}, {"FunctionName": fn, "ExecutedVersion": str(version)}):
                self.store.record(NS_LAMBDA, "Invocations", dims, 1.0, "Count", ts)
                self.store.record(NS_LAMBDA, "Errors", dims, 1.0 if i < errors else 0.0, "Count", ts)

    def responses(self, version: int, ts: float, n: int, e5: int = 0, api: str = "sda",
                  stage: str = "prod") -> None:
        for i in range(n):
            for dims in ({"ApiName": api, "Stage": stage},
                         {"ApiName": api, "Stage": stage, "ExecutedVersion": str(version)}):
                self.store.record(NS_API, "Count", dims, 1.0, "Count", ts)
                self.store.record(NS_API, "5XXError", dims, 1.0 if i < e5 else 0.0, "Count", ts)


@pytest.fixture
def src() -> Source:
    return Source()


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    p = tmp_path / "backout.toml"
    p.write_text(MANIFEST)
    return load_manifest(p)


def rule_by_name(rules: list[AlarmRule], name: str) -> AlarmRule:
    return next(r for r in rules if r.name == name)


def gauge_rule(comparison: str = "GreaterThanThreshold", **kw) -> AlarmRule:
    args = dict(name="g", metric=MetricStat.of("Test", "Gauge", {"Id": "1"}, "Maximum"), threshold=10.0,
                comparison=comparison, period=1.0)
    args.update(kw)
    return AlarmRule(**args)


# --- comparisons ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("comparison", "value", "state"),
    [
        ("GreaterThanThreshold", 10.0, OK), ("GreaterThanThreshold", 10.5, ALARM),
        ("GreaterThanOrEqualToThreshold", 10.0, ALARM), ("GreaterThanOrEqualToThreshold", 9.9, OK),
        ("LessThanThreshold", 10.0, OK), ("LessThanThreshold", 9.5, ALARM),
        ("LessThanOrEqualToThreshold", 10.0, ALARM), ("LessThanOrEqualToThreshold", 10.1, OK),
    ],
)
def test_each_comparison(src: Source, comparison: str, value: float, state: str) -> None:
    src.store.record("Test", "Gauge", {"Id": "1"}, value, "None", T0 + 5)
    ev = evaluate(gauge_rule(comparison), src, now=T0 + 6)
    assert ev.state == state and ev.value == value and ev.threshold == 10.0 and ev.comparison == comparison
    assert ev.window_seconds == 1.0


# --- the error-rate rule ------------------------------------------------------------------------
def test_ratio_detail_string(src: Source, manifest: Manifest) -> None:
    start = T0
    rule = rule_by_name(default_rules(manifest, "prod", ["api", "worker"], 7, start), "error-rate:worker")
    src.invocations("worker", 7, T0 + 100, 29, errors=9)
    ev = evaluate(rule, src, now=T0 + 120)
    assert ev.state == ALARM
    assert ev.detail == "error rate 31.0 % (9/29) > 5 % over 60 s on worker v7"
    assert ev.value == pytest.approx(100 * 9 / 29) and (ev.numerator, ev.denominator) == (9, 29)
    assert ev.threshold == 5.0 and ev.window_seconds == 60 and ev.comparison == "GreaterThanThreshold"
    src.invocations("worker", 7, T0 + 110, 200)  # diluted: 9 / 229 = 3.9 %
    ev = evaluate(rule, src, now=T0 + 120)
    assert ev.state == OK and ev.detail == "error rate 3.9 % (9/229) ≤ 5 % over 60 s on worker v7"


def test_min_invocations_before_the_error_rate_can_decide(src: Source, manifest: Manifest) -> None:
    rule = rule_by_name(default_rules(manifest, "prod", ["worker"], 7, T0), "error-rate:worker")
    assert rule.guard == 20
    src.invocations("worker", 7, T0 + 10, 19, errors=19)  # 100 % of 19: not enough to judge
    ev = evaluate(rule, src, now=T0 + 11)
    assert ev.state == INSUFFICIENT_DATA and ev.value is None and ev.denominator == 19
    assert ev.detail == "error rate: not enough data (19 invocations, needs 20) over 11 s on worker v7"
    src.invocations("worker", 7, T0 + 11, 1, errors=1)
    ev = evaluate(rule, src, now=T0 + 12)
    assert ev.state == ALARM and ev.detail.startswith("error rate 100.0 % (20/20) > 5 %")
    # a plain AlarmRule on a ratio defaults to 20 too; on a single metric to 0
    assert AlarmRule("r", 1, numerator=rule.numerator, denominator=rule.denominator).guard == 20
    assert gauge_rule().guard == 0


def test_error_rate_is_scoped_to_the_canary_and_the_deployment(src: Source, manifest: Manifest) -> None:
    start = T0 + 1000
    rule = rule_by_name(default_rules(manifest, "prod", ["worker"], 7, start), "error-rate:worker")
    src.invocations("worker", 6, start + 5, 100, errors=100)  # the stable version is failing: not ours
    src.invocations("worker", 7, start - 10, 50, errors=50)  # v7 failed before, in an older deployment
    src.invocations("worker", 7, start + 5, 40)
    ev = evaluate(rule, src, now=start + 10)
    assert ev.state == OK and (ev.numerator, ev.denominator) == (0, 40) and ev.window_seconds == 10


def test_error_rate_window_slides_per_second(src: Source, manifest: Manifest) -> None:
    rule = rule_by_name(default_rules(manifest, "prod", ["worker"], 7, T0), "error-rate:worker")
    src.invocations("worker", 7, T0 + 100, 30, errors=30)
    for s in range(101, 200):
        src.invocations("worker", 7, T0 + s, 1)
    assert evaluate(rule, src, now=T0 + 159.5).state == ALARM  # second 100 still inside [99.5, 159.5)
    ev = evaluate(rule, src, now=T0 + 160.5)  # it left the window one second later
    assert ev.state == OK and (ev.numerator, ev.denominator) == (0, 60)


# --- missing data (CloudWatch's table for 3 of 3; oldest period first) --------------------------
@pytest.mark.parametrize(
    ("pattern", "missing", "ignore", "breaching", "not_breaching"),
    [
        ("0-X-X", OK, OK, OK, OK),
        ("0----", OK, OK, OK, OK),
        ("-----", INSUFFICIENT_DATA, "keep", ALARM, OK),
        ("0XX-X", ALARM, ALARM, ALARM, ALARM),
        ("--X--", ALARM, "keep", ALARM, OK),
    ],
)
def test_treat_missing_data(src: Source, pattern: str, missing: str, ignore: str, breaching: str,
                            not_breaching: str) -> None:
    now = T0 + 50
    for i, c in enumerate(pattern):  # pattern[-1] is the newest period: second now-1
        if c != "-":
            src.store.record("Test", "Gauge", {"Id": "1"}, 20.0 if c == "X" else 1.0, "None",
                             now - len(pattern) + i)
    expected = {"missing": missing, "notBreaching": not_breaching, "breaching": breaching}
    for tmd, state in expected.items():
        rule = gauge_rule(evaluation_periods=3, treat_missing_data=tmd)
        assert evaluate(rule, src, now=now).state == state, tmd
    rule = gauge_rule(evaluation_periods=3, treat_missing_data="ignore")
    for previous in (OK, ALARM):
        want = previous if ignore == "keep" else ignore
        assert evaluate(rule, src, now=now, previous_state=previous).state == want
    if ignore == "keep":
        assert evaluate(rule, src, now=now).state == INSUFFICIENT_DATA


def test_missing_data_detail(src: Source) -> None:
    ev = evaluate(gauge_rule(treat_missing_data="breaching", label="gauge"), src, now=T0)
    assert ev.state == ALARM and ev.value is None
    assert ev.detail == "gauge: no data, treated as breaching over 1 s"


# --- M of N ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "state", "breaching"), [("X0X0X", ALARM, 3), ("X0X00", OK, 2),
                                                             ("00XXX", ALARM, 3), ("0XX00", OK, 2)])
def test_datapoints_to_alarm_m_of_n(src: Source, pattern: str, state: str, breaching: int) -> None:
    now = T0 + 50
    for i, c in enumerate(pattern):
        src.store.record("Test", "Gauge", {"Id": "1"}, 20.0 if c == "X" else 1.0, "None", now - 5 + i)
    rule = gauge_rule(evaluation_periods=5, datapoints_to_alarm=3, label="gauge")
    ev = evaluate(rule, src, now=now)
    assert ev.state == state and ev.breaching == breaching and ev.evaluated == 5
    assert f"({breaching} of 5 periods breaching, 3 needed)" in ev.detail


def test_larger_periods_with_lookback_past_missing_ones(src: Source) -> None:
    """Periods of 10 s, 2 of 3; one period without data is skipped over to an older real one."""
    now = T0 + 100
    src.store.record("Test", "Gauge", {"Id": "1"}, 50.0, "None", now - 5)  # period 0
    src.store.record("Test", "Gauge", {"Id": "1"}, 50.0, "None", now - 35)  # period 3 (1 and 2 empty)
    src.store.record("Test", "Gauge", {"Id": "1"}, 1.0, "None", now - 45)  # period 4
    rule = gauge_rule(period=10.0, evaluation_periods=3, datapoints_to_alarm=2)
    ev = evaluate(rule, src, now=now)
    assert ev.state == ALARM and ev.breaching == 2 and ev.evaluated == 3 and ev.window_seconds == 10


# --- API 5xx -----------------------------------------------------------------------------------
def test_api_5xx_sliding_window_counts_only_the_canary(src: Source, manifest: Manifest) -> None:
    start = T0 + 1000
    rule = rule_by_name(default_rules(manifest, "prod", ["api", "worker"], 7, start), "api-5xx")
    assert (rule.period, rule.threshold, rule.treat_missing_data) == (300.0, 5.0, "notBreaching")
    ev = evaluate(rule, src, now=start + 5)
    assert ev.state == OK and ev.detail == "API 5xx: no data over 5 s on sda v7"
    src.responses(7, start - 30, 20, e5=20)  # before the deployment started
    src.responses(6, start + 10, 50, e5=50)  # served by the stable version
    src.responses(7, start + 10, 50, e5=5)
    ev = evaluate(rule, src, now=start + 42)
    assert ev.state == OK and ev.value == 5 and ev.window_seconds == 42
    assert ev.detail == "API 5xx 5 ≤ 5 over 42 s on sda v7"
    src.responses(7, start + 200, 3, e5=1)
    ev = evaluate(rule, src, now=start + 250)
    assert ev.state == ALARM and ev.detail == "API 5xx 6 > 5 over 250 s on sda v7"
    ev = evaluate(rule, src, now=start + 311)  # the five at +10 slid out of the 300 s window
    assert ev.state == OK and ev.value == 1 and ev.window_seconds == 300


# --- DLQ arrivals --------------------------------------------------------------------------------
def test_dlq_arrivals_since_the_deployment_started(src: Source, manifest: Manifest) -> None:
    start = T0 + 1000
    rule = rule_by_name(default_rules(manifest, "prod", ["api", "worker"], 7, start), "dlq-arrivals:jobs-dlq")
    dims = {"QueueName": "jobs-dlq"}
    src.store.record(NS_BACKOUT, DLQ_ARRIVALS, dims, 4.0, "Count", start - 20)  # an older failure
    for s in range(1, 30):
        src.store.record(NS_BACKOUT, DLQ_ARRIVALS, dims, 0.0, "Count", start + s)  # sampled every second
    assert evaluate(rule, src, now=start + 30).state == OK
    src.store.record(NS_BACKOUT, DLQ_ARRIVALS, dims, 1.0, "Count", start + 30)
    ev = evaluate(rule, src, now=start + 31)
    assert ev.state == ALARM
    assert ev.detail == "DLQ arrivals 1 > 0 over 31 s since the deployment started on jobs-dlq"
    # counted by arrivals, not depth: ten minutes later it still alarms
    assert evaluate(rule, src, now=start + 631).state == ALARM


# --- optional rules -----------------------------------------------------------------------------
def test_duration_and_queue_age_rules_only_when_configured(src: Source, manifest: Manifest) -> None:
    names = [r.name for r in default_rules(manifest, "prod", ["api", "worker"], 7, T0)]
    assert names == ["error-rate:api", "error-rate:worker", "api-5xx", "dlq-arrivals:jobs-dlq"]
    env = manifest.environments["prod"].model_copy(update={
        "duration_p99_limits": {"worker": "2s"}, "queue_age_limits": {"jobs": "5m"}, "alarm_window": "30s"})
    m = manifest.model_copy(update={"environments": {"prod": env}})
    rules = default_rules(m, "prod", ["api", "worker"], 7, T0)
    assert [r.name for r in rules][-2:] == ["duration-p99:worker", "queue-age:jobs"]
    p99 = rule_by_name(rules, "duration-p99:worker")
    assert p99.threshold == 2000.0 and p99.period == 30.0 and p99.metric.statistic == "p99"
    assert rule_by_name(rules, "error-rate:worker").period == 30.0

    # p99 over a sliding window that straddles aligned periods is exact
    now = T0 + 1017.5
    rng = np.random.default_rng(7)
    samples = []
    dims = {"FunctionName": "worker", "ExecutedVersion": "7"}
    for s in range(int(now) - 40, int(now) + 1):
        for v in rng.gamma(2.0, 400.0, size=5):
            src.store.record(NS_LAMBDA, "Duration", dims, float(v), "Milliseconds", s)
            if s >= now - 30:
                samples.append(float(v))
    ev = evaluate(p99, src, now=now)
    assert ev.value == pytest.approx(float(np.percentile(samples, 99)))
    assert ev.samples == len(samples) == 150
    assert ev.state == (ALARM if ev.value > 2000 else OK)
    assert ev.detail.startswith("duration p99 ") and ev.detail.endswith(" ms over 30 s on worker v7")

    age = rule_by_name(rules, "queue-age:jobs")
    queue = {"QueueName": "jobs"}
    src.store.record(NS_SQS, "ApproximateAgeOfOldestMessage", queue, 12.0, "Seconds", now - 3)
    assert evaluate(age, src, now=now).state == OK
    src.store.record(NS_SQS, "ApproximateAgeOfOldestMessage", queue, 301.0, "Seconds", now - 1)
    ev = evaluate(age, src, now=now)
    assert ev.state == ALARM and ev.detail == "age of oldest message 301 s > 300 s over 30 s on jobs"


def test_default_rules_of_the_sda_manifest() -> None:
    m = load_manifest(ROOT / "backout.toml")
    fns = list(m.functions)
    prod = {r.name: r for r in default_rules(m, "prod", fns, 3, T0)}
    assert set(prod) == {"error-rate:api", "error-rate:worker", "error-rate:dlq_processor", "error-rate:repair",
                         "api-5xx", "dlq-arrivals:processing-dlq"}
    assert prod["error-rate:worker"].threshold == 5.0 and prod["error-rate:worker"].guard == 20
    assert dict(prod["error-rate:worker"].denominator.dimensions) == {"FunctionName": "worker",
                                                                      "ExecutedVersion": "3"}
    assert dict(prod["api-5xx"].metric.dimensions) == {"ApiName": "security-assistant", "Stage": "prod",
                                                       "ExecutedVersion": "3"}
    staging = {r.name: r for r in default_rules(m, "staging", fns, 3, T0)}
    assert staging["error-rate:api"].threshold == 10.0
    assert all(r.since == T0 for r in staging.values())


# --- state changes ---------------------------------------------------------------------------------
class FlakySource(Source):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def metrics(self, query: MetricQuery) -> list[Datapoint]:
        if self.fail:
            raise ConnectionError("metric store unreachable")
        return super().metrics(query)


def test_alarm_set_reports_only_state_changes(manifest: Manifest) -> None:
    src = FlakySource()
    start = T0
    alarms = AlarmSet(default_rules(manifest, "prod", ["api", "worker"], 7, start))
    first = alarms.evaluate(src, now=start + 1)
    assert {c.rule.name: (c.previous, c.state) for c in first} == {
        "error-rate:api": (None, INSUFFICIENT_DATA), "error-rate:worker": (None, INSUFFICIENT_DATA),
        "api-5xx": (None, OK), "dlq-arrivals:jobs-dlq": (None, OK)}
    assert alarms.evaluate(src, now=start + 2) == []
    src.invocations("worker", 7, start + 2, 25)
    changes = alarms.evaluate(src, now=start + 3)
    assert [(c.rule.name, c.previous, c.state) for c in changes] == [
        ("error-rate:worker", INSUFFICIENT_DATA, OK)]
    assert alarms.evaluate(src, now=start + 3.5) == []
    src.invocations("worker", 7, start + 4, 10, errors=9)
    (change,) = alarms.evaluate(src, now=start + 5)
    ev = change.evaluation
    assert (change.rule.name, change.previous, ev.state) == ("error-rate:worker", OK, ALARM)
    assert ev.detail == "error rate 25.7 % (9/35) > 5 % over 5 s on worker v7"
    assert ev.value == pytest.approx(900 / 35) and ev.threshold == 5.0 and ev.window_seconds == 5
    assert [e.alarm for e in alarms.alarming()] == ["error-rate:worker"]
    assert alarms.current["api-5xx"].state == OK

    src.fail = True  # a flaky source keeps the state and reports no change
    assert alarms.evaluate(src, now=start + 6) == []
    assert "metric store unreachable" in alarms.errors["error-rate:worker"]
    assert alarms.current["error-rate:worker"].state == ALARM
    src.fail = False
    assert alarms.evaluate(src, now=start + 7) == [] and not alarms.errors


def test_queries_stay_cheap(src: Source, manifest: Manifest) -> None:
    """Evaluated every second: a rule with data costs one query (two for a ratio)."""
    rule = rule_by_name(default_rules(manifest, "prod", ["worker"], 7, T0), "error-rate:worker")
    src.invocations("worker", 7, T0 + 100, 30)
    src.queries.clear()
    evaluate(rule, src, now=T0 + 120)
    assert len(src.queries) == 2
    assert all(q.start == T0 + 60 and q.end == T0 + 120 and q.period >= 60 for q in src.queries)


def test_rule_validation() -> None:
    m = MetricStat.of("N", "M", {})
    with pytest.raises(ValueError, match="either metric"):
        AlarmRule("x", 1)
    with pytest.raises(ValueError, match="comparison"):
        AlarmRule("x", 1, metric=m, comparison="Bigger")
    with pytest.raises(ValueError, match="treat_missing_data"):
        AlarmRule("x", 1, metric=m, treat_missing_data="maybe")
    with pytest.raises(ValueError, match="datapoints_to_alarm"):
        AlarmRule("x", 1, metric=m, evaluation_periods=2, datapoints_to_alarm=3)
    with pytest.raises(ValueError, match="needs `since`"):
        AlarmRule("x", 1, metric=m, period=None)
    with pytest.raises(ValueError, match="duplicate"):
        AlarmSet([AlarmRule("x", 1, metric=m), AlarmRule("x", 2, metric=m)])
