"""`backout init` as a newcomer uses it: the generated service runs, deploys a good version, rolls a
broken one back on its own, passes a drill, and the drill leaves its queues and DLQ as it found them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import RunningEnv, wait_for

STRATEGIES = """
[strategies.Quick]
steps = [{ weight = 50, hold = "1s" }, { weight = 100 }]

[strategies.Watched]
steps = [{ weight = 50, hold = "30s" }, { weight = 100 }]
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RunningEnv]:
    root = tmp_path / "inventory"
    r = subprocess.run([sys.executable, "-m", "backout.cli.main", "init", str(root), "--name", "inventory"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    manifest = root / "backout.toml"
    text = manifest.read_text()
    for port in ("8700", "8701", "8710", "8711"):  # free ports on a shared machine
        text = text.replace(f"_port = {port}", "_port = 0")
    manifest.write_text(text + STRATEGIES)
    env = RunningEnv(manifest)
    try:
        yield env
    finally:
        env.stop()


def peek(env: RunningEnv, queue: str) -> list[dict]:
    """What `backout queue peek QUEUE -n 50` shows (its control API call: no CLI process per look)."""
    return env.api("GET", f"/queues/{queue}/messages", params={"limit": 50})


def test_the_generated_service_deploys_rolls_back_a_broken_version_and_drills_green(service: RunningEnv) -> None:
    env = service
    gw = httpx.Client(base_url=env.gateway_url, timeout=30)
    # as generated: an item goes through the API, the queue (plain boto3 to the local SQS endpoint), the consumer
    item = gw.post("/items", json={"text": "first"}).json()["id"]
    wait_for(lambda: gw.get(f"/items/{item}").json()["status"] == "processed", timeout=30, what="the consumer")
    found = {q: peek(env, q) for q in ("items", "items-dlq")}

    # a good version: the default pre-traffic check probes both handlers with events of their own kind
    api_py = env.manifest.source_dir / "inventory" / "api.py"
    api_py.write_text(api_py.read_text() + "\n# v2\n")
    good = env.cli_json("deploy", "--strategy", "Quick", "--description", "v2")
    assert good["deployment"]["status"] == "Succeeded", good["deployment"]["reason"]
    checks = next(e for e in good["events"] if e["kind"] == "hook_passed")["message"]
    assert "ok invoke api v2: v2 answered 200" in checks and "ok invoke consumer v2: v2 rejected the marked" in checks

    # a broken one, under traffic: rolled back by its alarms before it reaches 100 %
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=env.gateway_url, timeout=30) as c:
            while not stop.wait(0.025):
                c.get("/health")

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        r = env.cli("deploy", "--strategy", "Watched", "--set-env", "BACKOUT_FAULT=errors=1", "--json", timeout=120)
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 1, r.stdout + r.stderr
    bad = json.loads(r.stdout)
    assert bad["deployment"]["status"] == "RolledBack"
    assert bad["deployment"]["reason"].startswith("alarm "), bad["deployment"]["reason"]
    assert gw.get("/health").json()["version"] == "2"

    # a drill: passes, and leaves the service's queues and DLQ as it found them
    d = env.cli_json("drill", "--target-seconds", "30", timeout=180)
    assert d["passed"], d["failures"]
    assert {q: peek(env, q) for q in ("items", "items-dlq")} == found == {"items": [], "items-dlq": []}
    assert env.api("POST", "/verify")["ok"]
