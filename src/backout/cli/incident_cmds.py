"""`backout incident …`: list, show, annotate, close and report incidents.

These read and write the environment's `control.db` directly rather than through the supervisor: an
incident is worked on after the fact, often while the environment is down.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from backout.cli.context import SETTINGS, EnvOpt, JsonOpt, env_name
from backout.cli.inputs import who
from backout.cli.render import console, emit_json, err_console, table
from backout.errors import UsageError

if TYPE_CHECKING:
    from types import ModuleType

    from backout.control.store import ControlStore
    from backout.runbooks.incidents import IncidentView


def _ir() -> ModuleType:
    """The incident runbooks, imported when an incident command runs: they bring SQLAlchemy and
    matplotlib, which every other command's start-up should not pay for."""
    from backout.runbooks import incidents

    return incidents

incident_app = typer.Typer(
    help="Incidents opened by rollbacks and emergency stops: notes, action items, lessons, reports.",
    no_args_is_help=True,
)

IdArg = Annotated[str, typer.Argument(help="incident id: INC-0003, INC-3 or 3")]
SEVERITY_STYLE = {"critical": "red", "warning": "yellow"}


def register(app: typer.Typer) -> None:
    """Add the `incident` sub-command group to `app` (once; a second call is a no-op)."""
    if any(g.name == "incident" for g in app.registered_groups):
        return
    app.add_typer(incident_app, name="incident")


def _view(store: ControlStore, incident_id: str, env: str) -> IncidentView:
    """The incident with what the manifest adds to it: the service's name and the environment's contacts."""
    m = SETTINGS.manifest
    return _ir().load(store, incident_id, env, service=m.service.name, contacts=m.contact_lines(env))


def _announce_resolution(store: ControlStore, view: IncidentView) -> None:
    """Send the `incident_closed` notification (with the resolved notice) to the environment's targets from
    here — the supervisor may be down — waiting briefly; a delivery that fails is said, and kept as an event."""
    from backout.control.notify import DeliveryResult, Notifier

    m = SETTINGS.manifest
    targets = m.environment(view.env).notify
    if not targets:
        return
    failed: list[DeliveryResult] = []
    try:
        notifier = Notifier(targets, attempts=3, backoff=0.5, contacts=m.contact_lines(view.env),
                            on_result=lambda r: None if r.ok else failed.append(r))
    except UsageError as e:
        err_console.print(f"[yellow]warning:[/] resolution not announced: {e}", highlight=False, soft_wrap=True)
        return
    with notifier:
        notifier.notify(_ir().resolution(view))
        notifier.flush(timeout=15)
    for r in failed:
        msg = f"notification to {r.target} failed after {r.attempts} attempts: {r.error}"
        store.add_event("notify_failed", msg, incident_id=view.incident.id, severity="warning")
        err_console.print(f"[yellow]warning:[/] resolution {msg}", highlight=False, soft_wrap=True)


def _open(env: str | None, must_exist: bool = True) -> tuple[str, ControlStore | None]:
    """The environment's control store; None when it has never been started (nothing to list) —
    reading must not create an environment's state as a side effect."""
    name = env_name(env)
    if SETTINGS.manifest.environment(name).platform == "aws":  # shared by every machine when it has a table
        from backout.control.shared_store import open_shared
        from backout.platforms import open_platform

        shared = open_shared(open_platform(SETTINGS.manifest, name))
        if shared is not None:
            return name, shared
    path = SETTINGS.manifest.state_dir(name) / "control.db"
    if not path.exists():
        if must_exist:
            raise UsageError(f"environment {name!r} has no incidents yet (no {path})")
        return name, None
    from backout.control.store import Store

    return name, Store(path)


