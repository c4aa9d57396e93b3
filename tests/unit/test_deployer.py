"""The Deployer on a FakePlatform: every transition, every rollback trigger by its exact name, and a
kill after each store write followed by a restart that leaves the store and the platform agreeing.

Functions have their own version numbers (api 1, worker 11, repair 21 in release 1), and a function
whose code did not change keeps its version, so nothing here passes by one number fitting all."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from backout.control import deployer as deployer_mod
from backout.control import states as st
from backout.control.probes import is_probe
from backout.errors import UsageError
from backout.runbooks import incidents
from backout.runbooks.verify import expected_versions
from fakes import CrashingStore, Killed, Reply, World, failing, hook_answer, raising, slow, status
from support import wait_for

pytestmark = pytest.mark.usefixtures("fast_evaluations")  # every test here (conftest.py)


def rolled_back(w: World, deployment_id: str, severity: str = "critical") -> tuple[dict, dict]:
    """The `rolled_back` event's data and the incident's trigger, after the runner finished. The incident's
    severity follows the impact: "low" before any traffic, "high" after traffic without failures, else
    "critical"."""
    d = w.finish(deployment_id)
    assert d.status == st.ROLLED_BACK, d
    # a rollback from outside the runner (the deadline's watchdog) opens the incident after the runner ends
    inc = w.wait(lambda: w.store.incident_for_deployment(d.id), what=f"the incident of {d.id}")
    assert inc.severity == severity, inc
    return w.event(d.id, "rolled_back").data, inc.trigger


# --- the path of a good release ------------------------------------------------------------------------
def test_good_release_goes_created_pretraffic_steps_posttraffic_succeeded(tmp_path: Path) -> None:
    w = World(tmp_path, store=CrashingStore)
    try:
        r1 = w.fake.releases()[0]
        r2 = w.release("api", "worker")
        d = w.deploy(r2)
        assert d.status == st.PRE_TRAFFIC and d.stable_release == r1.id and d.target_release == r2.id
        w.wait_step(d.id, 0)
        w.fake.traffic("worker", 40)
        w.fake.traffic("api", 40)
        w.clock.advance(5)
        w.nudge(d.id)
        d = w.finish(d.id)
        assert d.status == st.SUCCEEDED and d.current_weight == 100.0
        transitions = [op for op in w.store.ops if op.startswith(("create", "transition"))]
        assert transitions == ["create_deployment", "transition PreTraffic", "transition InProgress",
                               "transition InProgress step 0", "transition InProgress step 1",
                               "transition PostTraffic", "transition Succeeded"]
        kinds = w.kinds(d.id)
        assert kinds.index("snapshot") < kinds.index("step_reached"), "the backup comes before any traffic shift"
        assert [k for k in kinds if k != "alarm_state"] == [
            "created", "preflight", "pre_traffic_started", "snapshot", "hook_passed", "step_reached", "step_reached",
            "post_traffic_started", "hook_passed", "succeeded"]
        assert w.fake.live_versions() == w.live(r2) == {"api": {"2": 100.0}, "worker": {"12": 100.0},
                                                        "repair": {"21": 100.0}}
        assert w.notifier.kinds() == ["deployment_started", "step_reached", "step_reached", "succeeded"]
        assert w.store.snapshots(w.env, deployment_id=d.id)[0].platform_snapshot_id == "backup-0001"
        assert d.target == "r2 (repair v21, worker v12)" and d.stable == "r1 (repair v21, worker v11)"
    finally:
        w.close()


def test_each_function_is_split_between_its_own_two_version_numbers(world: World) -> None:
    r2 = world.release("api", "worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    assert world.fake.live_versions() == {
        "api": {"1": 50.0, "2": 50.0},
        "worker": {"11": 50.0, "12": 50.0},
        "repair": {"21": 100.0},  # unchanged code keeps its version: nothing to split
    }
    got = {r.version for r in world.fake.traffic("worker", 10)}
    assert got == {"11", "12"}


def test_pre_traffic_checks_invoke_each_functions_new_version_number(world: World) -> None:
    r2 = world.release("worker")
    d = world.finish(world.deploy(r2, (100, 0)).id)
    assert d.status == st.SUCCEEDED
    probes = [(i.function, i.version) for i in world.fake.invocations if is_probe(i.event)]
    assert sorted(set(probes)) == [("api", "1"), ("worker", "12")]  # repair has no event to be probed with
    assert world.fake.warm[("worker", "12")] >= 1 and world.fake.warm[("worker", "11")] >= 1


def test_approval_gate_holds_in_awaiting_approval_until_approved(tmp_path: Path) -> None:
    w = World(tmp_path, env="prod")
    try:
        r2 = w.release("worker")
        d = w.deploy(r2, (100, 0))
        assert d.status == st.AWAITING_APPROVAL
        assert "approval_needed" in w.notifier.kinds()
        assert "backout approve d-0001 --env prod" in w.event(d.id, "approval_needed").message
        assert w.store.get(d.id).status == st.AWAITING_APPROVAL and w.fake.live_versions()["worker"] == {"11": 100.0}
        w.deployer.approve(d.id, who="carol")
        d = w.finish(d.id)
        assert d.status == st.SUCCEEDED and w.fake.live_versions() == w.live(r2)
        assert "approved by carol" in w.event(d.id, "approved").message
    finally:
        w.close()


def test_approve_is_refused_for_a_deployment_not_waiting_for_it(world: World) -> None:
    d = world.finish(world.deploy(world.release("worker"), (100, 0)).id)
    with pytest.raises(UsageError, match="is Succeeded, not waiting for approval"):
        world.deployer.approve(d.id)


def test_second_deployment_is_refused_naming_the_active_one(world: World) -> None:
    d = world.deploy(world.release("worker"))
    world.wait_step(d.id, 0)
    with pytest.raises(UsageError, match="deployment d-0001 is already active in staging"):
        world.deploy(world.release("api"))


def test_deploying_the_release_already_live_is_refused(world: World) -> None:
    with pytest.raises(UsageError, match="release r1 .* is already live in staging: nothing to deploy"):
        world.deploy(world.fake.releases()[0])


def test_unknown_release_is_refused_with_the_published_ones(world: World) -> None:
    with pytest.raises(UsageError, match=r"unknown release 9 \(published: 1\)"):
        world.deployer.create(release=9)


# --- stop -----------------------------------------------------------------------------------------------
def test_stop_with_rollback_puts_every_alias_back_on_stable_with_trigger_manual(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    out = world.deployer.stop(d.id, rollback=True, reason="customer reports", who="alice")
    assert out.status == st.ROLLED_BACK and out.reason == "customer reports"
    data, trigger = rolled_back(world, d.id, "high")
    assert data["trigger"] == "manual" and trigger["kind"] == "manual"
    assert data["evidence"] == ["customer reports"] and trigger["reason"] == "customer reports"
    assert world.fake.live_versions() == world.live(r1)
    assert "rolled_back" in world.notifier.kinds()


def test_stop_without_rollback_leaves_traffic_split_and_the_deployment_stopped(world: World) -> None:
    d = world.deploy(world.release("api", "worker"))
    world.wait_step(d.id, 0)
    out = world.deployer.stop(d.id, rollback=False, reason="hold here", who="bob")
    assert out.status == st.STOPPED and out.reason == "hold here"
    assert world.fake.live_versions()["worker"] == {"11": 50.0, "12": 50.0}
    assert world.store.incident_for_deployment(d.id) is None
    assert "stopped without rollback at 50 %" in world.event(d.id, "stopped").message


def test_stop_of_a_deployment_waiting_for_approval_rolls_it_back(tmp_path: Path) -> None:
    w = World(tmp_path, env="prod")
    try:
        d = w.deploy(w.release("worker"), (100, 0))
        out = w.deployer.stop(d.id, rollback=True, reason="not today", who="dan")
        assert out.status == st.ROLLED_BACK
        data, trigger = rolled_back(w, d.id, "low")
        assert data["trigger"] == trigger["kind"] == "manual"
    finally:
        w.close()


def test_stop_of_a_finished_deployment_is_refused(world: World) -> None:
    d = world.finish(world.deploy(world.release("worker"), (100, 0)).id)
    with pytest.raises(UsageError, match="is already Succeeded"):
        world.deployer.stop(d.id)


# --- every trigger, by its exact name --------------------------------------------------------------------
def test_canary_error_rate_rolls_back_with_alarm_error_rate_worker(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    world.fake.handle("worker", raising(), version="12")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.fake.traffic("worker", 40)  # 20 on v12, all failing (+ the pre-traffic probe, which passed)
    world.clock.advance(1)
    world.nudge(d.id)
    data, trigger = rolled_back(world, d.id)
    alarm = "error rate 95.2 % (20/21) > 10 % over 1 s on worker v12"
    # the alarm decides alone (staging: no confirmation); its judge has not judged a closed second yet
    sentence = (f"{alarm}; errors-judge:worker: e-value 1 < 400, no events to compare yet, canary 0/0, "
                "stable 0/0 over 0 s")
    assert data["trigger"] == "alarm" and trigger["kind"] == "alarm"
    assert [a["alarm"] for a in data["alarms"]] == ["error-rate:worker"]
    assert data["evidence"] == [sentence]
    assert data["reason"] == f"alarm error-rate:worker in ALARM: {sentence}"
    a = data["alarms"][0]
    assert (a["value"], a["threshold"], a["numerator"], a["denominator"]) == (pytest.approx(95.238, 1e-3), 10.0,
                                                                              20.0, 21.0)
    assert a["evidence"]["judge"] == "errors-judge:worker" and a["evidence"]["threshold"] == 400.0
    assert world.fake.live_versions() == world.live(r1)
    ev = world.store.alarm_evaluations(d.id, "error-rate:worker")
    assert [e.state for e in ev] == ["INSUFFICIENT_DATA", "ALARM"] and ev[-1].detail == alarm
    impact = world.store.incident_for_deployment(d.id).evidence["impact"]
    assert impact["functions"]["worker"]["version"] == "12" and impact["functions"]["worker"]["errors"] == 20


def test_the_impact_of_a_service_without_an_http_function_has_no_api_figures(world: World) -> None:
    """No HTTP function, no API queries (CloudWatch refuses the empty version dimension they would carry)."""
    r2 = world.release("worker")
    world.fake.handle("worker", raising(), version="12")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.fake.traffic("worker", 10)
    no_http = world.manifest.model_copy(deep=True)
    no_http.functions["api"].events = []
    impact = deployer_mod.measure_impact(no_http, "staging", world.fake, world.store, d, until=world.clock.now())
    assert impact["api"] == {"requests_served": 0, "failed_requests": 0, "per_second_5xx": []}
    assert impact["functions"]["worker"]["errors"] == 5 and impact["dlq_arrivals"] == {"jobs-dlq": 0}
    world.deployer.stop(d.id, rollback=True, reason="test over", who="test")


def test_canary_5xx_responses_roll_back_with_alarm_api_5xx(world: World) -> None:
    r2 = world.release("api", "worker")
    world.fake.handle("api", status(500, probes=False), version="2")  # healthy to the pre-traffic probe
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.fake.traffic("api", 20)  # 10 requests answered by api v2 with 500
    world.clock.advance(1)
    world.nudge(d.id)
    data, trigger = rolled_back(world, d.id)
    assert data["trigger"] == "alarm" and trigger["kind"] == "alarm"
    assert [a["alarm"] for a in data["alarms"]] == ["api-5xx"]
    # the API's 5xx are also the HTTP function's errors (502): its errors judge comes first among its judges
    assert data["evidence"] == ["API 5xx 10 > 3 over 1 s on svc v2; errors-judge:api: e-value 1 < 400, no events "
                                "to compare yet, canary 0/0, stable 0/0 over 0 s"]
    impact = world.store.incident_for_deployment(d.id).evidence["impact"]
    assert impact["api"]["failed_requests"] == 10 and impact["api"]["requests_served"] == 10


def test_message_reaching_the_dlq_rolls_back_with_alarm_dlq_arrivals(world: World) -> None:
    r2 = world.release("worker")
    world.fake.handle("worker", raising("cannot parse job"), version="12")
    d = world.deploy(r2, (100, 5), (100, 0))
    world.wait_step(d.id, 0)
    world.fake.send_message("jobs", json.dumps({"job": "j1"}))
    for _ in range(3):  # received twice (max_receive_count 2), failing each time, then moved to the DLQ
        world.fake.pump()
        world.clock.advance(1)
    assert world.fake.messages("jobs-dlq") == ['{"job": "j1"}']
    world.nudge(d.id)
    data, trigger = rolled_back(world, d.id)
    assert data["trigger"] == "alarm" and trigger["kind"] == "alarm"
    assert [a["alarm"] for a in data["alarms"]] == ["dlq-arrivals:jobs-dlq"]
    # at 100 % nothing compares the versions: the consumer's judge has counts but no evidence
    assert data["evidence"] == ["DLQ arrivals 1 > 0 over 3 s since the deployment started on jobs-dlq; "
                                "errors-judge:worker: e-value 1 < 200, no events to compare yet, canary 2/3, "
                                "stable 0/0 over 2 s"]
    assert world.store.incident_for_deployment(d.id).evidence["impact"]["dlq_arrivals"] == {"jobs-dlq": 1.0}


def test_a_late_failure_of_the_stable_version_in_the_dlq_does_not_roll_back_a_good_canary(world: World) -> None:
    """The stable worker (11) failed a message on every receive before the deployment; SQS moves it to the
    DLQ on the next receive, while the canary (12) is out. Its last receiver was 11: not the canary's."""
    r2 = world.release("worker")
    world.fake.handle("worker", raising("stable cannot parse job"), version="11")
    world.fake.send_message("jobs", json.dumps({"job": "late"}))
    for _ in range(2):  # received twice (max_receive_count 2) by the stable version, failing each time
        world.fake.pump()
        world.clock.advance(1)
    d = world.deploy(r2, (50, 5), (100, 0))
    world.wait_step(d.id, 0)
    world.fake.pump()  # the third receive moves it to the DLQ, during the canary
    assert world.fake.messages("jobs-dlq") == ['{"job": "late"}']
    world.fake.traffic("api", 40)
    world.fake.traffic("worker", 40)
    world.clock.advance(5)
    world.nudge(d.id)
    d = world.finish(d.id)
    assert d.status == st.SUCCEEDED and world.fake.live_versions() == world.live(r2), d.reason


