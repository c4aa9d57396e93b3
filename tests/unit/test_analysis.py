"""The sequential judges: the e-process's guarantees in seeded simulations, its handling of awkward
seconds, and the judges over the local platform's real metric store, alone and batched with the alarms."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from backout.control import alarms as alarms_module
from backout.control.alarms import ALARM, INSUFFICIENT_DATA, OK, AlarmSet, default_rules
from backout.control.analysis import (
    ALTERNATIVES,
    CANDIDATES,
    CountJudge,
    JudgeChange,
    JudgeSet,
    LatencyJudge,
    MixtureTest,
    default_judges,
    evaluate_all,
    log_e_value,
    log_lr,
    verdict,
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


def test_the_interval_holds_every_ratio_of_the_confidence_sequence_between_grid_points() -> None:
    """The set {r0 : M_t(r0) < 1/α} is computed on `CANDIDATES`; a ratio between the last candidate
    inside and the first outside can belong to it, so the interval reaches one grid step further out."""
    rng = np.random.default_rng(5)
    fine = np.geomspace(0.02, 500.0, 4001)  # 33 points per grid step
    for true_ratio in (0.5, 1.0, 3.0):
        t = MixtureTest(alpha=0.01)
        obs = []
        for _ in range(300):
            n_c, n_s = rng.poisson(5), rng.poisson(45)
            c, e = rng.binomial(n_c, 0.02 * true_ratio), rng.binomial(n_s, 0.02)
            t.observe(c, n_c, e, n_s)
            if n_c and n_s and (c or e):
                obs.append((c, c + e, n_c / (n_c + n_s)))
        c, m, q = (np.array(x, dtype=float) for x in zip(*obs, strict=True))
        grid = log_lr(CANDIDATES, c, m, q).sum(axis=0)
        mixture = float(np.logaddexp.reduce(grid)) - np.log(CANDIDATES.size)
        inside = fine[mixture - log_lr(fine, c, m, q).sum(axis=0) < np.log(t.threshold)]  # log M_t(r0) < log 1/α
        low, high = t.interval()
        assert low is not None and high is not None
        assert low <= inside.min() and inside.max() <= high, (true_ratio, low, inside.min(), inside.max(), high)
        on_grid = CANDIDATES[(CANDIDATES >= inside.min()) & (CANDIDATES <= inside.max())]
        assert low < on_grid.min() and on_grid.max() < high, "one grid step beyond the candidates inside"


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
    assert ev.detail == ("errors on worker v7 vs v6: e-value 1.49 < 100, ratio 4.5 (CI 0.056–100), canary 2/10, "
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


def test_latency_judge_evidence_says_what_its_counts_are(src: Source) -> None:
    """Its events are seconds (the canary's slowest beyond the stable's, or not), its requests requests."""
    judges = worker_judges(src, error_judge=False)
    (j,) = judges.judges
    for s in range(4):
        src.invocations("worker", "7", START + s, 5, ms=300.0)
        src.invocations("worker", "6", START + s, 45, ms=100.0 if s else 400.0)  # the stable's slowest in second 0
    ev = j.evaluate(src, now=START + 5)
    assert ev.detail.endswith("the canary's slowest beyond the stable's in 3 of 4 s compared, requests canary 20, "
                              "stable 180 over 4 s")


def slow_judges(src: Source, **env: object) -> JudgeSet:
    """The worker's slow-requests judge in prod with a 500 ms duration limit, at α = 0.01 alone."""
    return worker_judges(src, kinds=("slow",), duration_p99_limits={"worker": 0.5}, **env)


def durations(src: Source, version: str, ts: float, fast: int, slow: int, ms: float = 800.0) -> None:
    src.invocations("worker", version, ts, fast, ms=100.0)
    src.invocations("worker", version, ts, slow, ms=ms)


