"""Deployments with automatic rollback, end to end (issue 4): the SDA on the local platform, a real
supervisor, real HTTP load, driven through the `backout` CLI.

A good version goes through the canary to 100 %; a version whose API fails half its requests, a
worker that crashes on every message and a failing pre-traffic hook are rolled back (with their
evidence, value against threshold); notifications reach a real HTTP receiver, a dead one delays
nothing. Every rollback's decision → 100 % stable time is asserted (generously here; the real
figure is in bench/deploy.py). The deployments an operator steers (a second deploy refused, `stop`,
SIGKILL and resume, the approval gate) are in test_deploy_control.py, beside this module.

One staging supervisor serves the module (per xdist worker); every test starts and ends with no
deployment in progress, so they run in any order. Strategies are seconds long.
"""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ROOT, SDA_SOURCE, Receiver, RunningEnv, sda_manifest, wait_for

pytestmark = pytest.mark.slow

DRAWING = (ROOT / "examples" / "drawings" / "sample_01.pdf").read_bytes()
TERMINAL = {"Succeeded", "RolledBack", "Stopped", "Failed"}

STRATEGIES = """
[strategies.Fast]
steps = [{ weight = 20, hold = "4s" }, { weight = 100 }]

[strategies.Canary20]
steps = [{ weight = 20, hold = "20s" }, { weight = 100 }]

[strategies.Half]
steps = [{ weight = 50, hold = "30s" }, { weight = 100 }]

[strategies.Hold]
steps = [{ weight = 50, hold = "8s" }, { weight = 100 }]

[strategies.Long]
steps = [{ weight = 50, hold = "60s" }, { weight = 100 }]
"""


# --- helpers: a notification receiver, HTTP load, the environment ------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class Answer:
    sent: float
    done: float
    method: str
    path: str
    status: int  # 0: no answer (connection error)
    version: str
    job_id: str | None = None


@dataclass
class Load:
    """Open-loop SDA traffic from a background thread: requests start at a fixed rate whatever the
    latency; GET /health and GET /status/{a job} mostly, a drawing POST every `post_every`-th."""

    base_url: str
    rate: float = 20.0
    post_every: int = 20
    answers: list[Answer] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # acknowledged with 202

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        with httpx.Client(base_url=self.base_url, timeout=30, limits=limits) as c, ThreadPoolExecutor(24) as pool:
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set():
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                pool.submit(self._one, c, i)
                i += 1

    def _one(self, c: httpx.Client, i: int) -> None:
        sent = time.time()
        job = None
        try:
            if i % self.post_every == 0:
                method, path = "POST", "/process-drawing"
                r = c.post(path, files={"drawing_file": ("d.pdf", DRAWING, "application/pdf")},
                           data={"client_name": "load", "project_name": f"p{i}"})
                if r.status_code == 202:
                    job = r.json()["job_id"]
                    self.jobs.append(job)
            elif i % 2 and self.jobs:
                method, path = "GET", f"/status/{random.choice(self.jobs)}"
                r = c.get(path)
            else:
                method, path = "GET", "/health"
                r = c.get(path)
            status, version = r.status_code, r.headers.get("x-backout-version", "")
        except httpx.HTTPError:
            status, version = 0, ""
        self.answers.append(Answer(sent, time.time(), method, path, status, version, job))

    def served_by(self, version: int) -> list[Answer]:
        return [a for a in self.answers if a.version == str(version)]