def test_failing_pre_traffic_hook_rolls_back_before_any_traffic_with_trigger_pre_traffic(world: World) -> None:
    r2 = world.release("worker")
    world.fake.handle("worker", raising("boom at import", test_events=True), version="12")
    d = world.finish(world.deploy(r2).id)
    data, trigger = rolled_back(world, d.id, "low")
    assert data["trigger"] == "pre_traffic" and trigger["kind"] == "pre_traffic"
    assert data["reason"] == "pre-traffic hook builtin:checks failed" and data["hook"] == "builtin:checks"
    assert "FAILED invoke worker v12: RuntimeError: boom at import" in data["evidence"][0]
    assert "step_reached" not in world.kinds(d.id)
    assert not [c for c in world.fake.calls if c.startswith("set_weights worker 11 12")]
    assert "hook_failed" in world.notifier.kinds()


def test_new_version_that_cannot_start_rolls_back_with_trigger_pre_traffic(world: World) -> None:
    r2 = world.release("worker")
    world.fake.init_errors[("worker", "12")] = "No module named 'pdfplumber'"
    d = world.finish(world.deploy(r2).id)
    data, trigger = rolled_back(world, d.id, "low")
    assert data["trigger"] == trigger["kind"] == "pre_traffic"
    assert data["reason"].startswith("worker v12 (r2 (api v1, repair v21, worker v12)) does not start: ")
    assert data["evidence"] == ["worker v12 init failed: Runtime.ImportModuleError: No module named 'pdfplumber'"]