def test_slow_judge_counts_requests_beyond_the_duration_limit_per_version() -> None:
    m = load_manifest(ROOT / "backout.toml")
    m.environments["prod"].duration_p99_limits = {"worker": 0.5}
    js = default_judges(m, "prod", {"worker": "7", "api": "3"}, {"worker": "6", "api": "2"}, START)
    (j,) = [x for x in js if x.name.startswith("slow-judge:")]  # only the function with a limit gets one
    (latency,) = [x for x in js if x.name == "latency-judge:worker"]
    assert isinstance(j, CountJudge) and j.name == "slow-judge:worker"
    assert j.confirms == latency.confirms and j.confirms[0] == "duration-p99:worker", "as the latency judge"
    assert j.canary is not None and j.canary.events.statistic == "TC(500:)"
    assert j.canary.requests.metric == "Invocations" and dict(j.canary.requests.dimensions)["ExecutedVersion"] == "7"
    judges = JudgeSet(js, 0.01)
    assert len(judges.judges) == 7 and j.test.threshold == pytest.approx(700.0), "it takes its share of α"
    assert "duration-p99:worker" in {r.name for r in default_rules(m, "prod", {"worker": "7"}, START)}
    m.environments["prod"].latency_judge = False
    assert not [x for x in default_judges(m, "prod", {"worker": "7"}, {"worker": "6"}, START) if "slow" in x.name]


def test_slow_judge_rolls_back_a_canary_slow_beyond_the_limit_three_times_as_often(src: Source) -> None:
    judges = slow_judges(src)
    (j,) = judges.judges
    for s in range(60):  # both versions: 1 request in 50 beyond 500 ms (the stable's slowest beats the canary's)
        durations(src, "7", START + s, 5 - (s % 10 == 0), int(s % 10 == 0), ms=800.0)
        durations(src, "6", START + s, 44, 1, ms=2000.0)
    ev = judges.evaluate(src, now=START + 61)[0].evaluation
    assert ev.state == OK and ev.evidence.canary_events == 6 and ev.evidence.stable_events == 60
    t = START + 61
    for s in range(600):  # then the canary's share of slow requests is 3× the stable's: 3 in 50
        durations(src, "7", t + s, 5 - (s % 10 < 3), int(s % 10 < 3))
        durations(src, "6", t + s, 44, 1)
        judges.evaluate(src, now=t + s + 2)
        if j.test.rejected:
            break
    ev = judges.current["slow-judge:worker"]
    assert ev.state == ALARM and ev.evidence.e_value >= 100.0 and ev.evidence.ratio > 1.5
    assert ev.detail.startswith("requests slower than 500 ms on worker v7 vs v6: e-value ")
    assert ev.evidence.canary_events / ev.evidence.canary_requests > ev.evidence.stable_events / \
        ev.evidence.stable_requests


def test_slow_judge_judges_open_seconds_on_a_consistent_platform(src: Source) -> None:
    """Duration is recorded with Invocations, so the TC count of an open second is of whole invocations."""
    m = load_manifest(ROOT / "backout.toml")
    m.environments["prod"].duration_p99_limits = {"worker": 0.5}
    js = default_judges(m, "prod", {"worker": "7"}, {"worker": "6"}, START, open_seconds=True)
    judges = JudgeSet([j for j in js if j.name == "slow-judge:worker"], 0.01)
    (j,) = judges.judges
    assert j.open_seconds
    durations(src, "7", START + 0.2, 0, 5, ms=900.0)  # every canary request slow, none of the stable's
    durations(src, "6", START + 0.2, 45, 0)
    judges.evaluate(src, now=START + 0.5)
    assert j.test.canary_events == 5 and j.test.canary_requests == 5, "read while its second is still open"


# --- alarms that no judge can confirm act alone -----------------------------------------------------------
def worker_errors(src: Source, version: str, ts: float, n: int, errors: int) -> None:
    src.invocations("worker", version, ts, n, errors=errors)


