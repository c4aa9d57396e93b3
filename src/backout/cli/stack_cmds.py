"""`backout stack status|cancel`: the CloudFormation stack an aws environment's resources come from.

These talk to AWS directly (no supervisor needed): a stack stuck in an update is exactly when the
operator needs them. `cancel` applies only while an update is in progress; after a finished deploy
the procedure's `cancel-update-stack` does nothing, and `backout rollback` is the way back.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from backout.cli.context import SETTINGS, EnvOpt, JsonOpt, env_name
from backout.cli.render import console, emit_json, table
from backout.errors import UsageError

stack_app = typer.Typer(help="The aws environment's CloudFormation stack: status, cancel an update.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")


def _stacks(env: str | None) -> Any:
    from backout.platforms import open_platform
    from backout.platforms.base import Stacks

    name = env_name(env)
    m = SETTINGS.manifest
    spec = m.environment(name)
    if spec.platform != "aws":
        raise UsageError(f"environment {name!r} runs on platform {spec.platform!r}: it has no CloudFormation stack")
    platform = open_platform(m, name)
    if not isinstance(platform, Stacks):
        raise UsageError(f"environment {name!r}: this platform has no stack")
    return platform


def _show(s: Any, as_json: bool) -> None:
    if as_json:
        return emit_json(s.as_dict())
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_updated)) if s.last_updated else "—"
    console.print(f"[bold]{s.name}[/] {s.status}" + (f" — {s.reason}" if s.reason else "") + f" (last update {when})")
    if s.outputs:
        table("outputs", ["output", "value"], sorted(s.outputs.items()))


@stack_app.command("status")
def status(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """describe_stacks: status, reason, last update, outputs."""
    _show(_stacks(env).stack_status(), as_json)


@stack_app.command("cancel")
def cancel(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """cancel_update_stack — only while an update is in progress (UPDATE_IN_PROGRESS): a finished
    deploy cannot be cancelled; roll the live aliases back with `backout rollback` instead."""
    s = _stacks(env).cancel_stack_update()
    if not as_json:
        console.print("update cancelled: CloudFormation rolls the stack back to its previous template")
    _show(s, as_json)
