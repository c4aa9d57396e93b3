"""The incident report a team files ("Communication" of rollback-procedures.md: during the rollback, the
status-page / customer update and, once closed, the resolved notice, with the contacts; after it, root
cause analysis, timeline of events, action items; lessons learned as process improvements, monitoring
enhancements and prevention strategies). Every section says what is not known instead of failing.

The report is written once, as markdown; the HTML is the same text through markdown-it-py (rich's own
markdown parser, so always installed) inside a small stylesheet, with the chart inlined as a `data:` URI.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from backout.control.store import Event
from backout.errors import UsageError
from backout.redact import redact
from backout.runbooks.incidents.chart import ROLLING_SECONDS, chart_available, render_chart
from backout.runbooks.incidents.communication import resolved_notice, status_update
from backout.runbooks.incidents.formatting import clock, code, fence, fmt_ms, md, num, pct, secs, table, zone
from backout.runbooks.incidents.views import IncidentView, group_lessons

_COMPARISON = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": "≥",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "≤",
}


def _cause(view: IncidentView) -> str:
    """What made backout (or someone) roll back, as the end of a sentence."""
    t = view.trigger
    kind = t.get("kind")
    reason = str(
        t.get("reason") or (view.deployment.reason if view.deployment else "") or view.incident.title
    )
    if kind in ("alarm", "judge"):
        names = [a.get("alarm") for a in t.get("alarms") or [] if isinstance(a, dict) and a.get("alarm")]
        if not names:
            m = re.search(r"alarm (\S+) in ALARM", reason)
            names = [m.group(1)] if m else []
        if names:
            return (
                "the alarm"
                + ("s " if len(names) > 1 else " ")
                + ", ".join(code(n) for n in names)
                + " went into ALARM"
            )
        return f"an alarm fired ({md(reason)})"
    if kind in ("pre_traffic", "post_traffic"):
        hook = t.get("hook")
        phase = kind.replace("_", "-")
        return f"the {phase} hook {code(hook)} failed" if hook else f"a {phase} hook failed ({md(reason)})"
    if kind == "deadline":
        return f"the deployment missed its progress deadline ({md(reason)})"
    if kind == "manual":
        return f"an operator asked for a rollback ({md(reason)})"
    if kind == "emergency":
        return f"an emergency stop was declared ({md(reason)})"
    if kind == "internal":
        return f"the deployment runner failed ({md(reason)})"
    return md(reason)


def _how(view: IncidentView) -> str:
    kind = view.trigger.get("kind")
    if kind == "emergency":
        return "Emergency stop"
    if kind == "manual":
        return "Manual rollback"
    if view.automatic:
        return "Automatic rollback"
    return "Rollback" if view.deployment else "Incident"


def _summary(view: IncidentView) -> list[str]:
    inc, d = view.incident, view.deployment
    out = ["## Summary", ""]
    if d is not None:
        bad, good = view.bad_version, view.stable_version
        s = (
            f"Deployment {code(d.id)} in **{md(view.env)}** shifted traffic from {view.stable_label} to "
            f"{view.bad_label} with the "
            f"{code(d.strategy)} strategy."
        )
        first = view.first_traffic_at
        restore = (
            f" backout returned every function's live alias to 100 % v{good} "
            f"{fmt_ms(view.restore_ms)} after the decision."
            if view.restore_ms is not None
            else ""
        )
        if first is not None and view.decided_at is not None:
            s += (
                f" Traffic first reached v{bad} at {clock(first)}; {fmt_ms(view.detection_ms)} later "
                f"{_cause(view)}, and the deployment was rolled back.{restore}"
            )
        elif view.decided_at is not None:
            s += f" The rollback was decided before any traffic reached v{bad}: {_cause(view)}.{restore}"
        else:
            s += f" {_cause(view)[:1].upper()}{_cause(view)[1:]}."
        if view.impact:
            s += f" {impact_sentence(view)}"
    else:
        reason = md(view.trigger.get("reason") or inc.title)
        s = (
            f"{_how(view)} in **{md(view.env)}** at {clock(inc.opened_at)}: {reason}. "
            "No deployment is attached to this incident; its timeline holds what was done and when."
        )
    out += [s, ""]
    rows = [
        ["Incident", f"{code(inc.id)} — {md(inc.title)}"],
        ["Severity / status", f"{inc.severity} / {inc.status}"],
        ["Environment", md(view.env)],
        ["Kind", f"{_how(view)} (trigger: {code(view.trigger.get('kind') or 'unknown')})"],
        ["Opened", clock(inc.opened_at)],
        ["Closed", clock(inc.closed_at) if inc.closed_at else "still open"],
    ]
    if d is not None:
        rows += [
            [
                "Deployment",
                f"{code(d.id)} ({d.status}), {code(d.strategy)}"
                + (f", by {md(d.created_by)}" if d.created_by else ""),
            ],
            ["Releases", f"{view.bad_label} rolled back → {view.stable_label} restored"],
            ["Change", md(d.description) if d.description else "—"],
            ["First traffic on the new version", clock(view.first_traffic_at)],
        ]
    if d is not None or view.decided_at is not None:
        rows += [
            ["Rollback decided", clock(view.decided_at)],
            ["100 % on the stable version", clock(view.completed_at)],
            ["First traffic → decision", fmt_ms(view.detection_ms)],
            ["Decision → 100 % stable", fmt_ms(view.restore_ms)],
        ]
    if inc.closed_at:
        rows.append(["Incident open for", secs(inc.closed_at - inc.opened_at)])
    out += [table(rows[0], rows[1:]), ""]
    return out


def impact_sentence(view: IncidentView) -> str:
    imp = view.impact or {}
    fns = imp.get("functions") or {}
    errs = sum(float(f.get("errors", 0)) for f in fns.values())
    inv = sum(float(f.get("invocations", 0)) for f in fns.values())
    api = imp.get("api") or {}
    parts = [f"{view.bad_label} handled {num(inv)} invocations, {num(errs)} of them failed"]
    if api:
        parts.append(f"{num(api.get('failed_requests', 0))} API requests failed")
    if view.jobs_touched is not None:
        parts.append(f"{num(view.jobs_touched)} jobs were touched")
    dlq = sum(float(n) for n in (imp.get("dlq_arrivals") or {}).values())
    if dlq:
        parts.append(f"{num(dlq)} messages were dead-lettered")
    return "While it was live, " + "; ".join(parts) + "."


def _impact(view: IncidentView) -> list[str]:
    out = ["## Impact", ""]
    imp = view.impact
    if not imp:
        why = (
            "it was not opened by an automatic rollback"
            if view.deployment is None or not view.automatic
            else "the deployment's metrics were not captured"
        )
        out += [f"No measurements of the bad version are kept with this incident ({why}).", ""]
        if view.jobs_touched is not None:
            out += [f"Jobs touched: **{num(view.jobs_touched)}**.", ""]
        return out
    v = view.bad_version
    api = imp.get("api") or {}
    served, failed = float(api.get("requests_served", 0)), float(api.get("failed_requests", 0))
    dlq = imp.get("dlq_arrivals") or {}
    weights = [w for _, w in view.weights]
    d = view.deployment
    jobs = (
        num(view.jobs_touched)
        if view.jobs_touched is not None
        else "not recorded"
        + (
            f" (list them: {code(f'backout repair --deployment {d.id} --dry-run --env {view.env}')})"
            if d
            else ""
        )
    )
    rows = [
        [
            f"Failed API requests (5xx served by r{v})",
            f"**{num(failed)}** of {num(served)} ({pct(failed, served)})",
        ],
        [f"Jobs touched by r{v}", jobs],
        [
            "Messages dead-lettered",
            ", ".join(f"{code(q)}: {num(n)}" for q, n in sorted(dlq.items())) if dlq else "none (no DLQ)",
        ],
        ["Peak share of traffic on v" + str(v), f"{max(weights):g} %" if weights else "—"],
        ["Duration (deployment start → 100 % stable)", secs(imp.get("duration_seconds"))],
    ]
    out += [table(["measure", "value"], rows), ""]
    fns = imp.get("functions") or {}
    if fns:
        out += [f"Invocations of {view.bad_label} by function (the stable version's are not counted):", ""]
        frows = []
        for fn, f in sorted(fns.items()):
            inv, err = float(f.get("invocations", 0)), float(f.get("errors", 0))
            frows.append([code(fn), num(inv), num(err), pct(err, inv)])
        out += [table(["function", "invocations", "errors", "error rate"], frows), ""]
    return out


def _communication(view: IncidentView) -> list[str]:
    """The status-page / customer update and, once closed, the resolved notice: ready to paste."""
    out = ["## Communication", "", "Status page / customer update (as the record stands now):", "",
           fence(status_update(view)), ""]
    notice = resolved_notice(view)
    if notice is None:
        cmd = f"backout incident close {view.incident.id} --root-cause TEXT --env {view.env}"
        return out + [f"Resolved notice: written when the incident is closed ({code(cmd)}).", ""]
    return out + ["Resolved notice:", "", fence(notice), ""]


def _contacts(view: IncidentView) -> list[str]:
    out = ["## Contacts", ""]
    if not view.contacts:
        return out + ["None in backout.toml: add a `[contacts]` table (role → name, channel).", ""]
    return out + [f"- {md(c)}" for c in view.contacts] + [""]


def _timeline(view: IncidentView) -> list[str]:
    out = ["## Timeline", ""]
    events = list(view.events)
    if not any(e.kind == "incident_opened" for e in events):
        events.append(
            Event(
                0,
                None,
                view.incident.id,
                view.incident.opened_at,
                "incident_opened",
                view.incident.severity,
                f"incident {view.incident.id} opened: {view.incident.title}",
                None,
            )
        )
        events.sort(key=lambda e: (e.ts, e.id))
    if not events:
        return out + ["No events recorded.", ""]
    t0 = view.deployment.created_at if view.deployment else events[0].ts
    out += [
        f"Every event of the deployment and the incident, to the millisecond ({zone(t0)}); "
        f"T+ counts from {'the deployment start' if view.deployment else 'the first event'}.",
        "",
    ]
    rows = []
    for e in events:
        sev = f"**{e.severity}**" if e.severity == "critical" else e.severity
        rows.append([clock(e.ts), f"{e.ts - t0:+.3f}", sev, code(e.kind), md(e.message)])
    return out + [table(["time", "T+ (s)", "severity", "event", "detail"], rows), ""]


def _alarm_unit(name: str) -> str:
    return " %" if name.startswith("error-rate") else ""


def _evidence(view: IncidentView) -> list[str]:
    out = ["## Alarm evidence", ""]
    if view.evidence:
        out += ["The rollback was decided on:", ""] + [f"- {md(s)}" for s in view.evidence] + [""]
    rows = []
    for a in view.alarm_evaluations:
        rows.append(_eval_row(a.alarm, a.ts, a.state, a.value, a.threshold, a.comparison, a.window_seconds))
    if not rows:  # the trigger keeps the firing evaluations too
        for a in view.trigger.get("alarms") or []:
            if isinstance(a, dict) and a.get("alarm"):
                rows.append(
                    _eval_row(
                        a["alarm"],
                        a.get("ts"),
                        a.get("state", ""),
                        a.get("value"),
                        a.get("threshold"),
                        a.get("comparison", ""),
                        a.get("window_seconds"),
                    )
                )
    judged = [a for a in view.trigger.get("alarms") or [] if isinstance(a, dict) and a.get("evidence")]
    if judged:
        out += [
            "Canary against stable (each decision with its judge's sequential test: the e-value of \"the new "
            "version is no worse\" against its threshold, the failure-rate ratio new ÷ stable with its "
            "anytime-valid interval, and the counts):",
            "",
            table(["alarm / judge", "judge", "e-value", "ratio (interval)", "new version", "stable"],
                  [_judged_row(a) for a in judged]),
            "",
        ]
    if rows:
        out += [
            "Alarm state changes of the new version (value of the newest window against the threshold):",
            "",
            table(["time", "alarm", "state", "value", "threshold", "window"], rows),
            "",
        ]
    kind = view.trigger.get("kind")
    if kind in ("pre_traffic", "post_traffic") and view.trigger.get("output"):
        out += [
            f"Output of the failing {kind.replace('_', '-')} hook {code(view.trigger.get('hook', ''))}:",
            "",
            fence(str(view.trigger["output"])[:4000]),
            "",
        ]
    if view.other_evidence:
        out += [
            "Other evidence kept with the incident:",
            "",
            fence(json.dumps(view.other_evidence, indent=2, default=str)[:4000]),
            "",
        ]
    if len(out) == 2:
        out += ["No alarm evidence: this incident was not opened by an alarm.", ""]
    return out


def _judged_row(a: dict) -> list[str]:
    ev = a["evidence"]
    low, high, ratio = ev.get("low"), ev.get("high"), ev.get("ratio")
    interval = "—" if low is None else f"{low:.2g}–{'∞' if high is None else f'{high:.2g}'}"
    shown = "—" if low is None else ("∞" if ratio is None else f"{ratio:.2g}")
    op = "≥" if ev["e_value"] >= ev["threshold"] else "<"
    return [code(a["alarm"]), code(ev["judge"]), f"{ev['e_value']:.3g} {op} {ev['threshold']:.3g}",
            f"{shown} ({interval})", f"{ev['canary_events']:.0f}/{ev['canary_requests']:.0f}",
            f"{ev['stable_events']:.0f}/{ev['stable_requests']:.0f}"]


def _eval_row(
    name: str,
    ts: float | None,
    state: str,
    value: float | None,
    threshold: float | None,
    comparison: str,
    window: float | None,
) -> list[str]:
    unit = _alarm_unit(name)
    val = "—" if value is None else f"{value:.2f}{unit}"
    thr = "—" if threshold is None else f"{_COMPARISON.get(comparison) or md(comparison)} {threshold:g}{unit}"
    st = f"**{state}**" if state == "ALARM" else state
    return [clock(ts), code(name), st, val, thr, "—" if window is None else f"{window:.0f} s"]


def _chart_section(view: IncidentView, image: str | None, has_chart: bool) -> list[str]:
    out = ["## Error rate and canary weight", ""]
    if not has_chart:
        return out + ["No chart: this incident has no deployment metrics.", ""]
    v = view.bad_version
    caption = (
        f"Error rate of {view.bad_label} per function ({ROLLING_SECONDS} s rolling, left axis) and the share of "
        f"traffic on {view.bad_label} (step line, right axis); the red line marks the rollback decision."
    )
    if image is None:
        return out + [caption, "", "(The chart is written next to the report with `--out FILE`.)", ""]
    return out + [f"![error rate and canary weight of r{v}]({image})", "", caption, ""]


def _notes(view: IncidentView) -> list[str]:
    notes = view.incident.notes
    if not notes:
        return []
    rows = [[clock(n.get("ts")), md(n.get("author") or "—"), md(n.get("text", ""))] for n in notes]
    return ["## Notes", "", table(["time", "author", "note"], rows), ""]


def _root_cause(view: IncidentView) -> list[str]:
    rc = view.incident.root_cause.strip()
    text = (
        md(rc)
        if rc
        else (
            f"_Not yet determined._ Record it when closing: "
            f"{code(f'backout incident close {view.incident.id} --root-cause TEXT --env {view.env}')}"
        )
    )
    return ["## Root cause", "", text, ""]


def _actions(view: IncidentView) -> list[str]:
    items = view.incident.action_items
    out = ["## Action items", ""]
    if not items:
        return out + [
            "None recorded yet: "
            f"{code(f'backout incident action {view.incident.id} TEXT --owner NAME --env {view.env}')}",
            "",
        ]
    rows = [
        [
            str(i),
            md(a.get("text", "")),
            md(a.get("owner") or "unassigned"),
            "done" if a.get("done") else "open",
        ]
        for i, a in enumerate(items, 1)
    ]
    done = sum(1 for a in items if a.get("done"))
    return out + [table(["#", "action", "owner", "status"], rows), "", f"{done} of {len(items)} done.", ""]


def _lessons(view: IncidentView) -> list[str]:
    out = ["## Lessons learned", ""]
    groups = group_lessons(view.incident.lessons)
    if not groups:
        cmd = f'backout incident lesson {view.incident.id} "Monitoring enhancements: …" --env {view.env}'
        return out + [f"None recorded yet: {code(cmd)}", ""]
    if list(groups) == ["Other"]:
        return out + [f"- {md(t)}" for t in groups["Other"]] + [""]
    for name, texts in groups.items():
        out += (
            [f"### {name if name != 'Other' else 'Other lessons'}", ""] + [f"- {md(t)}" for t in texts] + [""]
        )
    return out


def _footer(view: IncidentView, command: str) -> list[str]:
    iid, env = view.incident.id, view.env
    related = [f"backout incident show {iid} --env {env}"]
    if view.deployment:
        related.append(f"backout deployment show {view.deployment.id} --env {env}")
    lines = ["---", ""]
    made = (
        f"Generated at {clock(time.time())} by {code(command)}"
        if command
        else f"Generated at {clock(time.time())}"
    )
    lines.append(
        f"{made} from the control store of {md(env)}. See also: " + ", ".join(code(c) for c in related) + "."
    )
    return lines + [""]


def render_markdown(
    view: IncidentView, image: str | None = None, command: str = "", has_chart: bool | None = None
) -> str:
    """The report as markdown. `image` is where the chart is (a file name next to the report, or a data URI);
    None leaves a pointer to `-o` instead. `command` is the command line that produced it (the footer)."""
    inc = view.incident
    if has_chart is None:
        has_chart = chart_available(view)
    parts = [f"# Incident {inc.id}: {md(inc.title)}", ""]
    parts += _summary(view) + _impact(view) + _communication(view) + _contacts(view) + _timeline(view)
    parts += _evidence(view)
    parts += _chart_section(view, image, has_chart) + _notes(view) + _root_cause(view) + _actions(view)
    parts += _lessons(view) + _footer(view, command)
    return redact("\n".join(parts))  # a report is sent around: no secret from a URL or an error in it


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0}
main{max-width:72rem;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.6rem;border-bottom:2px solid #d0d7de;padding-bottom:.4rem}
h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} tr:nth-child(even) td{background:#fbfbfc}
td:first-child{white-space:nowrap}
code{font:.85em ui-monospace,SFMono-Regular,Menlo,monospace;background:#eff1f3;padding:.1em .3em}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;border-radius:6px} pre code{background:none;padding:0}
img{max-width:100%;border:1px solid #d0d7de;border-radius:6px}
hr{border:0;border-top:1px solid #d0d7de;margin-top:2rem}
main>p:last-child{color:#57606a;font-size:.85rem}
"""


