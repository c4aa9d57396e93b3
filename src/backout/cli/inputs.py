"""What several command modules read from the operator besides their own options: who they are (recorded
with every change), `--set-env KEY=VALUE` pairs, the confirmation of a destructive command and the
functions' configuration in their `backout.toml`. A leaf module, so that command modules never import `main`
or each other."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import asdict
from typing import Annotated, Any

import typer

from backout.errors import UsageError
from backout.manifest import Manifest

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


def confirm(question: str, yes: bool) -> None:
    """A destructive command goes on only when the operator says so: `--yes`, or "y" at a terminal.
    Without a terminal (a script, CI) and without `--yes` it refuses — one line, exit 2 — rather than
    proceed; "n" at the prompt ends the command with exit 1."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — not a terminal, so pass --yes to confirm")
    if not typer.confirm(question):
        raise typer.Exit(1)


def who() -> str:
    """The operator's name for the audit trail: `BACKOUT_USER` when set (a CI job names the person who
    approved, not the runner's login), else the login name; "unknown" where the system has none."""
    name = os.environ.get("BACKOUT_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_set_env(items: list[str]) -> dict[str, str]:
    """`--set-env KEY=VALUE` options as a dict; a UsageError names the malformed one."""
    out = {}
    for it in items:
        if "=" not in it:
            raise UsageError(f"--set-env {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def configuration(manifest: Manifest, env: str) -> dict[str, dict[str, Any]]:
    """Every function's configuration (handler, timeout, memory, environment) as this `backout.toml`
    states it: a publish sends it, so the new release holds what the operator edited even when the
    running supervisor read its manifest before the edit."""
    from backout.platforms.base import configuration_of

    return {fn: asdict(c) for fn, c in configuration_of(manifest, env).items()}