def test_failing_post_traffic_hook_rolls_back_from_100_percent_with_trigger_post_traffic(tmp_path: Path) -> None:
    w = World(tmp_path, post='{ function = "checker" }')
    try:
        r1, r2 = w.fake.releases()[0], w.release("worker")
        w.fake.handle("checker", hook_answer("Failed"))
        d = w.finish(w.deploy(r2, (100, 0)).id)
        data, trigger = rolled_back(w, d.id, "high")
        assert data["trigger"] == "post_traffic" and trigger["kind"] == "post_traffic"
        assert data["reason"] == "post-traffic hook function:checker failed"
        assert data["evidence"] == ["checker returned {'status': 'Failed', 'deployment': 'd-0001'}"]
        assert "post_traffic_started" in w.kinds(d.id)
        assert w.fake.live_versions() == w.live(r1)
    finally:
        w.close()


def gated_hook(w: World, most: float) -> tuple[threading.Event, threading.Event]:
    """The pre-traffic hook `checker` answers Succeeded once `gate` is set (or after `most` s); `entered`
    says it was called."""
    entered, gate = threading.Event(), threading.Event()

    def hook(c: Any) -> Any:
        entered.set()
        gate.wait(most)
        return {"status": "Succeeded"}

    w.fake.handle("checker", hook)
    return entered, gate


def test_missed_progress_deadline_rolls_back_with_trigger_deadline(tmp_path: Path) -> None:
    w = World(tmp_path, pre='{ builtin = "checks" }, { function = "checker" }')
    try:
        entered, gate = gated_hook(w, 10)
        d = w.deploy(w.release("worker"))  # holds 5 s + deadline_margin 5 s: rolled back 10 s after its start
        assert entered.wait(10)
        w.clock.advance(11)  # the pre-traffic hook took 11 s
        gate.set()
        data, trigger = rolled_back(w, d.id, "high")  # it took traffic, and failed nothing
        assert data["trigger"] == "deadline" and trigger["kind"] == "deadline"
        assert data["reason"] == "progress deadline exceeded (10 s)"
        assert data["evidence"] == ["deployment still at step 1 after the deadline"]
        assert "deadline_exceeded" in w.notifier.kinds()
        assert w.fake.live_versions() == w.live(w.fake.releases()[0])
    finally:
        w.close()


