"""The job summary of a CI run: when `GITHUB_STEP_SUMMARY` names a file (GitHub Actions sets it for every
step), `deploy` (and `deployment follow`), `rollback` and `drill` append a markdown section to it — the
outcome, the decision and its evidence (every alarm's last value against its threshold, the judges'
comparison of canary and stable), the timeline, and where the incident report is.

Each section is written from the control API's answers the command itself renders (the deployment view
of `GET /deployments/{id}`, the answers of `POST /rollback` and `POST /drills`), so the summary and the
terminal never disagree. Writing it is best effort: a summary that cannot be written is one warning
line on stderr, never a failed command — the exit code stays the deployment's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from rich.markup import escape

from backout.cli.render import err_console

ENV_VAR = "GITHUB_STEP_SUMMARY"
ICON = {"Succeeded": "✅", "RolledBack": "↩️", "Stopped": "⏹️", "Failed": "❌"}
_OP = {"GreaterThanThreshold": ">", "GreaterThanOrEqualToThreshold": "≥", "LessThanThreshold": "<",
       "LessThanOrEqualToThreshold": "≤"}


def _fmt() -> ModuleType:
    """Markdown helpers shared with the incident report, imported only when a summary is written (the
    incidents package is heavy for a CLI that starts on every command)."""
    from backout.runbooks.incidents import formatting

    return formatting


def append(render: Callable[[], str]) -> None:
    """Append `render()`'s markdown to the step summary when CI asked for one. Rendering may call the
    control API; whatever goes wrong (no such directory, a full disk, an unreachable supervisor) is one
    warning line and the command goes on to its own exit code."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    try:
        text = render()
        with open(path, "a", encoding="utf-8") as f:
            f.write(text.rstrip() + "\n\n")
    except Exception as e:  # noqa: BLE001 - the summary never changes the command's outcome
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        err_console.print(f"[yellow]warning:[/] step summary not written to {escape(path)}: {escape(reason)}",
                          highlight=False, soft_wrap=True)


# --- sections ---------------------------------------------------------------------------------------
def deployment(view: dict[str, Any], env: str, title: str = "backout deploy") -> str:
    """A deployment from its view: outcome, decision, alarms, evidence, timeline, incident."""
    f = _fmt()
    d = view["deployment"]
    took = f", {f.secs(d['finished_at'] - d['created_at'])}" if d.get("finished_at") else ""
    what = f" — {f.md(d['description'])}" if d.get("description") else ""
    head = (f"### {ICON.get(d['status'], '⏳')} {title}: {f.code(d['id'])} {d['status']} in {f.md(env)}\n\n"
            f"{f.md(d['stable'])} → {f.md(d['target'])} with {f.md(d['strategy'])}{took}{what}")
    return "\n\n".join(p for p in (head, _body(view, env)) if p)


def rollback(r: dict[str, Any], view: dict[str, Any] | None, env: str) -> str:
    """A manual rollback from `POST /rollback`'s answer, then its deployment record."""
    f = _fmt()
    how = ("stopped the deployment in progress" if r["mode"] == "stopped deployment"
           else "instant (the old version was warm)" if r.get("warm")
           else f"started workers first ({r.get('warm_seconds') or 0:.1f} s)")
    switch = f", aliases switched in {r['switch_ms']:.1f} ms" if r.get("switch_ms") is not None else ""
    verified = r.get("verify")
    head = (f"### ↩️ backout rollback: {f.md(r['from_label'])} → {f.md(r['to_label'])} in {f.md(env)}\n\n"
            f"{how}{switch}; deployment {f.code(r['deployment'])}"
            + ("" if verified is None else f"; verify {'passed' if verified['ok'] else '**FAILED**'}"))
    parts = [head]
    if verified is not None:
        parts.append("**Verify** (validation after rollback)\n\n" + f.table(
            ["group", "check", "result", "detail"],
            [[f.md(c["group"]), f.md(c["name"]), "FAIL" if not c["ok"] else "warning" if c.get("warning") else "ok",
              f.md(c["detail"])] for c in verified["checks"]]))
    if view is not None:
        parts.append(_body(view, env))
    elif r.get("incident"):
        parts.append(_incident_pointer(r["incident"], env))
    return "\n\n".join(p for p in parts if p)


def drill(r: dict[str, Any], view: dict[str, Any] | None, env: str) -> str:
    """A drill from `POST /drills`'s answer: the verdict against its target, then the deployment that
    carried the fault."""
    f = _fmt()
    t = r.get("first_traffic_to_stable_seconds")
    head = (f"### {'✅' if r['passed'] else '❌'} backout drill: {f.code(r['drill'])} "
            f"{'PASSED' if r['passed'] else 'FAILED'} in {f.md(env)}\n\n"
            + f.table(["fault", "automatic rollback after first faulty traffic", "target", "decision → stable"],
                    [[f.code(r["fault"]), f.secs(t) if t is not None else "none",
                      f.secs(r["target_seconds"]),
                      "—" if r.get("rollback_seconds") is None else f"{1000 * r['rollback_seconds']:.0f} ms"]]))
    parts = [head]
    if r.get("failures"):
        parts.append("\n".join(f"- ✗ {f.md(f)}" for f in r["failures"]))
    if view is not None:
        parts.append(_body(view, env))
    return "\n\n".join(parts)


