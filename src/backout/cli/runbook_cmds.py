"""Operator runbooks: status, verify, smoke, rollback, emergency stop/resume, backups, repair, drills."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.text import Text

from backout.cli import step_summary
from backout.cli.context import SETTINGS, Client, EnvOpt, JsonOpt, env_name
from backout.cli.inputs import YesOpt, confirm, who
from backout.cli.render import console, emit_json, err_console, progress, table
from backout.errors import OperationFailed, UsageError

backup_app = typer.Typer(help="Snapshots of the service's data: create, list, restore.", no_args_is_help=True)
drill_app = typer.Typer(
    help="Rollback drills: prove automatic rollback works (monthly, in staging).", invoke_without_command=True
)


def register(app: typer.Typer) -> None:
    for fn in (status, verify, smoke, rollback, resume, repair, runbook):
        app.command()(fn)
    app.command("emergency-stop")(emergency_stop)
    app.add_typer(backup_app, name="backup")
    app.add_typer(drill_app, name="drill")


def _check_rows(report: dict[str, Any]) -> None:
    rows = [
        (
            c["group"],
            c["name"],
            _result(c),
            c["detail"],
            f"{c['latency_ms']:.0f}",
        )
        for c in report["checks"]
    ]
    table("verify", ["group", "check", "result", "detail", "ms"], rows)
    warned = sum(1 for c in report["checks"] if c.get("warning"))
    if not report["ok"]:
        console.print(Text("verify FAILED", "red bold"))
    else:
        console.print(Text(f"passed with {warned} warning(s)", "yellow") if warned else Text("all checks passed",
                                                                                           "green"))


def _result(check: dict[str, Any]) -> Text:
    if not check["ok"]:
        return Text("FAIL", "red")
    return Text("warning", "yellow") if check.get("warning") else Text("ok", "green")


def status(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Live versions, active deployment, alarms, API and processing, queues, incidents, last drill."""
    c = Client(env)
    s = c.call("GET", "/status")
    if as_json:
        return emit_json(s)
    console.print(f"[bold]{s['service']}[/] / [bold]{s['env']}[/]  gateway {s['gateway_url']}")
    table(
        "functions",
        ["function", "live alias weights"],
        [(fn, ", ".join(f"v{v} {p:g}%" for v, p in f["weights"].items())) for fn, f in s["functions"].items()],
    )
    d = s["deployment"]
    if d:
        console.print(
            f"deployment {d['id']}: {d['status']} step {d['step_label']} — {d['stable']} → "
            f"{d['target']} at {d['current_weight']:g}%"
        )
    else:
        console.print("no deployment in progress")
    if s["alarms"]:
        table("alarms", ["alarm", "state", "detail"], [(k, a["state"], a["detail"]) for k, a in s["alarms"].items()])
    api = (
        "[red]BLOCKED (429)[/]" if s["api"]["blocked"] else f"open ({s['api']['rate']:g}/s, burst {s['api']['burst']})"
    )
    proc = "on" if s["processing"] else "[red]PAUSED[/]"
    console.print(f"API: {api}   processing: {proc}")
    table(
        "queues",
        ["queue", "visible", "in flight", "oldest (s)", "DLQ arrivals"],
        [
            (q, v["visible"], v["in_flight"], f"{v['age_of_oldest']:.0f}", v["dlq_arrivals"])
            for q, v in s["queues"].items()
        ],
    )
    if s["incidents"]:
        table(
            "open incidents",
            ["id", "severity", "title"],
            [(i["id"], i["severity"], i["title"]) for i in s["incidents"]],
        )
    for label, ld in (("last drill", s["last_drill"]), ("last emergency drill", s.get("last_emergency_drill"))):
        console.print(
            f"{label}: "
            + (
                f"{ld['id']} {'passed' if ld['passed'] else 'FAILED'} "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(ld['started_at']))}"
                + (f" ({ld['fault']})" if ld["fault"] != "emergency" else "")
                if ld
                else "none"
            )
        )
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    _contacts(s.get("contacts") or [], s["env"])


def _contacts(contacts: list[dict[str, str]], env: str) -> None:
    if contacts:
        table("contacts", ["role", "name", "channel"], [(c["role"], c["name"], c["channel"]) for c in contacts])
    else:
        console.print(Text.assemble((f"no contacts for {env}:", "yellow"),
                                    " add a [contacts] table to backout.toml (role → name, channel)"))