def test_deadline_rolls_back_while_a_hook_still_blocks_the_runner(tmp_path: Path, caplog: Any) -> None:
    """The deadline holds inside a blocking call too: a pre-traffic hook that never answers is rolled back
    from outside the runner once the deadline has passed, with what the runner was waiting for as the
    evidence; when the hook finally returns, the runner finds the deployment over and does nothing more."""
    w = World(tmp_path, pre='{ builtin = "checks" }, { function = "checker" }')
    try:
        entered, gate = gated_hook(w, 30)
        d = w.deploy(w.release("worker"))  # holds 5 s + deadline_margin 5 s: the deadline is 10 s after its start
        assert entered.wait(10)
        w.clock.advance(60)  # the hook has taken a minute, and still has not answered
        # the status changes first, then the traffic switches, then the event is written: wait for the event
        w.wait(lambda: "rolled_back" in w.kinds(d.id), what=f"{d.id} rolled back by the watchdog")
        assert not w.store.get(d.id).active and not gate.is_set(), "rolled back while the hook still blocks the runner"
        assert w.fake.live_versions() == w.live(w.fake.releases()[0])
        ev = w.event(d.id, "rolled_back").data
        assert ev["trigger"] == "deadline" and ev["reason"] == "progress deadline exceeded (10 s)"
        assert ev["evidence"] == ["deployment still in pre-traffic, running hook function:checker after the deadline"]
        gate.set()
        data, trigger = rolled_back(w, d.id, "low")  # no traffic ever reached the new version
        assert trigger["kind"] == "deadline" and trigger["while"] == "in pre-traffic, running hook function:checker"
        assert w.kinds(d.id).count("rolled_back") == 1 and w.notifier.kinds().count("deadline_exceeded") == 1
        assert "step_reached" not in w.kinds(d.id), "the runner went no further once its hook returned"
        assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    finally:
        w.close()


def test_slow_canary_against_its_stable_version_rolls_back_with_trigger_judge(tmp_path: Path) -> None:
    w = World(tmp_path, judge=True)
    try:
        r2 = w.release("worker")
        w.fake.handle("worker", slow(2000), version="12")
        d = w.deploy(r2, (50, 60), (100, 0))
        w.wait_step(d.id, 0)
        for _ in range(30):  # each second: 5 invocations on v12 (2 s each), 5 on v11 (5 ms)
            w.fake.traffic("worker", 10)
            w.clock.advance(1)
            w.nudge(d.id)
            if not w.store.get(d.id).active:
                break
        data, trigger = rolled_back(w, d.id, "high")
        assert data["trigger"] == "judge" and trigger["kind"] == "judge"
        assert [a["alarm"] for a in data["alarms"]] == ["latency-judge:worker"]
        # the canary's slowest request beat the stable version's in every second judged: 10 of them
        # (q = 0.5: each at most doubles the e-value); 3 judges (the worker's errors, latency and its DLQ's
        # arrivals) share α = 0.01
        assert data["evidence"] == ["slowest request (> 1.25× and +25 ms) on worker v12 vs v11: e-value 406 ≥ 300, "
                                    "ratio ∞ (CI 1–∞), the canary's slowest beyond the stable's in 10 of 10 s "
                                    "compared, requests canary 51, stable 50 over 10 s"]
        assert w.store.alarm_evaluations(d.id, "error-rate:worker")[-1].state == "OK"
        view = incidents.load(w.store, w.store.incident_for_deployment(d.id).id)
        assert view.automatic, "a judge's rollback is an automatic one"
        report = incidents.render_markdown(view, has_chart=False)
        assert "`latency-judge:worker` went into ALARM" in report and "Automatic rollback" in report
    finally:
        w.close()


# --- confirm_with_judge: thresholds as guardrails -----------------------------------------------------------
CONFIRM = "confirm_with_judge = true"


def run_seconds(w: World, deployment_id: str, per_second: int, seconds: int) -> None:
    """`per_second` worker invocations through the alias in each second, until the deployment ends."""
    for _ in range(seconds):
        w.fake.traffic("worker", per_second)
        w.clock.advance(1)
        w.nudge(deployment_id)
        if not w.store.get(deployment_id).active:
            return
        w.wait(lambda: getattr(w.deployer.live[deployment_id].alarms.get("errors-judge:worker"), "ts", 0)
               == w.clock.now() or not w.store.get(deployment_id).active, what="an evaluation at the new time")


def test_with_confirm_with_judge_a_healthy_canary_with_background_errors_succeeds(tmp_path: Path) -> None:
    w = World(tmp_path, staging=CONFIRM)
    try:
        w.fake.handle("worker", failing(0.2))  # both versions fail 20 %: error rate 20 % > 10 % on the canary
        d = w.deploy(w.release("worker"), (50, 8), (100, 0))
        w.wait_step(d.id, 0)
        run_seconds(w, d.id, 10, 12)
        assert w.finish(d.id).status == st.SUCCEEDED
        ev = [e for e in w.store.events(deployment_id=d.id) if e.kind == "alarm_state"
              and e.data["alarm"] == "error-rate:worker" and e.data["state"] == "ALARM"]
        assert ev and ev[0].severity == "warning", "the alarm fired and waited"
        assert ev[0].message.endswith("— waits for errors-judge:worker to confirm (confirm_with_judge)")
        assert ev[0].data["evidence"]["judge"] == "errors-judge:worker"
        judge = w.deployer.live[d.id].alarms["errors-judge:worker"]
        assert judge.state == "OK" and judge.evidence.canary_events == judge.evidence.stable_events
    finally:
        w.close()