def render_html(view: IncidentView, png: bytes | None = None, command: str = "") -> str:
    """The same report as one self-contained HTML file: the markdown through markdown-it-py (raw HTML off,
    so every value is escaped), the chart inlined as a data: URI."""
    from markdown_it import MarkdownIt

    image = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" if png else None
    text = render_markdown(view, image=image, command=command, has_chart=png is not None)
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    title = html.escape(f"Incident {view.incident.id}: {view.incident.title}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )


def chart_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-chart.png")


def write_report(view: IncidentView, out: Path, fmt: str = "md", command: str = "") -> list[Path]:
    """Write the report to `out` and its chart PNG next to it (`<stem>-chart.png`); HTML also inlines the
    chart so the one file is enough to send. Returns the files written."""
    if fmt not in ("md", "html"):
        raise UsageError(f"--format must be md or html, not {fmt!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    png = render_chart(view)
    written: list[Path] = []
    if png is not None:
        chart_path(out).write_bytes(png)
        written.append(chart_path(out))
    if fmt == "html":
        out.write_text(render_html(view, png, command), encoding="utf-8")
    else:
        image = chart_path(out).name if png is not None else None
        out.write_text(
            render_markdown(view, image=image, command=command, has_chart=png is not None), encoding="utf-8"
        )
    return [out, *written]