@incident_app.command("list")
def list_(
    env: EnvOpt = None,
    status: Annotated[str | None, typer.Option(help="open or closed")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Incidents of an environment, newest first."""
    if status is not None and status not in ("open", "closed"):
        raise UsageError(f"--status must be open or closed, not {status!r}")
    name, store = _open(env, must_exist=False)
    rows = [] if store is None else store.incidents(status=status)
    if store is not None:
        store.close()
    if as_json:
        from dataclasses import asdict

        return emit_json([asdict(i) for i in rows])
    table(
        f"incidents in {name}" + (f" ({status})" if status else ""),
        ["id", "opened", "severity", "status", "deployment", "open actions", "title"],
        [
            (
                i.id,
                _ir().clock(i.opened_at)[:19],
                i.severity,
                i.status,
                i.deployment_id or "—",
                sum(1 for a in i.action_items if not a.get("done")),
                i.title,
            )
            for i in rows
        ],
    )


@incident_app.command()
def show(incident_id: IdArg, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Summary, trigger, evidence, timeline, notes, action items and root cause of an incident."""
    name, store = _open(env)
    assert store is not None
    with store:
        view = _view(store, incident_id, name)
    if as_json:
        return emit_json(_ir().to_dict(view))
    inc, d = view.incident, view.deployment
    console.print(
        Text.assemble(
            (f"{inc.id}", "bold"),
            f"  {inc.title}\n",
            (inc.severity, SEVERITY_STYLE.get(inc.severity, "")),
            f" · {inc.status} · {name} · opened {_ir().clock(inc.opened_at)}",
            f" · closed {_ir().clock(inc.closed_at)}" if inc.closed_at else "",
        )
    )
    if d is not None:
        console.print(
            f"deployment {d.id} ({escape(d.strategy)}): "
            f"{view.stable_label} → {view.bad_label}, {d.status}"
        )
    t = view.trigger
    if t:
        console.print(f"trigger: {escape(str(t.get('kind', '?')))} — {escape(str(t.get('reason', '')))}")
    console.print(
        f"first traffic → decision {_ir().fmt_ms(view.detection_ms)}; "
        f"decision → 100 % stable {_ir().fmt_ms(view.restore_ms)}"
    )
    if view.evidence:
        console.print("evidence:")
        for s in view.evidence:
            console.print(f"  - {escape(s)}")
    if view.impact:
        console.print(escape(_ir().impact_sentence(view)))
    if view.jobs_touched is not None and not view.impact:
        console.print(f"jobs touched: {view.jobs_touched}")

    tl = Table(title="timeline", title_justify="left")
    for col in ("time", "severity", "kind", "event"):
        tl.add_column(col)
    for e in view.events:
        style = SEVERITY_STYLE.get(e.severity, "")
        tl.add_row(_ir().clock(e.ts), Text(e.severity, style=style), e.kind, Text(e.message, style=style))
    console.print(tl)
    if inc.notes:
        table(
            "notes",
            ["time", "author", "note"],
            [(_ir().clock(n.get("ts")), n.get("author"), n.get("text")) for n in inc.notes],
        )
    if inc.action_items:
        table(
            "action items",
            ["#", "action", "owner", "status"],
            [
                (i, a.get("text"), a.get("owner") or "—", "done" if a.get("done") else "open")
                for i, a in enumerate(inc.action_items, 1)
            ],
        )
    if inc.lessons:
        console.print("lessons learned:")
        for group, texts in _ir().group_lessons(inc.lessons).items():
            for text in texts:
                console.print(f"  - [{escape(group)}] {escape(text)}")
    console.print(f"root cause: {escape(inc.root_cause) if inc.root_cause else 'not yet determined'}")


@incident_app.command()
def note(
    incident_id: IdArg, text: Annotated[str, typer.Argument(help="the note")], env: EnvOpt = None
) -> None:
    """Add a note to an incident's timeline (who, when, what)."""
    name, store = _open(env)
    assert store is not None
    with store:
        inc = _ir().add_note(store, incident_id, text, who())
    console.print(f"note {len(inc.notes)} added to {inc.id}")


@incident_app.command()
def action(
    incident_id: IdArg,
    text: Annotated[str, typer.Argument(help="what must be done")],
    owner: Annotated[str, typer.Option(help="who will do it")] = "",
    env: EnvOpt = None,
) -> None:
    """Add an action item (with an owner) to an incident."""
    name, store = _open(env)
    assert store is not None
    with store:
        inc = _ir().add_action(store, incident_id, text, owner)
    console.print(
        f"action item {len(inc.action_items)} added to {inc.id}; mark it done with "
        f"`backout incident done {inc.id} {len(inc.action_items)} --env {name}`"
    )


@incident_app.command()
def done(
    incident_id: IdArg,
    number: Annotated[int, typer.Argument(help="the action item's number, as listed by show")],
    env: EnvOpt = None,
) -> None:
    """Mark an action item done."""
    name, store = _open(env)
    assert store is not None
    with store:
        inc = _ir().complete_action(store, incident_id, number)
    left = sum(1 for a in inc.action_items if not a.get("done"))
    console.print(f"action item {number} of {inc.id} done ({left} open)")


@incident_app.command()
def lesson(
    incident_id: IdArg,
    text: Annotated[
        str,
        typer.Argument(
            help='a lesson; start it with "Process improvements:", "Monitoring enhancements:" or '
            '"Prevention strategies:" to group it in the report'
        ),
    ],
    env: EnvOpt = None,
) -> None:
    """Record a lesson learned."""
    name, store = _open(env)
    assert store is not None
    with store:
        inc = _ir().add_lesson(store, incident_id, text)
    console.print(f"lesson {len(inc.lessons)} added to {inc.id}")


@incident_app.command("close")
def close_(
    incident_id: IdArg,
    root_cause: Annotated[str, typer.Option("--root-cause", help="what caused it")],
    env: EnvOpt = None,
) -> None:
    """Close an incident with its root cause."""
    name, store = _open(env)
    assert store is not None
    with store:
        inc = _ir().close(store, incident_id, root_cause, who())
        open_actions = sum(1 for a in inc.action_items if not a.get("done"))
        view = _view(store, inc.id, name)
        console.print(
            f"{inc.id} closed"
            + (f"; {open_actions} action item(s) still open" if open_actions else "")
            + f". Report: backout incident report {inc.id} --env {name} --out {inc.id}.md"
        )
        console.print(f"resolved notice (for the status page and customers):\n{_ir().resolved_notice(view)}",
                      highlight=False, markup=False, soft_wrap=True)  # copied as is: never wrapped at the terminal
        _announce_resolution(store, view)


@incident_app.command()
def report(
    incident_id: IdArg,
    env: EnvOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="md or html (default: from --out's suffix, else md)")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="write here, with the chart PNG next to it")
    ] = None,
    legacy_output: Annotated[  # what --out was called before -o meant the output format everywhere else
        Path | None, typer.Option("--output", "-o", hidden=True)
    ] = None,
) -> None:
    """The incident report a team files: summary, impact, timeline, alarm evidence, chart, root cause,
    action items, lessons learned. Markdown to stdout unless --out FILE."""
    if legacy_output is not None:
        if output is not None:
            raise UsageError("give --out FILE once (--output is its old name)")
        output = legacy_output
    if fmt is None:
        fmt = "html" if output is not None and output.suffix.lower() in (".html", ".htm") else "md"
    if fmt not in ("md", "html"):
        raise UsageError(f"--format must be md or html, not {fmt!r}")
    name, store = _open(env)
    assert store is not None
    with store:
        view = _view(store, incident_id, name)
    command = f"backout incident report {view.incident.id} --env {name} --format {fmt}" + (
        f" --out {output}" if output else ""
    )
    if output is None:
        if fmt == "html":
            typer.echo(_ir().render_html(view, _ir().render_chart(view), command), nl=False)
        else:
            typer.echo(_ir().render_markdown(view, command=command), nl=False)
        return
    written = _ir().write_report(view, output, fmt, command)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
