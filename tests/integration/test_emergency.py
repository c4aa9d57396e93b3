"""Emergency stop and resume end to end (the procedure's emergency rollback and data-corruption first
steps): under load nothing acknowledged is lost, resume waits for verify, and the backlog a pause built
does not block it.

Its own module, so its own supervisor, running beside the other runbook tests (the test runner hands
whole modules to its workers).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

# the runbook tests' environment (a supervisor of the SDA) and helpers, for this module's own instance
from test_runbooks import (  # noqa: F401
    ENV_EXTRA,
    ROTATION,
    Submitter,
    _clean,
    cli_stdin_closed,
    components,
    env,
    gate,
    live_version,
    receiver,
    start_held_deployment,
    truth,
    wait_jobs_done,
)

from support import Receiver, RunningEnv, sda_manifest, wait_for


def test_emergency_stop_under_load_loses_nothing(env: RunningEnv, receiver: Receiver) -> None:  # noqa: F811
    gw = httpx.Client(base_url=env.gateway_url, timeout=30)
    d = start_held_deployment(env, "emergency")
    # more drawings than the worker's two slots can take: a backlog waits in the queue at the stop
    with Submitter(env.gateway_url, interval=0.05, tag="emergency", clients=2) as load:
        wait_for(lambda: env.api("GET", "/queues/processing")["visible"] >= 10, timeout=60, what="a backlog")
        r = env.cli("emergency-stop", "--reason", "schedules look corrupt", "--yes", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        stop = json.loads(r.stdout)
        wait_for(lambda: load.codes[429] >= 3, timeout=30, what="clients to get 429")
    assert load.retry_after, "429 without Retry-After"
    assert set(load.codes) == {202, 429}, load.codes  # accepted, then turned away: no errors

    steps = [s["step"] for s in stop["steps"]]
    assert steps == ["block API", "pause processing", "stop deployment", "back up data", "notify"]
    assert all(s["ok"] and s["ms"] >= 0 for s in stop["steps"]), stop["steps"]
    assert d["id"] in stop["steps"][2]["detail"]

    note = receiver.wait("] emergency stop", "schedules look corrupt", stop["incident"])  # not incident_opened
    assert "block API" in note["message"] and "back up data" in note["message"]
    r = gw.get("/health")
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    view = env.cli_json("deployment", "show", d["id"])
    assert view["deployment"]["status"] == "RolledBack"
    assert stop["snapshot"] in {b["platform_snapshot_id"] for b in env.cli_json("backup", "list")}
    inc = env.cli_json("incident", "show", stop["incident"])
    assert inc["incident"]["severity"] == "critical"
    assert [s["step"] for s in inc["incident"]["trigger"]["steps"]] == steps[:-1]
    assert sum(e["kind"] == "emergency_step" for e in inc["timeline"]) == 4

    st = env.cli_json("status")
    assert st["api"]["blocked"] and st["processing"] is False and st["deployment"] is None
    assert stop["incident"] in {i["id"] for i in st["incidents"]}
    assert any("API blocked" in w for w in st["warnings"])
    r = env.cli("status")
    assert r.returncode == 0 and "BLOCKED (429)" in r.stdout and "PAUSED" in r.stdout and stop["incident"] in r.stdout

    # paused: what is in flight finishes, the rest waits — visible, not received, not dead-lettered
    dlq_before = env.api("GET", "/queues/processing-dlq")["dlq_arrivals"]
    wait_for(lambda: env.api("GET", "/queues/processing")["in_flight"] == 0, timeout=60, what="in-flight work")
    waiting = env.api("GET", "/queues/processing")
    assert waiting["visible"] > 0, "no backlog: the test proves nothing about paused processing"
    assert st["queues"]["processing"]["visible"] >= waiting["visible"]
    time.sleep(2.0)
    again = env.api("GET", "/queues/processing")
    assert (again["visible"], again["in_flight"], again["received"]) == (
        waiting["visible"], 0, waiting["received"]
    )

    # the block outlives the supervisor
    env.kill9()
    env.restart()
    gw.close()
    gw = httpx.Client(base_url=env.gateway_url, timeout=30)
    assert gw.get("/health").status_code == 429
    assert gw.post("/process-drawing").status_code == 429
    st = env.cli_json("status")
    assert st["api"]["blocked"] and not st["processing"]
    time.sleep(1.5)
    assert env.api("GET", "/queues/processing")["visible"] == waiting["visible"]

    r = env.cli("resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout and "resumed" in r.stdout
    assert gw.get("/health").status_code == 200
    done = wait_jobs_done(env, list(load.accepted), timeout=180)
    assert len(done) == len(load.accepted)  # none lost
    for job_id, sample in list(load.accepted.items())[: len(ROTATION)]:
        assert components(env, job_id) == truth(sample)
    assert env.api("GET", "/queues/processing-dlq")["dlq_arrivals"] == dlq_before
    inc = env.cli_json("incident", "show", stop["incident"])
    assert any(e["kind"] == "resumed" and "after verify passed" in e["message"] for e in inc["timeline"])
    gw.close()


def test_resume_refuses_a_failing_verify_unless_forced(env: RunningEnv) -> None:  # noqa: F811
    live = live_version(env)
    other = env.cli_json("publish", "--set-env", "RUNBOOK_TEST=resume")["id"]
    stop = env.cli_json("emergency-stop", "--reason", "drill of the drill", "--yes")
    try:
        env.cli("alias", "api", "--stable", str(live), "--canary", str(other), "--weight", "50", check=True)
        r = env.cli("resume")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "not resuming" in r.stderr and "api:live" in r.stderr
        assert httpx.get(f"{env.gateway_url}/health", timeout=10).status_code == 429  # still blocked
        r = env.cli_json("resume", "--force")
        assert r["forced"] is True and r["verify"]["ok"] is False
        assert httpx.get(f"{env.gateway_url}/health", timeout=10).status_code == 200
        inc = env.cli_json("incident", "show", stop["incident"])
        forced = [e for e in inc["timeline"] if e["kind"] == "resumed"]
        assert forced and "FORCED" in forced[0]["message"] and forced[0]["data"]["forced"] is True
        assert any("FORCED" in n["text"] for n in inc["incident"]["notes"])
    finally:
        env.cli("alias", "api", "--stable", str(live), check=True)


def test_resume_is_not_refused_for_the_backlog_the_pause_built(tmp_path: Path) -> None:
    """With a queue-age limit, a pause longer than the limit must not make `resume` impossible."""
    manifest = tmp_path / "backout.toml"
    limits = "queue_age_limits = { processing = 2.0 }"
    manifest.write_text(sda_manifest(tmp_path / "state", env_extra=f"{ENV_EXTRA}\n{limits}"))
    aged = RunningEnv(manifest)
    try:
        aged.api("POST", "/processing", json={"enabled": False})
        with Submitter(aged.gateway_url, interval=0.2, tag="aged") as s:
            wait_for(lambda: len(s.accepted) >= 2, timeout=30, what="jobs accepted")
        aged.cli_json("emergency-stop", "--reason", "hold everything", "--yes")
        wait_for(lambda: aged.api("GET", "/queues/processing")["age_of_oldest"] > 3, timeout=30, what="an old backlog")
        report = aged.cli_json("verify")
        (q,) = [c for c in report["checks"] if c["name"] == "queue processing"]
        assert q["ok"] and "processing is paused" in q["detail"], q
        r = aged.cli("resume")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_jobs_done(aged, list(s.accepted))
        wait_for(lambda: aged.api("GET", "/queues/processing")["age_of_oldest"] < 2, timeout=30, what="drained")
        r = aged.cli("verify", "--json")
        assert r.returncode == 0, [c for c in json.loads(r.stdout)["checks"] if not c["ok"]]
    finally:
        aged.stop()


def test_emergency_stop_needs_a_reason_and_confirmation(env: RunningEnv) -> None:  # noqa: F811
    r = env.cli("emergency-stop", "--yes")
    assert r.returncode == 2 and "--reason" in r.stderr
    r = cli_stdin_closed(env, "emergency-stop", "--reason", "x")
    assert r.returncode == 2 and "--yes" in r.stderr
    assert not env.api("GET", "/status")["api"]["blocked"]