def test_an_alarm_whose_judges_have_no_stable_traffic_to_compare_acts_alone(src: Source) -> None:
    """The stable version serves no request: every confirming judge starves, and waiting for one would
    wait forever — the 30 %-failing canary's error-rate alarm rolls back on its own (trigger `alarm`)."""
    m = load_manifest(ROOT / "backout.toml")
    alarms = AlarmSet([r for r in default_rules(m, "prod", {"worker": "7"}, START) if r.name == "error-rate:worker"])
    judges = JudgeSet([j for j in default_judges(m, "prod", {"worker": "7"}, {"worker": "6"}, START)
                       if j.name in ("errors-judge:worker", "latency-judge:worker")], 0.01)
    for s in range(30):
        worker_errors(src, "7", START + s, 10, 3)
    evaluate_all(src, alarms, judges, now=START + 30)
    assert judges.current["errors-judge:worker"].state == INSUFFICIENT_DATA
    v = verdict(alarms, judges, confirm_with_judge=True)
    assert v.trigger == "alarm" and [e.alarm for e in v.firing] == ["error-rate:worker"] and not v.waiting
    assert v.firing[0].detail.endswith("; no stable traffic to compare with (the stable version served no request): "
                                       "it acts alone")
    for s in range(30, 40):  # the stable version serves again: its judges can judge, the alarm waits for them
        worker_errors(src, "6", START + s, 10, 0)
        worker_errors(src, "7", START + s, 10, 3)
    evaluate_all(src, alarms, judges, now=START + 40)
    v = verdict(alarms, judges, confirm_with_judge=True)
    assert v.trigger in (None, "judge") and (v.waiting or v.trigger == "judge")


def test_an_alarm_whose_window_lies_wholly_at_100_percent_acts_alone(src: Source) -> None:
    """At 100 % since `alone_since` no second has requests on both versions: once the alarm's window
    starts after it, the alarm's data is the canary's alone and no judge can confirm it."""
    m = load_manifest(ROOT / "backout.toml")
    alarms = AlarmSet([r for r in default_rules(m, "prod", {"worker": "7"}, START) if r.name == "error-rate:worker"])
    judges = JudgeSet([j for j in default_judges(m, "prod", {"worker": "7"}, {"worker": "6"}, START)
                       if j.name == "errors-judge:worker"], 0.01)
    for s in range(60):  # 10 %: both versions fail 6 % (the canary's rate is over prod's 5 % threshold)
        worker_errors(src, "7", START + s, 5, int(s % 10 < 3))
        worker_errors(src, "6", START + s, 45, 3)
    switch = START + 60
    for s in range(120):  # 100 % on the canary, failing 30 %
        worker_errors(src, "7", switch + s, 10, 3)
    for dt, waits in ((30, True), (61, False)):
        evaluate_all(src, alarms, judges, now=switch + dt)
        assert alarms.current["error-rate:worker"].state == ALARM
        v = verdict(alarms, judges, confirm_with_judge=True, alone_since=switch)
        assert (v.trigger is None and bool(v.waiting)) == waits, (dt, v)
    assert v.trigger == "alarm" and "the canary had all of it over the window" in v.firing[0].detail
    v = verdict(alarms, judges, confirm_with_judge=True, alone_since=float("-inf"))
    assert v.trigger == "alarm", "a deployment that never split the traffic: nothing was ever compared"


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


def _failing_every(n: int) -> Callable[[object], object]:
    """A FakePlatform handler whose every n-th call fails: a background error rate of 1/n."""
    calls = [0]

    def handle(c: object) -> object:
        calls[0] += 1
        if calls[0] % n == 0:
            raise RuntimeError("background failure")
        return c.default()  # type: ignore[attr-defined]

    return handle


def test_preflight_warns_when_a_threshold_would_fire_on_a_canary_as_healthy_as_stable() -> None:
    from backout.control import preflight
    from fakes import FakeClock, FakePlatform

    m = load_manifest(ROOT / "backout.toml")
    clock = FakeClock()
    fake = FakePlatform(m, "prod", clock=clock)
    fake.handle("api", _failing_every(100))
    for s in range(50):  # 50 s of 20 req/s, 1 % failing
        fake.traffic("api", 20, at=clock.now() - 50 + s)
    stable = {fn: fake.get_weights(fn).stable for fn in fake.functions()}
    found = {f.alarm: f for f in preflight.check(m, "prod", fake, stable, [(10, 600), (100, 0)], clock.now())}
    assert set(found) == {"error-rate:api", "error-rate-ceiling:api", "api-5xx"}, "only api had traffic"
    f = found["api-5xx"]
    assert (f.stable_rate, f.requests_per_second) == (pytest.approx(0.01), pytest.approx(20.0))
    assert f.warn and f.probability > 0.5 and f.mean_seconds is not None
    assert f.sentence.startswith("api-5xx: stable v1 answers 1 % of 20 requests/s with a 5xx; a canary as healthy")
    assert f.sentence.endswith("it waits for its judge (confirm_with_judge)")
    assert not found["error-rate-ceiling:api"].warn


