"""The crash schedule for deployments, short (bench/crash_deployments.py runs it at full size): three
deployments, healthy and faulty, the supervisor SIGKILLed once in each at a seeded instant, restarted.
Each ends Succeeded or RolledBack, the live aliases on the release the store names, and no request
after the end is answered by the release the store says is gone."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.crash_deployments import build_env, run_schedule

pytestmark = [pytest.mark.slow, pytest.mark.long]


def test_three_deployments_with_a_supervisor_kill_each_end_consistent(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    try:
        outcomes, summary = run_schedule(env, 3, seed=7, rate=10.0)
    finally:
        env.close()
    assert len(outcomes) == 3 and summary["kills"] == 3
    for o in outcomes:
        assert o.status in ("Succeeded", "RolledBack"), o
        assert o.aliases_agree, o
        assert o.stale_answers == 0, o
    assert summary["consistent"] == 3, summary
