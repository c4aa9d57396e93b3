"""The soak, shortened (bench/soak.py runs 30 minutes): mixed SDA traffic, a deployment every 40 s
(every other one faulty), RSS, open files and WAL sampled every 5 s. Exact on outcomes — no 5xx but
from a faulty canary, every deployment ends Succeeded or RolledBack with the aliases on the winner —
and generous bounds on resources (a loaded 2-core machine): no timing assertions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
from bench.soak import Sampler, build_env, run_soak

pytestmark = pytest.mark.slow


def test_a_short_soak_stays_correct_and_bounded(tmp_path: Path) -> None:
    env = build_env(tmp_path, hold_s=8)
    try:
        f = run_soak(env, minutes=2.0, rate=10.0, every=40.0, sample=5.0)
    finally:
        env.close()
    assert f["requests"] > 0 and f["status_counts"].get("200", 0) > 0, f["status_counts"]
    assert f["5xx_outside_faulty_canaries"] == 0, f["status_counts"]
    assert len(f["deployments"]) >= 2
    for d in f["deployments"]:
        assert d["status"] in ("Succeeded", "RolledBack") and d["aliases_agree"], d
    sup = f["supervisor_rss_mb"]
    assert sup["last"] - sup["first"] < 300, sup  # a leak of a request's worth per request would be GBs
    assert f["supervisor_fds"]["max"] < 1000 and f["worker_fds_max"] < 200, (f["supervisor_fds"], f["worker_fds_max"])
    assert f["wal_max_mb"] < 64, f["wal_last"]


def test_a_process_gone_between_listing_and_sampling_leaves_no_empty_series() -> None:
    """A worker retired between `processes()` and its reading is skipped, not recorded as an empty series
    (which ended a 30-minute soak in an IndexError while computing its figures)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = psutil.Process(gone.pid)
    gone.wait()
    live = psutil.Process()
    env = SimpleNamespace(processes=lambda: {"supervisor": live, "worker:1": proc}, wal_bytes=dict,
                          http=httpx.Client(base_url="http://127.0.0.1:9", timeout=1))
    sampler = Sampler(env, every=1.0)  # type: ignore[arg-type]
    sampler.sample()
    assert set(sampler.samples.rss) == {"supervisor"} and sampler.samples.supervisor_fds
