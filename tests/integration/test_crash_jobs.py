"""The crash schedule for jobs, short (bench/crash_jobs.py runs it at full size): 30 SDA jobs while
worker processes are SIGKILLed at random and the supervisor (which runs the queue pollers) twice.
No acknowledged job is lost, none is stuck, none has two different results, every dead-lettered one
says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.crash_jobs import build_env, drawings, run_schedule

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_thirty_jobs_under_kill_9_none_lost_none_stuck_none_twice(tmp_path: Path) -> None:
    corpus = drawings(tmp_path, seed=3, extra=0)
    env = build_env(tmp_path / "env")
    try:
        f = run_schedule(env, corpus, 30, seed=3, settle_timeout=240.0)
    finally:
        env.close()
    assert f["acknowledged"] == 30
    assert f["kills"].get("supervisor") == 2, f["kills"]
    assert (f["lost"], f["stuck"], f["duplicate_results"]) == (0, 0, 0), f
    assert f["completed"] + f["dead_lettered"] + f["failed_otherwise"] == 30, f
    assert f["failed_otherwise"] == 0 and f["dead_lettered_without_reason"] == 0, f
