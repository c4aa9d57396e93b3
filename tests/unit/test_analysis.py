"""The latency judge over the local platform's real metric store, alone and batched with the alarms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
)
from backout.control.analysis import JudgeChange, JudgeSet, LatencyJudge, evaluate_all
from backout.manifest import load_manifest
from backout.platforms.base import MAX_QUERIES, NS_LAMBDA, Datapoint, MetricQuery, legal_period
from backout.platforms.local.metrics import MetricStore

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parents[2]
START = T0 + 40  # a multiple of 60: the deployment starts on a period boundary
assert START % 60 == 0


class Source:
    """The Platform's batched `metrics` over a real MetricStore; refuses what GetMetricData would."""

    def __init__(self) -> None:
        self.store = MetricStore(db_path=None)
        self.calls: list[list[MetricQuery]] = []
        self.fail = False

    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        if self.fail:
            raise ConnectionError("metric store unreachable")
        assert 0 < len(queries) <= MAX_QUERIES
        assert all(legal_period(q.period) for q in queries)
        self.calls.append(list(queries))
        return [self.store.query(q) for q in queries]

    def durations(self, fn: str, version: str, ts: float, values: Sequence[float]) -> None:
        for v in values:
            for dims in ({"FunctionName": fn}, {"FunctionName": fn, "ExecutedVersion": version}):
                self.store.record(NS_LAMBDA, "Duration", dims, v, "Milliseconds", ts)
                self.store.record(NS_LAMBDA, "Invocations", dims, 1.0, "Count", ts)


@pytest.fixture
def src() -> Source:
    return Source()


def judge(**kw) -> LatencyJudge:
    return LatencyJudge("worker", kw.pop("canary", "7"), kw.pop("stable", "6"), START, **kw)


def traffic(src: Source, canary_ms: float, stable_ms: float, seconds: range, per_second: int = 2) -> None:
    for s in seconds:
        src.durations("worker", "7", START + s, [canary_ms] * per_second)
        src.durations("worker", "6", START + s, [stable_ms] * per_second * 9)


def test_slow_canary_alarms_with_its_evidence(src: Source) -> None:
    traffic(src, canary_ms=5000.0, stable_ms=100.0, seconds=range(30))
    ev = judge().evaluate(src, now=START + 30)
    assert ev.state == ALARM and ev.value == 5000.0 and ev.threshold == 1100.0 and ev.samples == 60
    assert ev.alarm == "latency-judge:worker" and ev.window_seconds == 30
    assert ev.detail == (
        "p99 5000 ms > 1100 ms (max of 3× and +1000 ms over stable v6 p99 now 100 ms) over 30 s on worker v7"
    )
    assert len(src.calls) == 1


def test_equal_canary_stays_ok(src: Source) -> None:
    traffic(src, canary_ms=100.0, stable_ms=100.0, seconds=range(30))
    ev = judge().evaluate(src, now=START + 30)
    assert ev.state == OK and ev.value == 100.0 and ev.breaching == 0 and ev.evaluated == 1
    assert ev.detail == (
        "p99 100 ms ≤ 1100 ms (max of 3× and +1000 ms over stable v6 p99 now 100 ms) over 30 s on worker v7"
    )


def test_periods_are_aligned_and_the_previous_one_decides_while_the_newest_fills(src: Source) -> None:
    j = judge(window=45.0)  # not a legal period: compared over aligned 60 s periods
    assert j.period == 60
    traffic(src, canary_ms=5000.0, stable_ms=100.0, seconds=range(60))  # [START, START + 60)
    traffic(src, canary_ms=100.0, stable_ms=100.0, seconds=range(60, 65), per_second=1)  # 5 only
    now = START + 65.5
    qs = j.plan(now)
    assert [(q.start, q.end, q.period, q.statistic) for q in qs] == [
        (START - 300, START, 60, "p99"),  # the stable baseline, on the first evaluation only
        (START, now, 60, "p99"),
        (START, now, 60, "p99"),
    ]
    assert [dict(q.dimensions)["ExecutedVersion"] for q in qs] == ["6", "7", "6"]
    ev = j.evaluate(src, now=now)
    assert ev.state == ALARM and ev.samples == 120 and ev.window_seconds == 60  # the complete period
    assert len(j.plan(now + 1)) == 2
    traffic(src, canary_ms=100.0, stable_ms=100.0, seconds=range(65, 80))
    ev = j.evaluate(src, now=START + 80)  # the newest period has 35 canary invocations now
    assert ev.state == OK and ev.samples == 35 and ev.window_seconds == 20


