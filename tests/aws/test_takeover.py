"""Two machines, one environment: two backout supervisors (each with its own state dir, as on two
machines) against one shared state table on moto. The first drives a canary; a deploy from the second
is refused naming the first's lease holder; the first is SIGKILLed mid-canary; `backout deployment
follow` on the second takes the deployment over once the lease expired (short lease: renew 0.5 s,
expiry 2 s) and finishes it from the recorded step."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from aws.conftest import Stack, cli, client
from backout.manifest import load_manifest
from backout.platforms import open_platform
from backout_lambda import state_table
from support import RunningEnv, wait_for

STRATEGY = """
[strategies.Canary25]
steps = [{ weight = 25, hold = "6s" }, { weight = 100 }]
"""


def machines(stack: Stack) -> tuple[Path, Path, int]:
    """The manifest on machine A (with r1 live and r2 published) and its copy on machine B."""
    name = f"backout-state-{stack.tag}"
    state_table.create_table(client(stack.url, "dynamodb"), name)
    text = stack.manifest_text(
        extra_env='strategy = "Canary25"',
        aws_extra=f'state_table = "{name}"\nlease_renew = "0.5s"\nlease_expiry = "2s"') + STRATEGY
    a = stack.root / "backout.toml"
    stack.source("src", "r1")
    a.write_text(text)
    platform = open_platform(load_manifest(a), "staging", stack.root / "publish")
    r1 = platform.publish(stack.root / "src", description="first")
    lam = client(stack.url, "lambda")
    for fn, real in stack.functions.items():
        lam.create_alias(FunctionName=real, Name="live", FunctionVersion=r1.version(fn))
    r2 = platform.publish(stack.source("src2", "r2"), description="second")
    b = stack.root / "b" / "backout.toml"
    shutil.copytree(stack.root / "src", b.parent / "src")
    b.write_text(text)
    return a, b, r2.id


def aliases(stack: Stack) -> dict[str, tuple[str, dict[str, float]]]:
    lam = client(stack.url, "lambda")
    out = {}
    for fn, real in stack.functions.items():
        a = lam.get_alias(FunctionName=real, Name="live")
        out[fn] = (a["FunctionVersion"], (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})
    return out


def test_a_driver_killed_mid_canary_is_taken_over_by_follow_on_another_machine(
        stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI commands of machine B run in this process (its entry point, exit codes and output):
    they talk to B's supervisor as from a shell there."""
    path_a, path_b, r2 = machines(stack)
    envs: dict[str, RunningEnv] = {}
    errors: list[BaseException] = []

    def up(key: str, path: Path) -> None:
        try:
            envs[key] = RunningEnv(path)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    starters = [threading.Thread(target=up, args=(k, p)) for k, p in (("a", path_a), ("b", path_b))]
    for th in starters:
        th.start()
    for th in starters:
        th.join()
    try:
        assert not errors, errors
        a, b = envs["a"], envs["b"]
        d = a.api("POST", "/deployments", json={"release": r2, "created_by": "ci", "description": "r2"})["deployment"]
        split = {fn: ("1", {"2": 0.25}) for fn in stack.functions}
        wait_for(lambda: aliases(stack) == split, timeout=90, what="the canary at 25 % on every alias")
        seen = b.api("GET", f"/deployments/{d['id']}")
        assert seen["deployment"]["status"] == "InProgress" and seen["lease"]["holder"].split(":")[1] == str(a.pid)

        a.kill9()  # mid-canary: its lease is no longer renewed, traffic stays split
        assert aliases(stack) == split
        code, out, err = cli(capsys, monkeypatch, path_b, "deploy", "--env", "staging", "--release", str(r2),
                             "--no-wait")
        assert code == 2, out + err
        assert f"{d['id']} is already active in staging" in err
        assert f":{a.pid}:" in err  # the holder: host:pid:uuid of machine A's supervisor

        code, out, err = cli(capsys, monkeypatch, path_b, "deployment", "follow", d["id"], "--env", "staging",
                             "--json")
        assert code == 0, out + err
        view = json.loads(out)
        assert view["deployment"]["status"] == "Succeeded"
        assert aliases(stack) == {fn: ("2", {}) for fn in stack.functions}
        taken = [e for e in view["events"] if e["kind"] == "taken_over"]
        assert len(taken) == 1 and taken[0]["data"]["from"] == seen["lease"]["holder"]
        assert taken[0]["data"]["fence"] == 2 and view["lease"]["holder"].split(":")[1] == str(b.pid)
        # the shared store writes the status before the event that tells it: the event may land a moment later
        def with_succeeded() -> dict | None:
            v = b.api("GET", f"/deployments/{d['id']}")
            return v if "succeeded" in [e["kind"] for e in v["events"]] else None

        view = wait_for(with_succeeded, timeout=30, what="the succeeded event")
        kinds = [e["kind"] for e in view["events"]]
        assert kinds.index("taken_over") < kinds.index("succeeded")
        assert kinds.count("step_reached") == 2  # 25 % by A; 100 % by B, which resumed 25 % without repeating it
    finally:
        for env in envs.values():
            if env.alive():
                env.stop()
