"""The operator runbooks over a FakePlatform: verify, manual rollback (warm, cold, --to, split
traffic, during a deployment), emergency stop and resume, backups, repair, drills and status."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backout.control import states as st
from backout.errors import OperationFailed, UsageError
from backout.platforms.base import Throttle
from backout.runbooks import backups, drill, emergency, repair, rollback, status
from backout.runbooks.verify import verify
from fakes import Call, FakePlatform, World, raising

pytestmark = pytest.mark.usefixtures("fast_evaluations")  # every test here (conftest.py)


def deployed(w: World, *changed: str) -> Any:
    """A release with `changed` functions deployed all at once and succeeded."""
    r = w.release(*changed)
    d = w.finish(w.deploy(r, (100, 0)).id)
    assert d.status == st.SUCCEEDED
    return r


def checks(report: Any) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in report.checks}


# --- verify -------------------------------------------------------------------------------------------------
def test_verify_passes_on_a_healthy_service_checking_every_group(world: World) -> None:
    report = verify(world.ctx)
    assert report.ok, report.summary()
    got = checks(report)
    assert set(got) == {"API health", "api v1", "worker v11", "repair v21", "table jobs", "queue jobs",
                        "queue jobs-dlq", "all alarms", "api:live", "worker:live", "repair:live"}
    assert got["API health"][1].startswith("GET /health → 200")
    assert got["worker:live"][1] == "v11 100%; expected v11 100% (r1 (repair v21, worker v11))"
    assert report.summary() == "verify passed (11 checks)"


def test_verify_names_a_broken_table(world: World) -> None:
    world.fake.break_table("jobs")
    report = verify(world.ctx)
    assert not report.ok
    assert [c.name for c in report.failures] == ["table jobs"]
    assert report.summary() == "verify FAILED: table jobs: ResourceNotFoundException: table not found"


def test_verify_fails_on_messages_left_in_a_dlq_nobody_consumes(world: World) -> None:
    world.fake.send_message("jobs-dlq", "{}")
    (f,) = verify(world.ctx).failures
    assert f.name == "queue jobs-dlq" and "DLQ depth 1 (messages in the DLQ: inspect, fix" in f.detail


def test_verify_fails_on_a_live_version_that_does_not_answer(world: World) -> None:
    world.fake.handle("worker", raising("cannot connect", test_events=True), version="11")
    (f,) = verify(world.ctx).failures
    assert (f.name, f.detail) == ("worker v11", "v11: RuntimeError: cannot connect — sent an SQS batch of one message "
                                  'from jobs (body {"backout_probe": true}, attribute backout-probe); to send worker '
                                  "another event, declare it in the manifest: [functions.worker] test_event = { … } "
                                  '(or test_event = "events/worker.json")')


def test_verify_fails_on_an_alarm_of_the_live_version(world: World) -> None:
    world.fake.handle("worker", raising(), version="11")
    world.fake.traffic("worker", 30, at=time.time() - 2)
    (f,) = verify(world.ctx).failures  # (verify's own probe of v11 passed: 30 failures in 31)
    assert (f.name, f.detail) == ("alarm error-rate:worker", "error rate 96.8 % (30/31) > 10 % over 10 s on worker v11")


def test_verify_fails_when_an_alias_is_not_where_the_last_deployment_left_it(world: World) -> None:
    r2 = deployed(world, "worker")
    world.fake.set_weights("worker", "11")
    (f,) = verify(world.ctx).failures
    assert f.name == "worker:live"
    assert f.detail == f"v11 100%; expected v12 100% ({r2.label()})"


def test_verify_checks_the_health_function_itself_while_the_api_is_blocked(world: World) -> None:
    world.fake.set_throttle(0, 0)
    ok, detail = checks(verify(world.ctx))["API health"]
    assert ok and detail.startswith("API blocked (throttle 0); api GET /health → 200")


# --- manual rollback ------------------------------------------------------------------------------------------
def test_manual_rollback_goes_back_to_the_previous_release_warm_and_verifies(world: World) -> None:
    r1 = world.fake.releases()[0]
    r2 = deployed(world, "api", "worker")
    out = rollback.manual_rollback(world.ctx, "wrong totals", "alice")
    assert (out["mode"], out["from"], out["to"], out["warm"]) == ("rollback", r2.id, r1.id, True)
    assert out["to_label"] == r1.label() and out["verify"]["ok"]
    assert world.fake.live_versions() == world.live(r1)
    inc = world.store.get_incident(out["incident"])
    assert inc.trigger["kind"] == "manual" and inc.trigger["who"] == "alice"
    assert [e.kind for e in world.store.events(incident_id=out["incident"])] == ["verify"]
    assert "rolled_back" in world.notifier.kinds()


def test_manual_rollback_to_a_cold_release_starts_its_instances_first(world: World) -> None:
    r1 = world.fake.releases()[0]
    deployed(world, "api", "worker")
    for fn, v in r1.versions.items():
        world.fake.retire(fn, v)
    out = rollback.manual_rollback(world.ctx, "slow", "bob")
    assert out["warm"] is False
    assert all(world.fake.is_warm(fn, v) for fn, v in r1.versions.items())
    assert "cold: instances started in" in world.event(out["deployment"], "manual_rollback").message


def test_manual_rollback_with_to_goes_to_the_named_release(world: World) -> None:
    r1 = world.fake.releases()[0]
    deployed(world, "worker")
    r3 = deployed(world, "api")
    out = rollback.manual_rollback(world.ctx, "go back two", "carol", to=1)
    assert (out["from"], out["to"]) == (r3.id, r1.id)
    assert world.fake.live_versions() == world.live(r1)


def test_manual_rollback_of_split_traffic_backs_out_the_canary(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    world.deployer.stop(d.id, rollback=False, reason="pause")
    out = rollback.manual_rollback(world.ctx, "canary looked off", "dan")
    assert (out["from"], out["to"]) == (r2.id, r1.id)
    assert world.fake.live_versions() == world.live(r1) and out["verify"]["ok"]


def test_manual_rollback_during_a_deployment_stops_it_with_rollback(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    out = rollback.manual_rollback(world.ctx, "alerts from support", "erin")
    assert out["mode"] == "stopped deployment" and out["deployment"] == d.id
    assert (out["from"], out["to"]) == (r2.id, r1.id) and out["incident"] is not None
    assert world.store.get_incident(out["incident"]).trigger["kind"] == "manual"
    assert world.fake.live_versions() == world.live(r1)


def test_manual_rollback_to_the_live_release_or_a_second_time_is_refused(world: World) -> None:
    deployed(world, "worker")
    with pytest.raises(UsageError, match="r2 .* is already live in staging"):
        rollback.manual_rollback(world.ctx, "no-op", "x", to=2)
    rollback.manual_rollback(world.ctx, "once", "x")
    with pytest.raises(UsageError, match="r1 .* is the first release"):
        rollback.manual_rollback(world.ctx, "twice is rolling forward", "x")


# --- emergency stop and resume ---------------------------------------------------------------------------------
def test_emergency_stop_blocks_the_api_pauses_processing_and_stores_both_switches(world: World) -> None:
    world.fake.send_message("jobs", json.dumps({"job": "j1"}))
    out = emergency.emergency_stop(world.ctx, "data corruption", "alice")
    assert [s["step"] for s in out["steps"]] == ["block API", "pause processing", "stop deployment", "back up data",
                                                 "notify"]
    assert all(s["ok"] for s in out["steps"])
    assert world.fake.get_throttle() == Throttle(0.0, 0) and not world.fake.get_processing()
    assert world.store.switches("staging") == {"throttle": {"rate": 0, "burst": 0}, "processing": False}
    assert world.fake.request("GET", "/health")[0] == 429
    assert world.fake.pump() == 0 and world.fake.messages("jobs") == ['{"job": "j1"}'], "paused, nothing lost"
    inc = world.store.get_incident(out["incident"])
    assert inc.trigger["kind"] == "emergency" and inc.trigger["throttle_before"] == [10000.0, 5000]
    assert inc.evidence["snapshot"] == out["snapshot"] == "backup-0001"
    assert world.notifier.kinds() == ["incident_opened", "emergency_stop"]


def test_emergency_stop_rolls_back_a_running_deployment(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("worker")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    out = emergency.emergency_stop(world.ctx, "bad writes", "bob")
    assert out["steps"][2]["detail"] == f"deployment {d.id} stopped and rolled back to {d.stable}"
    assert world.store.get(d.id).status == st.ROLLED_BACK
    assert world.fake.live_versions() == world.live(r1)
    assert world.store.get_incident(out["incident"]).deployment_id == d.id


def test_emergency_stop_needs_a_reason(world: World) -> None:
    with pytest.raises(UsageError, match="--reason is required"):
        emergency.emergency_stop(world.ctx, " ", "x")
    assert world.fake.get_throttle().rate == 10000.0


def test_emergency_stop_stays_in_force_across_a_restart(world: World) -> None:
    emergency.emergency_stop(world.ctx, "corruption", "alice")
    world.fake.set_throttle(10000, 5000)  # a platform that forgot both switches
    world.fake.set_processing(True)
    world.restart()
    assert world.deployer.traffic.reconcile_switches() == ["API throttle → rate 0, burst 0", "processing → paused"]
    assert world.fake.get_throttle().rate == 0 and not world.fake.get_processing()


def test_resume_refuses_while_verify_fails_unless_forced(world: World) -> None:
    out = emergency.emergency_stop(world.ctx, "corruption", "alice")
    world.fake.break_table("jobs")
    with pytest.raises(OperationFailed, match="not resuming: verify FAILED: table jobs"):
        emergency.resume(world.ctx, verify(world.ctx), force=False, who="alice")
    assert world.fake.get_throttle().rate == 0 and not world.fake.get_processing()
    got = emergency.resume(world.ctx, verify(world.ctx), force=True, who="alice")
    assert got["forced"] is True and got["incidents"] == [out["incident"]]
    assert world.fake.get_throttle() == Throttle(10000.0, 5000) and world.fake.get_processing()
    assert world.store.switches("staging") == {"throttle": {"rate": 10000.0, "burst": 5000}, "processing": True}
    (note,) = world.store.get_incident(out["incident"]).notes
    assert "FORCED past a failing verify" in note["text"]


def test_resume_after_a_passing_verify_restores_the_throttle_from_before_the_stop(world: World) -> None:
    world.deployer.traffic.set_throttle(50, 10, who="ops")
    emergency.emergency_stop(world.ctx, "corruption", "alice")
    report = verify(world.ctx)
    assert report.ok, report.summary()
    got = emergency.resume(world.ctx, report, force=False, who="alice")
    assert got["forced"] is False
    assert world.fake.get_throttle() == Throttle(50.0, 10) and world.fake.get_processing()
    assert world.fake.request("GET", "/health")[0] == 200


# --- backups ----------------------------------------------------------------------------------------------------
def test_backup_is_recorded_and_listed_with_the_platforms_detail(world: World) -> None:
    world.fake.tables["jobs"]["j1"] = {"status": "done"}
    got = backups.create(world.ctx, "before the migration")
    assert (got["id"], got["snapshot"], got["label"]) == ("snap-0001", "backup-0001", "before the migration")
    (row,) = backups.list_backups(world.ctx)
    assert row["available"] and row["detail"] == {"tables": {"jobs": 1}}


def test_restore_refuses_without_yes_naming_the_jobs_it_would_drop(world: World) -> None:
    backups.create(world.ctx, "b")
    world.fake.tables["jobs"]["new"] = {"status": "done"}
    with pytest.raises(UsageError, match=r"1 job\(s\) submitted since the backup would be lost"):
        backups.restore(world.ctx, "snap-0001", yes=False, who="alice")
    assert "new" in world.fake.tables["jobs"]


def test_restore_with_yes_puts_the_data_back_with_processing_paused_meanwhile(world: World) -> None:
    world.fake.tables["jobs"]["old"] = {"status": "done"}
    backups.create(world.ctx, "b")
    world.fake.tables["jobs"] = {"new": {"status": "done"}}
    out = backups.restore(world.ctx, "snap-0001", yes=True, who="alice")
    assert out["snapshot"] == "backup-0001" and out["diff"] == {"only_current": 1, "only_snapshot": 1}
    assert world.fake.tables["jobs"] == {"old": {"status": "done"}}
    assert [c for c in world.fake.calls if "processing" in c or c.startswith("restore")] == [
        "set_processing False", "restore backup-0001", "set_processing True"]


def test_restore_of_an_unknown_backup_is_refused(world: World) -> None:
    with pytest.raises(UsageError, match="no backup 'snap-0042' in staging"):
        backups.restore(world.ctx, "snap-0042", yes=True, who="x")


# --- repair -------------------------------------------------------------------------------------------------------
def corrupting(c: Call) -> Any:
    """A worker version that finishes its jobs with garbage (the data-corruption scenario)."""
    out = c.default()
    if c.is_queue:
        for rec in c.event["Records"]:
            job = json.loads(rec["body"]).get("job")  # the pre-traffic probe's message names no job
            if job is not None:
                c.platform.tables["jobs"][job]["status"] = "garbage"
    return out


def test_repair_restores_the_bad_versions_jobs_from_the_backup_and_requeues_them(world: World) -> None:
    world.fake.send_message("jobs", json.dumps({"job": "j1"}))
    world.fake.pump()  # j1 done by worker v11 before the deployment
    r2 = world.release("worker")
    world.fake.handle("worker", corrupting, version="12")
    d = world.deploy(r2)
    world.wait_step(d.id, 0)
    for job in ("j0", "j1", "j2", "j3"):  # alternately v11, v12: j1 and j3 are the bad version's
        world.fake.send_message("jobs", json.dumps({"job": job}))
    world.fake.pump(rounds=4)
    world.deployer.stop(d.id, rollback=True, reason="garbage output", who="alice")
    assert {j for j, row in world.fake.tables["jobs"].items() if row["status"] == "garbage"} == {"j1", "j3"}

    dry = repair.repair(world.ctx, d.id, dry_run=True, who="alice")
    assert (dry["bad_release"], dry["bad_versions"]["worker"], dry["jobs"]) == (2, "12", ["j1", "j3"])
    assert dry["snapshot"] == "backup-0001" and world.fake.messages("jobs") == []

    out = repair.repair(world.ctx, d.id, dry_run=False, who="alice")
    assert (out["restored"], out["reset"], out["requeued"]) == (["j1"], ["j3"], ["j1", "j3"])
    world.fake.pump(rounds=2)
    assert all(row == {"status": "done", "processed_by": {"function": "worker", "version": "11"}}
               for row in world.fake.tables["jobs"].values())
    inc = world.store.incident_for_deployment(d.id)
    assert "repaired 2 job(s) processed by r2" in inc.notes[-1]["text"]


def test_repair_is_refused_for_a_deployment_that_succeeded(world: World) -> None:
    deployed(world, "worker")
    with pytest.raises(UsageError, match="is Succeeded: repair is for a rolled-back release's jobs"):
        repair.repair(world.ctx, "d-0001", dry_run=True, who="x")


def test_repair_after_a_manual_rollback_uses_the_backup_of_the_deployment_that_made_it_live(world: World) -> None:
    deployed(world, "worker")
    out = rollback.manual_rollback(world.ctx, "bad", "x")
    bad, versions, snap = repair.bad_release_and_snapshot(world.store, "staging", world.store.get(out["deployment"]))
    assert (bad, versions["worker"], snap) == (2, "12", "backup-0001")


# --- drills ------------------------------------------------------------------------------------------------------
class ClockTime:
    """The drill's `time` module on the FakeClock: its sleeps move the clock (and yield briefly)."""

    def __init__(self, fake: FakePlatform) -> None:
        self.fake = fake

    def time(self) -> float:
        return self.fake.clock.now()

    def sleep(self, seconds: float) -> None:
        self.fake.clock.advance(seconds)
        time.sleep(min(seconds, 0.01))


