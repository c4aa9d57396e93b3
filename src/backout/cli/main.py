"""The `backout` command line: parse, call the supervisor's control API, render."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from backout.cli.context import SETTINGS, Client, EnvOpt, JsonOpt, env_name
from backout.cli.inputs import YesOpt, configuration, confirm, parse_set_env, who
from backout.cli.render import (
    console,
    emit_json,
    err_console,
    fmt_weights,
    progress,
    table,
    with_output_option,
)
from backout.errors import OperationFailed, UsageError
from backout.manifest import parse_duration

app = typer.Typer(
    help="Deploy a serverless job service under watch and back it out in seconds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
queue_app = typer.Typer(help="SQS-style queues: stats, peek, purge and DLQ redrive.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"backout {version('backout')}")
        raise typer.Exit()


@app.callback()
def _global(
    manifest: Annotated[
        Path, typer.Option("--manifest", "-m", envvar="BACKOUT_MANIFEST", help="the service's backout.toml")
    ] = Path("backout.toml"),
    env: Annotated[
        str | None,
        typer.Option("--env", "-e", help="environment for every command (a subcommand's own --env wins)"),
    ] = None,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    SETTINGS.manifest_path = manifest
    SETTINGS.env = env
    SETTINGS._manifest = None


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="where to create the service (default: here)")] = Path("."),
    name: Annotated[str | None, typer.Option(help="the service's name (default: the directory's)")] = None,
    from_sam: Annotated[
        Path | None, typer.Option("--from-sam", help="adopt an existing SAM application: its template.yaml")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="with --from-sam: the manifest to write (default: DIR/backout.toml)")
    ] = None,
) -> None:
    """Scaffold a new service (manifest, an HTTP and a queue handler, a DLQ, a test of the handlers), or with
    --from-sam write the manifest of an existing SAM application."""
    if from_sam is not None:
        from backout.cli.sam_import import write_manifest

        path = write_manifest(from_sam, out or directory / "backout.toml", name)
        untranslated = path.read_text().count("# not translated: ")
        console.print(f"[green]wrote {path}[/] from {from_sam}"
                      + (f"; {untranslated} item(s) not translated (comments starting `# not translated:`)"
                         if untranslated else ""), highlight=False)
        console.print(f"next: backout --manifest {path} up --detach && backout --manifest {path} status",
                      highlight=False)
        return
    if out is not None:
        raise UsageError("--out goes with --from-sam (a scaffold is written into DIRECTORY)")
    from backout.cli.scaffold import new_service

    root = directory.resolve()
    scaffold = new_service(name or root.name)
    written = scaffold.write(root)
    console.print(f"[green]created {scaffold.name}[/] in {root}:")
    for p in written:
        console.print(f"  {p.relative_to(root)}")
    console.print(f"next: cd {directory} && python -m pytest tests && backout up --detach && backout status\n"
                  "      (docs/guide.md in backout's repository walks through each step)")


@app.command()
def up(
    env: EnvOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
    publish: Annotated[bool, typer.Option("--publish", help="deploy the source tree when it is newer than the "
                                          "live release")] = False,
) -> None:
    """Start the environment: gateway, queue pollers, warm workers, control API (on aws: the control API
    and the controller only — AWS runs the service). It serves the live release: when the source tree
    changed since, it says so (`--publish` deploys the tree)."""
    import logging

    name = env_name(env)
    m = SETTINGS.manifest
    if detach:
        from backout.server.process import start_detached

        with progress(f"starting {name}") as step:
            ep = start_detached(m.path, name, m.state_dir(name), publish=publish, on_progress=step)
        console.print(
            f"[green]{name} up[/] (pid {ep['pid']}): gateway {ep['gateway_url']}, control {ep['control_url']}"
        )
        view = Client(name).call("GET", "/platform")
        if view.get("stale_release") and not publish:
            console.print(f"[yellow]warning:[/] {view['stale_release']}")
        elif publish:
            d = Client(name).call("GET", "/status").get("deployment")
            if d:
                console.print(f"deploying the source tree: {d['id']} ({d['stable']} → {d['target']}); "
                              f"follow it with `backout deployment follow {d['id']} --env {name}`")
        return
    import contextlib
    import os

    from backout import logs
    from backout.server import memory
    from backout.server.process import Supervisor

    if (argv := memory.reexec_argv()) is not None:  # the allocator is chosen as the interpreter starts
        with contextlib.suppress(OSError):  # could not start again: run on the allocator it has
            os.execve(sys.executable, argv, memory.supervisor_environ())
    logs.configure(logging.WARNING)  # JSON lines on stderr (supervisor.log when detached)
    Supervisor(m, name, publish=publish).run()


@app.command()
def down(env: EnvOpt = None, timeout: float = 60.0) -> None:
    """Stop the environment: stop accepting, drain in-flight work, exit."""
    from backout.server.endpoints import is_running

    c = Client(env)
    pid = int(str(c.endpoints["pid"]))
    c.call("POST", "/shutdown")
    deadline = time.time() + timeout
    with progress(f"stopping {c.env}") as step:
        while time.time() < deadline:
            # the endpoints file goes first (no new commands), the lock once drained, the process last
            running = is_running(c.state_dir)
            if not running and _exited(pid):
                break
            step("no new requests; draining in-flight work" if running
                 else f"drained; waiting for the process (pid {pid}) to exit")
            time.sleep(0.05)
        else:
            raise OperationFailed(f"{c.env} did not stop within {timeout:.0f} s")
    console.print(f"{c.env} down")


@app.command()
def publish(
    source: Annotated[Path | None, typer.Argument(help="code root (default: the manifest's source)")] = None,
    env: EnvOpt = None,
    description: str = "",
    set_env: Annotated[
        list[str], typer.Option("--set-env", help="KEY=VALUE added to the release's environment")
    ] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    """Publish a release: every function's code and configuration (same content → same release)."""
    c = Client(env)
    extra = parse_set_env(set_env)
    src = str(source.resolve()) if source else None
    body = {"source": src, "environment": extra, "description": description,
            "configuration": configuration(SETTINGS.manifest, c.env)}
    r = c.call("POST", "/publish", body)
    emit_json(r) if as_json else console.print(f"release {r['id']} ({_versions(r)})")


