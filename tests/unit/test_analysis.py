"""The sequential judges: the e-process's guarantees in seeded simulations, its handling of awkward
seconds, and the judges over the local platform's real metric store, alone and batched with the alarms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from backout.control import alarms as alarms_module
from backout.control.alarms import ALARM, INSUFFICIENT_DATA, OK, AlarmSet, default_rules
from backout.control.analysis import (
    ALTERNATIVES,
    CountJudge,
    JudgeChange,
    JudgeSet,
    LatencyJudge,
    MixtureTest,
    default_judges,
    evaluate_all,
    log_e_value,
    log_lr,
)
from backout.manifest import load_manifest
from backout.platforms.base import MAX_QUERIES, NS_API, NS_LAMBDA, Datapoint, MetricQuery, legal_period
from backout.platforms.local.metrics import MetricStore

ROOT = Path(__file__).resolve().parents[2]
START = 1_700_000_040.0


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
        return self.store.query_many(queries)

    def invocations(self, fn: str, version: str, ts: float, n: int, errors: int = 0, ms: float = 5.0) -> None:
        dims = {"FunctionName": fn, "ExecutedVersion": version}
        for i in range(n):
            self.store.record(NS_LAMBDA, "Invocations", dims, 1.0, "Count", ts)
            self.store.record(NS_LAMBDA, "Errors", dims, float(i < errors), "Count", ts)
            self.store.record(NS_LAMBDA, "Duration", dims, ms, "Milliseconds", ts)


@pytest.fixture
def src() -> Source:
    return Source()


def worker_judges(src: Source, kinds: tuple[str, ...] = ("errors", "latency"), open_seconds: bool = False,
                  **env: object) -> JudgeSet:
    """The worker's judges of `kinds` (errors, latency, dlq) in the repository's prod, sharing α = 0.01."""
    m = load_manifest(ROOT / "backout.toml")
    for k, v in env.items():
        setattr(m.environments["prod"], k, v)
    js = default_judges(m, "prod", {"worker": "7"}, {"worker": "6"}, START, open_seconds=open_seconds)
    return JudgeSet([j for j in js if j.name.partition("-")[0] in kinds], 0.01)


# --- the e-process --------------------------------------------------------------------------------------
def simulate(p_stable: float, p_canary: float, runs: int, seconds: int, seed: int, rate: float = 50.0,
             weight: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per run: the second the mixture e-value first reached 1/α (α = 0.01; -1: never) and the
    canary's requests until then — the same `log_lr`/`log_e_value` MixtureTest sums."""
    rng = np.random.default_rng(seed)
    sums = np.zeros((runs, ALTERNATIVES.size))
    first = np.full(runs, -1)
    served = np.zeros(runs)
    canary_total = np.zeros(runs)
    for t in range(seconds):
        n = rng.poisson(rate, runs)
        n_c = rng.binomial(n, weight)
        c, e = rng.binomial(n_c, p_canary), rng.binomial(n - n_c, p_stable)
        canary_total += n_c
        sums += log_lr(ALTERNATIVES, c, c + e, np.where(n > 0, n_c / np.maximum(n, 1), 0.0))
        new = (first < 0) & (log_e_value(sums) >= np.log(100.0))
        first[new], served[new] = t, canary_total[new]
        if (first >= 0).all():
            break
    return first, served


def test_healthy_canaries_are_rejected_less_often_than_alpha() -> None:
    """Ville's bound, seen: 500 healthy canaries (both versions fail 2 %) watched for 10 minutes."""
    first, _ = simulate(0.02, 0.02, runs=500, seconds=600, seed=7)
    assert np.mean(first >= 0) <= 0.01


def test_a_3x_regression_is_caught_well_within_the_hold() -> None:
    """1 % → 3 % at 10 % of 50 req/s: every one of 200 runs caught within the 10-minute hold."""
    first, served = simulate(0.01, 0.03, runs=200, seconds=600, seed=8)
    assert (first >= 0).all()
    assert np.median(served) < 2000