def runbook(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """The procedure's quick reference for this environment: what rolls back automatically, the command for
    each step (rollback, emergency stop, verify, repair, drill, status, incidents), the contacts."""
    from backout.runbooks.quickref import quick_reference
    from backout.server.process import read_endpoints

    name = env_name(env)
    m = SETTINGS.manifest
    q = quick_reference(m, name, read_endpoints(m.state_dir(name)))
    if as_json:
        return emit_json(q)
    console.print(f"[bold]{q['service']}[/] / [bold]{q['env']}[/] — {q['platform']} platform, "
                  f"{'running' if q['running'] else 'not running'}: gateway {q['gateway_url']}, "
                  f"control {q['control_url']}", highlight=False)
    console.print(f"deployments: {q['strategy']}{' (approval required)' if q['require_approval'] else ''}; the "
                  f"previous release stays ready {q['rollback_window_seconds']:g} s for an instant rollback",
                  highlight=False)
    console.print("automatic rollback on:")
    for t in q["automatic_rollback_on"]:
        console.print(f"  - {t}", highlight=False, markup=False)
    console.print(f"quick reference — {name} (each command on one line, to copy):")
    for c in q["commands"]:  # not a table: a command wrapped inside a cell cannot be pasted
        console.print(Text.assemble(f"  {c['step']}\n      ", (c["command"], "bold")), soft_wrap=True)
    _contacts(q["contacts"], name)
    console.print("notifications: " + (", ".join(q["notify"]) or "none (add notify = [\"slack://…\"] to the "
                                                                   "environment)"), highlight=False, markup=False)


def verify(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Validation after rollback: API health, functions, database, queues, alarms, aliases (exit 1 on failure)."""
    report = Client(env).call("POST", "/verify")
    emit_json(report) if as_json else _check_rows(report)
    if not report["ok"]:
        raise typer.Exit(1)


def smoke(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Run the manifest's smoke tests against the environment (API_BASE_URL and ENVIRONMENT set)."""
    from backout.control.smoke import run_smoke

    c = Client(env)
    results = run_smoke(c.manifest, c.env, c.gateway_url)
    if as_json:
        emit_json([r.__dict__ for r in results])
    else:
        table(
            "smoke tests",
            ["test", "result", "seconds", "detail"],
            [
                (r.name, Text("ok", "green") if r.ok else Text("FAIL", "red"), f"{r.seconds:.1f}", r.detail[-300:])
                for r in results
            ],
        )
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def rollback(
    env: EnvOpt = None,
    to: Annotated[int | None, typer.Option("--to", help="release to go back to (default: the previous stable)")] = None,
    reason: Annotated[str, typer.Option(help="why (recorded in the incident)")] = "",
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll back now: stop the deployment in progress, or return to the previous stable release."""
    name = env_name(env)
    if not reason.strip():
        raise UsageError("--reason is required: say why you roll back (it goes into the incident)")
    confirm(f"roll back {name}{f' to release {to}' if to else ''}?", yes)
    c = Client(name)
    r = c.call("POST", "/rollback", {"to": to, "reason": reason, "who": who()})
    step_summary.append(lambda: step_summary.rollback(r, c.call("GET", f"/deployments/{r['deployment']}"), name))
    if as_json:
        emit_json(r)
    else:
        how = (
            "stopped the deployment"
            if r["mode"] == "stopped deployment"
            else ("instant (warm)" if r["warm"] else f"started workers first ({r.get('warm_seconds', 0):.1f} s)")
        )
        sw = f", switch {r['switch_ms']:.1f} ms" if r.get("switch_ms") is not None else ""
        console.print(
            f"rolled back {r['from_label']} → {r['to_label']} ({how}{sw}); deployment {r['deployment']}, "
            f"incident {r['incident']}"
        )
        if r.get("verify"):
            _check_rows(r["verify"])
    if r.get("verify") and not r["verify"]["ok"]:
        raise typer.Exit(1)


def emergency_stop(
    env: EnvOpt = None,
    reason: Annotated[str, typer.Option(help="why (recorded in the incident)")] = "",
    keep_api: Annotated[
        bool, typer.Option("--keep-api", help="pause processing only: the API stays open, its work waits queued")
    ] = False,
    no_rollback: Annotated[
        bool,
        typer.Option("--no-rollback", help="keep what is live: no rollback of a deployment in progress or of one "
                     "that finished within the rollback window"),
    ] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Block the API (429), pause processing, roll back (the deployment in progress, or the one that finished
    within the rollback window), snapshot, open a critical incident."""
    name = env_name(env)
    if not reason.strip():
        raise UsageError("--reason is required for an emergency stop")
    what = "pause all processing (the API stays open)" if keep_api else "block the API and pause all processing"
    confirm(f"EMERGENCY STOP {name}: {what}?", yes)
    r = Client(name).call("POST", "/emergency-stop", {"reason": reason, "who": who(), "keep_api": keep_api,
                                                      "rollback": not no_rollback})
    if as_json:
        return emit_json(r)
    table(
        f"emergency stop of {name} — incident {r['incident']}",
        ["step", "result", "ms", "detail"],
        [
            (s["step"], Text("ok", "green") if s["ok"] else Text("FAIL", "red"), f"{s['ms']:.1f}", s["detail"])
            for s in r["steps"]
        ],
    )
    rb = r.get("rolled_back")
    if rb:
        console.print(f"rolled back {rb['from_label']} → {rb['to_label']}; repair the jobs {rb['from_label']} "
                      f"processed: backout repair --deployment {rb['deployment']} --env {name}")
    console.print(f"resume with `backout resume --env {name}` once the cause is fixed (verify must pass)")


def resume(
    env: EnvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="resume even if verify fails (recorded)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-enable processing and the API after an emergency stop, once verify passes."""
    c = Client(env)
    r = c.call("POST", "/resume", {"force": force, "who": who()})
    if as_json:
        return emit_json(r)
    _check_rows(r["verify"])
    put_back = {"api": "API open", "processing": "processing on"}
    console.print(f"{c.env} resumed{' (FORCED)' if r['forced'] else ''}: "
                  + ", ".join(put_back[x] for x in r.get("restored", list(put_back))))


def repair(
    deployment: Annotated[str, typer.Option("--deployment", "-d", help="the rolled-back deployment")],
    env: EnvOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the affected jobs only")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore the jobs a rolled-back version processed to their pre-deployment state and reprocess them."""
    r = Client(env).call("POST", "/repair", {"deployment": deployment, "dry_run": dry_run, "who": who()})
    if as_json:
        return emit_json(r)
    console.print(
        f"r{r['bad_release']} of {r['deployment']} processed {len(r['jobs'])} job(s); snapshot {r['snapshot']}"
    )
    for j in r["jobs"]:
        console.print(f"  {j}")
    if not dry_run and r["jobs"]:
        console.print(
            f"restored {len(r.get('restored', []))} from the snapshot, reset {len(r.get('reset', []))}, "
            f"re-queued {len(r.get('requeued', []))} for the stable version"
        )


@backup_app.command("create")
def backup_create(env: EnvOpt = None, label: str = "", as_json: JsonOpt = False) -> None:
    """Snapshot the service's data now (SQLite online backup + files)."""
    r = Client(env).call("POST", "/backups", {"label": label})
    emit_json(r) if as_json else console.print(f"backup {r['id']} ({r['snapshot']}) taken")


@backup_app.command("list")
def backup_list(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Backups: every deployment's pre-traffic snapshot and the ones taken by hand."""
    rows = Client(env).call("GET", "/backups")
    if as_json:
        return emit_json(rows)
    table(
        "backups",
        ["id", "snapshot", "taken", "deployment", "label", "available"],
        [
            (
                b["id"],
                b["platform_snapshot_id"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["created_at"])),
                b["deployment_id"] or "",
                b["label"],
                "yes" if b["available"] else "NO",
            )
            for b in rows
        ],
    )


@backup_app.command("restore")
def backup_restore(backup_id: str, env: EnvOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Restore all data from a backup (drops later jobs: prefer `backout repair`): the supervisor says what
    would be lost; at a terminal you confirm it, in a script --yes does."""
    import sys

    c = Client(env)
    try:
        r = c.call("POST", f"/backups/{backup_id}/restore", {"yes": yes, "who": who()})
    except UsageError as e:
        if yes or not sys.stdin.isatty() or "--yes" not in str(e):
            raise
        err_console.print(str(e), highlight=False, markup=False)
        confirm(f"restore {backup_id} anyway?", False)
        r = c.call("POST", f"/backups/{backup_id}/restore", {"yes": True, "who": who()})
    emit_json(r) if as_json else console.print(f"restored {r['restored']} in {r['seconds']:.2f} s: {r['diff']}")


@drill_app.callback()
def drill(
    ctx: typer.Context,
    env: EnvOpt = None,
    fault: Annotated[str, typer.Option(help="errors=0.5 | latency=3s | crash | dlq")] = "errors=0.5",
    target_seconds: Annotated[float, typer.Option(help="automatic rollback must complete within this")] = 60.0,
    emergency: Annotated[bool, typer.Option(
        "--emergency", help="rehearse emergency stop → verify → resume instead (quarterly), each step timed")] = False,
    allow_prod: Annotated[bool, typer.Option("--allow-prod", help="drills are refused for prod without it")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Deploy the stable code with an injected fault under synthetic traffic; pass if auto-rollback is in time.
    With --emergency: stop, verify and resume under synthetic traffic; pass if each step meets its target and
    no request or message is lost."""
    if ctx.invoked_subcommand is not None:
        return
    from backout.runbooks.drill import parse_fault, refuse_prod

    name = env_name(env)
    refuse_prod(name, SETTINGS.manifest.environment(name), allow_prod)  # before reaching for the supervisor
    if not emergency:
        parse_fault(fault)
    c = Client(name)
    c.timeout = target_seconds + 300
    body = {"kind": "emergency" if emergency else "rollback", "fault": fault, "target_seconds": target_seconds,
            "allow_prod": allow_prod, "who": who()}
    with progress(f"{'emergency' if emergency else 'rollback'} drill in {name}") as step:
        r = _while_watching(c, lambda: c.call("POST", "/drills", body), step)
    if not emergency and r.get("deployment"):
        step_summary.append(lambda: step_summary.drill(r, c.call("GET", f"/deployments/{r['deployment']}"), c.env))
    if as_json:
        emit_json(r)
    elif emergency:
        _emergency_drill(r, c.env)
    else:
        verdict = Text("PASSED", "green bold") if r["passed"] else Text("FAILED", "red bold")
        t = r["first_traffic_to_stable_seconds"]
        console.print(
            Text.assemble(
                f"drill {r['drill']} ({r['fault']}): ",
                verdict,
                f" — automatic rollback {t:.1f} s after first faulty traffic "
                f"(target {r['target_seconds']:g} s), decision→stable "
                f"{1000 * (r['rollback_seconds'] or 0):.0f} ms"
                if t is not None
                else " — no automatic rollback",
            )
        )
        for f in r["failures"]:
            console.print(f"  [red]✗[/] {f}")
        console.print(f"deployment: backout deployment show {r['deployment']} --env {c.env}")
    if not r["passed"]:
        raise OperationFailed(f"drill {r['drill']} failed")


def _while_watching(c: Client, call: Any, step: Any) -> Any:
    """`call()` (a long request) in a thread while this one reports what the environment is doing: the drill's
    deployment and its step, or the API and processing switches — read on a connection of its own."""
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True, name="drill-call")
    t.start()
    watcher = Client(c.env)
    try:
        while t.is_alive():
            try:
                s = watcher.call("GET", "/status")
            except (OperationFailed, UsageError):
                s = None
            if s is not None:
                d = s.get("deployment")
                if d:
                    step(f"deployment {d['id']} {d['status']}, step {d['step_label']}, "
                         f"{d['target']} at {d['current_weight']:g}%")
                else:
                    step(f"API {'blocked (429)' if s['api']['blocked'] else 'open'}, processing "
                         f"{'paused' if not s['processing'] else 'on'}")
            t.join(0.5)
    finally:
        watcher.close()
    if "error" in out:
        raise out["error"]
    return out["result"]


def _emergency_drill(r: dict[str, Any], env: str) -> None:
    verdict = Text("PASSED", "green bold") if r["passed"] else Text("FAILED", "red bold")
    console.print(Text.assemble(f"emergency drill {r['drill']}: ", verdict,
                                f" — stop → verify → resume in {r['seconds']:.1f} s"))
    table("steps", ["step", "result", "seconds", "target"],
          [(s["step"], Text("ok", "green") if s["ok"] else Text("FAIL", "red"), f"{s['seconds']:.2f}",
            f"{s['target_seconds']:g}") for s in r["steps"]])
    for s in r["steps"]:
        console.print(Text(f"  {s['step']}: {s['detail']}", style="dim"), soft_wrap=False)
    a = r["accounted"]
    console.print(f"requests: {a['requests_sent']} sent = {a['requests_served']} served + "
                  f"{a['requests_throttled']} throttled (429 while stopped) + {a['requests_failed']} lost")
    console.print(f"messages: {a['messages_sent']} sent = {a['messages_processed']} processed + "
                  f"{a['messages_dead_lettered']} dead-lettered + {a['messages_left_waiting']} left waiting")
    for f in r["failures"]:
        console.print(f"  [red]✗[/] {f}")
    if r.get("incident"):
        console.print(f"incident (closed as the drill's): backout incident show {r['incident']} --env {env}")


@drill_app.command("list")
def drill_list(env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Past drills and their results."""
    rows = Client(env).call("GET", "/drills")
    if as_json:
        return emit_json(rows)
    table(
        "drills",
        ["id", "when", "kind", "fault", "result", "rollback after (s)", "target (s)"],
        [
            (
                d["id"],
                time.strftime("%Y-%m-%d %H:%M", time.localtime(d["started_at"])),
                d.get("kind", "rollback"),
                d["fault"] if d.get("kind") != "emergency" else "—",
                "passed" if d["passed"] else "FAILED",
                f"{d['detection_seconds'] + (d['rollback_seconds'] or 0):.1f}"
                if d["detection_seconds"] is not None
                else "—",
                f"{d['target_seconds']:g}",
            )
            for d in rows
        ],
    )
