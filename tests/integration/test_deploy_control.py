"""Deployments an operator steers, end to end: a second deploy refused while one runs, `stop` with and
without a rollback (and Ctrl-C while following), a SIGKILL of the supervisor mid-deployment that the
next supervisor resumes from the recorded step, and the approval gate of prod.

Beside test_deploy.py, whose world (a supervisor of the SDA with short strategies) and helpers it uses
through its own instance: the test runner hands whole modules to its workers, so both run side by side.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from test_deploy import Env, World, assert_all_on, rollback_ms, world  # noqa: F401

from support import ROOT, wait_for

pytestmark = pytest.mark.slow


def test_second_deploy_is_refused_then_stop_rolls_back(world: World) -> None:  # noqa: F811
    env = world.env
    before = env.weights()
    r = env.cli("deploy", "--strategy", "Long", "--set-env", "X=stop", "--no-wait", check=True)
    d = env.latest()
    assert d["id"] in r.stdout and f"backout deployment follow {d['id']}" in r.stdout
    wait_for(lambda: env.latest()["current_step"] == 0, timeout=30, what="the canary step")
    second = env.cli("deploy", "--strategy", "Fast", "--set-env", "X=second")
    assert second.returncode == 2
    lines = (second.stdout + second.stderr).strip().splitlines()
    assert len(lines) == 1 and d["id"] in lines[0] and "active" in lines[0], lines
    assert env.latest()["id"] == d["id"], "the refused deploy created nothing"
    r = env.cli("stop", d["id"], "--reason", "changed my mind", "--yes", check=True)
    assert "RolledBack" in r.stdout
    view = env.deployment(d["id"])
    after = view["deployment"]
    assert after["status"] == "RolledBack" and "changed my mind" in after["reason"]
    assert rollback_ms(after) < 1000
    assert env.weights() == before

def test_stop_without_rollback_leaves_traffic_where_it_is(world: World) -> None:  # noqa: F811
    env = world.env
    # Ctrl-C while `deploy` follows stops the following, not the deployment, and says how to go on
    following = subprocess.Popen(
        [sys.executable, "-m", "backout.cli.main", "deploy", "--strategy", "Long", "--set-env", "X=stop-no-rollback"],
        env=env.proc_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def in_canary() -> bool:
            latest = (env.api("GET", "/deployments", params={"limit": 1}) or [{}])[0]
            return latest.get("status") == "InProgress" and latest.get("current_step") == 0

        wait_for(in_canary, timeout=60, what="the canary step")
        d = env.latest()
        following.send_signal(signal.SIGINT)
        out, err = following.communicate(timeout=30)
    finally:
        following.kill()
    assert following.returncode == 130, (out, err)
    assert f"deployment {d['id']} goes on" in err and f"backout deployment follow {d['id']}" in err
    assert f"backout stop {d['id']}" in err and "Traceback" not in err
    assert env.latest()["id"] == d["id"] and env.latest()["status"] == "InProgress"
    r = env.cli("stop", d["id"], "--no-rollback", "--yes", check=True)
    assert "Stopped" in r.stdout
    after = env.deployment(d["id"])["deployment"]
    assert after["status"] == "Stopped" and after["rollback_decided_at"] is None
    for w in env.weights().values():
        assert w == {str(d["stable_release"]): 50.0, str(d["target_release"]): 50.0}, w
    # an operator decides what comes next; here: a manual rollback puts the stable version back
    env.cli("rollback", "--to", str(d["stable_release"]), "--reason", "test cleanup", "--yes", check=True)
    assert_all_on(env, d["stable_release"])

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
    # A hold started again would begin after the `resumed` event, so it would put step 2 at least 8 s after
    # it. Warming step 2's instances (the step records how long) and the restarted supervisor's first
    # evaluation come between; on a loaded machine that took 2.8 s once, so the bound allows 5 s for them.
    warm = steps[1]["data"]["warm_seconds"]
    reached = steps[1]["ts"] - warm
    assert reached < resumed["ts"] + 8.0 - 0.5, ("the hold started again", warm, resumed, steps)
    assert reached < max(resumed["ts"], steps[0]["ts"] + 8.0) + 5.0, (warm, resumed, steps)
    assert_all_on(env, after["target_release"])
    r = env.cli("verify")
    assert r.returncode == 0, r.stdout + r.stderr

def test_approval_gate_waits_for_backout_approve(world: World) -> None:  # noqa: F811
    prod = Env(world.env.manifest_path, "prod")  # prod: require_approval = true, 5 % error rate
    try:
        r = prod.cli("deploy", "--strategy", "Fast", "--set-env", "X=approved", "--no-wait", check=True)
        d = prod.latest()
        assert f"backout approve {d['id']}" in r.stdout, r.stdout
        wait_for(lambda: prod.latest()["status"] == "AwaitingApproval", timeout=30, what="AwaitingApproval")
        time.sleep(1.0)
        assert prod.latest()["status"] == "AwaitingApproval" and prod.latest()["current_step"] is None
        assert_all_on(prod, d["stable_release"])
        r = prod.cli("approve", d["id"], check=True)
        view = prod.wait_terminal(d["id"], timeout=60)
        assert view["deployment"]["status"] == "Succeeded"
        assert_all_on(prod, d["target_release"])
        kinds = [e["kind"] for e in view["events"]]
        assert kinds.index("approval_needed") < kinds.index("approved") < kinds.index("step_reached")
        wait_for(lambda: any("waits for approval" in m.get("title", "") for m in world.receiver.about(d["id"])),
                 timeout=15, what="the approval notification")
    finally:
        prod.stop()