def test_mixture_test_matches_the_vectorised_sum_and_bounds_the_ratio() -> None:
    rng = np.random.default_rng(3)
    t = MixtureTest(alpha=0.01)
    sums = np.zeros(ALTERNATIVES.size)
    for _ in range(400):
        n_c, n_s = rng.poisson(5), rng.poisson(45)
        c, e = rng.binomial(n_c, 0.06), rng.binomial(n_s, 0.02)
        t.observe(c, n_c, e, n_s)
        if n_c and n_s and (c or e):
            sums += log_lr(ALTERNATIVES, c, c + e, n_c / (n_c + n_s))
    assert t.log_e == pytest.approx(float(log_e_value(sums)))
    low, high = t.interval()
    assert low is not None and high is not None and low < 3.0 < high  # the true ratio is 3
    assert low < t.estimate() < high
    assert t.rejected and t.e_value >= 100.0


def test_awkward_seconds() -> None:
    t = MixtureTest(alpha=0.01)
    t.observe(3, 0, 2, 0)  # events, no requests on either version: nothing to attribute them to
    t.observe(2, 0, 0, 10)  # canary events without canary requests: inconsistent counts
    assert t.skipped == 2 and t.canary_events == 0 and t.informative == 0
    t.observe(4, 10, 0, 0)  # the canary alone (100 %): counted, but no comparison (q = 1)
    t.observe(0, 0, 3, 10)  # the stable version alone
    assert t.informative == 0 and t.e_value == 1.0 and t.interval() == (None, None) and t.estimate() is None
    assert (t.canary_events, t.canary_requests, t.stable_events, t.stable_requests) == (4, 10, 3, 10)
    t.observe(0, 10, 0, 10)  # both served, no event: informative second, no evidence
    assert t.informative == 1 and t.e_value == 1.0


# --- the judges over a real metric store ---------------------------------------------------------------------
def test_errors_judge_reads_only_closed_seconds_each_once(src: Source) -> None:
    judges = worker_judges(src, latency_judge=False)
    (j,) = judges.judges
    assert isinstance(j, CountJudge) and j.name == "errors-judge:worker" and j.alpha == 0.01
    for s in range(5):  # 10 % of the traffic: 1 of 5 canary requests fail and 2 of 45 stable ones, then 5 of 5
        src.invocations("worker", "7", START + s, 5, errors=1 if s < 2 else 5)
        src.invocations("worker", "6", START + s, 45, errors=2)
    (change,) = judges.evaluate(src, now=START + 3.5)  # seconds 0, 1 are closed (settle 1 s); 2 is not
    ev = change.evaluation
    assert ev.state == OK and ev.evidence.seconds == 2 and ev.evidence.canary_events == 2
    assert ev.detail == ("errors on worker v7 vs v6: e-value 1.49 < 100, ratio 4.5 (CI 0.062–91), canary 2/10, "
                         "stable 4/90 over 2 s")
    src.invocations("worker", "6", START + 1, 1000, errors=1000)  # late counts for a judged second: ignored
    (change,) = judges.evaluate(src, now=START + 6.0)
    assert change.evaluation.state == ALARM and change.evaluation.evidence.stable_events == 6
    assert change.evaluation.evidence.seconds == 3, "it stops at the second that decided"
    assert judges.plan(START + 10) == [], "a decided judge asks nothing more"


def test_errors_judge_on_open_seconds_counts_each_invocation_once_and_decides_within_the_second(
        src: Source) -> None:
    """`open_seconds`: the second still filling is judged by what it holds at each evaluation, the
    rest of it later; the counts add up to the store's, whatever the evaluations' instants."""
    judges = worker_judges(src, kinds=("errors",), open_seconds=True)
    (j,) = judges.judges
    for s in range(3):  # healthy, both versions
        src.invocations("worker", "7", START + s + 0.1, 5)
        src.invocations("worker", "6", START + s + 0.1, 45)
        for dt in (0.3, 0.6, 0.9):
            judges.evaluate(src, now=START + s + dt)
            src.invocations("worker", "6", START + s + dt, 5)  # more of the same second after each read
    ev = judges.current["errors-judge:worker"]
    assert ev.state == OK and j.cursor == int(START) + 1, "second 0 closed (settle 1 s), 1 and 2 still open"
    assert (ev.evidence.canary_requests, ev.evidence.stable_requests) == (15, 175), \
        "all but the 5 recorded after the last read"
    t = START + 3
    src.invocations("worker", "7", t + 0.05, 2, errors=2)  # the canary starts failing everything
    src.invocations("worker", "6", t + 0.05, 18)
    judges.evaluate(src, now=t + 0.1)
    assert judges.current["errors-judge:worker"].state == OK, "2 failures of 2 at a 10 % share: not yet"
    src.invocations("worker", "7", t + 0.15, 1, errors=1)
    src.invocations("worker", "6", t + 0.15, 9)
    (change,) = judges.evaluate(src, now=t + 0.2)
    ev = change.evaluation
    assert ev.state == ALARM and ev.evidence.canary_events == 3 and ev.evidence.canary_requests == 18
    assert ev.evidence.e_value >= 100.0 and j.cursor == int(t) + 1, "decided in the second it failed"


