"""Alarm rules over the local platform's real metric store (per-second samples, exact statistics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from backout.control import alarms as alarms_module
from backout.control.alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmRule,
    AlarmSet,
    Fetched,
    MetricStat,
    default_rules,
    evaluate,
    merge_queries,
    plan_rule,
)
from backout.manifest import Manifest, load_manifest
from backout.platforms.base import (
    DLQ_ARRIVALS,
    MAX_QUERIES,
    NS_API,
    NS_BACKOUT,
    NS_LAMBDA,
    NS_SQS,
    Datapoint,
    MetricQuery,
    legal_period,
)
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
    """The Platform's batched `metrics` method over a real MetricStore; counts calls, refuses more
    than GetMetricData's 500 queries."""

    def __init__(self) -> None:
        self.store = MetricStore(db_path=None)
        self.queries: list[MetricQuery] = []
        self.calls = 0

    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        assert len(queries) <= MAX_QUERIES
        self.calls += 1
        self.queries.extend(queries)
        return [self.store.query(q) for q in queries]

    def invocations(self, fn: str, version: int | str, ts: float, n: int, errors: int = 0) -> None:
        for i in range(n):
            for dims in ({"FunctionName": fn}, {"FunctionName": fn, "ExecutedVersion": str(version)}):
                self.store.record(NS_LAMBDA, "Invocations", dims, 1.0, "Count", ts)
                self.store.record(NS_LAMBDA, "Errors", dims, 1.0 if i < errors else 0.0, "Count", ts)

    def responses(self, version: int | str, ts: float, n: int, e5: int = 0, api: str = "sda",
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
    rule = rule_by_name(default_rules(manifest, "prod", {"api": "7", "worker": "7"}, start), "error-rate:worker")
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
    rule = rule_by_name(default_rules(manifest, "prod", {"worker": "7"}, T0), "error-rate:worker")
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
    rule = rule_by_name(default_rules(manifest, "prod", {"worker": "7"}, start), "error-rate:worker")
    src.invocations("worker", 6, start + 5, 100, errors=100)  # the stable version is failing: not ours
    src.invocations("worker", 7, start - 10, 50, errors=50)  # v7 failed before, in an older deployment
    src.invocations("worker", 7, start + 5, 40)
    ev = evaluate(rule, src, now=start + 10)
    assert ev.state == OK and (ev.numerator, ev.denominator) == (0, 40) and ev.window_seconds == 10


def test_error_rate_window_slides_per_second(src: Source, manifest: Manifest) -> None:
    rule = rule_by_name(default_rules(manifest, "prod", {"worker": "7"}, T0), "error-rate:worker")
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
    rule = rule_by_name(default_rules(manifest, "prod", {"api": "7", "worker": "7"}, start), "api-5xx")
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
def arrivals(src: Source, n: float, ts: float, version: str | None, queue: str = "jobs-dlq") -> None:
    """DLQ arrivals as the platforms record them: for the queue, and for the version that received
    the messages last when there is one."""
    src.store.record(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": queue}, n, "Count", ts)
    if version is not None:
        src.store.record(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": queue, "ExecutedVersion": version}, n, "Count", ts)


def test_dlq_arrivals_since_the_deployment_started(src: Source, manifest: Manifest) -> None:
    start = T0 + 1000
    rule = rule_by_name(default_rules(manifest, "prod", {"api": "7", "worker": "7"}, start), "dlq-arrivals:jobs-dlq")
    arrivals(src, 4.0, start - 20, "7")  # an older failure
    for s in range(1, 30):
        arrivals(src, 0.0, start + s, "7")  # sampled every second
    assert evaluate(rule, src, now=start + 30).state == OK
    arrivals(src, 1.0, start + 30, "7")
    ev = evaluate(rule, src, now=start + 31)
    assert ev.state == ALARM
    assert ev.detail == "DLQ arrivals 1 > 0 over 31 s since the deployment started on jobs-dlq"
    # counted by arrivals, not depth: ten minutes later it still alarms
    assert evaluate(rule, src, now=start + 631).state == ALARM


def test_dlq_arrivals_of_the_stable_version_or_of_no_version_do_not_alarm(src: Source, manifest: Manifest) -> None:
    """A late failure of the stable version (6) puts a message in the DLQ while 7 is the canary: not the
    canary's doing. Nor is a message no function version received (counted for the queue only)."""
    start = T0 + 1000
    rule = rule_by_name(default_rules(manifest, "prod", {"api": "7", "worker": "7"}, start), "dlq-arrivals:jobs-dlq")
    assert dict(rule.metric.dimensions) == {"QueueName": "jobs-dlq", "ExecutedVersion": "7"}
    arrivals(src, 2.0, start + 5, "6")
    arrivals(src, 1.0, start + 6, None)
    ev = evaluate(rule, src, now=start + 10)
    assert ev.state == OK and not ev.value
    assert src.store.query(MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "jobs-dlq"}, start, start + 10,
                                          10))[0].value == 3.0  # the queue still counts all three
    arrivals(src, 1.0, start + 9, "7")
    assert evaluate(rule, src, now=start + 10).state == ALARM


def test_dlq_rule_per_consumer_when_versions_differ_and_whole_queue_without_one(tmp_path: Path) -> None:
    text = MANIFEST + """[functions.audit]
handler = "app.audit"
events = [{ queue = "audit" }]
[queues.audit]
max_receive_count = 2
dead_letter_queue = "jobs-dlq"
[queues.orphan]
max_receive_count = 2
dead_letter_queue = "orphan-dlq"
[queues.orphan-dlq]
"""
    (tmp_path / "backout.toml").write_text(text)
    m = load_manifest(tmp_path / "backout.toml")
    rules = {r.name: dict(r.metric.dimensions) for r in default_rules(m, "prod", {"api": "3", "worker": "12",
                                                                                 "audit": "4"}, T0)
             if r.kind == "dlq_arrivals"}
    assert rules == {"dlq-arrivals:jobs-dlq:worker": {"QueueName": "jobs-dlq", "ExecutedVersion": "12"},
                     "dlq-arrivals:jobs-dlq:audit": {"QueueName": "jobs-dlq", "ExecutedVersion": "4"},
                     "dlq-arrivals:orphan-dlq": {"QueueName": "orphan-dlq"}}  # no function consumes `orphan`
    same = [r.name for r in default_rules(m, "prod", {"api": "3", "worker": "4", "audit": "4"}, T0)
            if r.kind == "dlq_arrivals"]
    assert same == ["dlq-arrivals:jobs-dlq", "dlq-arrivals:orphan-dlq"]


# --- optional rules -----------------------------------------------------------------------------
def test_duration_and_queue_age_rules_only_when_configured(src: Source, manifest: Manifest,
                                                           tmp_path: Path) -> None:
    names = [r.name for r in default_rules(manifest, "prod", {"api": "7", "worker": "7"}, T0)]
    assert names == ["error-rate:api", "error-rate:worker", "api-5xx", "dlq-arrivals:jobs-dlq",
                     # prod confirms alarms with its judges: the ceilings roll back without them
                     "error-rate-ceiling:api", "error-rate-ceiling:worker", "api-5xx-ceiling"]
    limits = 'duration_p99_limits = { worker = "2s" }\nqueue_age_limits = { jobs = "5m" }\nalarm_window = "30s"\n'
    (tmp_path / "limits.toml").write_text(MANIFEST + limits)
    m = load_manifest(tmp_path / "limits.toml")
    rules = default_rules(m, "prod", {"api": "7", "worker": "7"}, T0)
    assert [r.name for r in rules][-2:] == ["duration-p99:worker", "queue-age:jobs"]
    p99 = rule_by_name(rules, "duration-p99:worker")
    assert p99.threshold == 2000.0 and p99.period == 30.0 and p99.metric.statistic == "p99"
    assert rule_by_name(rules, "error-rate:worker").period == 30.0

    # p99 over CloudWatch's aligned periods of 30 s: the one still filling, exact over its samples
    now = T0 + 1018  # T0 + 1000 is a multiple of 30: the newest period is [T0 + 1000, now)
    assert (T0 + 1000) % 30 == 0
    rng = np.random.default_rng(7)
    by_second: dict[int, list[float]] = {}
    dims = {"FunctionName": "worker", "ExecutedVersion": "7"}
    for s in range(int(now) - 40, int(now) + 1):
        for v in rng.gamma(2.0, 400.0, size=5):
            src.store.record(NS_LAMBDA, "Duration", dims, float(v), "Milliseconds", s)
            by_second.setdefault(s, []).append(float(v))
    src.queries.clear()
    ev = evaluate(p99, src, now=now)
    (q,) = src.queries
    assert q.period == 30 and q.statistic == "p99" and q.start % 30 == 0 and q.end == now
    samples = [v for s in range(int(T0) + 1000, int(now)) for v in by_second[s]]
    assert ev.value == pytest.approx(float(np.percentile(samples, 99)))
    assert ev.samples == len(samples) == 90 and ev.window_seconds == 18
    assert ev.state == (ALARM if ev.value > 2000 else OK)
    assert ev.detail.startswith("duration p99 ") and ev.detail.endswith(" ms over 18 s on worker v7")

    age = rule_by_name(rules, "queue-age:jobs")
    queue = {"QueueName": "jobs"}
    src.store.record(NS_SQS, "ApproximateAgeOfOldestMessage", queue, 12.0, "Seconds", now - 3)
    assert evaluate(age, src, now=now).state == OK
    src.store.record(NS_SQS, "ApproximateAgeOfOldestMessage", queue, 301.0, "Seconds", now - 1)
    ev = evaluate(age, src, now=now)
    assert ev.state == ALARM and ev.detail == "age of oldest message 301 s > 300 s over 30 s on jobs"


def test_default_rules_of_the_sda_manifest() -> None:
    m = load_manifest(ROOT / "backout.toml")
    versions = {"api": "3", "worker": "5", "dlq_processor": "2", "repair": "9"}
    assert set(versions) == set(m.functions)
    prod = {r.name: r for r in default_rules(m, "prod", versions, T0)}
    assert set(prod) == {"error-rate:api", "error-rate:worker", "error-rate:dlq_processor", "error-rate:repair",
                         "api-5xx", "dlq-arrivals:processing-dlq", "error-rate-ceiling:api",
                         "error-rate-ceiling:worker", "error-rate-ceiling:dlq_processor", "error-rate-ceiling:repair",
                         "api-5xx-ceiling"}
    assert prod["error-rate-ceiling:worker"].threshold == 50.0 and prod["api-5xx-ceiling"].guard == 20
    assert prod["error-rate:worker"].threshold == 5.0 and prod["error-rate:worker"].guard == 20
    for fn, v in versions.items():
        rule = prod[f"error-rate:{fn}"]
        want = {"FunctionName": fn, "ExecutedVersion": v}
        assert dict(rule.denominator.dimensions) == dict(rule.numerator.dimensions) == want
        assert rule.subject == f"{fn} v{v}"
    # the gateway's responses carry the version of the function that served them: api's
    assert dict(prod["api-5xx"].metric.dimensions) == {"ApiName": "security-assistant", "Stage": "prod",
                                                       "ExecutedVersion": "3"}
    # the DLQ's arrivals that the worker's new version (its source queue's consumer) received last
    assert dict(prod["dlq-arrivals:processing-dlq"].metric.dimensions) == {"QueueName": "processing-dlq",
                                                                          "ExecutedVersion": "5"}
    staging = {r.name: r for r in default_rules(m, "staging", versions, T0)}
    assert staging["error-rate:api"].threshold == 10.0
    assert all(r.since == T0 for r in staging.values())


def test_query_budget_of_the_sda_manifest_in_prod() -> None:
    """The budget the module docstring states: 2 per function + 1 (api-5xx) + 1 per DLQ + 1 (the 5xx
    ceiling's Count) = 11."""
    m = load_manifest(ROOT / "backout.toml")
    versions = {"api": "3", "worker": "5", "dlq_processor": "2", "repair": "9"}
    alarms = AlarmSet(default_rules(m, "prod", versions, T0))
    qs = alarms.plan(T0 + 30)
    assert len(qs) == 2 * 4 + 1 + 1 + 1 == 11
    assert all(q.period == 1 for q in qs)
    assert "2×4 + 1 + 1 + 1 = 11 for the alarms" in " ".join(alarms_module.__doc__.split())


def test_per_function_versions_land_in_their_dimensions(manifest: Manifest) -> None:
    rules = {r.name: r for r in default_rules(manifest, "prod", {"api": "7", "worker": "12"}, T0)}
    assert dict(rules["error-rate:worker"].numerator.dimensions) == {"FunctionName": "worker",
                                                                     "ExecutedVersion": "12"}
    assert dict(rules["error-rate:api"].denominator.dimensions) == {"FunctionName": "api", "ExecutedVersion": "7"}
    assert rules["error-rate:worker"].subject == "worker v12" and rules["api-5xx"].subject == "sda v7"
    assert dict(rules["api-5xx"].metric.dimensions)["ExecutedVersion"] == "7"  # api serves HTTP, not worker

    # two HTTP functions on different canary versions: one api-5xx rule each
    two = manifest.model_copy(update={"functions": {
        **manifest.functions,
        "admin": manifest.functions["api"].model_copy(update={"handler": "app.admin"}),
    }})
    rules = {r.name: r for r in default_rules(two, "prod", {"api": "7", "worker": "12", "admin": "3"}, T0)}
    assert "api-5xx" not in rules
    assert {n: dict(r.metric.dimensions)["ExecutedVersion"] for n, r in rules.items() if r.kind == "api_5xx"} == {
        "api-5xx:api": "7", "api-5xx:admin": "3"}
    assert rules["api-5xx:admin"].subject == "admin v3"
    same = {r.name for r in default_rules(two, "prod", {"api": "7", "worker": "12", "admin": "7"}, T0)}
    assert "api-5xx" in same and not any(n.startswith("api-5xx:") for n in same)

    # and the evaluation reads them: worker v12's failures alarm, v7's do not count
    src = Source()
    src.invocations("worker", 7, T0 + 5, 40, errors=40)
    src.invocations("worker", 12, T0 + 5, 40, errors=4)
    rule = rules["error-rate:worker"]
    ev = evaluate(rule, src, now=T0 + 10)
    assert ev.state == ALARM and ev.detail == "error rate 10.0 % (4/40) > 5 % over 10 s on worker v12"


# --- state changes ---------------------------------------------------------------------------------
class FlakySource(Source):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        if self.fail:
            raise ConnectionError("metric store unreachable")
        return super().metrics(queries)


def test_alarm_set_reports_only_state_changes(manifest: Manifest) -> None:
    src = FlakySource()
    start = T0
    alarms = AlarmSet(default_rules(manifest, "prod", {"api": "7", "worker": "7"}, start))
    first = alarms.evaluate(src, now=start + 1)
    assert {c.rule.name: (c.previous, c.state) for c in first} == {
        "error-rate:api": (None, INSUFFICIENT_DATA), "error-rate:worker": (None, INSUFFICIENT_DATA),
        "api-5xx": (None, OK), "dlq-arrivals:jobs-dlq": (None, OK),
        "error-rate-ceiling:api": (None, INSUFFICIENT_DATA), "error-rate-ceiling:worker": (None, INSUFFICIENT_DATA),
        "api-5xx-ceiling": (None, INSUFFICIENT_DATA)}
    assert alarms.evaluate(src, now=start + 2) == []
    src.invocations("worker", 7, start + 2, 25)
    changes = alarms.evaluate(src, now=start + 3)
    assert [(c.rule.name, c.previous, c.state) for c in changes] == [
        ("error-rate:worker", INSUFFICIENT_DATA, OK), ("error-rate-ceiling:worker", INSUFFICIENT_DATA, OK)]
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
    """Evaluated every second: a ratio costs two 1 s queries over its look-back range, in one call."""
    rule = rule_by_name(default_rules(manifest, "prod", {"worker": "7"}, T0), "error-rate:worker")
    src.invocations("worker", 7, T0 + 100, 30)
    src.queries.clear()
    evaluate(rule, src, now=T0 + 120)
    assert len(src.queries) == 2 and src.calls == 1
    assert {q.metric for q in src.queries} == {"Errors", "Invocations"}
    # N + 2 periods of 60 s, none before the deployment started
    assert all(q.start == T0 and q.end == T0 + 120 and q.period == 1 for q in src.queries)
    assert plan_rule(rule, T0 + 500) == [
        MetricQuery(NS_LAMBDA, m, rule.numerator.dimensions, T0 + 320, T0 + 500, 1, "Sum")
        for m in ("Invocations", "Errors")]


class StrictSource(Source):
    """What GetMetricData would refuse, refused: an illegal period, more than 500 queries, a start
    not on a period boundary (unless it is a percentile's clip at the deployment start)."""

    def __init__(self, allowed_unaligned: set[float] = frozenset()) -> None:
        super().__init__()
        self.allowed_unaligned = allowed_unaligned

    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        if len(queries) > MAX_QUERIES:
            raise ValueError("too many queries")
        for q in queries:
            if not legal_period(q.period):
                raise ValueError(f"illegal period {q.period}")
            if q.start % q.period and q.start not in self.allowed_unaligned:
                raise ValueError(f"start {q.start} not aligned to {q.period}")
        return super().metrics(queries)


def many_rules(since: float) -> list[AlarmRule]:
    """Rules with periods CloudWatch would refuse as query periods, summable and percentile."""
    rules = []
    for i, period in enumerate((1.0, 7.0, 45.0, 69.0, 300.0, 3601.0, 86_400.0)):
        for stat in ("Sum", "Maximum", "Average", "SampleCount", "p99", "p50"):
            for with_since in (False, True):
                rules.append(AlarmRule(
                    name=f"r{i}-{stat}-{with_since}", threshold=1.0, period=period, evaluation_periods=3,
                    datapoints_to_alarm=2, since=since if with_since else None,
                    metric=MetricStat.of("Test", "Gauge", {"Id": str(i % 3)}, stat)))
    rules.append(AlarmRule("since", 0.0, metric=MetricStat.of("Test", "Gauge", {"Id": "0"}), period=None,
                           since=since))
    rules.append(AlarmRule("ratio", 5.0, numerator=MetricStat.of("Test", "Gauge", {"Id": "1"}),
                           denominator=MetricStat.of("Test", "Gauge", {"Id": "2"}, "SampleCount"), since=since))
    return rules


@pytest.mark.parametrize("offset", [0.0, 0.5, 59.25, 4 * 3600 + 0.75])
def test_one_legal_call_per_evaluation_whatever_the_number_of_rules(offset: float) -> None:
    since = T0 + 13.25  # not on any period boundary
    src = StrictSource(allowed_unaligned={since})
    now = since + 1 + offset
    for s in range(int(now) - 100, int(now) + 1):
        for i in range(3):
            src.store.record("Test", "Gauge", {"Id": str(i)}, float(s % 7), "None", s)
    alarms = AlarmSet(many_rules(since))
    assert len(alarms.rules) == 7 * 6 * 2 + 2
    for k in range(3):
        src.calls = 0
        alarms.evaluate(src, now=now + k)
        assert src.calls == 1 and not alarms.errors, alarms.errors
        assert len(alarms.current) == len(alarms.rules)
    # the query budget: one per (series, statistic, period) whatever the number of rules on it
    qs = alarms.plan(now)
    assert len(qs) == len({(q.metric, q.dimensions, q.statistic, q.period, q.start % q.period != 0)
                           for q in qs})
    assert all(legal_period(q.period) for q in qs)


def test_more_than_500_series_split_into_calls_of_500() -> None:
    src = StrictSource()
    rules = [AlarmRule(f"g{i}", 1.0, metric=MetricStat.of("Test", "Gauge", {"Id": str(i)}, "Maximum"))
             for i in range(501)]
    AlarmSet(rules).evaluate(src, now=T0 + 100)
    assert src.calls == 2 and len(src.queries) == 501


def test_percentile_periods_are_aligned_not_sliding(src: Source) -> None:
    """p99 of per-second datapoints cannot be merged: a 45 s rule reads aligned 60 s periods, the
    one still filling first, the previous (complete) one when the newest is under min_samples."""
    rule = AlarmRule("p", 100.0, metric=MetricStat.of("Test", "Lat", {}, "p99"), period=45.0, min_samples=10)
    assert rule.bucket == 60
    base = T0 + 40  # a multiple of 60
    assert base % 60 == 0
    for s in range(60):
        src.store.record("Test", "Lat", {}, float(s), "Milliseconds", base + s)  # 0..59 in [base, base+60)
    for s in range(5):
        src.store.record("Test", "Lat", {}, 500.0, "Milliseconds", base + 60 + s)  # 5 slow ones, too few
    src.queries.clear()
    ev = evaluate(rule, src, now=base + 65.5)
    assert [(q.start, q.period) for q in src.queries] == [(base - 60, 60)]  # N + 2 aligned periods
    assert ev.state == OK and ev.samples == 60 and ev.window_seconds == 60
    assert ev.value == pytest.approx(float(np.percentile(np.arange(60.0), 99)))
    for s in range(5, 10):
        src.store.record("Test", "Lat", {}, 500.0, "Milliseconds", base + 60 + s)
    ev = evaluate(rule, src, now=base + 70)
    assert ev.state == ALARM and ev.value == 500.0 and ev.samples == 10 and ev.window_seconds == 10
    assert ev.detail == "p 500 > 100 over 10 s"
    # cut at `since`: only the seconds of the newest period after it (the store clips the query's start)
    late = AlarmRule("p", 100.0, metric=rule.metric, period=45.0, min_samples=1, since=base + 30.5)
    ev = evaluate(late, src, now=base + 45)
    assert ev.samples == 14 and ev.window_seconds == 14.5 and ev.value == pytest.approx(
        float(np.percentile(np.arange(31.0, 45.0), 99)))


def test_a_trimmed_count_between_absolute_values_slides_like_a_sum(src: Source) -> None:
    """`TC(250:)` counts samples: the count of a window is the sum of its seconds', so it slides (exact
    at 1 s) where a percentile needs aligned periods; bounds in percent are ranks and would not add up."""
    assert not MetricStat.of("Test", "Lat", {}, "TC(250:)").percentile
    assert MetricStat.of("Test", "Lat", {}, "TC(10%:90%)").percentile
    rule = AlarmRule("slow", 4.0, metric=MetricStat.of("Test", "Lat", {}, "TC(250:)"), period=45.0)
    assert rule.bucket is None
    for s in range(60):
        src.store.record("Test", "Lat", {}, 300.0 if s % 5 == 0 else 100.0, "Milliseconds", T0 + s)
    src.queries.clear()
    ev = evaluate(rule, src, now=T0 + 60)
    assert [q.period for q in src.queries] == [1]
    assert ev.state == ALARM and ev.value == 9 and ev.window_seconds == 45  # seconds 15, 20, … 55
    assert ev.detail == "slow 9 > 4 over 45 s"


def test_sliding_error_rate_counts_are_exact_from_one_second_data(src: Source, manifest: Manifest) -> None:
    rule = rule_by_name(default_rules(manifest, "prod", {"worker": "7"}, T0), "error-rate:worker")
    rng = np.random.default_rng(3)
    calls, errors = {}, {}
    for s in range(0, 300):
        n = int(rng.integers(0, 4))
        e = int(rng.integers(0, n + 1))
        src.invocations("worker", 7, T0 + s, n, errors=e)
        calls[int(T0) + s], errors[int(T0) + s] = n, e
    for now in (T0 + 61, T0 + 100.5, T0 + 157.25, T0 + 299.999, T0 + 300):
        lo, hi = math.ceil(now - 60), math.ceil(now)  # seconds s with now - 60 <= s < now
        want_n = sum(calls[s] for s in range(lo, hi))
        want_e = sum(errors[s] for s in range(lo, hi))
        src.queries.clear()
        ev = evaluate(rule, src, now=now)
        assert (ev.numerator, ev.denominator) == (want_e, want_n), now
        assert ev.value == pytest.approx(100 * want_e / want_n) and ev.window_seconds == 60
        assert {q.period for q in src.queries} == {1}


def test_look_back_past_three_hours_asks_minutes(src: Source) -> None:
    """CloudWatch keeps sub-minute data 3 h: a longer range is asked in multiples of 60 s."""
    since = T0 + 40  # a multiple of 60
    assert since % 60 == 0
    rule = AlarmRule("dlq", 0.0, metric=MetricStat.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "q"}),
                     period=None, since=since, treat_missing_data="notBreaching")
    src.store.record(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "q"}, 2.0, "Count", since - 5)  # before: not counted
    assert [q.period for q in plan_rule(rule, since + 3 * 3600)] == [1]
    (q,) = plan_rule(rule, since + 5 * 3600)
    assert q.period == 60 and q.start == since
    assert evaluate(rule, src, now=since + 5 * 3600).state == OK
    src.store.record(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "q"}, 1.0, "Count", since + 4 * 3600 + 7)
    ev = evaluate(rule, src, now=since + 5 * 3600)
    assert ev.state == ALARM and ev.value == 1.0