def test_preflight_reports_the_mean_time_to_a_false_alarm_as_a_bound_when_some_runs_never_fire() -> None:
    from types import SimpleNamespace

    from backout.control import preflight

    env = SimpleNamespace(judge_alpha=0.01)
    out: list[preflight.Finding] = []
    preflight._finding(out, env, "error-rate:api", 20.0, 0.01, np.array([9, 19, 99]), 600, 900, "…", None)
    preflight._finding(out, env, "error-rate:api", 20.0, 0.01, np.array([9, 19, -1, -1]), 600, 900, "…", None)
    preflight._finding(out, env, "error-rate:api", 20.0, 0.01, np.array([-1, -1]), 600, 900, "…", None)
    every, some, none = out
    assert (every.mean_seconds, every.mean_at_least) == (pytest.approx(43.333, abs=1e-3), False)  # not the median, 20
    assert "(mean after 43 s)" in every.sentence
    assert (some.mean_seconds, some.mean_at_least) == (457.5, True)  # the two that never fired count at 900 s
    assert "(mean ≥ 458 s: 2 of 4 runs did not fire it within the 900 s simulated)" in some.sentence
    assert none.mean_seconds is None and "(no run fired it within the 900 s simulated)" in none.sentence


def test_preflight_says_which_alarms_wait_for_a_judge_and_scales_dlq_arrivals_to_the_canarys_share() -> None:
    """An alarm no judge watches (repair: no event source) or one at 100 % (no stable traffic to compare with)
    would roll the healthy canary back; the DLQ rule counts the arrivals the canary received last, so the
    stable consumer's own arrivals are simulated at the step's weight, not the whole queue's."""
    from backout.control import preflight
    from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT
    from fakes import FakeClock, FakePlatform

    m = load_manifest(ROOT / "backout.toml")
    clock = FakeClock()
    fake = FakePlatform(m, "prod", clock=clock)
    fake.handle("repair", _failing_every(10))
    fake.handle("api", _failing_every(10))
    stable = {fn: fake.get_weights(fn).stable for fn in fake.functions()}
    for s in range(300):  # 300 s: repair and api 10 req/s failing 10 %, one DLQ arrival every 100 s
        fake.traffic("repair", 10, at=clock.now() - 300 + s)
        fake.traffic("api", 10, at=clock.now() - 300 + s)
        if s % 100 == 0:
            for dims in ({"QueueName": "processing-dlq"},
                         {"QueueName": "processing-dlq", "ExecutedVersion": stable["worker"]}):
                fake.record(NS_BACKOUT, DLQ_ARRIVALS, dims, 1.0, ts=clock.now() - 300 + s)
    canary = [(10, 600), (100, 0)]
    found = {f.alarm: f for f in preflight.check(m, "prod", fake, stable, canary, clock.now())}
    repair = found["error-rate:repair"]
    assert repair.warn and repair.sentence.endswith("it would roll the healthy canary back"), "no judge watches it"
    assert found["error-rate:api"].sentence.endswith("it waits for its judge (confirm_with_judge)")
    dlq = found["dlq-arrivals:processing-dlq"]
    assert dlq.requests_per_second == pytest.approx(0.01, rel=0.01)
    assert 0.25 < dlq.probability < 0.7, "1 − e^(−0.01 × 10 % × 600 s) ≈ 45 %, not the whole queue's ≈ 100 %"
    assert f"processing-dlq receives 0.6 messages/min that stable v{stable['worker']} received last" in dlq.sentence
    found = {f.alarm: f for f in preflight.check(m, "prod", fake, stable, [(100, 600)], clock.now())}
    assert found["error-rate:api"].sentence.endswith(
        "at 100 %, where no judge can compare, it would roll the healthy canary back (P ≈ 100 %)")
