"""Smoke tests: the manifest's pytest node ids (API_BASE_URL and ENVIRONMENT set) and HTTP checks.

The procedure's exact command, `python -m pytest tests/integration/test_e2e.py::test_health_check -v`,
is one of the SDA's smoke tests; `backout smoke` and the post-traffic hook both run them from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from backout import outbound
from backout.manifest import Manifest, SmokeSpec


@dataclass(frozen=True)
class SmokeResult:
    name: str
    ok: bool
    detail: str
    seconds: float


THROTTLED = {429, 503}


def run_smoke(manifest: Manifest, env: str, api_base_url: str, timeout: float = 120.0) -> list[SmokeResult]:
    """Run every smoke test of the manifest against `api_base_url`; never raises for a failing test."""
    return [_run_one(s, manifest.root, env, api_base_url, timeout) for s in manifest.smoke]


def _run_one(spec: SmokeSpec, root: Path, env: str, base: str, timeout: float) -> SmokeResult:
    t0 = time.monotonic()
    if spec.http is not None:
        method, _, path = spec.http.partition(" ")
        url = path if path.startswith("http") else f"{base.rstrip('/')}{path}"
        try:
            deadline, delay = t0 + min(timeout, 30.0), 0.1
            r = outbound.request(method, url, timeout=timeout)
            # throttled (the function's concurrency is in use): ask again, as the AWS SDKs do — a busy
            # service is not a failed smoke test, unless it stays busy past the deadline
            while (r.status_code in THROTTLED and r.status_code != spec.expect_status
                   and time.monotonic() + delay < deadline):
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                r = outbound.request(method, url, timeout=timeout)
            ok = r.status_code == spec.expect_status
            detail = f"{spec.http} → {r.status_code}" + (
                "" if ok else f" (expected {spec.expect_status}): {r.text[:200]}"
            )
        except httpx.HTTPError as e:
            ok, detail = False, f"{spec.http} failed: {e}"
        return SmokeResult(spec.http, ok, detail, time.monotonic() - t0)
    assert spec.pytest is not None
    environ = dict(os.environ, API_BASE_URL=base, ENVIRONMENT=env)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        spec.pytest,
        "-v",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-q",
    ]
    try:
        r = subprocess.run(cmd, cwd=root, env=environ, capture_output=True, text=True, timeout=timeout)
        ok = r.returncode == 0
        tail = (r.stdout.strip().splitlines() or [""])[-1]
        detail = tail if ok else (r.stdout + r.stderr).strip()[-1500:]
    except subprocess.TimeoutExpired:
        ok, detail = False, f"timed out after {timeout:.0f} s"
    return SmokeResult(spec.pytest, ok, detail, time.monotonic() - t0)