def test_fetched_merges_one_series_for_several_rules(src: Source) -> None:
    gauge = MetricStat.of("Test", "Gauge", {"Id": "1"}, "Maximum")
    short = AlarmRule("short", 10.0, metric=gauge, period=5.0)
    long = AlarmRule("long", 10.0, metric=gauge, period=60.0)
    for s in range(200):
        src.store.record("Test", "Gauge", {"Id": "1"}, float(s % 30), "None", T0 + s)
    now = T0 + 150.5
    alarms = AlarmSet([short, long])
    (q,) = alarms.plan(now)
    assert (q.start, q.end, q.period) == (T0 - 30, now, 1)
    fetched = Fetched.fetch(src, alarms.plan(now))
    together = {c.rule.name: c.evaluation for c in alarms.decide(fetched, now)}
    assert together == {"short": evaluate(short, src, now), "long": evaluate(long, src, now)}
    # unaligned starts or ends are not widened (they would change the clipped period's content)
    p99 = MetricStat.of("Test", "Gauge", {"Id": "1"}, "p99")
    assert len(merge_queries([p99.query(T0 + 0.5, now, 60), p99.query(T0 + 1.5, now, 60)])) == 2
    assert len(merge_queries([p99.query(T0 - 20, now, 60), p99.query(T0 + 40, now, 60)])) == 1
    with pytest.raises(KeyError, match="not fetched"):
        fetched.series(p99.query(T0, now, 60))


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
    with pytest.raises(ValueError, match="summable"):
        AlarmRule("x", 1, metric=MetricStat.of("N", "M", {}, "p99"), period=None, since=T0)
    with pytest.raises(ValueError, match="duplicate"):
        AlarmSet([AlarmRule("x", 1, metric=m), AlarmRule("x", 2, metric=m)])
