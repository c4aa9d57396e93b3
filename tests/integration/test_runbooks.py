"""Operator runbooks end to end (issue 5) on the local platform with the Security Design Assistant.

One supervisor serves the whole module (per xdist worker): every test starts from "no deployment
in progress, API open, processing on" and leaves the environment that way, whatever version is
live, so the tests run in any order. Deployments use short custom strategies; the environment
keeps a retired version warm for only a few seconds, so a cold rollback target is easy to get.

Acceptance points: manual rollback during and after a deployment (warm, cold, `--to`), its usage
errors; emergency stop under load (429 + Retry-After, paused processing, deployment rolled back,
snapshot, timed steps, survives kill -9, nothing lost after resume, forced resume recorded);
verify with an unreachable jobs table / queue / a hand-moved alias; smoke; status; a drill of each
fault kind; the data-corruption scenario with `repair` and `backup restore`; incident commands and
reports on an automatic rollback; the notifications of rollbacks, emergency stops and drills.
`backout stop` is tested with the deployments, in test_deploy.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from support import ROOT, SHARED_DRAWINGS, Receiver, RunningEnv, sda_manifest, wait_for

pytestmark = pytest.mark.slow

SAMPLES = ROOT / "examples" / "drawings"
REAL = SHARED_DRAWINGS / "example_b2_drawing.pdf"  # the original project's drawing, when present
# what clients submit, in turn: the generated samples, and the real drawing when it is there
ROTATION = [f"sample_0{i}" for i in range(1, 6)] + (["b2"] if REAL.is_file() else [])
STRATEGIES = """
[strategies.Fast]
steps = [{ weight = 50, hold = "3s" }, { weight = 100 }]

[strategies.Hold]
steps = [{ weight = 50, hold = "300s" }, { weight = 100 }]
"""
# a version no alias routes to is let go after 6 s (default 15 min): the cold-rollback case in seconds
ENV_EXTRA = 'rollback_window = "12s"'
TERMINAL = {"Succeeded", "RolledBack", "Stopped", "Failed"}


# --- the environment --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the first post-traffic hook waits (up to its 60 s timeout)."""
    return tmp_path_factory.mktemp("gate") / "hold-post-traffic"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, gate: Path) -> Iterator[RunningEnv]:
    tmp = tmp_path_factory.mktemp("runbooks")
    manifest = tmp / "backout.toml"
    notify = f'notify = [{{ url = "json://127.0.0.1:{receiver.port}/hook", min_severity = "info" }}]'
    text = sda_manifest(tmp / "state", extra=STRATEGIES, env_extra=f"{ENV_EXTRA}\n{notify}")
    held = f'{{ command = "while [ -e {gate} ]; do sleep 0.1; done", timeout = "60s", name = "held" }},'
    assert "post_traffic = [\n" in text
    manifest.write_text(text.replace("post_traffic = [\n", f"post_traffic = [\n  {held}\n", 1))
    running = RunningEnv(manifest)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def _clean(env: RunningEnv) -> Iterator[None]:
    """Every test starts and ends with no deployment running, the API open and processing on."""
    _settle(env)
    yield
    _settle(env)


def _settle(env: RunningEnv) -> None:
    st = env.api("GET", "/status")
    if st["deployment"]:
        env.api("POST", f"/deployments/{st['deployment']['id']}/stop", json={"rollback": True, "reason": "cleanup"})
    if st["api"]["blocked"] or not st["processing"]:
        env.api("POST", "/resume", json={"force": True, "who": "test cleanup"})