class Env(RunningEnv):
    def deployment(self, deployment_id: str) -> dict[str, Any]:
        # the control API's view (what `deployment show --json` prints): polled, so no CLI process per look
        return self.api("GET", f"/deployments/{deployment_id}")

    def wait_terminal(self, deployment_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            v = self.deployment(deployment_id)
            d = v["deployment"]
            if d["status"] in TERMINAL and (d["status"] != "RolledBack" or d["rollback_completed_at"]):
                return v
            return None

        return wait_for(done, timeout=timeout, interval=0.3, what=f"{deployment_id} to finish")

    def weights(self) -> dict[str, dict[str, float]]:
        return {fn: f["weights"] for fn, f in self.api("GET", "/status")["functions"].items()}

    def latest(self) -> dict[str, Any]:
        return self.api("GET", "/deployments", params={"limit": 1})[0]

    def job_status(self, job_id: str) -> str:
        return httpx.get(f"{self.gateway_url}/status/{job_id}", timeout=10).json()["status"]


@dataclass
class World:
    env: Env
    tmp: Path
    receiver: Receiver
    gate: Path  # while this file exists, the pre-traffic command hook fails

    def code(self, tag: str) -> Path:
        """A real code change: a copy of the SDA whose service version is `tag`."""
        root = self.tmp / f"code-{tag}"
        if not root.exists():
            shutil.copytree(SDA_SOURCE / "sda", root / "sda", ignore=shutil.ignore_patterns("__pycache__"))
            init = root / "sda" / "__init__.py"
            text = init.read_text()
            assert '__version__ = "' in text
            init.write_text(text.replace('__version__ = "', f'__version__ = "{tag}-', 1))
        return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("deploy")
    receiver = Receiver()
    gate = tmp / "fail-pre-traffic"
    notify = (
        f'notify = [{{ url = "json://127.0.0.1:{receiver.port}/hook", min_severity = "info" }}, '
        f'{{ url = "json://127.0.0.1:{closed_port()}/dead", min_severity = "info" }}]'
    )
    # One alarm per fault, by construction, so that each test can name the alarm that rolled back:
    # API 5xx and the judges are left to the unit tests and tests/integration/test_analysis_live.py
    # (their count / e-values race the error rate here), and a failed message waits 10 s before its
    # retry, so the worker's error rate always decides long before a message could reach the DLQ.
    env_extra = f"min_invocations = 5\napi_5xx_threshold = 100000\nlatency_judge = false\nerror_judge = false\n{notify}"
    text = sda_manifest(tmp / "state", extra=STRATEGIES, env_extra=env_extra)
    retry = 'events = [{ queue = "processing", batch_size = 1, retry_after = "2s" }]'
    assert retry in text
    text = text.replace(retry, retry.replace('"2s"', '"10s"'))
    pre = 'pre_traffic = [{ builtin = "checks" }]'
    assert pre in text
    hook = (f'{{ command = "if [ -e {gate} ]; then echo refused by the gate file >&2; exit 3; fi", '
            f'name = "gate", timeout = "10s" }}')
    text = text.replace(pre, f'pre_traffic = [{{ builtin = "checks" }}, {hook}]')
    manifest = tmp / "backout.toml"
    manifest.write_text(text)
    env = Env(manifest, "staging")
    try:
        yield World(env, tmp, receiver, gate)
    finally:
        env.stop()
        receiver.close()


def rollback_ms(d: dict[str, Any]) -> float:
    assert d["rollback_decided_at"] and d["rollback_completed_at"], d
    return 1000.0 * (d["rollback_completed_at"] - d["rollback_decided_at"])


def rolled_back_event(view: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in view["events"] if e["kind"] == "rolled_back")


def assert_all_on(env: Env, version: int) -> None:
    for fn, w in env.weights().items():
        assert w == {str(version): 100.0}, (fn, w)


# --- the tests --------------------------------------------------------------------------------------


def test_good_version_goes_through_the_canary_to_succeeded(world: World) -> None:
    env = world.env
    with Load(env.gateway_url, rate=20) as load:
        r = env.cli("deploy", str(world.code("good")), "--strategy", "Fast", "--description", "a real change")
    assert r.returncode == 0, r.stdout + r.stderr
    d = env.latest()
    assert d["status"] == "Succeeded" and d["description"] == "a real change"
    # the follow display: the step lines, an alarm state line with its evidence, the outcome
    assert "step 1/2: 20 % on r" in r.stdout and "step 2/2: 100 % on r" in r.stdout, r.stdout
    assert "error-rate:api" in r.stdout and "API 5xx 0 ≤ 100000 over" in r.stdout, r.stdout
    assert "Succeeded" in r.stdout
    assert_all_on(env, d["target_release"])
    assert load.served_by(d["target_release"]), "the canary took no traffic"
    # no client saw a failure (a 429 is possible: cold starts of the new version on a busy machine)
    assert all(a.status in (200, 202, 429) for a in load.answers), {a.status for a in load.answers}
    health = httpx.get(f"{env.gateway_url}/health", timeout=10).json()
    assert health["service_version"].startswith("good-") and health["version"] == str(d["target_release"])
    listed = env.cli_json("deployments")
    assert listed[0]["id"] == d["id"] and listed[0]["status"] == "Succeeded"
    kinds = [e["kind"] for e in env.deployment(d["id"])["events"]]
    assert kinds.index("step_reached") < kinds.index("post_traffic_started") < kinds.index("succeeded")


def test_api_failing_half_its_requests_rolls_back_under_load_and_no_job_is_lost(world: World) -> None:
    env = world.env
    stable = env.latest()
    before = env.weights()
    with Load(env.gateway_url, rate=20, post_every=10) as load:  # two drawings a second
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
    wait_for(lambda: all(env.job_status(j) == "completed" for j in jobs), timeout=180, interval=0.5,
             what="every acknowledged job to complete")
    incident = view["incident"]
    assert incident is not None and incident["deployment_id"] == d["id"]


def test_worker_crashing_on_every_message_rolls_back(world: World) -> None:
    env = world.env
    before = env.weights()
    with Load(env.gateway_url, rate=8, post_every=4) as load:
        r = env.cli("deploy", "--strategy", "Half", "--set-env", "SDA_FAULTS=worker_crash", timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    view = env.deployment(env.latest()["id"])
    d = view["deployment"]
    hooks_failed = [e["message"] for e in view["events"] if e["kind"] == "hook_failed"]
    assert d["status"] == "RolledBack" and d["current_step"] == 0, (d["reason"], hooks_failed)
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


def test_failing_pre_traffic_hook_rolls_back_before_any_traffic(world: World) -> None:
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
    assert "pre-traffic hook gate failed" in d["reason"], [e["message"] for e in view["events"]
                                                           if e["kind"] == "hook_failed"]
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


def test_notifications_carry_the_evidence_and_a_dead_target_delays_nothing(world: World) -> None:
    env = world.env
    with Load(env.gateway_url, rate=20, post_every=1000):
        r = env.cli("deploy", "--strategy", "Canary20", "--set-env", "BACKOUT_FAULT=errors=1.0")
    assert r.returncode == 1, r.stdout + r.stderr
    view = env.deployment(env.latest()["id"])
    d = view["deployment"]
    assert d["status"] == "RolledBack"
    assert rollback_ms(d) < 1000, "the dead notification target must not delay the rollback"

    def both() -> list[dict[str, Any]] | None:
        got = world.receiver.about(d["id"])
        titles = " | ".join(m.get("title", "") for m in got)
        return got if " started: " in titles and " rolled back to " in titles else None

    got = wait_for(both, timeout=20, what="deployment_started and rolled_back notifications")
    started = next(m for m in got if " started: " in m["title"])
    assert f"r{d['stable_release']} → r{d['target_release']}" in started["title"]
    rolled = next(m for m in got if " rolled back to " in m["title"])
    assert rolled["type"] == "failure"
    assert "Evidence:" in rolled["message"], rolled["message"]
    # every request fails but backout's own {"test": true} probe, which BACKOUT_FAULT spares
    assert "Reason: alarm error-rate:api in ALARM: error rate " in rolled["message"], rolled["message"]
    assert "> 10 % over " in rolled["message"], rolled["message"]
    inc = view["incident"]["id"]
    assert f"backout incident show {inc} --env staging" in rolled["message"], rolled["message"]
    # the dead target's retries (1 + 2 + 4 s) delay neither the rollback nor the live target: the rollback
    # followed the alarm at once, and the live target had its message within 3 s of the incident opening
    firing = next(e for e in view["events"] if e["kind"] == "alarm_state" and e["data"]["state"] == "ALARM")
    assert d["rollback_decided_at"] - firing["ts"] < 0.5, (firing["ts"], d["rollback_decided_at"])
    opened = next(e for e in view["events"] if e["kind"] == "incident_opened")
    assert rolled["at"] - opened["ts"] < 3.0, rolled["at"] - opened["ts"]
    assert all(m["path"] == "/hook" for m in world.receiver.received)
