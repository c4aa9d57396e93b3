"""Deployment commands: deploy, follow, show, history, approve, stop."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from backout.cli import step_summary
from backout.cli.context import SETTINGS, Client, EnvOpt, JsonOpt, env_name
from backout.cli.inputs import YesOpt, configuration, confirm, parse_set_env, who
from backout.cli.outcome import STYLE, alarm_rows, decision, details, outcome
from backout.cli.render import console, emit_json, err_console, table
from backout.errors import OperationFailed

TERMINAL = {"Succeeded", "RolledBack", "Stopped", "Failed"}

deployment_app = typer.Typer(
    help="One deployment: follow it live or show its timeline.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(deployments)
    app.command()(approve)
    app.command()(stop)
    app.add_typer(deployment_app, name="deployment")


def deploy(
    source: Annotated[Path | None, typer.Argument(help="code root (default: the manifest's source)")] = None,
    env: EnvOpt = None,
    strategy: Annotated[
        str | None, typer.Option(help="e.g. Canary10Percent5Minutes (default: the env's)")
    ] = None,
    description: Annotated[str, typer.Option(help="what this release changes")] = "",
    release: Annotated[int | None, typer.Option(help="deploy an already published release instead")] = None,
    set_env: Annotated[
        list[str], typer.Option("--set-env", help="KEY=VALUE added to the release's environment")
    ] = [],  # noqa: B006
    no_wait: Annotated[bool, typer.Option("--no-wait", help="start it and return")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Publish a new release and shift traffic to it step by step, rolling back on any alarm."""
    from backout.control.strategies import resolve

    environment = parse_set_env(set_env)  # what needs no supervisor is checked first
    if strategy is not None:
        resolve(strategy, SETTINGS.manifest)
    c = Client(env)
    body = {
        "source": str(source.resolve()) if source else None,
        "strategy": strategy,
        "description": description,
        "created_by": who(),
        "environment": environment,
        "release": release,
        "configuration": None if release is not None else configuration(SETTINGS.manifest, c.env),
    }
    view = c.call("POST", "/deployments", body)
    d = view["deployment"]
    if no_wait:
        if as_json:
            return emit_json(view)
        _preflight(view)
        console.print(
            f"deployment {d['id']} started: {d['stable']} → {d['target']} "
            f"({d['strategy']}); follow it with `backout deployment follow {d['id']} --env {c.env}`"
        )
        if d["status"] == "AwaitingApproval":
            console.print(
                f"[yellow]{c.env} requires approval[/]: it waits until `backout approve {d['id']} --env {c.env}`"
            )
        return
    if not as_json:
        _preflight(view)
    _follow(c, d["id"], as_json)


