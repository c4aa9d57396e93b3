"""Emergency stop over a FakePlatform, the cases the audit found (issue 14): a bad deployment that
already succeeded (point 2: rolled back within the rollback window, kept past it or with
--no-rollback), and `--keep-api` (point 9: processing paused, the API untouched, and `resume` puts
back exactly what was changed), with the notifications each step sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backout.control import states as st
from backout.platforms.base import Throttle
from backout.runbooks import emergency, repair
from backout.runbooks.verify import verify
from fakes import World, corrupting

pytestmark = pytest.mark.usefixtures("fast_evaluations")


def bad_release_live(w: World) -> tuple[Any, Any, Any]:
    """r2's worker corrupts every job; r2 was deployed, passed its checks and succeeded; it then processed
    j1 and j2. Returns (r1, r2, the deployment)."""
    r1, r2 = w.fake.releases()[0], w.release("worker")
    w.fake.handle("worker", corrupting, version=r2.version("worker"))
    d = w.finish(w.deploy(r2, (100, 0)).id)
    assert d.status == st.SUCCEEDED
    for job in ("j1", "j2"):
        w.fake.send_message("jobs", json.dumps({"job": job}))
    w.fake.pump(rounds=2)
    assert {row["status"] for row in w.fake.tables["jobs"].values()} == {"garbage"}
    return r1, r2, d


def test_emergency_stop_rolls_back_a_bad_deployment_that_succeeded_within_the_window(world: World) -> None:
    r1, r2, d = bad_release_live(world)
    world.clock.advance(20)
    out = emergency.emergency_stop(world.ctx, "schedules are wrong", "alice")
    step = next(s for s in out["steps"] if s["step"] == "stop deployment")
    rb = out["rolled_back"]
    assert step["ok"] and step["detail"] == (
        f"no deployment in progress; {d.id} made {r2.label()} live 20 s ago, within the 60 s rollback window: "
        f"rolled back {r2.label()} → {r1.label()} ({rb['deployment']}); repair what it wrote: "
        f"backout repair --deployment {rb['deployment']} --env staging")
    assert world.fake.live_versions() == world.live(r1)
    # one incident, the emergency's, naming the rollback's record (no second one for the rollback itself)
    (inc,) = world.store.incidents("staging")
    assert inc.id == out["incident"] and inc.deployment_id == rb["deployment"]
    assert inc.trigger["rolled_back"]["from"] == r2.id and inc.trigger["changed"] == ["api", "processing"]
    assert world.notifier.kinds()[-2:] == ["incident_opened", "emergency_stop"]

    # the procedure's next steps: repair what r2 wrote (re-queued while processing is paused), resume
    fixed = repair.repair(world.ctx, rb["deployment"], dry_run=False, who="alice")
    assert fixed["bad_release"] == r2.id and fixed["jobs"] == ["j1", "j2"] and fixed["requeued"] == ["j1", "j2"]
    assert world.fake.pump() == 0, "processing stays paused until resume"
    got = emergency.resume(world.ctx, verify(world.ctx), force=False, who="alice")
    assert got["restored"] == ["api", "processing"] and got["incidents"] == [inc.id]
    world.fake.pump(rounds=2)
    stable_worker = r1.version("worker")
    assert world.fake.tables["jobs"] == {
        j: {"status": "done", "processed_by": {"function": "worker", "version": stable_worker}} for j in ("j1", "j2")}
    assert world.notifier.kinds()[-1] == "resumed"
    resumed = world.notifier.sent[-1]
    assert resumed.incident_id == inc.id and resumed.title == "[svc/staging] service resumed after the emergency stop"
    assert resumed.reason == "resumed by alice: processing on, API throttle back to 10000/s after verify passed"


def test_past_the_rollback_window_the_finished_release_stays_live_and_the_step_says_how(world: World) -> None:
    _, r2, d = bad_release_live(world)
    world.clock.advance(61)
    out = emergency.emergency_stop(world.ctx, "late report", "bob")
    step = next(s for s in out["steps"] if s["step"] == "stop deployment")
    assert step["detail"] == (f"no deployment in progress; {d.id} made {r2.label()} live 61 s ago, past the 60 s "
                              "rollback window: it stays live (if it is the cause: backout rollback --env staging "
                              "--reason …)")
    assert out["rolled_back"] is None and world.fake.live_versions() == world.live(r2)
    assert world.store.get_incident(out["incident"]).deployment_id is None


def test_no_rollback_keeps_what_is_live_finished_or_in_progress(world: World) -> None:
    _, r2, d = bad_release_live(world)
    out = emergency.emergency_stop(world.ctx, "looking into it", "carol", rollback=False)
    assert out["steps"][2]["detail"] == (f"no deployment in progress; {d.id} made {r2.label()} live 0 s ago: "
                                         "it stays live (--no-rollback)")
    assert world.fake.live_versions() == world.live(r2)
    emergency.resume(world.ctx, verify(world.ctx), force=True, who="carol")

    r3 = world.release("api")
    d3 = world.deploy(r3)
    world.wait_step(d3.id, 0)
    out = emergency.emergency_stop(world.ctx, "again", "carol", rollback=False)
    assert out["steps"][2]["detail"] == f"deployment {d3.id} stopped at 50 % on {r3.label()}, not rolled back " \
                                        "(--no-rollback)"
    assert world.store.get(d3.id).status == st.STOPPED
    assert world.fake.get_weights("api").canary == r3.version("api")


def test_keep_api_pauses_processing_only_and_resume_restores_exactly_that(world: World) -> None:
    world.deployer.traffic.set_throttle(50, 10, who="ops")  # an operator's own throttle, before the stop
    world.fake.send_message("jobs", json.dumps({"job": "j1"}))
    out = emergency.emergency_stop(world.ctx, "suspicious results", "dana", keep_api=True)
    assert [s["step"] for s in out["steps"]] == ["keep API open", "pause processing", "stop deployment",
                                                 "back up data", "notify"]
    assert out["steps"][0]["detail"] == ("API left open at rate 50, burst 10 (--keep-api): requests are accepted, "
                                         "their work waits in the queues")
    assert world.fake.request("GET", "/health")[0] == 200, "the API stays open"
    assert world.fake.get_throttle() == Throttle(50.0, 10) and not world.fake.get_processing()
    assert world.fake.pump() == 0 and world.fake.messages("jobs") == ['{"job": "j1"}']
    assert world.store.switches("staging") == {"throttle": {"rate": 50, "burst": 10}, "processing": False}
    inc = world.store.get_incident(out["incident"])
    assert inc.trigger["keep_api"] is True and inc.trigger["changed"] == ["processing"]

    world.fake.set_throttle(20, 5)  # changed by hand while the stop is on: resume must not touch it
    got = emergency.resume(world.ctx, verify(world.ctx), force=False, who="dana")
    assert got["restored"] == ["processing"] and world.fake.get_processing()
    assert world.fake.get_throttle() == Throttle(20.0, 5)
    assert world.store.get_incident(inc.id).notes[-1]["text"] == (
        "resumed by dana: processing on, API untouched (it was left open) after verify passed")
    assert world.fake.pump() == 1
    assert world.notifier.kinds() == ["incident_opened", "emergency_stop", "resumed"]
