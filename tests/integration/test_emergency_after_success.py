"""The data-corruption case end to end (issue 14, point 2): a version of the Security Design Assistant
that answers 200 and writes wrong schedules passes its checks and its deployment succeeds; the
emergency stop then rolls it back (it finished within the rollback window), `repair` restores and
re-queues the jobs it processed, and `resume` lets the stable version redo them — right this time.

One supervisor; the post-traffic hooks are the built-in checks only (no known-answer drawing), which
is how such a version gets through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ROOT, RunningEnv, sda_manifest, wait_for

pytestmark = pytest.mark.slow

SAMPLES = ROOT / "examples" / "drawings"
NOW = "[strategies.Now]\nsteps = [{ weight = 100 }]\n"
TERMINAL = {"Succeeded", "RolledBack", "Stopped", "Failed"}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[RunningEnv]:
    text = sda_manifest(tmp_path / "state", extra=NOW, env_extra='rollback_window = "10m"')
    text, n = re.subn(r"post_traffic = \[\n.*?\n\]", 'post_traffic = [{ builtin = "checks" }]', text, flags=re.S)
    assert n == 1, "the SDA manifest's post-traffic hooks moved"
    (tmp_path / "backout.toml").write_text(text)
    running = RunningEnv(tmp_path / "backout.toml")
    try:
        yield running
    finally:
        running.stop()


def doors(schedule: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d["id"]: (d.get("location") or "", tuple(sorted(d.get("components") or []))) for d in schedule["doors"]}


def truth(sample: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    return doors(json.loads((SAMPLES / f"{sample}.json").read_text()))


def submit(http: httpx.Client, sample: str) -> str:
    path = SAMPLES / f"{sample}.pdf"
    r = http.post("/process-drawing", files={"drawing_file": (path.name, path.read_bytes(), "application/pdf")},
                  data={"client_name": "emergency-test", "project_name": sample})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def completed(http: httpx.Client, jobs: list[str], version: str) -> dict[str, Any]:
    """Each job's status once all of them completed on function version `version`."""

    def done() -> dict[str, Any] | None:
        got = {j: http.get(f"/status/{j}").json() for j in jobs}
        assert not [s for s in got.values() if s["status"] == "failed"], got
        ok = all(s["status"] == "completed" and s["processed_by"]["version"] == version for s in got.values())
        return got if ok else None

    return wait_for(done, timeout=60, interval=0.2, what=f"{jobs} completed by v{version}")


def schedule(http: httpx.Client, job: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    r = http.get(f"/download/{job}/components")
    assert r.status_code == 200, r.text
    return doors(r.json()["schedule"])


def test_emergency_stop_after_a_succeeded_bad_deployment_rolls_back_then_repair_and_resume(env: RunningEnv) -> None:
    good_worker = next(iter(env.api("GET", "/status")["functions"]["worker"]["weights"]))
    did = env.api("POST", "/deployments", json={"strategy": "Now", "environment": {"SDA_FAULTS": "corrupt_results"},
                                                "created_by": "test"})["deployment"]["id"]
    d = wait_for(lambda: (x := env.api("GET", f"/deployments/{did}")["deployment"])["status"] in TERMINAL and x,
                 timeout=120, interval=0.2, what=f"{did} to finish")
    assert d["status"] == "Succeeded", d
    bad_worker = d["target_versions"]["worker"]

    samples = {"sample_01": "", "sample_02": ""}
    with httpx.Client(base_url=env.gateway_url, timeout=30) as http:
        for s in samples:
            samples[s] = submit(http, s)
        jobs = list(samples.values())
        completed(http, jobs, bad_worker)
        wrong = [s for s, j in samples.items() if schedule(http, j) != truth(s)]
        assert wrong == list(samples), "the bad version wrote a wrong schedule for every drawing"

        stop = env.cli_json("emergency-stop", "--reason", "schedules miss doors", "--yes")
        rb = stop["rolled_back"]
        assert rb is not None and rb["from"] == d["target_release"] and rb["to"] == d["stable_release"], stop
        step = next(s for s in stop["steps"] if s["step"] == "stop deployment")
        assert step["ok"] and "within the 600 s rollback window: rolled back" in step["detail"], step
        assert http.get("/health").status_code == 429
        live = env.api("GET", "/status")
        assert live["functions"]["worker"]["weights"] == {good_worker: 100.0} and not live["processing"]

        fixed = env.api("POST", "/repair", json={"deployment": rb["deployment"], "who": "test"})
        assert sorted(fixed["jobs"]) == sorted(jobs) and sorted(fixed["requeued"]) == sorted(jobs), fixed

        resumed = env.api("POST", "/resume", json={"who": "test"})
        assert resumed["restored"] == ["api", "processing"] and resumed["incidents"] == [stop["incident"]]
        assert http.get("/health").status_code == 200
        completed(http, jobs, good_worker)
        assert {s: schedule(http, j) for s, j in samples.items()} == {s: truth(s) for s in samples}
