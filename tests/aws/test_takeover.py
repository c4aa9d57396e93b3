"""Two machines, one environment: two backout supervisors (each with its own state dir, as on two
machines) against one shared state table on moto (short lease: renew 0.5 s, expiry 2 s).

- B's `deployments`, `stop`, `rollback` and `incident` commands see and act on the deployment A
  drives: a stop is a request that A, the lease holder, carries out; nobody takes over.
- A frozen (SIGSTOP) past its lease's expiry: `backout deployment follow` on B takes the canary over
  and finishes it; A, woken (SIGCONT), has its writes refused, says so, and moves no alias.
- A SIGKILLed mid-canary: a deploy from B is refused naming A's lease holder; `follow` on B takes
  the deployment over once the lease expired and finishes it from the recorded step.

Starting a supervisor is seconds of CPU, so the module starts the pair once; each test deploys a
release of its own on top of whatever is live and restarts (or wakes) a machine a test left down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aws.conftest import Stack, cli, client
from backout.manifest import load_manifest
from backout.platforms import open_platform
from backout_lambda import state_table
from support import RunningEnv, wait_for

STRATEGIES = """
[strategies.Canary25]
steps = [{ weight = 25, hold = "6s" }, { weight = 100 }]

[strategies.Held]
steps = [{ weight = 25, hold = "10m" }, { weight = 100 }]

