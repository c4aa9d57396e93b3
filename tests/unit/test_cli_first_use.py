"""The CLI as a new user meets it: global --env and --version, checks that need no supervisor come first,
a supervisor that cannot be reached is a failed operation (exit 1), a bug is one line and a log file.

In-process through `run()` (the console entry point), so each case costs milliseconds, not a Python start."""

from __future__ import annotations

import fcntl
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout.cli import context
from support import cli_in_process

MANIFEST = """
[service]
name = "svc"
source = "src"

[functions.api]
handler = "app.handler"
events = [{ http = "GET /health" }]

[environments.staging]
gateway_port = 0
control_port = 0
state_dir = "{state}/staging"

[environments.prod]
gateway_port = 0
control_port = 0
state_dir = "{state}/prod"
"""


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    p = tmp_path / "backout.toml"
    p.write_text(MANIFEST.replace("{state}", str(tmp_path / "state")))
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    yield p


cli = cli_in_process


def test_version(manifest: Path) -> None:
    code, out, _ = cli(manifest, "--version")
    assert code == 0 and out.startswith("backout ") and out.split()[1][0].isdigit()


def test_env_before_the_subcommand_applies_and_the_subcommands_own_wins(manifest: Path) -> None:
    code, _, err = cli(manifest, "--env", "prod", "status")
    assert code == 2 and "environment 'prod' is not running" in err
    code, _, err = cli(manifest, "--env", "prod", "status", "--env", "staging")
    assert code == 2 and "environment 'staging' is not running" in err
    code, _, err = cli(manifest, "--env", "nope", "status")
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("deploy", "--strategy", "Canary10Percent5Minute"), "unknown strategy 'Canary10Percent5Minute' (did you mean"),
        (("deploy", "--set-env", "FOO"), "--set-env 'FOO': expected KEY=VALUE"),
    ],
)
def test_checks_that_need_no_supervisor_come_first(manifest: Path, args: tuple[str, ...], expected: str) -> None:
    code, _, err = cli(manifest, *args)
    assert code == 2 and expected in err and "not running" not in err


def test_a_supervisor_that_does_not_answer_is_exit_1(manifest: Path, tmp_path: Path) -> None:
    state = tmp_path / "state" / "staging"
    state.mkdir(parents=True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (state / "endpoints.json").write_text(json.dumps(
        {"pid": 1, "env": "staging", "gateway_url": f"http://127.0.0.1:{port}", "control_url": f"http://127.0.0.1:{port}"}
    ))
    with (state / "supervisor.lock").open("a") as lock:  # as a live supervisor holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, _, err = cli(manifest, "status")
    assert code == 1 and "cannot reach the staging supervisor" in err


def test_a_bug_is_one_line_exit_1_and_a_traceback_in_the_state_dir(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, env: str | None) -> None:
        raise RuntimeError("an unexpected state")

    monkeypatch.setattr(context.Client, "__init__", broken)
    code, out, err = cli(manifest, "status")
    log = tmp_path / "state" / "staging" / "cli-error.log"
    assert code == 1 and "Traceback" not in out + err
    assert "internal error: RuntimeError: an unexpected state" in err and str(log) in err.replace("\n", "")
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: an unexpected state" in text