def test_dlq_judge_on_the_fake_platform(tmp_path: Path) -> None:
    """DLQ arrivals of the messages each version received last, q from the consumer's invocations: a
    canary whose worker fails every job is judged by its DLQ arrivals; the stable's late ones are not its."""
    from fakes import FakeClock, FakePlatform, raising, write_manifest

    m = write_manifest(tmp_path)
    clock = FakeClock()
    fake = FakePlatform(m, "prod", clock=clock)
    stable = fake.get_weights("worker").stable
    canary = fake.publish(new_from(tmp_path, "worker")).versions["worker"]
    fake.handle("worker", raising("poisoned job"), version=canary)
    fake.set_weights("worker", stable, canary, 50.0)
    since = clock.now()
    judges = JudgeSet(default_judges(m, "prod", {"worker": canary}, {"worker": stable}, since,
                                     open_seconds=True), 0.01)
    assert [j.name for j in judges.judges] == ["errors-judge:worker", "dlq-judge:jobs-dlq"]
    (dlq,) = [j for j in judges.judges if j.name == "dlq-judge:jobs-dlq"]
    assert dlq.confirms == ("dlq-arrivals:jobs-dlq",) and dlq.window == 10
    judges.judges.remove(judges.judges[0])  # the DLQ judge alone, at its share of α (e ≥ 200)
    for i in range(40):
        fake.send_message("jobs", json.dumps({"job": i}))
        fake.pump(2)
        clock.advance(0.5)
        judges.evaluate(fake, now=clock.now())
        if judges.current["dlq-judge:jobs-dlq"].state == ALARM:
            break
    ev = judges.current["dlq-judge:jobs-dlq"]
    assert ev.state == ALARM and ev.evidence.judge == "dlq-judge:jobs-dlq"
    assert ev.evidence.canary_events >= 2 and ev.evidence.stable_events == 0
    assert ev.detail.startswith(f"DLQ arrivals (jobs-dlq, received last by worker) on worker v{canary} vs v{stable}: "
                                "e-value ")
    assert fake.messages("jobs-dlq"), "the messages are there"


def new_from(root: Path, *changed: str) -> Path:
    from fakes import new_source

    return new_source(root, "src-2", changed)


def test_latency_judge_compares_the_slowest_request_of_each_second(src: Source) -> None:
    judges = worker_judges(src, error_judge=False)
    (j,) = judges.judges
    assert isinstance(j, LatencyJudge)
    for s in range(30):  # the canary 20 % slower: within the 25 % tolerance
        src.invocations("worker", "7", START + s, 5, ms=120.0)
        src.invocations("worker", "6", START + s, 45, ms=100.0)
    ev = j.evaluate(src, now=START + 31)
    assert ev.state == OK and ev.evidence.canary_events == 0 and ev.evidence.stable_events == 30
    for s in range(30, 60):  # then 3× slower
        src.invocations("worker", "7", START + s, 5, ms=300.0)
        src.invocations("worker", "6", START + s, 45, ms=100.0)
    ev = j.evaluate(src, now=START + 61)
    assert ev.state == ALARM and ev.detail.startswith("slowest request (> 1.25× and +25 ms) on worker v7 vs v6: ")


