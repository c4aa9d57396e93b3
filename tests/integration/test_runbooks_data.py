"""The data side of the runbooks end to end: smoke, backups, the data-corruption scenario (a version
that answers 200 but writes wrong schedules: caught, rolled back, its jobs repaired, the backup
restored) and the incident commands and reports of an automatic rollback.

Beside test_runbooks.py, whose environment (a supervisor of the SDA) and helpers it uses through its
own instance: the test runner hands whole modules to its workers, so the two halves run side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

# the runbook tests' environment and helpers, for this module's own supervisor
from test_runbooks import (  # noqa: F401
    Submitter,
    _clean,
    components,
    deploy,
    drawing,
    env,
    gate,
    jobs_db,
    live_version,
    receiver,
    truth,
    wait_jobs_done,
)

from support import ROOT, RunningEnv, wait_for

pytestmark = pytest.mark.slow


def test_smoke_runs_the_manifests_tests(env: RunningEnv, tmp_path: Path) -> None:  # noqa: F811
    r = env.cli("smoke", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    results = {x["name"]: x for x in json.loads(r.stdout)}
    node = next(n for n in results if n.endswith("tests/integration/test_e2e.py::test_health_check"))
    assert results[node]["ok"] and "1 passed" in results[node]["detail"]
    assert results["GET /health"]["ok"]

    # the same environment, with a manifest whose smoke tests include one that fails
    bad = tmp_path / "backout.toml"
    bad.write_text(env.manifest_path.read_text() + '\n[[smoke]]\nhttp = "GET /no-such-page"\n')
    r = subprocess.run(
        [sys.executable, "-m", "backout.cli.main", "smoke", "--json"],
        env=dict(env.proc_env, BACKOUT_MANIFEST=str(bad)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    results = {x["name"]: x for x in json.loads(r.stdout)}
    assert results["GET /no-such-page"]["ok"] is False and "→ 404" in results["GET /no-such-page"]["detail"]
    assert results["GET /health"]["ok"]

def test_backup_create_and_list(env: RunningEnv) -> None:  # noqa: F811
    b = env.cli_json("backup", "create", "--label", "before the migration")
    listed = {x["id"]: x for x in env.cli_json("backup", "list")}
    assert listed[b["id"]]["label"] == "before the migration" and listed[b["id"]]["available"]
    assert listed[b["id"]]["platform_snapshot_id"] == b["snapshot"]
    assert "jobs.db" in listed[b["id"]]["detail"]["databases"] or not (env.state_dir / "data" / "jobs.db").exists()
    r = env.cli("backup", "list")
    assert r.returncode == 0 and b["id"] in r.stdout and "before the migration" in r.stdout
    r = env.cli("backup", "restore", "snap-9999", "--yes")
    assert r.returncode == 2 and "no backup 'snap-9999'" in r.stderr

def test_corrupting_version_is_caught_rolled_back_and_its_jobs_repaired(env: RunningEnv) -> None:  # noqa: F811
    good = live_version(env)
    with Submitter(env.gateway_url, interval=0.2, tag="before") as before:
        wait_for(lambda: len(before.accepted) >= 4, timeout=60, what="jobs for the good version")
    wait_jobs_done(env, list(before.accepted))

    with Submitter(env.gateway_url, interval=0.4, tag="during") as trickle:
        view = deploy(env, "--strategy", "Fast", "--set-env", "SDA_FAULTS=corrupt_results")
        time.sleep(1.0)  # a few more jobs after the rollback, for the good version
    d = view["deployment"]
    bad = d["target_release"]
    assert d["status"] == "RolledBack" and "known-answer" in d["reason"], d
    assert live_version(env) == good
    hook = [e for e in view["events"] if e["kind"] == "hook_failed"]
    assert hook and "known answer FAILED" in hook[0]["message"]
    submitted = {**before.accepted, **trickle.accepted}
    wait_jobs_done(env, list(submitted))

    records = jobs_db(env)
    affected = sorted(j for j, rec in records.items() if (rec.get("processed_by") or {}).get("version") == str(bad))
    hook_jobs = [j for j in affected if j not in submitted]
    assert len(hook_jobs) == 1 and records[hook_jobs[0]]["client_name"] == "backout-hook"
    assert [j for j in affected if j in trickle.accepted], "no submitted job reached the bad version"
    samples = {**submitted, hook_jobs[0]: "sample_01"}
    wrong = [j for j in affected if components(env, j) != truth(samples[j])]
    assert wrong == affected  # the bad version really did write wrong schedules, every time

    with httpx.Client(base_url=env.gateway_url, timeout=30) as c:
        untouched = {j: c.get(f"/status/{j}").json() for j in records if j not in affected}
        files_before = {j: components(env, j) for j in submitted if j not in affected}

    dry = env.cli_json("repair", "--deployment", d["id"], "--dry-run")
    assert dry["dry_run"] and dry["bad_release"] == bad and dry["jobs"] == affected
    assert jobs_db(env) == records  # a dry run changes nothing

    r = env.cli_json("repair", "--deployment", d["id"])
    assert sorted(r["requeued"]) == affected and not r["missing"]
    repaired = wait_jobs_done(env, affected)
    for j in affected:
        assert repaired[j]["processed_by"]["version"] == str(good)
        assert components(env, j) == truth(samples[j]), j
    with httpx.Client(base_url=env.gateway_url, timeout=30) as c:
        for j, status in untouched.items():
            assert c.get(f"/status/{j}").json() == status, j
    for j, comps in files_before.items():
        assert components(env, j) == comps
    # so every drawing submitted before, during and after the bad version now has the right schedule
    assert {j: components(env, j) for j in submitted} == {j: truth(x) for j, x in submitted.items()}
    inc = env.cli_json("incident", "show", view["incident"]["id"])
    assert any("repaired" in n["text"] for n in inc["incident"]["notes"])
    assert env.cli_json("repair", "--deployment", d["id"], "--dry-run")["jobs"] == []  # nothing left to repair

    # restoring the whole pre-deployment snapshot instead would drop every job submitted since
    backup = next(b for b in env.cli_json("backup", "list") if b["deployment_id"] == d["id"])
    snap_jobs = jobs_db(env, env.state_dir / "snapshots" / backup["platform_snapshot_id"] / "data" / "jobs.db")
    lost = set(jobs_db(env)) - set(snap_jobs)
    assert lost
    r = env.cli("backup", "restore", backup["id"])
    assert r.returncode == 2 and f"{len(lost)} job(s) submitted since the backup would be lost" in r.stderr, r.stderr
    assert "backout repair" in r.stderr
    assert set(jobs_db(env)) == set(snap_jobs) | lost  # nothing restored
    r = env.cli_json("backup", "restore", backup["id"], "--yes")
    assert r["restored"] == backup["id"] and r["diff"]["only_current"] == len(lost)
    assert jobs_db(env) == snap_jobs
    gone = next(iter(lost))
    assert httpx.get(f"{env.gateway_url}/status/{gone}", timeout=10).status_code == 404

def test_incident_commands_and_report_of_an_automatic_rollback(env: RunningEnv, tmp_path: Path) -> None:  # noqa: F811
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=env.gateway_url, timeout=30) as c:
            while not stop.wait(0.04):
                try:
                    c.get("/health")
                except httpx.HTTPError:
                    pass

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        view = deploy(env, "--strategy", "Fast", "--set-env", "BACKOUT_FAULT=errors=0.5")
    finally:
        stop.set()
        t.join(timeout=30)
    d = view["deployment"]
    assert d["status"] == "RolledBack" and "alarm" in d["reason"], d
    inc_id = view["incident"]["id"]

    listed = {i["id"]: i for i in env.cli_json("incident", "list")}
    assert listed[inc_id]["status"] == "open" and listed[inc_id]["deployment_id"] == d["id"]
    shown = env.cli_json("incident", "show", inc_id)
    assert shown["incident"]["trigger"]["kind"] == "alarm"

    env.cli("incident", "note", inc_id, "paged the API owner", check=True)
    env.cli("incident", "action", inc_id, "add an error-budget test to CI", "--owner", "alice", check=True)
    r = env.cli("incident", "close", inc_id, "--root-cause", "an unchecked exception path in the handler")
    assert r.returncode == 0 and "closed" in r.stdout
    closed = env.cli_json("incident", "show", inc_id)["incident"]
    assert closed["status"] == "closed" and closed["root_cause"].startswith("an unchecked exception")
    assert [n["text"] for n in closed["notes"]][-1] == "paged the API owner"
    assert closed["action_items"][0]["owner"] == "alice"

    md_path = tmp_path / "report.md"
    env.cli("incident", "report", inc_id, "--format", "md", "--out", str(md_path), check=True)
    md = md_path.read_text()
    for heading in ("## Summary", "## Impact", "## Timeline", "## Alarm evidence", "## Root cause", "## Action items"):
        assert heading in md, heading
    impact = md[md.index("## Impact"):md.index("## Timeline")]
    assert "failed" in impact.lower() and "job" in impact.lower()
    evidence = md[md.index("## Alarm evidence"):md.index("## Error rate")]
    alarm = d["reason"].split()[1]  # "alarm api-5xx in ALARM: …"
    assert "| value | threshold | window |" in evidence, evidence[:1500]
    assert any(f"`{alarm}` | **ALARM**" in line for line in evidence.splitlines()), evidence[-1500:]
    timeline = md[md.index("## Timeline"):md.index("## Alarm evidence")]
    assert "rolled back" in timeline and "incident" in timeline.lower() and "paged the API owner" in md
    assert "add an error-budget test to CI" in md and "an unchecked exception path" in md
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pngs[0].name in md

    html_path = tmp_path / "report.html"
    env.cli("incident", "report", inc_id, "--format", "html", "--out", str(html_path), check=True)
    page = html_path.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in page
    assert "src=\"http" not in page and "<link" not in page.lower()  # self-contained
    assert "Alarm evidence" in page and "an unchecked exception path" in page