def synthetic_traffic(fake: FakePlatform) -> type:
    class Traffic:
        """The drill's synthetic load, through the fake gateway, in bursts as the clock moves."""

        def __init__(self, *_: Any) -> None:
            self.stats = {"requests": 0, "http_errors": 0, "messages": 0}
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._run, daemon=True)

        def start(self) -> None:
            self._t.start()

        def stop(self) -> None:
            self._stop.set()
            self._t.join(5)

        def _run(self) -> None:
            while not self._stop.wait(0.01):
                for r in fake.traffic("api", 10):
                    self.stats["requests"] += 1
                    self.stats["http_errors"] += not r.ok

    return Traffic


@pytest.mark.parametrize(("fault", "trigger"), [("errors=0.5", "alarm"), ("latency=3s", "judge")])
def test_drill_passes_when_the_injected_fault_is_rolled_back_automatically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, trigger: str
) -> None:
    w = World(tmp_path, judge=True)
    try:
        monkeypatch.setattr(drill, "time", ClockTime(w.fake))
        monkeypatch.setattr(drill, "SyntheticTraffic", synthetic_traffic(w.fake))
        out = drill.drill(w.ctx, fault, target_seconds=30, allow_prod=False, who="alice")
        assert out["passed"], out["failures"]
        d = w.store.get(out["deployment"])
        assert d.status == st.ROLLED_BACK and w.event(d.id, "rolled_back").data["trigger"] == trigger
        faulty = w.fake.releases()[-1]
        assert faulty.environment == {"BACKOUT_FAULT": fault} and d.target_release == faulty.id
        assert w.fake.live_versions() == w.live(w.fake.releases()[0])
        assert w.store.incident_for_deployment(d.id).status == "closed"
        (rec,) = w.store.drills("staging")
        assert rec.passed and rec.fault == fault
        assert "drill_result" in w.notifier.kinds()
    finally:
        w.close()