def test_baseline_before_the_deployment_when_stable_gets_no_traffic(src: Source) -> None:
    for s in range(-200, 0):
        src.durations("worker", "6", START + s, [200.0])
    for s in range(40):
        src.durations("worker", "7", START + s, [1500.0])
    j = judge()
    ev = j.evaluate(src, now=START + 40)
    assert j.baseline == 200.0
    assert ev.state == ALARM and ev.detail == (
        "p99 1500 ms > 1200 ms (max of 3× and +1000 ms over stable v6 p99 before the deployment 200 ms) "
        "over 40 s on worker v7"
    )


def test_not_enough_data(src: Source) -> None:
    traffic(src, canary_ms=100.0, stable_ms=100.0, seconds=range(5))
    ev = judge().evaluate(src, now=START + 10)
    assert ev.state == INSUFFICIENT_DATA and ev.samples == 10 and ev.value == 100.0
    assert ev.detail == "latency judge: not enough data (10/20 invocations) on worker v7"
    lonely = Source()
    lonely.durations("worker", "7", START + 1, [100.0] * 30)
    ev = judge().evaluate(lonely, now=START + 10)
    assert ev.state == INSUFFICIENT_DATA
    assert ev.detail == "latency judge: not enough data (no stable baseline) on worker v7"


def test_alarms_and_judges_share_one_metrics_call(src: Source) -> None:
    fns = [f"fn{i}" for i in range(40)]
    rules = [
        AlarmRule(
            f"error-rate:{fn}",
            5.0,
            since=START,
            numerator=MetricStat.of(NS_LAMBDA, "Errors", {"FunctionName": fn, "ExecutedVersion": "7"}),
            denominator=MetricStat.of(NS_LAMBDA, "Invocations", {"FunctionName": fn, "ExecutedVersion": "7"}),
        )
        for fn in fns
    ]
    alarms = AlarmSet(rules)
    judges = JudgeSet([LatencyJudge(fn, "7", "6", START) for fn in [*fns, "worker"]])
    traffic(src, canary_ms=5000.0, stable_ms=100.0, seconds=range(30))
    assert len(alarms.plan(START + 30)) == 2 * 40 and len(judges.plan(START + 30)) == 3 * 41

    changes = evaluate_all(src, alarms, judges, now=START + 30)
    assert len(src.calls) == 1
    assert len(src.calls[0]) == 2 * 40 + 3 * 41
    by_name = {c.evaluation.alarm: c for c in changes}
    assert by_name["latency-judge:worker"].evaluation.state == ALARM
    assert isinstance(by_name["latency-judge:worker"], JudgeChange)
    assert by_name["error-rate:fn0"].evaluation.state == INSUFFICIENT_DATA
    assert [e.alarm for e in judges.alarming()] == ["latency-judge:worker"]

    assert evaluate_all(src, alarms, judges, now=START + 31) == [] and len(src.calls) == 2
    src.fail = True  # the one call fails: every alarm and judge keeps its state
    assert evaluate_all(src, alarms, judges, now=START + 32) == []
    assert "metric store unreachable" in alarms.errors["error-rate:fn3"]
    assert "metric store unreachable" in judges.errors["latency-judge:worker"]
    assert judges.current["latency-judge:worker"].state == ALARM
    src.fail = False
    evaluate_all(src, alarms, judges, now=START + 33)
    assert not alarms.errors and not judges.errors


def test_fetch_is_one_call_per_set(src: Source) -> None:
    judges = JudgeSet([judge()])
    traffic(src, canary_ms=100.0, stable_ms=100.0, seconds=range(30))
    (change,) = judges.evaluate(src, now=START + 30)
    assert change.previous is None and change.evaluation.state == OK and len(src.calls) == 1
    fetched = Fetched.fetch(src, judges.plan(START + 31))
    assert judges.decide(fetched, START + 31) == [] and len(src.calls) == 2


def test_query_budget_of_the_sda_manifest_with_judges(src: Source) -> None:
    """The module docstring's figure: 10 alarm queries + 2 per judge (+1 on the first) = 18 (22)."""
    m = load_manifest(ROOT / "backout.toml")
    versions = {"api": "3", "worker": "5", "dlq_processor": "2", "repair": "9"}
    start = START + 7.5  # a deployment starts at any instant
    alarms = AlarmSet(default_rules(m, "prod", versions, start))
    judges = JudgeSet([LatencyJudge(fn, v, str(int(v) - 1), start) for fn, v in versions.items()])
    evaluate_all(src, alarms, judges, now=start + 20)
    evaluate_all(src, alarms, judges, now=start + 21)
    assert [len(c) for c in src.calls] == [22, 18]
    assert "= 18 per evaluation (22 on the first)" in " ".join(alarms_module.__doc__.split())