def test_with_confirm_with_judge_a_regression_rolls_back_by_the_judge_with_the_alarm_confirmed(
        tmp_path: Path) -> None:
    w = World(tmp_path, staging=CONFIRM)
    try:
        w.fake.handle("worker", failing(0.1), version="11")  # stable 10 %, canary 30 % (3×, under the ceiling)
        w.fake.handle("worker", failing(0.3), version="12")
        d = w.deploy(w.release("worker"), (50, 60), (100, 0))
        w.wait_step(d.id, 0)
        run_seconds(w, d.id, 10, 40)
        data, trigger = rolled_back(w, d.id)
        assert data["trigger"] == "judge" and trigger["kind"] == "judge"
        assert [a["alarm"] for a in data["alarms"]] == ["errors-judge:worker", "error-rate:worker"]
        judge, alarm = data["alarms"]
        assert judge["value"] >= judge["threshold"] == 200.0  # 2 judges (the worker's errors, its DLQ's) share α
        assert alarm["evidence"] == judge["evidence"], "the alarm carries the evidence of the judge that confirmed it"
        ev = judge["evidence"]
        assert ev["ratio"] > 1.0 and ev["canary_events"] > ev["stable_events"]
        assert data["reason"].startswith("alarm errors-judge:worker in ALARM: errors on worker v12 vs v11: e-value ")
        inc = w.store.incident_for_deployment(d.id)
        assert inc.evidence["alarms"][0] == data["evidence"][0] and "ratio" in data["evidence"][0]
        assert "ratio" in w.notifier.sent[-1].evidence[0]
        report = incidents.render_markdown(incidents.load(w.store, inc.id), has_chart=False)
        assert "| `errors-judge:worker` | `errors-judge:worker` | " in report and "Canary against stable" in report
    finally:
        w.close()


def test_with_confirm_with_judge_a_release_held_at_100_percent_is_rolled_back_by_its_alarm_alone(
        tmp_path: Path) -> None:
    """At 100 % no second has requests on both versions: no judge can confirm the threshold, so waiting for
    one would ship a 30 %-failing release (under the 50 % ceiling). The alarm acts alone."""
    w = World(tmp_path, staging=CONFIRM)
    try:
        w.fake.handle("worker", failing(0.3), version="12")
        d = w.deploy(w.release("worker"), (100, 30))  # AllAtOnce, held
        w.wait_step(d.id, 0)
        run_seconds(w, d.id, 10, 30)
        data, trigger = rolled_back(w, d.id)
        assert data["trigger"] == "alarm" and trigger["kind"] == "alarm"
        assert [a["alarm"] for a in data["alarms"]] == ["error-rate:worker"]
        assert data["evidence"][0].startswith("error rate 28.6 % (6/21) > 10 % over 2 s on worker v12; ")
        assert data["evidence"][0].endswith("; no stable traffic to compare with (the canary had all of it over the "
                                            "window): it acts alone")
        fired = [e for e in w.store.events(deployment_id=d.id) if e.kind == "alarm_state"
                 and e.data["alarm"] == "error-rate:worker" and e.data["state"] == "ALARM"]
        assert fired[0].severity == "critical" and "waits for" not in fired[0].message
        assert "insufficient_data" not in w.kinds(d.id), "judges with nothing to compare lack no data"
    finally:
        w.close()


def test_with_confirm_with_judge_all_at_once_is_held_to_the_threshold_by_the_post_traffic_checks(
        tmp_path: Path) -> None:
    """AllAtOnce holds 0 s: the post-traffic `checks` hook is what sees the release at work. Nothing was
    compared, so it holds the error rate to the threshold, not to the ceiling."""
    w = World(tmp_path, staging=CONFIRM, post='{ function = "checker" }, { builtin = "checks" }')
    try:
        def traffic_then_succeed(c: Any) -> Any:  # the release at work while the hooks run
            c.platform.traffic("worker", 40)
            return Reply({"status": "Succeeded"})

        w.fake.handle("checker", traffic_then_succeed)
        w.fake.handle("worker", failing(0.3), version="12")
        d = w.deploy(w.release("worker"), (100, 0))
        data, trigger = rolled_back(w, d.id, "critical")
        assert data["trigger"] == "post_traffic" and data["reason"] == "post-traffic hook builtin:checks failed"
        check = next(c for c in data["checks"] if c["name"] == "worker error rate")
        assert check == {"name": "worker error rate", "ok": False,
                         "detail": "29.3 % (12/41) vs 10 % (no stable traffic to compare with: no step split "
                                   "the traffic)"}
    finally:
        w.close()


def slow_share(p: float, ms: float) -> Any:
    """A worker handler taking `ms` on exactly a fraction `p` of its invocations, evenly, 5 ms on the rest."""
    acc = [0.0]

    def handler(c: Any) -> Any:
        acc[0] += p
        if acc[0] >= 1.0 - 1e-9 and not c.is_test:
            acc[0] -= 1.0
            return Reply(c.default(), ms)
        return Reply(c.default(), 5.0)

    return handler


def test_a_canary_slow_beyond_the_duration_limit_more_often_than_stable_rolls_back_by_the_slow_judge(
        tmp_path: Path) -> None:
    """A 500 ms limit; both versions have slow requests (800 ms), the canary 3× the stable's share: the p99
    alarm fires on both, waits for its judges, and the slow-requests judge decides."""
    w = World(tmp_path, judge=True, staging=f'{CONFIRM}\nduration_p99_limits = {{ worker = 500 }}')
    try:
        w.fake.handle("worker", slow_share(0.05, 800.0), version="11")
        w.fake.handle("worker", slow_share(0.15, 800.0), version="12")
        d = w.deploy(w.release("worker"), (50, 300), (100, 0))
        w.wait_step(d.id, 0)
        run_seconds(w, d.id, 10, 300)
        data, trigger = rolled_back(w, d.id, "high")
        assert data["trigger"] == "judge" and trigger["kind"] == "judge"
        assert [a["alarm"] for a in data["alarms"]] == ["slow-judge:worker", "duration-p99:worker"]
        judge, alarm = data["alarms"]
        assert judge["value"] >= judge["threshold"] == 400.0  # 4 judges: the worker's errors, DLQ, slow, latency
        ev = judge["evidence"]
        assert alarm["evidence"] == ev and ev["ratio"] > 1.5
        assert ev["canary_events"] / ev["canary_requests"] > 2 * ev["stable_events"] / ev["stable_requests"]
        assert data["reason"].startswith("alarm slow-judge:worker in ALARM: requests slower than 500 ms on worker "
                                         "v12 vs v11: e-value ")
        assert w.deployer.live[d.id].alarms["latency-judge:worker"].state != "ALARM"
    finally:
        w.close()