def test_drill_is_refused_in_prod_and_for_an_unknown_fault(tmp_path: Path) -> None:
    w = World(tmp_path, env="prod")
    try:
        with pytest.raises(UsageError, match="refused for prod without --allow-prod"):
            drill.drill(w.ctx, "crash", 30, allow_prod=False, who="x")
    finally:
        w.close()
    with pytest.raises(UsageError, match="use errors=0.5, latency=3s, crash or dlq"):
        drill.parse_fault("errors=2")


# --- status -------------------------------------------------------------------------------------------------------
def test_status_shows_versions_switches_queues_incidents_and_what_needs_doing(world: World) -> None:
    world.fake.send_message("jobs-dlq", "{}")
    emergency.emergency_stop(world.ctx, "corruption", "alice")
    s = status.status(world.ctx)
    assert s["functions"]["worker"]["weights"] == {"11": 100.0}
    assert s["api"] == {"rate": 0.0, "burst": 0, "blocked": True} and s["processing"] is False
    assert s["queues"]["jobs-dlq"]["is_dlq"] and s["queues"]["jobs-dlq"]["visible"] == 1
    assert s["queues"]["jobs-dlq"]["sent"] == 1
    assert [i["id"] for i in s["incidents"]] == ["INC-0001"]
    assert s["warnings"] == [
        "no passing rollback drill on record: run `backout drill --env staging` (monthly)",
        "no passing emergency drill on record: run `backout drill --emergency --env staging` (quarterly)",
        "API blocked (throttle 0): resume with `backout resume --env staging`",
        "processing paused: resume with `backout resume --env staging`",
        "1 message(s) waiting in DLQ jobs-dlq",
        "1 open incident(s): `backout incident list --env staging`",
    ]