@deployment_app.command("follow")
def follow(deployment_id: str, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Re-attach to a deployment and follow it until it ends (exit 0 Succeeded, 1 otherwise). On AWS with
    shared state, a deployment whose driver died is taken over here once its lease expires."""
    c = Client(env)
    c.call("POST", f"/deployments/{deployment_id}/follow")
    _follow(c, deployment_id, as_json)


@deployment_app.command("show")
def show(deployment_id: str, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """A deployment's timeline: every event with its timestamp, alarm evidence, incident."""
    c = Client(env)
    view = c.call("GET", f"/deployments/{deployment_id}")
    if as_json:
        return emit_json(view)
    console.print(decision(view))  # first what was decided and by what, then how it got there
    console.print(_header(view["deployment"], view["now"]))
    t = Table(title="timeline", title_justify="left")
    for col in ("time", "kind", "event"):
        t.add_column(col)
    for e in view["events"]:
        style = {"critical": "red", "warning": "yellow"}.get(e["severity"], "")
        t.add_row(_clock(e["ts"]), e["kind"], Text(e["message"], style=style))
    console.print(t)
    console.print(details(view, console.width))
    if view["incident"]:
        i = view["incident"]
        console.print(f"incident {i['id']} ({i['status']}): backout incident show {i['id']} --env {c.env}")


def _preflight(view: dict[str, Any]) -> None:
    """The pre-flight check's warnings: thresholds that would fire on a canary as healthy as stable."""
    for e in view.get("events") or []:
        if e["kind"] == "preflight" and e["severity"] == "warning":
            console.print(Text(e["message"], style="yellow"))


def deployments(env: EnvOpt = None, limit: int = 20, as_json: JsonOpt = False) -> None:
    """Deployment history: id, versions, strategy, status, duration, reason."""
    rows = Client(env).call("GET", "/deployments", limit=limit)
    if as_json:
        return emit_json(rows)
    table(
        "deployments",
        ["id", "versions", "strategy", "status", "started", "duration", "reason"],
        [
            (
                d["id"],
                f"{d['stable']} → {d['target']}",
                d["strategy"],
                d["status"],
                _clock(d["created_at"]),
                _dur(d),
                d["reason"],
            )
            for d in rows
        ],
    )


def approve(deployment_id: str, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Approve a deployment waiting in AwaitingApproval (environments with require_approval)."""
    view = Client(env).call("POST", f"/deployments/{deployment_id}/approve", {"who": who()})
    emit_json(view) if as_json else console.print(f"approved {deployment_id}")


def stop(
    deployment_id: str,
    env: EnvOpt = None,
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="leave traffic where it is")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "",
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop an active deployment (like CodeDeploy stop-deployment); by default roll it back."""
    confirm(f"stop {deployment_id} in {env_name(env)}{'' if no_rollback else ' and roll it back'}?", yes)
    c = Client(env)
    body = {"rollback": not no_rollback, "reason": reason or f"stopped by {who()}", "who": who()}
    view = c.call("POST", f"/deployments/{deployment_id}/stop", body)
    if as_json:
        return emit_json(view)
    d = view["deployment"]
    console.print(f"deployment {d['id']}: [{STYLE.get(d['status'], '')}]{d['status']}[/]")


# --- rendering ----------------------------------------------------------------------------------
class _Interrupted(Exception):
    """Ctrl-C while following, raised where the loop waits (never inside a lock, as a KeyboardInterrupt
    can be: one that lands just after the live display takes its lock leaves it held, and the exit hangs)."""


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """An event Ctrl-C sets, instead of a KeyboardInterrupt anywhere (main thread only: elsewhere the
    event is never set, and Ctrl-C goes to whoever runs the main thread)."""
    pressed = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: pressed.set())
    except ValueError:  # not the main thread
        yield pressed
        return
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _follow(c: Client, deployment_id: str, as_json: bool) -> None:
    """Follow until the deployment settles. Ctrl-C stops following, never the deployment: the supervisor
    drives it, so say that and how to re-attach or stop it."""
    try:
        with _ctrl_c() as pressed:
            _follow_until_settled(c, deployment_id, as_json, pressed)
    except (KeyboardInterrupt, _Interrupted):
        err_console.print(
            f"\nstopped following; deployment {deployment_id} goes on in the {c.env} supervisor.\n"
            f"  re-attach: backout deployment follow {deployment_id} --env {c.env}\n"
            f"  stop it:   backout stop {deployment_id} --env {c.env}   (rolls back; --no-rollback keeps the weights)",
            highlight=False)
        raise SystemExit(130) from None


def _follow_until_settled(c: Client, deployment_id: str, as_json: bool, pressed: threading.Event) -> None:
    def pause() -> None:
        if pressed.wait(0.3):
            raise _Interrupted

    after: int | None = None
    view: dict[str, Any] = {}
    printed: list[dict[str, Any]] = []
    since: list[float] = []  # when the deployment was first seen terminal
    if as_json:
        while True:
            view = c.call("GET", f"/deployments/{deployment_id}")
            if _settled(view, since):
                break
            pause()
        emit_json(view)
    else:
        # the live panel goes at the end: the outcome below replaces it, decision first
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            while True:
                view = c.call("GET", f"/deployments/{deployment_id}", after_event=after)
                for e in view["events"]:
                    printed.append(e)
                    after = e["id"]
                    if e["kind"] == "alarm_state" and e["severity"] != "critical" and " new → " in e["message"]:
                        continue  # the table below shows every alarm; the log shows what changed
                    style = {"critical": "red", "warning": "yellow"}.get(e["severity"], "dim")
                    live.console.print(Text(f"{_clock(e['ts'])}  {e['message']}", style=style))
                d = view["deployment"]
                live.update(_panel(d, view))
                if _settled(view, since):
                    break
                pause()
        console.print()
        console.print(outcome(view, console.width))
        d = view["deployment"]
        if view.get("incident"):
            i = view["incident"]
            console.print(f"incident {i['id']} opened: backout incident show {i['id']} --env {c.env}")
        console.print(
            f"history: backout deployments --env {c.env};  timeline: backout deployment show {d['id']} --env {c.env}"
        )
    d = view["deployment"]
    step_summary.append(lambda: step_summary.deployment(c.call("GET", f"/deployments/{deployment_id}"), c.env))
    if d["status"] != "Succeeded":
        raise OperationFailed(f"deployment {d['id']} {d['status']}: {d['reason']}")


def _settled(view: dict[str, Any], since: list[float]) -> bool:
    """Terminal, and after a rollback also its incident opened: the deployer records RolledBack first
    and opens the incident once it has measured the bad version's impact (bounded wait)."""
    d = view["deployment"]
    if d["status"] not in TERMINAL:
        return False
    if not since:
        since.append(time.monotonic())
    return d["status"] != "RolledBack" or view.get("incident") is not None or time.monotonic() - since[0] > 30


def _panel(d: dict[str, Any], view: dict[str, Any]) -> Group:
    parts: list[Any] = [_header(d, view["now"])]
    if view["alarms"]:
        parts += [Text("alarms (new version)", style="bold"), *alarm_rows(view["alarms"], console.width)]
    return Group(*parts)


def _header(d: dict[str, Any], now: float) -> Text:
    steps = d["steps"]
    i = d["current_step"]
    step = f"step {i + 1}/{len(steps)}" if i is not None else "before traffic"
    left = ""
    if i is not None and d["step_started_at"] and d["status"] == "InProgress":
        remaining = d["step_started_at"] + steps[i]["hold"] - now
        left = f", {max(0.0, remaining):.0f} s left in step"
    w = (
        d["current_weight"]
        if d["status"] not in ("RolledBack", "Stopped") or not d["rollback_completed_at"]
        else 0.0
    )
    weights = f"{d['stable']} {100 - w:g}% / {d['target']} {w:g}%"
    status = Text(d["status"], style=STYLE.get(d["status"], "cyan"))
    return Text.assemble(
        f"deployment {d['id']} ({d['strategy']}): ",
        status,
        f"  {step}{left}  weights {weights}",
        (f"  reason: {d['reason']}" if d["reason"] else ""),
    )


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


def _dur(d: dict[str, Any]) -> str:
    if d["finished_at"] is None:
        return "running"
    return f"{d['finished_at'] - d['created_at']:.1f} s"