# --- pieces ---------------------------------------------------------------------------------------
def _body(view: dict[str, Any], env: str) -> str:
    parts = [_decision(view), _alarms(view), _evidence(view), _timeline(view)]
    if view.get("incident"):
        parts.append(_incident_pointer(view["incident"]["id"], env))
    return "\n\n".join(p for p in parts if p)


def _decision(view: dict[str, Any]) -> str:
    """Why it ended as it did: the rollback's trigger and reason, or the success; with the evidence lines."""
    f = _fmt()
    d = view["deployment"]
    rb = next((e for e in reversed(view["events"]) if e["kind"] == "rolled_back"), None)
    if rb is not None:
        data = rb.get("data") if isinstance(rb.get("data"), dict) else {}
        lines = [f"**Decision**: rolled back ({f.md(data.get('trigger') or 'unknown trigger')}): "
                 f"{f.md(data.get('reason') or d.get('reason') or '')}"]
        if data.get("decided_at") and data.get("completed_at"):
            lines[0] += f" — decision to 100 % stable in {1000 * (data['completed_at'] - data['decided_at']):.0f} ms"
        reason = str(data.get("reason") or "")
        lines += [f"- {f.md(x)}" for x in data.get("evidence") or [] if isinstance(x, str) and x not in reason]
        return "\n".join(lines)
    manual = next((e for e in reversed(view["events"]) if e["kind"] == "manual_rollback"), None)
    if manual is not None:
        data = manual.get("data") if isinstance(manual.get("data"), dict) else {}
        return (f"**Decision**: rolled back by hand ({f.md(data.get('who') or 'an operator')}): "
                f"{f.md(data.get('reason') or manual['message'])}")
    ok = next((e for e in reversed(view["events"]) if e["kind"] == "succeeded"), None)
    if ok is not None:
        return f"**Decision**: {f.md(ok['message'])}"
    return f"**Status**: {f.md(d['status'])}" + (f": {f.md(d['reason'])}" if d.get("reason") else "")


def last_evaluations(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each alarm's and judge's last evaluation: the live ones the supervisor holds, else the newest
    `alarm_state` event of each (the record, when another process ran the deployment)."""
    if view.get("alarms"):
        return dict(view["alarms"])
    out: dict[str, dict[str, Any]] = {}
    for e in view["events"]:
        data = e.get("data")
        if e["kind"] == "alarm_state" and isinstance(data, dict) and "alarm" in data:
            out[data["alarm"]] = data
    return out


def _alarms(view: dict[str, Any]) -> str:
    f = _fmt()
    evals = last_evaluations(view)
    if not evals:
        return ""
    rows = []
    for name, e in sorted(evals.items()):
        value = "—" if e.get("value") is None else f"{e['value']:.2f}"
        op = _OP.get(str(e.get("comparison")), "vs")
        rows.append([f.md(name), f"**{e['state']}**" if e["state"] == "ALARM" else f.md(e["state"]), value,
                     f"{op} {e['threshold']:g}", f.md(e.get("detail") or "")])
    return "**Alarms** (new version, last evaluation)\n\n" + f.table(
        ["alarm", "state", "value", "threshold", "detail"], rows)


def _evidence(view: dict[str, Any]) -> str:
    """The judges' comparison behind a rollback (canary against stable), as `deployment show` prints it."""
    f = _fmt()
    rb = next((e for e in reversed(view["events"]) if e["kind"] == "rolled_back"), None)
    data = rb.get("data") if rb is not None and isinstance(rb.get("data"), dict) else {}
    rows = []
    for e in data.get("alarms") or []:
        ev = e.get("evidence") if isinstance(e, dict) else None
        if not ev:
            continue
        low, high, ratio = ev.get("low"), ev.get("high"), ev.get("ratio")
        interval = "—" if low is None else f"{low:.2g}–{'∞' if high is None else f'{high:.2g}'}"
        shown = "—" if low is None else ("∞" if ratio is None else f"{ratio:.2g}")
        op = "≥" if ev["e_value"] >= ev["threshold"] else "<"
        rows.append([f.md(e["alarm"]), f.md(ev["judge"]), f"{ev['e_value']:.3g} {op} {ev['threshold']:.3g}",
                     f"{shown} ({interval})", f"{ev['canary_events']:.0f}/{ev['canary_requests']:.0f}",
                     f"{ev['stable_events']:.0f}/{ev['stable_requests']:.0f}"])
    if not rows:
        return ""
    return "**Evidence** (canary against stable)\n\n" + f.table(
        ["alarm / judge", "judge", "e-value", "ratio (anytime-valid CI)", "canary", "stable"], rows)


def _timeline(view: dict[str, Any]) -> str:
    f = _fmt()
    events = view["events"]
    if not events:
        return ""
    rows = [[f.clock(e["ts"]), f.code(e["kind"]), ("**" + f.md(e["message"]) + "**") if e["severity"] == "critical"
             else f.md(e["message"])] for e in events]
    return (f"<details><summary>Timeline ({len(events)} events)</summary>\n\n"
            + f.table(["time", "kind", "event"], rows) + "\n\n</details>")


def _incident_pointer(incident_id: str, env: str) -> str:
    f = _fmt()
    return (f"**Incident** {f.code(incident_id)}: {f.code(f'backout incident show {incident_id} --env {env}')}; "
            f"the report: {f.code(f'backout incident report {incident_id} --env {env} -o {incident_id}.md')}")