# --- helpers ------------------------------------------------------------------------------------------
def cli_stdin_closed(env: RunningEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """`backout ARGS` with no terminal on stdin (as in CI): confirmations cannot be asked."""
    return subprocess.run(
        [sys.executable, "-m", "backout.cli.main", *args],
        env=env.proc_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def live_version(env: RunningEnv) -> int:
    st = env.api("GET", "/status")
    weights = {tuple(sorted(f["weights"].items())) for f in st["functions"].values()}
    assert len(weights) == 1, f"functions disagree on their live version: {st['functions']}"
    (only,) = weights
    assert len(only) == 1 and only[0][1] == 100.0, only
    return int(only[0][0])


def deploy(env: RunningEnv, *args: str) -> dict[str, Any]:
    """`backout deploy ARGS --json` followed to its end; the final deployment view."""
    r = env.cli("deploy", *args, "--json", timeout=240)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    view = json.loads(r.stdout)
    assert view["deployment"]["status"] in TERMINAL
    assert r.returncode == (0 if view["deployment"]["status"] == "Succeeded" else 1), r.stderr
    return view


def start_held_deployment(env: RunningEnv, tag: str) -> dict[str, Any]:
    """A deployment that sits at 50 % for minutes: the state an operator interrupts."""
    r = env.cli("deploy", "--strategy", "Hold", "--set-env", f"RUNBOOK_TEST={tag}", "--no-wait", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    did = json.loads(r.stdout)["deployment"]["id"]

    def at_step_one() -> dict[str, Any] | None:
        d = env.api("GET", "/status")["deployment"]
        return d if d and d["id"] == did and d["status"] == "InProgress" and d["current_step"] == 0 else None

    return wait_for(at_step_one, timeout=60, what=f"{did} at 50 %")


def worker_versions(env: RunningEnv) -> Counter[int]:
    """Warm worker processes of the supervisor, by function version."""
    out: Counter[int] = Counter()
    for c in psutil.Process(env.pid).children():
        try:
            v = c.environ().get("AWS_LAMBDA_FUNCTION_VERSION")
            if v and c.status() != psutil.STATUS_ZOMBIE:
                out[int(v)] += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def doors(schedule: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d["id"]: (d.get("location") or "", tuple(sorted(d.get("components") or []))) for d in schedule["doors"]}


def drawing(sample: str) -> Path:
    return REAL if sample == "b2" else SAMPLES / f"{sample}.pdf"


def truth(sample: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The schedule a correct analysis of the drawing yields (the real one's from the original project)."""
    path = SHARED_DRAWINGS / "baseline_schedule.json" if sample == "b2" else SAMPLES / f"{sample}.json"
    return doors(json.loads(path.read_text()))


def jobs_db(env: RunningEnv, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every job record, read straight from the service's table (not through the service)."""
    con = sqlite3.connect(f"file:{path or env.state_dir / 'data' / 'jobs.db'}?mode=ro", uri=True)
    try:
        return {r[0]: json.loads(r[1]) for r in con.execute("SELECT job_id, data FROM jobs")}
    finally:
        con.close()


class Submitter:
    """Clients submitting drawings through the API, each every `interval` s, in `clients` threads;
    remembers each acknowledged (202) job with the sample it was given, and every other answer."""

    def __init__(self, gateway_url: str, interval: float, tag: str, clients: int = 1) -> None:
        self.http = httpx.Client(base_url=gateway_url, timeout=30)
        self.interval = interval
        self.tag = tag
        self.accepted: dict[str, str] = {}
        self.codes: Counter[int] = Counter()
        self.retry_after: set[str] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True, name=f"submit-{tag}-{k}") for k in range(clients)
        ]

    def submit(self, sample: str) -> httpx.Response:
        path = drawing(sample)
        r = self.http.post(
            "/process-drawing",
            files={"drawing_file": (path.name, path.read_bytes(), "application/pdf")},
            data={"client_name": "runbook-test", "project_name": f"{self.tag}-{uuid.uuid4().hex[:6]}"},
        )
        self.codes[r.status_code] += 1
        if r.status_code == 202:
            self.accepted[r.json()["job_id"]] = sample
        elif r.status_code == 429 and r.headers.get("retry-after"):
            self.retry_after.add(r.headers["retry-after"])
        return r

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            try:
                self.submit(ROTATION[i % len(ROTATION)])
            except httpx.HTTPError:
                self.codes[0] += 1
            i += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Submitter:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self.http.close()


def wait_jobs_done(env: RunningEnv, job_ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    """Each job's status once every one of them completed (a failed one fails the test)."""
    with httpx.Client(base_url=env.gateway_url, timeout=30) as c:
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for j in job_ids:
                if j in done:
                    continue
                s = c.get(f"/status/{j}").json()
                assert s["status"] != "failed", s
                if s["status"] == "completed":
                    done[j] = s
            return len(done) == len(job_ids)

        wait_for(all_done, timeout=timeout, interval=0.5, what=f"{len(job_ids)} job(s) to complete")
        return done


def components(env: RunningEnv, job_id: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    r = httpx.get(f"{env.gateway_url}/download/{job_id}/components", timeout=30)
    assert r.status_code == 200, r.text
    return doors(r.json()["schedule"])


# --- manual rollback ------------------------------------------------------------------------------------
def test_rollback_during_a_deployment_stops_it(env: RunningEnv) -> None:
    stable = live_version(env)
    d = start_held_deployment(env, "manual-during")

    # `status` during the deployment: the active deployment, its step, the live weights, the alarms
    s = wait_for(lambda: (x := env.cli_json("status"))["alarms"] and x, timeout=30, what="alarm states")
    assert s["deployment"]["id"] == d["id"] and s["deployment"]["step_label"] == "1/2"
    assert {"error-rate:api", "api-5xx"} <= set(s["alarms"]) and s["alarms"]["api-5xx"]["state"] == "OK"
    for f in s["functions"].values():
        assert f["weights"] == {str(stable): 50.0, str(d["target_release"]): 50.0}

    r = env.cli("rollback", "--reason", "canary looks wrong to me", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stopped the deployment" in r.stdout and f"r{d['target_release']} → r{stable}" in r.stdout
    assert "all checks passed" in r.stdout  # verify ran and printed its table

    view = env.cli_json("deployment", "show", d["id"])
    assert view["deployment"]["status"] == "RolledBack"
    assert "canary looks wrong to me" in view["deployment"]["reason"]
    inc = view["incident"]
    assert inc is not None and inc["status"] == "open" and inc["severity"] == "high"  # took traffic, failed nothing
    assert any(e["kind"] == "verify" and e["message"].startswith("verify passed") for e in view["events"])
    assert live_version(env) == stable


def test_rollback_does_not_wait_for_a_busy_deployment_runner(env: RunningEnv, gate: Path) -> None:
    """An operator's rollback while the deployment sits in a long post-traffic hook (100 % on the new
    version) moves traffic at once, not when the hook returns."""
    stable = live_version(env)
    gate.touch()
    try:
        r = env.cli("deploy", "--strategy", "Fast", "--set-env", "RUNBOOK_TEST=busy", "--no-wait", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        did = json.loads(r.stdout)["deployment"]["id"]
        wait_for(lambda: env.api("GET", f"/deployments/{did}")["deployment"]["status"] == "PostTraffic",
                 timeout=60, what=f"{did} in its post-traffic hooks")
        assert live_version(env) != stable
        t0 = time.monotonic()
        r = env.cli_json("rollback", "--reason", "stop it now", "--yes")
        assert time.monotonic() - t0 < 20  # the held hook would keep it for 60 s
        assert r["mode"] == "stopped deployment" and r["incident"] and r["verify"]["ok"], r
        assert live_version(env) == stable
        assert env.cli_json("deployment", "show", did)["deployment"]["status"] == "RolledBack"
    finally:
        gate.unlink(missing_ok=True)

    # the runner comes back from its hook, finds the deployment over and leaves traffic alone
    def hook_returned() -> bool:
        return any(e["kind"] == "hook_passed" and "held" in e["message"]
                   for e in env.cli_json("deployment", "show", did)["events"])

    wait_for(hook_returned, timeout=30, what="the held hook to return")
    time.sleep(1.0)
    view = env.cli_json("deployment", "show", did)
    assert view["deployment"]["status"] == "RolledBack" and live_version(env) == stable
    assert sum(e["kind"] == "rolled_back" for e in view["events"]) == 1


def test_rollback_after_deployments_warm_then_explicit_cold_target(env: RunningEnv, receiver: Receiver) -> None:
    base = live_version(env)
    a = deploy(env, "--strategy", "Fast", "--set-env", "RUNBOOK_TEST=after-a")["deployment"]
    assert a["status"] == "Succeeded" and a["stable_release"] == base
    va = a["target_release"]

    # right after: the previous version is still warm → the switch is an alias update, nothing more
    r = env.cli_json("rollback", "--reason", "users report wrong totals", "--yes")
    assert (r["mode"], r["from"], r["to"], r["warm"]) == ("rollback", va, base, True)
    assert r["switch_ms"] < 250, r  # an alias write per function, not a start of workers
    assert r["verify"]["ok"], r["verify"]
    assert live_version(env) == base
    inc = env.cli_json("incident", "show", r["incident"])
    assert inc["incident"]["trigger"]["kind"] == "manual" and inc["incident"]["trigger"]["who"]
    assert inc["incident"]["trigger"]["reason"] == "users report wrong totals"
    note = receiver.wait(f"{r['deployment']} rolled back to r{base}", "users report wrong totals", r["incident"])
    assert note["type"] == "failure"
    # a version found bad after it succeeded: repair knows it and its pre-deployment snapshot
    dry = env.cli_json("repair", "--deployment", r["deployment"], "--dry-run")
    by_va = sorted(j for j, rec in jobs_db(env).items() if (rec["processed_by"] or {}).get("version") == str(va))
    assert dry["bad_release"] == va and dry["jobs"] == by_va and by_va  # the known-answer hook's job at least
    assert dry["snapshot"] == next(b for b in env.cli_json("backup", "list") if b["deployment_id"] == a["id"])[
        "platform_snapshot_id"
    ]

    # base → va again, then va → vc: the previous stable of vc is va, and `--to base` goes further back
    assert deploy(env, "--strategy", "Fast", "--release", str(va))["deployment"]["status"] == "Succeeded"
    c = deploy(env, "--strategy", "Fast", "--set-env", "RUNBOOK_TEST=after-c")["deployment"]
    assert c["status"] == "Succeeded" and c["stable_release"] == va
    vc = c["target_release"]
    # base went out of the rollback window: its workers are gone
    wait_for(lambda: worker_versions(env)[base] == 0, timeout=60, what=f"v{base}'s workers to retire")

    r = env.cli_json("rollback", "--to", str(base), "--reason", "back to the last known good", "--yes")
    assert (r["from"], r["to"], r["warm"]) == (vc, base, False)
    assert r["warm_seconds"] > 0
    assert r["verify"]["ok"], r["verify"]
    assert live_version(env) == base
    assert worker_versions(env)[base] >= len(env.manifest.functions)  # started before the switch

    # rolling back again does not go "back" to the version just rolled away from
    # the previous stable of `base` is the stable of the last automatic deployment that made it live, else the
    # newest older release; never vc (just rolled away from) nor base itself
    history = env.cli_json("deployments")
    made_live = [x for x in history if x["strategy"] != "ManualRollback" and x["status"] == "Succeeded"
                 and x["target_release"] == base and x["stable_release"] not in (None, base)]
    older = [x["id"] for x in env.cli_json("releases") if x["id"] < base]
    expected = made_live[0]["stable_release"] if made_live else max(older, default=None)
    r2 = env.cli("rollback", "--reason", "again", "--yes", "--json")
    if expected is None:
        assert r2.returncode == 2 and "nothing to roll back to" in r2.stderr, r2.stderr
    else:
        assert r2.returncode == 0, r2.stdout + r2.stderr
        assert json.loads(r2.stdout)["to"] == expected and expected not in (vc, base)


def test_rollback_usage_errors(env: RunningEnv) -> None:
    live = live_version(env)
    r = env.cli("rollback")
    assert r.returncode == 2 and "--reason is required" in r.stderr
    r = env.cli("rollback", "--to", "999", "--reason", "x", "--yes")
    assert r.returncode == 2 and "unknown release 999" in r.stderr
    r = cli_stdin_closed(env, "rollback", "--env", "prod", "--reason", "x")
    assert r.returncode == 2 and "--yes" in r.stderr, r.stderr
    r = cli_stdin_closed(env, "rollback", "--reason", "x")  # staging too: no terminal, no --yes → refused
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: roll back staging? — not a terminal, so pass --yes to confirm"], r.stderr
    assert "Traceback" not in r.stderr
    assert live_version(env) == live


# --- verify and smoke ----------------------------------------------------------------------------------
def _failures(env: RunningEnv) -> list[dict[str, Any]]:
    r = env.cli("verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is False
    return [c for c in report["checks"] if not c["ok"]]


def _verify_passes(env: RunningEnv) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        r = env.cli("verify", "--json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    return wait_for(ok, timeout=30, interval=1, what="verify to pass")


def test_verify_passes_then_names_what_is_unreachable(env: RunningEnv, tmp_path: Path) -> None:
    with Submitter(env.gateway_url, interval=1, tag="verify") as s:  # the jobs table exists and has rows
        wait_for(lambda: s.accepted, timeout=30, what="a job")
    wait_jobs_done(env, list(s.accepted))
    report = _verify_passes(env)
    groups = {c["group"] for c in report["checks"]}
    assert groups == {"api", "functions", "database", "queues", "alarms", "aliases"}
    assert any(c["name"] == "database jobs.db" and "jobs" in c["detail"] for c in report["checks"])
    assert {f"{fn} v{live_version(env)}" for fn in env.manifest.functions} <= {c["name"] for c in report["checks"]}

    db = env.state_dir / "data" / "jobs.db"
    saved = tmp_path / "jobs.db"
    src = sqlite3.connect(db)
    dst = sqlite3.connect(saved)
    src.backup(dst)
    src.close()
    dst.close()

    def put_back() -> None:
        for side in ("-wal", "-shm"):
            Path(f"{db}{side}").unlink(missing_ok=True)
        shutil.copy(saved, f"{db}.restore")
        os.replace(f"{db}.restore", db)

    # the jobs table dropped
    try:
        con = sqlite3.connect(db)
        con.execute("DROP TABLE jobs")
        con.commit()
        con.close()
        (bad,) = _failures(env)
        assert bad["group"] == "database" and bad["name"] == "database jobs.db"
        assert "jobs missing" in bad["detail"], bad
    finally:
        put_back()
    _verify_passes(env)

    # the jobs database is not a database any more
    try:
        for side in ("-wal", "-shm"):
            Path(f"{db}{side}").unlink(missing_ok=True)
        db.write_bytes(os.urandom(8192))
        (bad,) = _failures(env)
        assert bad["name"] == "database jobs.db" and "not a database" in bad["detail"], bad
    finally:
        put_back()
    _verify_passes(env)

    # the queue's tables are unreachable
    pdb = env.state_dir / "platform.db"
    con = sqlite3.connect(pdb, timeout=30)
    try:
        con.execute("ALTER TABLE q_messages RENAME TO q_messages_away")
        con.execute("ALTER TABLE q_queues RENAME TO q_queues_away")
        con.commit()
        bad = _failures(env)
        assert {c["group"] for c in bad} == {"queues"}, bad
        assert "no such table" in bad[0]["detail"], bad
    finally:
        con.execute("ALTER TABLE q_messages_away RENAME TO q_messages")
        con.execute("ALTER TABLE q_queues_away RENAME TO q_queues")
        con.commit()
        con.close()
    _verify_passes(env)

    # an alias moved by hand, behind the control plane's back
    live = live_version(env)
    other = env.cli_json("publish", "--set-env", "RUNBOOK_TEST=verify")["id"]
    try:
        env.cli("alias", "api", "--stable", str(live), "--canary", str(other), "--weight", "50", check=True)
        (bad,) = _failures(env)
        assert bad["name"] == "api:live" and f"expected v{live} 100%" in bad["detail"], bad
        r = env.cli("verify")  # the table names the failure too
        assert r.returncode == 1 and "verify FAILED" in r.stdout and "api:live" in r.stdout
    finally:
        env.cli("alias", "api", "--stable", str(live), check=True)
    _verify_passes(env)


def test_smoke_runs_the_manifests_tests(env: RunningEnv, tmp_path: Path) -> None:
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


def test_backup_create_and_list(env: RunningEnv) -> None:
    b = env.cli_json("backup", "create", "--label", "before the migration")
    listed = {x["id"]: x for x in env.cli_json("backup", "list")}
    assert listed[b["id"]]["label"] == "before the migration" and listed[b["id"]]["available"]
    assert listed[b["id"]]["platform_snapshot_id"] == b["snapshot"]
    assert "jobs.db" in listed[b["id"]]["detail"]["databases"] or not (env.state_dir / "data" / "jobs.db").exists()
    r = env.cli("backup", "list")
    assert r.returncode == 0 and b["id"] in r.stdout and "before the migration" in r.stdout
    r = env.cli("backup", "restore", "snap-9999", "--yes")
    assert r.returncode == 2 and "no backup 'snap-9999'" in r.stderr


# --- the data-corruption scenario ---------------------------------------------------------------------
def test_corrupting_version_is_caught_rolled_back_and_its_jobs_repaired(env: RunningEnv) -> None:
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


# --- incidents ---------------------------------------------------------------------------------------------
def test_incident_commands_and_report_of_an_automatic_rollback(env: RunningEnv, tmp_path: Path) -> None:
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