[strategies.Short]
steps = [{ weight = 25, hold = "3s" }, { weight = 100 }]
"""


@dataclass
class Machines:
    stack: Stack
    a: RunningEnv
    b: RunningEnv
    path_b: Path
    releases: int = 1

    def publish(self) -> int:
        """A new release of every function (published as machine A would), its id."""
        self.releases += 1
        src = self.stack.source(f"src{self.releases}", f"r{self.releases}")
        platform = open_platform(load_manifest(self.a.manifest_path), "staging", self.stack.root / "publish")
        return platform.publish(src, description=f"r{self.releases}").id

    def canary(self, release: int, strategy: str) -> tuple[str, dict[str, tuple[str, dict[str, float]]]]:
        """A deployment of `release` driven by A, once every alias sends 25 % to it; and what was live."""
        before = aliases(self.stack)
        d = self.a.api("POST", "/deployments", json={"release": release, "strategy": strategy,
                                                       "created_by": "ci", "description": f"r{release}"})
        split = {fn: (v, {str(release): 0.25}) for fn, (v, _) in before.items()}
        wait_for(lambda: aliases(self.stack) == split, timeout=60, what="the canary at 25 % on every alias")
        return str(d["deployment"]["id"]), before


def machines(stack: Stack) -> tuple[Path, Path]:
    """The manifest on machine A (r1 published and live) and its copy on machine B."""
    name = f"backout-state-{stack.tag}"
    state_table.create_table(client(stack.url, "dynamodb"), name)
    text = stack.manifest_text(
        extra_env='strategy = "Canary25"',
        aws_extra=f'state_table = "{name}"\nlease_renew = "0.5s"\nlease_expiry = "2s"') + STRATEGIES
    a = stack.root / "backout.toml"
    stack.source("src", "r1")
    a.write_text(text)
    platform = open_platform(load_manifest(a), "staging", stack.root / "publish")
    r1 = platform.publish(stack.root / "src", description="first")
    lam = client(stack.url, "lambda")
    for fn, real in stack.functions.items():
        lam.create_alias(FunctionName=real, Name="live", FunctionVersion=r1.version(fn))
    b = stack.root / "b" / "backout.toml"
    shutil.copytree(stack.root / "src", b.parent / "src")
    b.write_text(text)
    return a, b


def aliases(stack: Stack) -> dict[str, tuple[str, dict[str, float]]]:
    lam = client(stack.url, "lambda")
    out = {}
    for fn, real in stack.functions.items():
        a = lam.get_alias(FunctionName=real, Name="live")
        out[fn] = (a["FunctionVersion"], (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})
    return out


@contextlib.contextmanager
def running(*paths: Path) -> Iterator[list[RunningEnv]]:
    """A supervisor per manifest, started side by side; each stopped at the end (woken first, should a
    test have left it stopped)."""
    envs: dict[int, RunningEnv] = {}
    errors: list[BaseException] = []

    def up(i: int, path: Path) -> None:
        try:
            envs[i] = RunningEnv(path)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    starters = [threading.Thread(target=up, args=(i, p)) for i, p in enumerate(paths)]
    for th in starters:
        th.start()
    for th in starters:
        th.join()
    try:
        assert not errors, errors
        yield [envs[i] for i in range(len(paths))]
    finally:
        for env in envs.values():
            if env.alive():
                os.kill(env.pid, signal.SIGCONT)
                env.stop()


@pytest.fixture(scope="module")
def started(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    stack = Stack(moto_url, tmp_path_factory.mktemp("takeover")).create()
    path_a, path_b = machines(stack)
    with running(path_a, path_b) as (a, b):
        yield Machines(stack, a, b, path_b)


@pytest.fixture
def pair(started: Machines) -> Machines:
    """Both machines up: one a test stopped is woken, one it killed is started again."""
    for env in (started.a, started.b):
        if env.alive():
            os.kill(env.pid, signal.SIGCONT)
        else:
            env.restart()
    return started


def test_stop_rollback_deployments_and_incidents_on_machine_b_act_on_what_machine_a_drives(pair: Machines) -> None:
    """B's commands find A's deployment in the shared table; B's stop and rollback are requests that
    A, the lease holder, carries out (nobody takes over); the incidents are the same on both."""
    a, b = pair.a, pair.b
    r = pair.publish()
    d1, stable = pair.canary(r, "Held")
    listed = b.cli_json("deployments")
    assert [(x["id"], x["status"]) for x in listed][:1] == [(d1, "InProgress")]

    stopped = b.cli_json("stop", d1, "--reason", "canary looks wrong", "--yes")
    assert (stopped["deployment"]["id"], stopped["deployment"]["status"]) == (d1, "RolledBack")
    assert aliases(pair.stack) == stable
    view = a.api("GET", f"/deployments/{d1}")
    assert "canary looks wrong" in view["deployment"]["reason"]
    assert view["lease"]["holder"].split(":")[1] == str(a.pid) and view["lease"]["fence"] == 1
    kinds = [e["kind"] for e in view["events"]]
    assert "stop_requested" in kinds and "taken_over" not in kinds

    d2, _ = pair.canary(r, "Held")
    done = b.cli("rollback", "--reason", "r2 is bad", "--yes", "--json")
    rolled = json.loads(done.stdout)
    assert (rolled["mode"], rolled["deployment"]) == ("stopped deployment", d2)
    # exit 1: the verify after it finds no API on moto (its health check), and says so
    failed = [c for c in rolled["verify"]["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["API health"], failed
    assert done.returncode == 1, done.stderr
    assert aliases(pair.stack) == stable
    view = a.api("GET", f"/deployments/{d2}")
    assert view["deployment"]["status"] == "RolledBack" and "r2 is bad" in view["deployment"]["reason"]
    assert view["lease"]["holder"].split(":")[1] == str(a.pid)

    # the incidents A opened, as B lists and shows them (index reads lag a write by a moment)
    def both() -> dict[str, str] | None:
        mine = {i["deployment_id"]: i["id"] for i in b.cli_json("incident", "list")
                if i["deployment_id"] in (d1, d2)}
        return mine if len(mine) == 2 else None

    incidents = wait_for(both, timeout=10, what="both incidents in B's list")
    shown = b.cli_json("incident", "show", incidents[d2])
    assert shown["incident"]["deployment_id"] == d2 and "r2 is bad" in shown["incident"]["title"]
    assert a.cli_json("incident", "show", incidents[d2])["incident"] == shown["incident"]


def test_a_frozen_driver_woken_after_the_takeover_has_its_writes_refused_and_moves_no_alias(pair: Machines) -> None:
    """A real process stopped (SIGSTOP) past its lease's expiry: B's `deployment follow` takes the canary
    over and finishes it; A, woken (SIGCONT), logs that it lost the lease and touches no alias."""
    a, b = pair.a, pair.b
    r = pair.publish()
    d, _ = pair.canary(r, "Short")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        done = b.cli_json("deployment", "follow", d)
        assert done["deployment"]["status"] == "Succeeded"
        assert done["lease"]["holder"].split(":")[1] == str(b.pid) and done["lease"]["fence"] == 2
        assert aliases(pair.stack) == {fn: (str(r), {}) for fn in pair.stack.functions}
        # a routing no step of the deployment writes: any alias A moves from here on shows
        lam = client(pair.stack.url, "lambda")
        for real in pair.stack.functions.values():
            lam.update_alias(FunctionName=real, Name="live", FunctionVersion=str(r),
                             RoutingConfig={"AdditionalVersionWeights": {str(r - 1): 0.33}})
        sentinel = aliases(pair.stack)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    try:
        log = a.state_dir / "logs" / "supervisor.log"
        lost = wait_for(lambda: [ln for ln in log.read_text(errors="replace").splitlines()
                                 if f"deployment {d}: this process" in ln and "no longer holds its lease" in ln],
                        timeout=15, what="A logging that it lost the lease")
        assert "the write was refused" in lost[0] and f":{b.pid}:" in lost[0]
        time.sleep(2.0)  # four of A's evaluation intervals and renewals
        assert aliases(pair.stack) == sentinel
        after = b.api("GET", f"/deployments/{d}")
        assert after["deployment"]["status"] == "Succeeded" and after["lease"]["fence"] == 2
        assert a.alive()  # it stopped driving the deployment, not running
    finally:
        lam = client(pair.stack.url, "lambda")
        for real in pair.stack.functions.values():  # r live again, for the next test
            lam.update_alias(FunctionName=real, Name="live", FunctionVersion=str(r),
                             RoutingConfig={"AdditionalVersionWeights": {}})


def test_a_driver_killed_mid_canary_is_taken_over_by_follow_on_another_machine(
        pair: Machines, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI commands of machine B run in this process (its entry point, exit codes and output):
    they talk to B's supervisor as from a shell there."""
    a, b = pair.a, pair.b
    r = pair.publish()
    d, before = pair.canary(r, "Canary25")
    split = aliases(pair.stack)
    seen = b.api("GET", f"/deployments/{d}")
    assert seen["deployment"]["status"] == "InProgress" and seen["lease"]["holder"].split(":")[1] == str(a.pid)

    a.kill9()  # mid-canary: its lease is no longer renewed, traffic stays split
    assert aliases(pair.stack) == split
    code, out, err = cli(capsys, monkeypatch, pair.path_b, "deploy", "--env", "staging", "--release", str(r),
                         "--no-wait")
    assert code == 2, out + err
    assert f"{d} is already active in staging" in err
    assert f":{a.pid}:" in err  # the holder: host:pid:uuid of machine A's supervisor

    code, out, err = cli(capsys, monkeypatch, pair.path_b, "deployment", "follow", d, "--env", "staging", "--json")
    assert code == 0, out + err
    view = json.loads(out)
    assert view["deployment"]["status"] == "Succeeded"
    assert aliases(pair.stack) == {fn: (str(r), {}) for fn in before}
    taken = [e for e in view["events"] if e["kind"] == "taken_over"]
    assert len(taken) == 1 and taken[0]["data"]["from"] == seen["lease"]["holder"]
    assert taken[0]["data"]["fence"] == 2 and view["lease"]["holder"].split(":")[1] == str(b.pid)

    # the shared store writes the status before the event that tells it: the event may land a moment later
    def with_succeeded() -> dict | None:
        v = b.api("GET", f"/deployments/{d}")
        return v if "succeeded" in [e["kind"] for e in v["events"]] else None

    view = wait_for(with_succeeded, timeout=30, what="the succeeded event")
    kinds = [e["kind"] for e in view["events"]]
    assert kinds.index("taken_over") < kinds.index("succeeded")
    assert kinds.count("step_reached") == 2  # 25 % by A; 100 % by B, which resumed 25 % without repeating it
