"""End-to-end smoke tests of the Security Design Assistant through its HTTP API.

The rollback procedure runs exactly
    python -m pytest tests/integration/test_e2e.py::test_health_check -v
with API_BASE_URL and ENVIRONMENT set, so the tests are module-level functions that read them.
Without API_BASE_URL they use the running local environment named by ENVIRONMENT (default
staging), and when none runs they start a private one for this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _running_gateway(env: str) -> str | None:
    try:
        from backout.manifest import load_manifest
        from backout.server.endpoints import read_endpoints

        ep = read_endpoints(load_manifest(ROOT / "backout.toml").state_dir(env))
    except Exception:  # noqa: BLE001 - no manifest, no env: fall back to a private environment
        return None
    return str(ep["gateway_url"]) if ep else None


@pytest.fixture(scope="module")
def api_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("ENVIRONMENT", "staging")
    url = os.environ.get("API_BASE_URL") or _running_gateway(env)
    if url:
        yield url.rstrip("/")
        return
    from support import RunningEnv, sda_manifest

    tmp = tmp_path_factory.mktemp("e2e")
    manifest = tmp / "backout.toml"
    manifest.write_text(sda_manifest(tmp / "state"))
    running = RunningEnv(manifest, "staging")
    try:
        yield running.gateway_url
    finally:
        running.stop()


def _drawing() -> bytes:
    shared = ROOT.parent / "shared" / "drawings" / "example_b2_drawing.pdf"
    if shared.exists():
        return shared.read_bytes()
    examples = sorted((ROOT / "examples" / "drawings").glob("*.pdf"))
    if not examples:
        pytest.skip("no drawing available: neither ../shared/drawings nor examples/drawings")
    return examples[0].read_bytes()


def test_health_check(api_base_url: str) -> None:
    r = httpx.get(f"{api_base_url}/health", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "healthy"
    assert body["version"]


def test_process_drawing_roundtrip(api_base_url: str) -> None:
    files = {"drawing_file": ("b2.pdf", _drawing(), "application/pdf")}
    data = {"client_name": "smoke", "project_name": f"roundtrip-{int(time.time())}"}
    r = httpx.post(f"{api_base_url}/process-drawing", files=files, data=data, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["job_id"].startswith("job_")
    assert r.headers["X-Correlation-ID"] == job["correlation_id"]
    deadline = time.monotonic() + 90
    status: dict = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{api_base_url}/status/{job['job_id']}", timeout=10).json()
        if status["status"] in ("completed", "failed"):
            break
        assert status["progress"]["percentage"] <= 90
        time.sleep(0.3)
    assert status.get("status") == "completed", status
    assert status["progress"]["percentage"] == 100
    assert status["files"]["components"]["count"] > 0
    x = httpx.get(f"{api_base_url}/download/{job['job_id']}/excel", timeout=30)
    assert x.status_code == 200
    assert x.headers["content-type"].startswith("application/vnd.openxmlformats-officedocument.spreadsheetml")
    assert x.content[:2] == b"PK"
    comps = httpx.get(f"{api_base_url}/download/{job['job_id']}/components", timeout=30)
    assert comps.status_code == 200