def test_with_confirm_with_judge_the_ceiling_rolls_back_at_once(tmp_path: Path) -> None:
    w = World(tmp_path, staging=CONFIRM)
    try:
        w.fake.handle("worker", raising(), version="12")
        d = w.deploy(w.release("worker"))
        w.wait_step(d.id, 0)
        w.fake.traffic("worker", 40)  # 20 on v12, all failing; the judge has not judged a closed second yet
        w.clock.advance(1)
        w.nudge(d.id)
        data, trigger = rolled_back(w, d.id)
        assert data["trigger"] == "alarm" and trigger["kind"] == "alarm"
        assert [a["alarm"] for a in data["alarms"]] == ["error-rate-ceiling:worker"]
        assert data["evidence"] == ["error rate (ceiling) 95.2 % (20/21) > 50 % over 1 s on worker v12"]
    finally:
        w.close()


def test_runner_failure_rolls_back_with_trigger_internal(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("worker")
    world.fake.fail_next("set_weights", RuntimeError("update_alias: ServiceException"))
    d = world.finish(world.deploy(r2).id)
    data, trigger = rolled_back(world, d.id, "low")  # failed before any traffic
    assert data["trigger"] == "internal" and trigger["kind"] == "internal"
    assert data["reason"] == "deployment runner failed: RuntimeError: update_alias: ServiceException"
    assert world.fake.live_versions() == world.live(r1)


def test_errors_of_the_stable_version_do_not_roll_back_the_new_one(world: World) -> None:
    r2 = world.release("worker")
    world.fake.handle("worker", raising(), version="11")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.fake.traffic("worker", 40)
    world.clock.advance(5)
    world.nudge(d.id)
    assert world.finish(d.id).status == st.SUCCEEDED
    assert world.store.alarm_evaluations(d.id, "error-rate:worker")[-1].detail == (
        "error rate 0.0 % (0/21) ≤ 10 % over 5 s on worker v12")


def test_fewer_invocations_than_the_minimum_is_not_enough_data_not_a_rollback(world: World) -> None:
    r2 = world.release("worker")
    world.fake.handle("worker", raising(), version="12")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.fake.traffic("worker", 20)  # 10 failures on v12 + 1 probe: 11 < min_invocations 20
    world.clock.advance(1)
    world.nudge(d.id)
    world.wait(lambda: world.store.alarm_evaluations(d.id, "error-rate:worker"), what="an evaluation")
    world.wait(lambda: getattr(world.deployer.live[d.id].alarms.get("error-rate:worker"), "ts", 0)
               == world.clock.now(), what="an evaluation at the new time")
    e = world.deployer.live[d.id].alarms["error-rate:worker"]
    assert e.state == "INSUFFICIENT_DATA"
    assert e.detail == "error rate: not enough data (11 invocations, needs 20) over 1 s on worker v12"
    assert world.store.get(d.id).active
    world.fake.traffic("worker", 20)
    world.clock.advance(1)
    world.nudge(d.id)
    data, _ = rolled_back(world, d.id)
    # the judge has the first second (10 canary failures, none of the stable version's 10 invocations) and
    # decides in the same evaluation as the alarm: both roll back, the alarm first (staging: no confirmation)
    judged = "e-value 288 ≥ 200, ratio ∞ (CI 1–∞), canary 10/11, stable 0/10 over 1 s"
    assert data["evidence"] == [f"error rate 95.2 % (20/21) > 10 % over 2 s on worker v12; errors-judge:worker: "
                                f"{judged}", f"errors on worker v12 vs v11: {judged}"]
    assert [a["alarm"] for a in data["alarms"]] == ["error-rate:worker", "errors-judge:worker"]


def test_every_evaluation_asks_all_alarms_in_one_metrics_call(tmp_path: Path) -> None:
    w = World(tmp_path, judge=True)
    try:
        d = w.deploy(w.release("worker"))
        w.wait_step(d.id, 0)
        w.deployer.close()  # the runner stops; count one evaluation by hand
        calls = w.fake.metrics_calls
        from backout.control.alarms import AlarmSet, default_rules
        from backout.control.analysis import JudgeSet, default_judges

        alarms = AlarmSet(default_rules(w.manifest, w.env, dict(d.target_versions), w.clock.now()))
        judges = JudgeSet(default_judges(w.manifest, w.env, dict(d.target_versions), dict(d.stable_versions),
                                         w.clock.now() - 2))
        lv = deployer_mod.Live()
        w.clock.advance(1)
        w.deployer._closing.clear()
        w.deployer._watch(w.store.get(d.id), lv, alarms, judges, deadline=w.clock.now() + 60)
        assert w.fake.metrics_calls == calls + 1
        assert set(lv.alarms) == {"error-rate:api", "error-rate:worker", "error-rate:repair", "api-5xx",
                                  "dlq-arrivals:jobs-dlq", "errors-judge:worker", "dlq-judge:jobs-dlq",
                                  "latency-judge:worker"}
    finally:
        w.close()


def test_metrics_outage_keeps_every_alarm_state_and_the_deployment_going(world: World) -> None:
    r2 = world.release("worker")
    world.fake.fail_next("metrics", RuntimeError("GetMetricData: ThrottlingException"), times=5)
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.clock.advance(1)

    def outage_over() -> bool:
        world.nudge(d.id)
        return not world.fake._fail.get("metrics")

    world.wait(outage_over, what="every failing metrics call made")
    assert world.store.get(d.id).status == st.IN_PROGRESS
    world.clock.advance(4)
    world.nudge(d.id)
    assert world.finish(d.id).status == st.SUCCEEDED


# --- restarts and kills ------------------------------------------------------------------------------------
def test_restart_mid_step_resumes_the_stored_step_with_its_weights_and_hold(world: World) -> None:
    r2 = world.release("api", "worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    started = world.store.get(d.id).step_started_at
    world.deployer.close()  # the process goes away mid-step; the record stays InProgress
    assert world.store.get(d.id).status == st.IN_PROGRESS
    world.fake.set_weights("worker", "11")  # and the platform forgot the split meanwhile
    world.restart().resume()
    world.wait(lambda: world.fake.live_versions()["worker"] == {"11": 50.0, "12": 50.0}, what="weights re-applied")
    assert "supervisor restarted: resuming d-0001 from InProgress step 1" in world.event(d.id, "resumed").message
    assert world.store.get(d.id).step_started_at == started
    world.clock.advance(4.9)

    def evaluated_now() -> bool:
        world.nudge(d.id)
        e = world.deployer.live[d.id].alarms.get("error-rate:worker")
        return e is not None and e.ts == world.clock.now()

    world.wait(evaluated_now, what="an evaluation 4.9 s into the step")
    assert world.store.get(d.id).current_step == 0, "the hold counts from the step's original start"
    world.clock.advance(0.1)
    world.nudge(d.id)
    assert world.finish(d.id).status == st.SUCCEEDED
    assert [e.data["step"] for e in world.store.events(deployment_id=d.id) if e.kind == "step_reached"] == [0, 1]
    assert world.fake.live_versions() == world.live(r2)


def test_restart_while_awaiting_approval_keeps_waiting_then_approves(tmp_path: Path) -> None:
    w = World(tmp_path, env="prod")
    try:
        r2 = w.release("worker")
        d = w.deploy(r2, (100, 0))
        w.restart().resume()
        assert w.store.get(d.id).status == st.AWAITING_APPROVAL
        w.deployer.approve(d.id, who="erin")
        assert w.finish(d.id).status == st.SUCCEEDED
        assert w.fake.live_versions() == w.live(r2)
    finally:
        w.close()


GOOD_PATH_WRITES = ["create_deployment", "transition PreTraffic", "add_event pre_traffic_started",
                    "record_snapshot", "transition InProgress", "transition InProgress step 0",
                    "add_event step_reached", "transition InProgress step 1", "transition PostTraffic",
                    "transition Succeeded"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("crash_at", GOOD_PATH_WRITES)
def test_kill_after_a_store_write_of_a_good_deployment_then_resume_succeeds_in_agreement(
    tmp_path: Path, crash_at: str
) -> None:
    w = World(tmp_path, store=lambda p: CrashingStore(p, crash_at))
    try:
        r2 = w.release("api", "worker")
        try:
            w.deploy(r2, (50, 0), (100, 0))
        except Killed:
            pass  # killed inside `create`, in the caller's process
        d = w.store.deployments(w.env)[0]
        w.wait(lambda: w.store.crashed, what=f"the kill after {crash_at}")
        t = w.deployer._threads.get(d.id)
        if t is not None:
            t.join(5)
        w.restart().resume()
        d = w.finish(d.id)
        assert d.status == st.SUCCEEDED
        assert w.fake.live_versions() == w.live(r2)
        label, versions = expected_versions(w.store, w.env)
        assert w.fake.live_versions() == {fn: {v: 100.0} for fn, v in versions.items()} and label == d.target
    finally:
        w.close()


ROLLBACK_WRITES = ["transition InProgress step 0", "record_alarm_evaluation error-rate:worker ALARM",
                   "transition RolledBack", "update rollback_completed_at", "add_event rolled_back",
                   "open_incident"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("crash_at", ROLLBACK_WRITES)
def test_kill_after_a_store_write_of_a_failing_deployment_then_resume_rolls_back_in_agreement(
    tmp_path: Path, crash_at: str
) -> None:
    w = World(tmp_path, store=lambda p: CrashingStore(p, crash_at))
    try:
        r1, r2 = w.fake.releases()[0], w.release("api", "worker")
        w.fake.handle("worker", raising(), version="12")
        for _ in range(20):  # the canary's failures are already in the metrics at the first evaluation
            w.fake.invoke("worker", "12", {"n": 1})
        d = w.deploy(r2, (50, 5), (100, 0))
        w.wait(lambda: w.store.crashed or "pre_traffic_started" in w.kinds(d.id), what="the deployment's start")
        w.clock.advance(1)  # the first evaluation sees them
        w.wait(lambda: w.store.crashed, what=f"the kill after {crash_at}")
        w.deployer._threads[d.id].join(5)
        w.restart().resume()
        d = w.finish(d.id)
        assert d.status == st.ROLLED_BACK and d.rollback_completed_at is not None
        assert w.fake.live_versions() == w.live(r1)
        label, versions = expected_versions(w.store, w.env)
        assert w.fake.live_versions() == {fn: {v: 100.0} for fn, v in versions.items()} and label == d.stable
        inc = w.store.incident_for_deployment(d.id)
        assert inc is not None, "every rollback has its incident, even one a kill interrupted"
    finally:
        w.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_kill_between_a_rollback_from_100_percent_and_its_alias_writes_is_finished_by_reconcile(
    tmp_path: Path,
) -> None:
    w = World(tmp_path, post='{ function = "checker" }',
              store=lambda p: CrashingStore(p, "transition RolledBack"))
    try:
        r1, r2 = w.fake.releases()[0], w.release("worker")
        w.fake.handle("checker", hook_answer("Failed"))
        d = w.deploy(r2, (100, 0))
        w.wait(lambda: w.store.crashed, what="the kill")
        w.deployer._threads[d.id].join(5)
        assert w.store.get(d.id).status == st.ROLLED_BACK
        assert w.fake.live_versions()["worker"] == {"12": 100.0}, "killed before the aliases moved"
        w.restart().reconcile()
        assert w.fake.live_versions() == w.live(r1)
        assert "reconciled" in w.kinds(d.id)
        assert w.store.get(d.id).rollback_completed_at is not None
    finally:
        w.close()


def test_reconcile_repairs_an_alias_left_split_after_a_succeeded_deployment(world: World) -> None:
    r2 = world.release("api", "worker")
    d = world.finish(world.deploy(r2, (100, 0)).id)
    world.fake.set_weights("worker", "11", "12", 30)  # as a kill between commit and apply leaves it
    world.restart().reconcile()
    assert world.fake.live_versions() == world.live(r2)
    assert "live aliases set to r2 (repair v21, worker v12)" in world.event(d.id, "reconciled").message


def test_reconcile_leaves_an_agreeing_platform_alone(world: World) -> None:
    d = world.finish(world.deploy(world.release("worker"), (100, 0)).id)
    before = list(world.fake.calls)
    world.restart().reconcile()
    assert world.fake.calls == before and "reconciled" not in world.kinds(d.id)


# --- manual rollback as a Deployer operation ---------------------------------------------------------------
def test_manual_rollback_after_a_deployment_records_it_before_switching(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    world.finish(world.deploy(r2, (100, 0)).id)
    out = world.deployer.manual_rollback("bad output", "alice")
    assert (out["mode"], out["from"], out["to"], out["warm"]) == ("rollback", r2.id, r1.id, True)
    assert world.fake.live_versions() == world.live(r1)
    d = world.store.get(out["deployment"])
    assert d.strategy == deployer_mod.MANUAL and d.status == st.SUCCEEDED and d.target_versions == r1.versions
    inc = world.store.get_incident(out["incident"])
    assert inc.trigger["kind"] == "manual" and inc.evidence["alarms"] == ["operator alice: bad output"]


def test_manual_rollback_needs_a_reason(world: World) -> None:
    with pytest.raises(UsageError, match="--reason is required"):
        world.deployer.manual_rollback("  ", "alice")


def test_manual_rollback_of_the_first_release_is_refused(world: World) -> None:
    with pytest.raises(UsageError, match="is the first release: there is nothing to roll back to"):
        world.deployer.manual_rollback("why not", "alice")


@pytest.mark.parametrize("crash_at", ["create_deployment", "transition Succeeded step 0"])
def test_kill_during_a_manual_rollback_then_resume_leaves_the_rollback_target_live(tmp_path: Path,
                                                                                   crash_at: str) -> None:
    w = World(tmp_path)
    try:
        r1, r2 = w.fake.releases()[0], w.release("worker")
        w.finish(w.deploy(r2, (100, 0)).id)
        w.restart(CrashingStore(w.store_path, crash_at))
        with pytest.raises(Killed):
            w.deployer.manual_rollback("bad totals", "alice")
        w.restart().resume()
        d = w.finish(w.store.deployments(w.env)[0].id)
        assert d.strategy == deployer_mod.MANUAL and d.status == st.SUCCEEDED and d.target_release == r1.id
        assert w.fake.live_versions() == w.live(r1)
        label, versions = expected_versions(w.store, w.env)
        assert w.fake.live_versions() == {fn: {v: 100.0} for fn, v in versions.items()}
        # finished as the operator's rollback it was: no hooks, no backup, one incident, one record of the switch
        kinds = [e.kind for e in w.store.events(deployment_id=d.id)]
        assert "pre_traffic_started" not in kinds and "snapshot" not in kinds, kinds
        assert kinds.count("manual_rollback") == 1, kinds
        inc = w.store.incident_for_deployment(d.id)
        assert inc is not None and inc.trigger["kind"] == "manual" and inc.trigger["reason"] == "bad totals"
    finally:
        w.close()


# --- not enough data ------------------------------------------------------------------------------------------------
def test_a_deployment_without_enough_data_says_so_and_succeeds(world: World) -> None:
    d = world.deploy(world.release("worker"), (50, 1.0), (100, 0.0))
    world.wait_step(d.id, 0)
    world.clock.advance(2)
    world.nudge(d.id)
    d = world.finish(d.id)
    assert d.status == st.SUCCEEDED
    ev = world.event(d.id, "insufficient_data")
    assert ev.severity == "warning" and "error-rate:worker" in ev.data["alarms"]
    assert ev.message.startswith(f"not enough data to judge {d.target}: ")
    assert ev.message.endswith(": it goes on unjudged (require_traffic = true rolls it back)")


def test_require_traffic_rolls_back_a_deployment_without_enough_data(tmp_path: Path) -> None:
    w = World(tmp_path, staging="require_traffic = true")
    try:
        d = w.deploy(w.release("worker"), (50, 1.0), (100, 0.0))
        w.wait_step(d.id, 0)
        w.clock.advance(2)
        w.nudge(d.id)
        data, trigger = rolled_back(w, d.id, "high")
        assert data["trigger"] == "no_traffic" and data["reason"].endswith("; require_traffic is set")
        assert w.fake.live_versions() == w.live(w.fake.releases()[0])
    finally:
        w.close()


def test_a_long_lived_deployer_keeps_the_live_state_of_a_bounded_number_of_ended_deployments(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last alarm values and runner threads of ended deployments are dropped beyond the newest
    few: a supervisor lives through thousands of deployments (the soak's per-deployment growth)."""
    monkeypatch.setattr(deployer_mod, "KEEP_ENDED", 3)
    ids = []
    for i in range(8):
        d = world.finish(world.deploy(world.release("worker" if i % 2 else "api"), (100, 0)).id)
        assert d.status == st.SUCCEEDED
        ids.append(d.id)
    # a runner may still be finishing (its lease, its last event) after the status is terminal, and a
    # running deployment's state is kept whatever its status: let them end, as they do between deployments
    wait_for(lambda: not any(t.is_alive() for t in world.deployer._threads.values()), timeout=30,
             what="the ended deployments' runner threads")
    last = world.deploy(world.release("worker"))
    world.wait_step(last.id, 0)
    assert list(world.deployer.live) == [*ids[-3:], last.id]
    assert set(world.deployer._threads) <= {*ids[-3:], last.id}
    assert world.deployer.live[last.id].alarms, "the running deployment keeps its alarm values"
