"""Rollback drills of the failure faults end to end: a worker that crashes on every message and messages that
end in the DLQ, each rolled back by the alarm or judge that fired first, verified and smoked; afterwards
`status` has no drill warning and names the last drill.

Beside test_drills.py (the error and latency faults), with its own supervisor of the SDA: the test runner
hands whole modules to its workers, so the drills run side by side instead of one after the other.
"""

from __future__ import annotations

import pytest

# the runbook tests' environment and the drill check, for this module's own supervisor
from test_drills import drill_and_check
from test_runbooks import _clean, env, gate, live_version, receiver  # noqa: F401

from support import Receiver, RunningEnv

pytestmark = pytest.mark.slow


def test_drills_of_a_crashing_worker_and_of_dead_lettered_messages(  # noqa: F811
    env: RunningEnv, receiver: Receiver  # noqa: F811
) -> None:
    stable = live_version(env)
    for fault in ("crash", "dlq"):
        drill_and_check(env, receiver, fault, stable)
    drills = env.cli_json("drill", "list")
    assert [x["fault"] for x in drills[:2]] == ["dlq", "crash"] and all(x["passed"] for x in drills[:2])
    st = env.cli_json("status")
    assert st["last_drill"]["id"] == drills[0]["id"] and st["last_drill"]["fault"] == "dlq"
