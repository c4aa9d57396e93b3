"""Rollback drills end to end: drills of the error and latency faults against the SDA, each rolled back by the
alarm or judge that fired first, verified and smoked, with the monthly-drill warning of `status` (the crash and
DLQ faults are in test_drills_failures.py, beside this module); the quarterly emergency
drill (stop → verify → resume under synthetic traffic, nothing lost); and `--output json|yaml` of the commands
that read this supervisor.

Its own module, so its own supervisor: the drills take a minute or two, and the test runner hands whole
modules to its workers — apart from the other runbook tests they run side by side with them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest
import yaml

# the runbook tests' environment (a supervisor of the SDA) and helpers, for this module's own instance
from test_runbooks import _clean, env, gate, live_version, receiver  # noqa: F401

from backout.cli import context
from backout.cli.main import run
from backout.control.store import Store
from support import Receiver, RunningEnv


def drill_and_check(env: RunningEnv, receiver: Receiver, fault: str, stable: int) -> None:  # noqa: F811
    """`backout drill --fault FAULT` passes: rolled back by the first alarm or judge that fired, with its
    evidence, the incident closed as a drill's, verify and smoke green, the stable version live again."""
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


def test_drill_of_each_fault_kind_and_the_monthly_warning(env: RunningEnv, receiver: Receiver) -> None:  # noqa: F811
    def drill_warnings() -> list[str]:
        return [w for w in env.cli_json("status")["warnings"] if "rollback drill" in w]

    assert any("no passing rollback drill" in w for w in drill_warnings())
    with Store.for_env(env.state_dir) as store:  # last month's drill, recorded 40 days ago
        old = time.time() - 40 * 86400
        store.record_drill("staging", "errors=0.5", 60, old, old + 25, True, 10.0, 0.01)
    (w,) = drill_warnings()
    assert "40 days old" in w and "backout drill" in w

    stable = live_version(env)
    for fault in ("errors=0.5", "latency=3s"):
        drill_and_check(env, receiver, fault, stable)

    drills = env.cli_json("drill", "list")
    assert [x["fault"] for x in drills[:3]] == ["latency=3s", "errors=0.5", "errors=0.5"]
    assert all(x["passed"] for x in drills[:3])
    r = env.cli("drill", "list")
    assert r.returncode == 0 and "latency=3s" in r.stdout and "passed" in r.stdout
    st = env.cli_json("status")
    assert not [w for w in st["warnings"] if "rollback drill" in w]
    assert st["last_drill"]["id"] == drills[0]["id"] and st["last_drill"]["fault"] == "latency=3s"

    # never in prod by accident
    r = env.cli("drill", "--env", "prod", "--fault", "crash")
    assert r.returncode == 2 and "--allow-prod" in r.stderr


def test_emergency_drill_stops_verifies_resumes_and_loses_nothing(env: RunningEnv) -> None:  # noqa: F811
    r = env.cli("drill", "--emergency", timeout=180)
    assert r.returncode == 0, f"{r.stdout[-3000:]} {r.stderr[-2000:]}"
    # not a terminal: a plain line per stage on stderr, then the result
    assert "emergency drill in staging: API blocked (429), processing paused" in r.stderr
    assert "PASSED" in r.stdout and "+ 0 lost" in r.stdout
    drill = env.api("GET", "/drills")[0]  # the control API the CLI reads (no second Python start)
    out = drill["detail"]
    assert drill["kind"] == "emergency" and drill["passed"] and not out["failures"], out
    assert [s["step"] for s in out["steps"]] == ["emergency stop", "stop holds", "verify", "resume",
                                                 "backlog processed"]
    assert all(s["ok"] for s in out["steps"]), out["steps"]
    assert "→ 429" in out["steps"][1]["detail"] and "processing paused" in out["steps"][1]["detail"]
    a = out["accounted"]
    assert a["requests_failed"] == 0 and a["requests_throttled"] > 0 and a["requests_served"] > 0
    assert a["requests_sent"] == a["requests_served"] + a["requests_throttled"] + a["requests_failed"]
    assert a["messages_sent"] > 0 and a["messages_processed"] == a["messages_sent"]
    assert a["messages_dead_lettered"] == a["messages_left_waiting"] == 0

    st = env.api("GET", "/status")
    assert st["last_emergency_drill"]["id"] == drill["id"] and st["last_emergency_drill"]["passed"]
    assert not [w for w in st["warnings"] if "emergency drill" in w]
    assert not st["api"]["blocked"] and st["processing"]
    with Store.for_env(env.state_dir) as store:
        assert store.get_incident(out["incident"]).status == "closed"


def _in_process(running: RunningEnv, *args: str, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setattr(sys, "argv", ["backout", "--manifest", str(running.manifest_path), *args, "--env",
                                      "staging"])
    try:
        with pytest.raises(SystemExit) as exc:
            run()
    finally:
        context.SETTINGS._manifest = None
    out = capsys.readouterr()
    assert (exc.value.code or 0) == 0, out.err
    return out.out


@pytest.mark.parametrize("command", [("drill", "list"), ("deployments",), ("releases",), ("backup", "list"),
                                     ("incident", "list"), ("runbook",), ("status",), ("queue", "stats")])
def test_json_and_yaml_of_each_command_are_the_same_data(
    env: RunningEnv, command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str]
) -> None:
    as_json = json.loads(_in_process(env, *command, "--json", monkeypatch=monkeypatch, capsys=capsys))
    as_yaml = yaml.safe_load(_in_process(env, *command, "-o", "yaml", monkeypatch=monkeypatch, capsys=capsys))
    if command in (("status",), ("queue", "stats")):  # live values (ages, the time of the answer) move between calls
        assert _shape(as_yaml) == _shape(as_json)
    else:
        assert as_yaml == as_json


def _shape(data: Any) -> Any:
    """The keys and types of `data`, its values left out."""
    if isinstance(data, dict):
        return {k: _shape(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_shape(v) for v in data[:1]]
    return type(data).__name__ if data is not None else None
