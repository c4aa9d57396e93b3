"""Emergency contacts and the quick reference (issue 14, point 11): `[contacts]` in backout.toml (per
environment over the top level), shown by `status`; `backout runbook --env ENV` prints the procedure's
quick reference for that environment, and every command it prints is a real one of this CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from backout.cli import main as cli_main
from backout.runbooks import status
from fakes import World

CONTACTS = """contacts.on_call = { name = "Sam Ruiz", channel = "#staging-oncall" }

[contacts.on_call]
name = "Dana Lee"
channel = "#incidents"

[contacts.aws_support]
name = "AWS Support"
channel = "https://console.aws.amazon.com/support"
"""
STAGING = 'duration_p99_limits = { worker = "750ms" }\n' + CONTACTS
PLACEHOLDER = re.compile(r"^[A-Z]+$")


@pytest.fixture
def contacts_world(tmp_path: Path, fast_evaluations: None) -> Any:
    w = World(tmp_path, staging=STAGING)
    yield w
    w.close()


def backout(manifest: Path, *args: str) -> Any:
    r = CliRunner().invoke(cli_main.app, ["--manifest", str(manifest), *args], env={"COLUMNS": "200"})
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.output


def test_contacts_per_environment_over_the_top_level_and_in_status(contacts_world: World) -> None:
    m = contacts_world.manifest
    assert [c.line(r) for r, c in m.contacts_for("staging").items()] == [
        "on call: Sam Ruiz (#staging-oncall)", "aws support: AWS Support (https://console.aws.amazon.com/support)"]
    assert m.contact_lines("prod")[0] == "on call: Dana Lee (#incidents)"
    s = status.status(contacts_world.ctx)
    assert s["contacts"] == [{"role": "on call", "name": "Sam Ruiz", "channel": "#staging-oncall"},
                             {"role": "aws support", "name": "AWS Support",
                              "channel": "https://console.aws.amazon.com/support"}]


def test_runbook_prints_this_environments_quick_reference_with_real_commands(contacts_world: World) -> None:
    path = contacts_world.manifest.path
    q = json.loads(backout(path, "runbook", "--env", "prod", "--json"))
    assert (q["service"], q["env"], q["platform"], q["running"], q["require_approval"]) == (
        "svc", "prod", "local", False, True)
    steps = {c["step"]: c["command"] for c in q["commands"]}
    assert steps["emergency stop (API 429, processing paused, roll back)"] == \
        "backout emergency-stop --env prod --reason TEXT"
    assert steps["rollback drill"] == "backout drill --env prod --allow-prod"  # prod refuses drills without it
    assert steps["emergency drill (quarterly)"] == "backout drill --emergency --env prod --allow-prod"
    for needed in ("status", "rollback", "emergency-stop", "verify", "repair", "resume", "drill", "incident"):
        assert any(c.split()[1] == needed for c in steps.values()), needed
    assert all("--env prod" in c for c in steps.values())
    assert [c["name"] for c in q["contacts"]] == ["Dana Lee", "AWS Support"]

    # every command is one the CLI parses, with every option it shows
    cli = typer.main.get_command(cli_main.app)
    for command in steps.values():
        words = command.split()[1:]
        cmd: Any = cli
        for w in words[: next(i for i, w in enumerate(words) if w.startswith("-") or PLACEHOLDER.match(w))]:
            cmd = cmd.commands[w]
        options = {o for p in cmd.params for o in p.opts}
        assert {w for w in words if w.startswith("--")} <= options, command

    text = backout(path, "runbook", "--env", "staging")
    assert "svc / staging — local platform, not running" in text
    assert "p99 duration of worker > 750 ms" in text and "error rate of a new version > 10 %" in text
    assert "backout rollback --env staging --reason TEXT" in text
    assert "Sam Ruiz" in text and "#staging-oncall" in text
    assert "backout drill --env staging\n" in text  # staging needs no --allow-prod
