"""`--output json|yaml|table` (`-o`) beside `--json` on every command that has `--json`: YAML and JSON parse to
the same data; a bad format or a contradiction is one line, exit 2. In-process through `run()`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from backout.cli.main import app
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

[contacts.on_call]
name = "Dana Lee"
channel = "#incidents"
"""


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    p = tmp_path / "backout.toml"
    p.write_text(MANIFEST.replace("{state}", str(tmp_path / "state")))
    monkeypatch.delenv("BACKOUT_ENV", raising=False)
    yield p


cli = cli_in_process


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the click tree typer builds (its own click: not `click.Group` instances)."""
    yield path, group
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_with_json_also_takes_output() -> None:
    root = typer.main.get_command(app)
    with_json = {path: cmd for path, cmd in _commands(root)
                 if any("--json" in p.opts for p in cmd.params)}
    assert len(with_json) > 25, sorted(with_json)  # status, deploy, drill, queue stats, incident list, …
    for path, cmd in with_json.items():
        (output,) = [p for p in cmd.params if "--output" in p.opts]
        assert "-o" in output.opts, path
    report = next(cmd for path, cmd in _commands(root) if path == ("incident", "report"))
    assert any("--out" in p.opts for p in report.params)


@pytest.mark.parametrize("command", [("runbook",), ("incident", "list")])
def test_json_and_yaml_are_the_same_data(command: tuple[str, ...], manifest: Path) -> None:
    from backout.control.store import Store

    with Store(manifest.parent / "state" / "staging" / "control.db") as store:  # an incident to list
        store.open_incident("staging", "emergency stop: wrong totals", trigger={"kind": "emergency"},
                            evidence={"alarms": ["operator: wrong totals"]}, opened_at=1_700_000_000.25)
    code, as_json, _ = cli(manifest, *command, "--json")
    assert code == 0
    code, dash_o, _ = cli(manifest, *command, "-o", "json")
    assert code == 0 and dash_o == as_json
    code, as_yaml, _ = cli(manifest, *command, "--output", "yaml")
    assert code == 0 and not as_yaml.lstrip().startswith(("{", "["))
    assert yaml.safe_load(as_yaml) == json.loads(as_json)
    code, text, _ = cli(manifest, *command, "-o", "table")
    assert code == 0 and text != as_json


@pytest.mark.parametrize(("args", "expected"), [
    (("runbook", "-o", "xml"), "--output 'xml': choose json, yaml or table"),
    (("runbook", "--json", "-o", "yaml"), "--json and --output yaml disagree"),
])
def test_a_bad_output_is_one_line_and_exit_2(args: tuple[str, ...], expected: str, manifest: Path) -> None:
    code, out, err = cli(manifest, *args)
    assert code == 2 and out == "" and expected in err and len(err.strip().splitlines()) == 1


def test_progress_is_lines_off_a_terminal_a_spinner_on_one_and_nothing_with_structured_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from rich.console import Console

    from backout.cli import render

    def steps(console: Console) -> str:
        monkeypatch.setattr(render, "err_console", console)
        with render.progress("stopping staging") as step:
            for s in ("draining in-flight work", "draining in-flight work", "waiting for the process to exit"):
                step(s)
        return console.file.getvalue()  # type: ignore[attr-defined]

    lines = steps(Console(file=io.StringIO(), force_terminal=False)).splitlines()
    assert [x.rsplit(" (", 1)[0] for x in lines] == ["stopping staging: draining in-flight work",
                                                     "stopping staging: waiting for the process to exit"]
    assert "stopping staging" in steps(Console(file=io.StringIO(), force_terminal=True))  # the spinner
    monkeypatch.setattr(render, "_FORMAT", {"now": "yaml", "asked": "yes"})  # --output yaml
    assert steps(Console(file=io.StringIO(), force_terminal=False)) == ""
