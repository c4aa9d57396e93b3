"""Rollback drills end to end: one drill of each fault kind against the SDA, each rolled back by the alarm or
judge that fired first, verified and smoked, with the monthly-drill warning of `status`.

Its own module, so its own supervisor: the drills take a minute or two, and the test runner hands whole
modules to its workers — apart from the other runbook tests they run side by side with them.
"""

from __future__ import annotations

import json
import time

# the runbook tests' environment (a supervisor of the SDA) and helpers, for this module's own instance
from test_runbooks import _clean, env, gate, live_version, receiver  # noqa: F401

from backout.control.store import Store
from support import Receiver, RunningEnv


def test_drill_of_each_fault_kind_and_the_monthly_warning(env: RunningEnv, receiver: Receiver) -> None:  # noqa: F811
    def drill_warnings() -> list[str]:
        return [w for w in env.cli_json("status")["warnings"] if "drill" in w]

    assert any("no passing rollback drill" in w for w in drill_warnings())
    with Store.for_env(env.state_dir) as store:  # last month's drill, recorded 40 days ago
        old = time.time() - 40 * 86400
        store.record_drill("staging", "errors=0.5", 60, old, old + 25, True, 10.0, 0.01)
    (w,) = drill_warnings()
    assert "40 days old" in w and "backout drill" in w

    stable = live_version(env)
    for fault in ("errors=0.5", "latency=3s", "crash", "dlq"):
        r = env.cli("drill", "--fault", fault, "--target-seconds", "60", "--json", timeout=300)
        assert r.returncode == 0, f"{fault}: {r.stdout[-3000:]} {r.stderr[-2000:]}"
        out = json.loads(r.stdout)
        assert out["passed"] and out["fault"] == fault and not out["failures"]
        assert 0 < out["first_traffic_to_stable_seconds"] <= 60
        d = env.cli_json("deployment", "show", out["deployment"])
        assert d["deployment"]["status"] == "RolledBack"
        # the alarm that rolled it back is the first one that went to ALARM, named with its evidence
        first = next(e for e in d["events"] if e["kind"] == "alarm_state" and e["data"]["state"] == "ALARM")
        rolled = next(e for e in d["events"] if e["kind"] == "rolled_back")
        kind = "judge" if "-judge" in first["data"]["alarm"] else "alarm"
        assert rolled["data"]["trigger"] == kind and rolled["data"]["alarms"][0]["alarm"] == first["data"]["alarm"]
        assert out["detail"]["reason"].startswith(f"alarm {first['data']['alarm']} in ALARM: "), out["detail"]
        assert d["deployment"]["target_release"] != stable
        assert d["incident"]["status"] == "closed" and "drill" in d["incident"]["root_cause"]
        assert out["detail"]["verify"]["ok"] and all(s["ok"] for s in out["detail"]["smoke"])
        assert live_version(env) == stable
        receiver.wait("rollback drill passed", out["deployment"])

    drills = env.cli_json("drill", "list")
    assert [x["fault"] for x in drills[:5]] == ["dlq", "crash", "latency=3s", "errors=0.5", "errors=0.5"]
    assert all(x["passed"] for x in drills[:5])
    r = env.cli("drill", "list")
    assert r.returncode == 0 and "latency=3s" in r.stdout and "passed" in r.stdout
    st = env.cli_json("status")
    assert not [w for w in st["warnings"] if "drill" in w]
    assert st["last_drill"]["id"] == drills[0]["id"] and st["last_drill"]["fault"] == "dlq"

    # never in prod by accident
    r = env.cli("drill", "--env", "prod", "--fault", "crash")
    assert r.returncode == 2 and "--allow-prod" in r.stderr
