"""Automatic rollback end to end, by the fault that triggers it: half the API's requests failing under load,
a worker crashing on every message, a failing pre-traffic hook, and a kill -9 of the supervisor mid-deployment.

Its own module, so its own supervisor, running beside `test_deploy.py` (the test runner hands whole
modules to its workers); the environment and helpers are that module's.
"""

from __future__ import annotations

import time

# the deployment tests' environment and helpers, for this module's own instance
from test_deploy import Load, World, assert_all_on, rollback_ms, rolled_back_event, world  # noqa: F401

from support import wait_for


def test_api_failing_half_its_requests_rolls_back_under_load_and_no_job_is_lost(world: World) -> None:  # noqa: F811
    env = world.env
    stable = env.latest()
    before = env.weights()
    with Load(env.gateway_url, rate=20, post_every=4) as load:
        time.sleep(1.0)
        started = time.time()
        r = env.cli("deploy", "--strategy", "Canary20", "--set-env", "BACKOUT_FAULT=errors=0.5")
        assert r.returncode == 1, r.stdout + r.stderr
        time.sleep(1.0)  # traffic after the rollback: only the stable version answers
    view = env.deployment(env.latest()["id"])
    d = view["deployment"]
    assert d["status"] == "RolledBack" and d["id"] != stable["id"]
    assert d["reason"].startswith("alarm error-rate:api in ALARM: error rate "), d["reason"]
    assert d["current_step"] == 0, "decided during the 20 % canary"
    ev = rolled_back_event(view)
    assert ev["data"]["trigger"] == "alarm"
    evidence = " ".join(ev["data"]["evidence"])
    assert " > 10 % over " in evidence and f"on api v{d['target_release']}" in evidence, evidence
    assert [a["alarm"] for a in ev["data"]["alarms"]] == ["error-rate:api"]
    assert rollback_ms(d) < 1000
    assert env.weights() == before, "every alias back on the stable version, 100 %"
    bad = load.served_by(d["target_release"])
    assert any(a.status >= 500 for a in bad)  # (each request fails with p = 0.5: a few may all have failed)
    late = [a for a in load.answers if a.sent > d["rollback_completed_at"] + 0.5]
    assert late and not [a for a in late if a.version == str(d["target_release"])]
    # no job lost: every drawing acknowledged during the deployment completes
    jobs = [a.job_id for a in load.answers if a.job_id and a.sent >= started]
    assert len(jobs) >= 5, len(jobs)
    wait_for(lambda: all(env.job_status(j) == "completed" for j in jobs), timeout=60, interval=0.5,
             what="every acknowledged job to complete")
    incident = view["incident"]
    assert incident is not None and incident["deployment_id"] == d["id"]


def test_worker_crashing_on_every_message_rolls_back(world: World) -> None:  # noqa: F811
    env = world.env
    before = env.weights()
    with Load(env.gateway_url, rate=8, post_every=2) as load:
        r = env.cli("deploy", "--strategy", "Half", "--set-env", "SDA_FAULTS=worker_crash", timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    view = env.deployment(env.latest()["id"])
    d = view["deployment"]
    assert d["status"] == "RolledBack" and d["current_step"] == 0
    assert d["reason"].startswith("alarm error-rate:worker in ALARM: error rate "), d["reason"]
    ev = rolled_back_event(view)
    evidence = " ".join(ev["data"]["evidence"])
    assert " > 10 % over " in evidence and f"on worker v{d['target_release']}" in evidence, evidence
    assert [a["alarm"] for a in ev["data"]["alarms"]] == ["error-rate:worker"]
    assert rollback_ms(d) < 1000
    assert env.weights() == before
    # the API of the crashing version was fine; its drawings are processed by the stable worker
    assert all(a.status in (200, 202, 429) for a in load.answers), {a.status for a in load.answers}
    jobs = [a.job_id for a in load.answers if a.job_id]
    wait_for(lambda: all(env.job_status(j) in ("completed", "failed") for j in jobs), timeout=90,
             interval=0.5, what="every acknowledged job to finish")


def test_failing_pre_traffic_hook_rolls_back_before_any_traffic(world: World) -> None:  # noqa: F811
    env = world.env
    before = env.weights()
    world.gate.touch()
    try:
        with Load(env.gateway_url, rate=10) as load:
            r = env.cli("deploy", "--strategy", "Fast", "--set-env", "X=pre-traffic")
    finally:
        world.gate.unlink()
    assert r.returncode == 1, r.stdout + r.stderr
    view = env.deployment(env.latest()["id"])
    d = view["deployment"]
    assert d["status"] == "RolledBack" and d["current_step"] is None
    assert "pre-traffic hook gate failed" in d["reason"]
    kinds = [e["kind"] for e in view["events"]]
    assert "step_reached" not in kinds and "hook_failed" in kinds
    failed = next(e for e in view["events"] if e["kind"] == "hook_failed")
    assert "exit 3" in failed["message"] and "refused by the gate file" in failed["data"]["output"]
    assert rollback_ms(d) < 1000
    assert env.weights() == before
    assert load.answers and not load.served_by(d["target_release"])
    served = env.api("POST", "/metrics/query", json={
        "namespace": "AWS/ApiGateway", "metric": "Count", "start": d["created_at"] - 1, "end": time.time() + 1,
        "dimensions": {"ApiName": "security-assistant", "Stage": "staging",
                       "ExecutedVersion": str(d["target_release"])},
        "period": 3600, "statistic": "Sum"})
    assert sum(p["value"] for p in served) == 0, served


def test_sigkill_of_the_supervisor_mid_deployment_resumes_consistently(world: World) -> None:  # noqa: F811
    env = world.env
    env.cli("deploy", str(world.code("resumed")), "--strategy", "Hold", "--no-wait", check=True)
    d = env.latest()
    wait_for(lambda: env.latest()["current_step"] == 0, timeout=30, what="the canary step")
    time.sleep(1.5)  # well inside the 8 s hold
    env.kill9()
    env.restart()
    # the new supervisor goes on by itself; `follow` re-attaches to it
    r = env.cli("deployment", "follow", d["id"], timeout=90)
    assert "resuming" in r.stdout and r.returncode == 0, r.stdout + r.stderr
    view = env.wait_terminal(d["id"], timeout=30)
    assert view["deployment"]["status"] == "Succeeded", view["deployment"]
    after = view["deployment"]
    kinds = [e["kind"] for e in view["events"]]
    assert "resumed" in kinds, kinds
    resumed = next(e for e in view["events"] if e["kind"] == "resumed")
    assert "step 1" in resumed["message"]
    steps = [e for e in view["events"] if e["kind"] == "step_reached"]
    assert [e["data"]["step"] for e in steps] == [0, 1], "step 1 not re-announced, step 2 reached once"
    # the hold went on from the stored step start: neither cut short nor started again
    assert steps[1]["ts"] >= steps[0]["ts"] + 8.0 - 0.5
    # (a hold started again would put step 2 ≥ 8 s after the restart; the slack is for warming step 2's instances)
    assert steps[1]["ts"] < max(resumed["ts"], steps[0]["ts"] + 8.0) + 5.0
    assert_all_on(env, after["target_release"])
    r = env.cli("verify")
    assert r.returncode == 0, r.stdout + r.stderr

