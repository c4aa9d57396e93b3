"""Communication during a rollback (issue 14, point 12): the incident report carries a ready
status-page / customer update — what happened, the counted impact, the current state — and, once the
incident is closed, the "resolved" notice, which `incident close` prints and sends."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backout.cli import main as cli_main
from backout.control.store import Store
from backout.control.strategies import Step, Strategy
from backout.platforms.base import Release
from backout.runbooks import emergency, repair
from backout.runbooks import incidents as ir
from backout.runbooks.incidents.communication import utc
from backout.runbooks.verify import verify
from fakes import World, corrupting, write_manifest
from support import Receiver, wait_for

CANARY = Strategy("Canary10Percent30Seconds", (Step(10.0, 30.0), Step(100.0, 0.0)))
CONTACTS = '[contacts.on_call]\nname = "Dana Lee"\nchannel = "#incidents"\n'


def rel(n: int) -> Release:
    return Release(n, {"api": str(n), "worker": str(10 + n)}, f"digest-{n}", 0.0)


def automatic_rollback(store: Store, t0: float) -> str:
    """A canary whose API answers 5xx, rolled back by the `api-5xx` alarm, recorded as the deployer records
    it (trigger, evidence with the measured impact), and 3 of its jobs repaired since."""
    d = store.create_deployment("staging", rel(1), rel(2), CANARY, created_by="ana", now=t0)
    store.transition(d.id, "PreTraffic")
    store.transition(d.id, "InProgress", current_step=0, current_weight=10.0, step_started_at=t0 + 1)
    store.add_event("step_reached", "step 1/2: 10 %", deployment_id=d.id, ts=t0 + 1,
                    data={"step": 0, "weight": 10.0, "hold": 30.0})
    store.transition(d.id, "RolledBack", reason="alarm api-5xx in ALARM", rollback_decided_at=t0 + 9.5)
    store.update(d.id, rollback_completed_at=t0 + 9.52)
    impact = {"api": {"requests_served": 40.0, "failed_requests": 6.0},
              "functions": {"api": {"invocations": 40.0, "errors": 0.0},
                            "worker": {"invocations": 20.0, "errors": 5.0}},
              "dlq_arrivals": {"jobs-dlq": 1.0}, "weights": [[t0, 0.0], [t0 + 1, 10.0], [t0 + 9.52, 0.0]]}
    inc = store.open_incident("staging", f"{d.id} rolled back: alarm api-5xx in ALARM", deployment_id=d.id,
                              opened_at=t0 + 9.53,
                              trigger={"kind": "alarm", "reason": "alarm api-5xx in ALARM", "decided_at": t0 + 9.5,
                                       "completed_at": t0 + 9.52, "alarms": [{"alarm": "api-5xx", "state": "ALARM"}]},
                              evidence={"alarms": ["API 5xx 6 > 5 over 60 s on svc v2"], "impact": impact,
                                        "jobs_touched": 4})
    store.add_event("repair", "ana repaired 3 job(s)", deployment_id=d.id, data={"jobs": ["j1", "j2", "j3"]})
    return inc.id


def backout(manifest: Path, *args: str) -> str:
    r = CliRunner().invoke(cli_main.app, ["--manifest", str(manifest), *args], env={"COLUMNS": "200"})
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.output


def test_report_carries_the_update_then_close_prints_and_sends_the_resolved_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    receiver = Receiver()
    try:
        m = write_manifest(tmp_path, staging=f'notify = ["json://127.0.0.1:{receiver.port}/hook"]\n{CONTACTS}')
        t0 = float(int(time.time()) - 600)
        with Store.for_env(m.state_dir("staging")) as store:
            iid = automatic_rollback(store, t0)

        report = backout(m.path, "incident", "report", iid)
        communication = report.split("## Communication")[1].split("## Timeline")[0]
        update = (  # under its first line, "[Monitoring] svc (staging) — " and the time it was written
            f"What happened: From {utc(t0 + 1)} a new version of svc (staging) caused errors on API requests. It was "
            f"detected automatically and the previous version restored at {utc(t0 + 9.52)}.\n"
            "Impact: 6 of 40 API requests to the new version failed (15.0 %); 5 of 60 processing attempts failed; "
            "1 job could not be processed and was set aside; 3 jobs processed by the faulty version were corrected "
            "and processed again.\n"
            "Current state: The previous version serves all requests and the service is operating normally; we are "
            "investigating the cause."
        )
        assert re.search(r"\[Monitoring\] svc \(staging\) — \d{4}-\d\d-\d\d \d\d:\d\d UTC\n", communication)
        assert update in communication
        assert f"Resolved notice: written when the incident is closed (`backout incident close {iid}" in communication
        assert "## Contacts\n\n- on call: Dana Lee (#incidents)" in report

        out = backout(m.path, "incident", "close", iid, "--root-cause", "a header the API no longer sent")
        with Store.for_env(m.state_dir("staging")) as store:
            closed_at = store.get_incident(iid).closed_at
        notice = (
            f"[Resolved] svc (staging) — {utc(closed_at, date=True)}\n"
            f"What happened: From {utc(t0 + 1)} a new version of svc (staging) caused errors on API requests."
        )
        assert notice in out and "Cause: a header the API no longer sent." in out
        assert f"Resolved at {utc(closed_at)}: the service is operating normally." in out
        sent = wait_for(lambda: receiver.received[-1] if receiver.received else None, timeout=15,
                        what="the resolution notification")
        assert sent["title"] == f"[svc/staging] incident {iid} resolved"
        assert f"Status page / customer notice:\n{notice}" in sent["message"]
        assert sent["message"].endswith("Contacts:\n  - on call: Dana Lee (#incidents)")

        report = backout(m.path, "incident", "report", iid)
        assert f"[Resolved] svc (staging) — {utc(closed_at, date=True)}" in report
        assert "Resolved notice:" in report and "Cause: a header the API no longer sent." in report
    finally:
        receiver.close()


def test_update_of_an_emergency_stop_follows_its_state(tmp_path: Path, fast_evaluations: None) -> None:
    w = World(tmp_path)
    try:
        r2 = w.release("worker")
        w.fake.handle("worker", corrupting, version=r2.version("worker"))
        w.finish(w.deploy(r2, (100, 0)).id)
        w.fake.send_message("jobs", json.dumps({"job": "j1"}))
        w.fake.pump()
        out = emergency.emergency_stop(w.ctx, "wrong schedules", "alice", keep_api=True)
        view = ir.load(w.store, out["incident"], "staging", service="svc")
        text = ir.status_update(view)
        opened = w.store.get_incident(out["incident"]).opened_at
        assert text.split("\n")[1:] == [
            f"What happened: At {utc(opened)} we paused processing (the API stayed open and kept accepting "
            "submissions) of svc (staging) and returned to the previous version to protect your data: wrong "
            "schedules.",
            f"Impact: Since {utc(opened)} processing is paused; submitted work waits in the queue and none is lost.",
            "Current state: Processing is paused while we investigate; work already submitted is kept and will be "
            "processed when service resumes.",
        ]
        assert text.startswith("[Identified] ") and ir.resolved_notice(view) is None

        repair.repair(w.ctx, out["rolled_back"]["deployment"], dry_run=False, who="alice")
        emergency.resume(w.ctx, verify(w.ctx), force=False, who="alice")
        view = ir.load(w.store, out["incident"], "staging", service="svc")
        resumed = next(e.ts for e in view.events if e.kind == "resumed")
        assert ir.status_update(view).split("\n")[2:] == [
            "Impact: 1 job processed by the faulty version was corrected and processed again; processing was paused "
            "for less than a minute; submitted work waited in the queue and none was lost.",
            f"Current state: Service was restored at {utc(resumed)}; we are monitoring it closely.",
        ]
    finally:
        w.close()