def _versions(r: dict[str, Any]) -> str:
    """`api v7, worker v7`: each function's own version in a release."""
    return ", ".join(f"{fn} v{v}" for fn, v in sorted(r["versions"].items()))


@app.command()
def releases(
    env: EnvOpt = None,
    diff: Annotated[
        tuple[int, int] | None, typer.Option("--diff", metavar="A B", help="what changed from release A to B")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Published releases, each with its functions' version numbers; `--diff A B`: code files and
    configuration that changed between two of them."""
    if diff is not None:
        return _release_diff(Client(env), *diff, as_json=as_json)
    rows = Client(env).call("GET", "/releases")
    if as_json:
        return emit_json(rows)
    table(
        "releases",
        ["release", "versions", "digest", "created", "description", "environment"],
        [
            (
                v["id"],
                _versions(v),
                v["digest"][:12],
                _ts(v["created_at"]),
                v["description"],
                json.dumps(v["environment"]) if v["environment"] else "",
            )
            for v in rows
        ],
    )


def _release_diff(c: Client, a: int, b: int, as_json: bool) -> None:
    d = c.call("GET", "/releases/diff", a=a, b=b)
    if as_json:
        return emit_json(d)
    keys = sum(len(k) for k in d["configuration"].values())
    parts = [f"{len(d[k])} file(s) {k}" for k in ("changed", "added", "removed") if d[k]]
    parts += [f"{keys} configuration key(s) of {', '.join(d['configuration'])}"] if keys else []
    parts += [f"{len(d['environment'])} release variable(s)"] if d["environment"] else []
    if not parts and not d["same"]:
        parts = ["the code (the digests differ)"]
    console.print(f"r{a} → r{b}: " + (", ".join(parts) or "no change"))
    if not d["files_listed"]:
        console.print("(this platform does not list a release's files: code changes are not shown file by file)")
    if d["changed"] or d["added"] or d["removed"]:
        table("code", ["change", "file"], [(k, p) for k in ("changed", "added", "removed") for p in d[k]])
    rows = [(fn, key, _val(va), _val(vb)) for fn, ks in d["configuration"].items() for key, (va, vb) in ks.items()]
    rows += [("(release)", f"environment.{key}", _val(va), _val(vb)) for key, (va, vb) in d["environment"].items()]
    if rows:
        table("configuration", ["function", "key", f"r{a}", f"r{b}"], rows)


def _val(v: Any) -> str:
    return "(unset)" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


@app.command()
def invoke(
    function: str,
    env: EnvOpt = None,
    version: Annotated[str | None, typer.Option(help="the function's version (default: the live alias)")] = None,
    payload: Annotated[str, typer.Option(help="the event, JSON")] = "{}",
    as_json: JsonOpt = False,
) -> None:
    """Invoke a function once and print its result; exit 1 when it errors."""
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as e:
        raise UsageError(f"--payload is not JSON: {e}") from None
    r = Client(env).call("POST", f"/invoke/{function}", {"version": version, "payload": event})
    if as_json:
        emit_json(r)
    else:
        console.print(
            f"{function} v{r['version']} {r['request_id']} {r['duration_ms']:.1f} ms"
            + (" [red]THROTTLED[/]" if r["throttled"] else "")
            + (f" [red]{r['error']}[/]" if r["error"] else "")
        )
        console.print_json(json.dumps(r["payload"], default=str))
    if r["error"] or r["throttled"]:
        raise typer.Exit(1)


@app.command()
def alias(
    function: str,
    env: EnvOpt = None,
    stable: Annotated[str | None, typer.Option(help="the function's version taking the rest of the traffic")] = None,
    canary: Annotated[str | None, typer.Option(help="the function's version taking --weight percent")] = None,
    weight: Annotated[float, typer.Option(help="canary percent, 0..100")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Show or set a function's live alias weights (refused while a deployment runs: it owns them)."""
    c = Client(env)
    if stable is None and canary is not None:
        raise UsageError("--canary needs --stable")
    if stable is not None:
        r = c.call("PUT", f"/aliases/{function}",
                   {"stable": stable, "canary": canary, "weight": weight, "who": who()})
    else:
        r = c.call("GET", f"/aliases/{function}")
    if as_json:
        return emit_json(r)
    w = {str(r["stable"]): 100.0 - (r["canary_weight"] if r["canary"] else 0.0)}
    if r["canary"]:
        w[str(r["canary"])] = r["canary_weight"]
    console.print(f"{function}:live → {fmt_weights(w)}")


@queue_app.command("stats")
def queue_stats(
    name: Annotated[str | None, typer.Argument()] = None, env: EnvOpt = None, as_json: JsonOpt = False
) -> None:
    """Queue attributes (visible, in flight, delayed), age of the oldest message, and the last hour's
    counters (sent, received, deleted, to DLQ, DLQ arrivals: metrics, as SQS keeps no counters)."""
    c = Client(env)
    rows = [c.call("GET", f"/queues/{name}")] if name else c.call("GET", "/queues")
    if as_json:
        return emit_json(rows if not name else rows[0])
    table(
        "queues",
        [
            "queue",
            "visible",
            "in flight",
            "delayed",
            "oldest (s)",
            "sent",
            "received",
            "deleted",
            "to DLQ",
            "DLQ arrivals",
        ],
        [
            (
                q["name"],
                q["visible"],
                q["in_flight"],
                q["delayed"],
                f"{q['age_of_oldest']:.1f}",
                q["sent"],
                q["received"],
                q["deleted"],
                q["moved_to_dlq"],
                q["dlq_arrivals"],
            )
            for q in rows
        ],
    )


@queue_app.command("peek")
def queue_peek(
    name: str,
    env: EnvOpt = None,
    number: Annotated[int, typer.Option("--number", "-n", help="how many of the oldest messages")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """The oldest messages of a queue as they sit in it (read, not received): body, attributes, receive
    count and, in a DLQ, where each came from and its last error."""
    if number < 1:
        raise UsageError("-n must be at least 1")
    rows = Client(env).call("GET", f"/queues/{name}/messages", limit=number)
    if as_json:
        return emit_json(rows)
    if not rows:
        console.print(f"{name} is empty")
        return
    table(
        f"{name}: the oldest {len(rows)} message(s)",
        ["id", "sent", "state", "receives", "attributes", "body"],
        [
            (
                m["id"][:8],
                _ts(m["sent_at"]),
                "visible" if m["visible"] else "in flight",
                m["receive_count"],
                ", ".join(f"{k}={v}" for k, v in m["attributes"].items()),
                m["body"][:200],
            )
            for m in rows
        ],
    )


@queue_app.command("purge")
def queue_purge(name: str, env: EnvOpt = None, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete every message of a queue (asks first; `--yes` in scripts). Recorded as an event."""
    env = env_name(env)
    confirm(f"purge {name} in {env}: delete every message in it?", yes)  # before reaching for the supervisor
    r = Client(env).call("POST", f"/queues/{name}/purge", {"yes": True, "who": who()})
    emit_json(r) if as_json else console.print(f"purged {name}: {r['deleted']} message(s) deleted")


@queue_app.command("redrive")
def queue_redrive(name: str, env: EnvOpt = None, as_json: JsonOpt = False) -> None:
    """Move every message of a dead-letter queue back to its source queue (a move task, as SQS's)."""
    r = Client(env).call("POST", f"/queues/{name}/redrive")
    if as_json:
        return emit_json(r)
    console.print(f"redrive {r['id'][:8]} {r['status']}: moved {r['moved']} message(s) from {name} "
                  f"to {r['destination']}" + (f" ({r['failure']})" if r["failure"] else ""))
    if r["status"] == "FAILED":
        raise typer.Exit(1)


@app.command()
def metrics(
    function: str,
    env: EnvOpt = None,
    version: Annotated[str | None, typer.Option(help="the function's version (default: every version)")] = None,
    since: Annotated[str, typer.Option(help="window, e.g. 5m, 30s, 1h")] = "5m",
    period: Annotated[str | None, typer.Option(
        help="one row per period (1s, 5s, 10s, 30s or whole minutes), as `aws cloudwatch get-metric-statistics`")
    ] = None,
    metric: Annotated[str, typer.Option(help="with --period: Invocations, Errors, Throttles, Duration, …")
                      ] = "Duration",
    statistics: Annotated[str, typer.Option(help="with --period: comma-separated, e.g. Sum,Average,Maximum,p99")
                          ] = "SampleCount,Average,Maximum",
    as_json: JsonOpt = False,
) -> None:
    """Invocations, errors, throttles and duration percentiles of a function (or one version); with
    --period, one metric's statistics per period."""
    try:
        secs = parse_duration(since)
    except ValueError as e:
        raise UsageError(f"--since: {e}") from None
    if period is not None:
        return _metric_statistics(function, env, version, secs, period, metric, statistics, as_json)
    r = Client(env).call("GET", f"/metrics/summary/{function}", since=secs, version=version)
    if as_json:
        return emit_json(r)
    title = (f"{function}{f' v{version}' if version else ''}: traffic through the live alias over the last "
             f"{since} (backout's probes excluded)")
    units = r["units"]
    versions = r.get("versions") or {}
    columns = [r, *versions.values()] if len(versions) != 1 else [r]
    table(
        title,
        ["metric", "all versions" if not version else f"v{version}",
         *([f"v{v}" for v in versions] if len(versions) > 1 else [])],
        [(f"{k} ({u})", *(_num(c.get(k)) for c in columns)) for k, u in units.items()],
    )
    if len(versions) == 1:
        console.print(f"every invocation was served by v{next(iter(versions))}")
    elif not versions and not version:
        console.print("no traffic through the live alias in this window")


def _metric_statistics(function: str, env: str | None, version: str | None, since: float, period: str,
                       metric: str, statistics: str, as_json: bool) -> None:
    """`get-metric-statistics` for one function metric: every statistic of every period in one batched query."""
    from backout.platforms.base import NS_LAMBDA, STATISTICS, legal_period

    try:
        seconds = parse_duration(period)
    except ValueError as e:
        raise UsageError(f"--period: {e}") from None
    if seconds != int(seconds) or not legal_period(int(seconds)):
        raise UsageError(f"--period {period}: CloudWatch accepts 1s, 5s, 10s, 30s or a multiple of 60s")
    stats = [x.strip() for x in statistics.split(",") if x.strip()]
    unknown = [x for x in stats if x not in STATISTICS]
    if not stats or unknown:
        raise UsageError(f"--statistics {statistics!r}: choose from {', '.join(STATISTICS)}")
    p, end = int(seconds), time.time()
    start = (end - since) // p * p
    dims = {"FunctionName": function, **({"ExecutedVersion": str(version)} if version else {})}
    body = [{"namespace": NS_LAMBDA, "metric": metric, "dimensions": dims, "start": start, "end": end,
             "period": p, "statistic": st} for st in stats]
    series = Client(env).call("POST", "/metrics/query", body)
    rows: dict[float, dict[str, float]] = {}
    for st, points in zip(stats, series, strict=True):
        for pt in points:
            rows.setdefault(pt["timestamp"], {})[st] = pt["value"]
    out = [{"Timestamp": ts, **vals} for ts, vals in sorted(rows.items())]
    if as_json:
        return emit_json({"Label": metric, "Period": p, "Datapoints": out})
    unit = " (ms)" if metric == "Duration" else ""
    table(f"{function}{f' v{version}' if version else ''} {metric}{unit}, {p} s periods",
          ["period start (UTC)", *stats],
          [(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["Timestamp"])), *(_num(r.get(st)) for st in stats))
           for r in out])
    if not out:
        console.print(f"no datapoints for {metric} of {function} in the window")


@app.command()
def logs(
    function: str,
    env: EnvOpt = None,
    version: Annotated[int | None, typer.Option()] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """A function version's stdout/stderr (read from the state dir; works while the env is down)."""
    m = SETTINGS.manifest
    name = env_name(env)
    if function not in m.functions:
        raise UsageError(f"no function named {function!r} (known: {', '.join(m.functions)})")
    d = m.state_dir(name) / "logs" / function
    files = sorted(d.glob("v*.log"), key=lambda p: int(p.stem[1:])) if d.exists() else []
    if version is not None:
        files = [p for p in files if p.stem == f"v{version}"]
    if not files:
        raise UsageError(f"no logs for {function}{f' v{version}' if version else ''} in {name} yet")
    path = files[-1]
    with path.open("r", errors="replace") as f:
        for line in f.readlines()[-lines:]:
            sys.stdout.write(line)
        sys.stdout.flush()
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


def _exited(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _register() -> None:
    from backout.cli import deploy_cmds, incident_cmds, runbook_cmds, stack_cmds

    deploy_cmds.register(app)
    stack_cmds.register(app)
    runbook_cmds.register(app)
    incident_cmds.register(app)
    with_output_option(app)  # last: every command registered above that takes --json gets --output


_register()


def run() -> None:
    """Console entry point: user errors are one line and exit 2, failed operations exit 1."""
    try:
        app()
    except UsageError as e:
        _print_error("[red]error:[/]", str(e))
        sys.exit(2)
    except OperationFailed as e:
        _print_error("[red]failed:[/]", str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # a bug, not the operator's doing: one line here, the traceback in a file
        log = _write_crash_log()
        _print_error("[red]internal error:[/]", f"{type(e).__name__}: {e} (traceback in {log})")
        sys.exit(1)


def _print_error(label: str, text: str) -> None:
    """Our label in colour, the message as plain text: it may quote user input (`[/x]` is an argument
    here, not rich markup) and must never be able to break the one line that reports it."""
    from rich.markup import escape

    err_console.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)


def _write_crash_log() -> Path:
    """The traceback of an unexpected exception, in the state dir of the environment when it is known."""
    import tempfile
    import traceback

    try:
        base = SETTINGS.manifest.state_dir(SETTINGS.env or env_name(None))
    except Exception:
        base = Path(tempfile.gettempdir())
    path = base / "cli-error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} backout {' '.join(sys.argv[1:])}\n")
            f.write(traceback.format_exc())
    except OSError:
        path = Path(tempfile.gettempdir()) / "backout-cli-error.log"
        path.write_text(traceback.format_exc())
    return path


if __name__ == "__main__":
    run()