def test_alarms_and_judges_share_one_metrics_call(src: Source) -> None:
    m = load_manifest(ROOT / "backout.toml")
    canary = {"api": "3", "worker": "5", "dlq_processor": "2", "repair": "9"}
    stable = {fn: str(int(v) - 1) for fn, v in canary.items()}
    alarms = AlarmSet(default_rules(m, "prod", canary, START))
    judges = JudgeSet(default_judges(m, "prod", canary, stable, START), m.environments["prod"].judge_alpha)
    assert [j.name for j in judges.judges] == [
        "errors-judge:api", "errors-judge:worker", "errors-judge:dlq_processor", "5xx-judge",
        "dlq-judge:processing-dlq", "latency-judge:api", "latency-judge:worker", "latency-judge:dlq_processor"]
    assert all(x.test.threshold == pytest.approx(800.0) for x in judges.judges)
    for s in range(10):
        src.invocations("api", "3", START + s, 2)
        src.invocations("api", "2", START + s, 18)
        for v in ("3", "2"):
            src.store.record(NS_API, "Count", {"ApiName": "security-assistant", "Stage": "prod",
                                               "ExecutedVersion": v}, 1.0, "Count", START + s)
    changes = evaluate_all(src, alarms, judges, now=START + 10)
    assert len(src.calls) == 1
    by_name = {c.evaluation.alarm: c for c in changes}
    assert isinstance(by_name["errors-judge:api"], JudgeChange)
    assert by_name["errors-judge:api"].evaluation.state == OK
    assert by_name["errors-judge:worker"].evaluation.state == INSUFFICIENT_DATA
    src.fail = True  # the one call fails: every alarm and judge keeps its state
    assert evaluate_all(src, alarms, judges, now=START + 11) == []
    assert "metric store unreachable" in judges.errors["errors-judge:api"]
    src.fail = False
    evaluate_all(src, alarms, judges, now=START + 12)
    assert not alarms.errors and not judges.errors


def test_query_budget_of_the_sda_manifest_with_judges(src: Source) -> None:
    """The module docstring's figure: in prod, the alarms' and the judges' queries in one call."""
    m = load_manifest(ROOT / "backout.toml")
    canary = {"api": "3", "worker": "5", "dlq_processor": "2", "repair": "9"}
    stable = {fn: str(int(v) - 1) for fn, v in canary.items()}
    start = START + 7.5  # a deployment starts at any instant
    alarms = AlarmSet(default_rules(m, "prod", canary, start))
    judges = JudgeSet(default_judges(m, "prod", canary, stable, start))
    for dt in (20, 20.25, 21):  # the judges ask only when a second has closed
        evaluate_all(src, alarms, judges, now=start + dt)
    assert [len(c) for c in src.calls] == [35, 11, 35]
    assert "35 queries in an evaluation after a second closed, 11 in the others" in " ".join(
        alarms_module.__doc__.split())


def test_preflight_warns_when_a_threshold_would_fire_on_a_canary_as_healthy_as_stable() -> None:
    from backout.control import preflight
    from fakes import FakeClock, FakePlatform

    m = load_manifest(ROOT / "backout.toml")
    clock = FakeClock()
    fake = FakePlatform(m, "prod", clock=clock)
    calls = [0]

    def one_in_a_hundred(c: object) -> object:
        calls[0] += 1
        if calls[0] % 100 == 0:
            raise RuntimeError("background failure")
        return c.default()  # type: ignore[attr-defined]

    fake.handle("api", one_in_a_hundred)
    for s in range(50):  # 50 s of 20 req/s, 1 % failing
        fake.traffic("api", 20, at=clock.now() - 50 + s)
    stable = {fn: fake.get_weights(fn).stable for fn in fake.functions()}
    found = {f.alarm: f for f in preflight.check(m, "prod", fake, stable, [(10, 600), (100, 0)], clock.now())}
    assert set(found) == {"error-rate:api", "error-rate-ceiling:api", "api-5xx"}, "only api had traffic"
    f = found["api-5xx"]
    assert (f.stable_rate, f.requests_per_second) == (pytest.approx(0.01), pytest.approx(20.0))
    assert f.warn and f.probability > 0.5 and f.median_seconds is not None
    assert f.sentence.startswith("api-5xx: stable v1 answers 1 % of 20 requests/s with a 5xx; a canary as healthy")
    assert f.sentence.endswith("it waits for its judge (confirm_with_judge)")
    assert not found["error-rate-ceiling:api"].warn
