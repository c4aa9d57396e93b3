"""Incidents after the fact: the record an operator annotates (notes, action items, lessons, root cause)
and the report a team files ("Communication → Post-Rollback" of rollback-procedures.md: root cause
analysis, timeline of events, action items; lessons learned as process improvements, monitoring
enhancements and prevention strategies).

Everything comes from the environment's control store — the incident (its trigger, and the evidence the
deployer kept: alarm sentences and the bad version's measured impact), its deployment, the deployment's
and the incident's own events, and the alarm evaluations — so a report can be written days later, with
or without a running supervisor. Incidents opened by a manual rollback or an emergency stop carry no
deployment or no impact; every section then says what is not known instead of failing.

The report is written once, as markdown; the HTML is the same text through markdown-it-py (rich's own
markdown parser, so always installed) inside a small stylesheet, with the chart inlined as a `data:` URI.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backout.control.store import AlarmEvaluation, Deployment, Event, Incident, Store
from backout.errors import UsageError

LESSON_GROUPS = ("Process improvements", "Monitoring enhancements", "Prevention strategies")
_LESSON_PREFIX = re.compile(
    r"^\s*(?P<group>process\s+improvements?|monitoring\s+enhancements?|prevention\s+strateg(?:y|ies))"
    r"\s*(?:[:\-–—]\s*|\s+|$)",
    re.IGNORECASE,
)
_AUTOMATIC = {"alarm", "pre_traffic", "post_traffic", "deadline", "internal"}
_COMPARISON = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": "≥",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "≤",
}
ROLLING_SECONDS = 5  # the chart's error rate is a trailing sum over this many seconds (readable at low rates)


# --- the record ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncidentView:
    """One incident with everything its report needs, read in one go from the store."""

    env: str
    incident: Incident
    deployment: Deployment | None
    events: list[Event]  # the deployment's and the incident's, oldest first
    alarm_evaluations: list[AlarmEvaluation]
    trigger: dict[str, Any]
    evidence: list[str]  # the sentences the rollback was decided on
    impact: dict[str, Any] | None  # measure_impact(): what the bad version did
    jobs_touched: int | None
    other_evidence: dict[str, Any]  # anything else an incident's evidence carries, shown as is

    @property
    def first_traffic_at(self) -> float | None:
        """When the new version first took traffic (the first step with a weight above 0)."""
        for ts, weight in self.weights:
            if weight > 0:
                return ts
        return None

    @property
    def decided_at(self) -> float | None:
        return _first(
            self.trigger.get("decided_at"),
            self.deployment and self.deployment.rollback_decided_at,
            self._rolled_back("decided_at"),
        )

    @property
    def completed_at(self) -> float | None:
        return _first(
            self.trigger.get("completed_at"),
            self.deployment and self.deployment.rollback_completed_at,
            self._rolled_back("completed_at"),
        )

    @property
    def detection_ms(self) -> float | None:
        """First traffic on the new version → the rollback decision."""
        a, b = self.first_traffic_at, self.decided_at
        return None if a is None or b is None else max(0.0, (b - a) * 1000)

    @property
    def restore_ms(self) -> float | None:
        """The rollback decision → 100 % of traffic on the stable version."""
        a, b = self.decided_at, self.completed_at
        return None if a is None or b is None else max(0.0, (b - a) * 1000)

    @property
    def weights(self) -> list[tuple[float, float]]:
        """Canary weight % over time: the impact's record, else rebuilt from the step events."""
        raw = (self.impact or {}).get("weights")
        if raw:
            return [(float(t), float(w)) for t, w in raw]
        if self.deployment is None:
            return []
        out = [(self.deployment.created_at, 0.0)]
        for e in self.events:
            if e.deployment_id != self.deployment.id:
                continue
            if e.kind == "step_reached" and isinstance(e.data, dict):
                out.append((e.ts, float(e.data.get("weight", 0.0))))
            elif e.kind == "rolled_back":
                out.append((e.ts, 0.0))
        return out if len(out) > 1 else []

    @property
    def automatic(self) -> bool:
        return self.trigger.get("kind") in _AUTOMATIC

    @property
    def bad_version(self) -> int | None:
        return _first((self.impact or {}).get("version"), self.deployment and self.deployment.target_version)

    @property
    def stable_version(self) -> int | None:
        return _first(
            (self.impact or {}).get("stable_version"), self.deployment and self.deployment.stable_version
        )

    def _rolled_back(self, key: str) -> float | None:
        for e in self.events:
            if e.kind == "rolled_back" and isinstance(e.data, dict) and e.data.get(key) is not None:
                return float(e.data[key])
        return None


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None and v is not False:
            return v
    return None


def load(store: Store, incident_id: str, env: str | None = None) -> IncidentView:
    """The incident `incident_id` (`3`, `INC-3`, `INC-0003`) and all its report needs; a UsageError naming
    the list command when there is no such incident."""
    inc = get_incident(store, incident_id, env)
    dep = store.find(inc.deployment_id) if inc.deployment_id else None
    events = store.events(deployment_id=dep.id if dep else None, incident_id=inc.id)
    evals = store.alarm_evaluations(dep.id) if dep else []
    trigger = (
        inc.trigger
        if isinstance(inc.trigger, dict)
        else ({"reason": str(inc.trigger)} if inc.trigger else {})
    )
    sentences, impact, jobs, other = _split_evidence(inc.evidence)
    return IncidentView(env or inc.env, inc, dep, events, evals, trigger, sentences, impact, jobs, other)


def get_incident(store: Store, incident_id: str, env: str | None = None) -> Incident:
    try:
        return store.get_incident(incident_id)
    except UsageError:
        where = f" in {env}" if env else ""
        hint = f"backout incident list{f' --env {env}' if env else ''}"
        raise UsageError(f"no incident {incident_id!r}{where} (list them with: {hint})") from None


def _split_evidence(ev: Any) -> tuple[list[str], dict[str, Any] | None, int | None, dict[str, Any]]:
    """The deployer's evidence is {"alarms": [sentences], "impact": {...}}; older or hand-made incidents
    carry a list of sentences, one string, or nothing."""
    if ev is None:
        return [], None, None, {}
    if isinstance(ev, str):
        return [ev], None, None, {}
    if isinstance(ev, list):
        return [str(x) for x in ev], None, None, {}
    if not isinstance(ev, dict):
        return [str(ev)], None, None, {}
    alarms = ev.get("alarms") or []
    sentences = [alarms] if isinstance(alarms, str) else [str(x) for x in alarms]
    impact = ev.get("impact") if isinstance(ev.get("impact"), dict) else None
    jobs = _first(ev.get("jobs_touched"), (impact or {}).get("jobs_touched"))
    other = {k: v for k, v in ev.items() if k not in {"alarms", "impact", "jobs_touched"}}
    return sentences, impact, None if jobs is None else int(jobs), other


# --- annotating an incident (each change is also an event on the incident's timeline) --------------------
def add_note(store: Store, incident_id: str, text: str, author: str = "") -> Incident:
    inc = store.add_incident_note(_id(store, incident_id), _text(text, "note"), author)
    _event(store, inc, "note_added", f"note by {author or 'an operator'}: {text.strip()}")
    return inc


def add_action(store: Store, incident_id: str, text: str, owner: str = "") -> Incident:
    inc = store.add_incident_action(_id(store, incident_id), _text(text, "action item"), owner)
    _event(
        store,
        inc,
        "action_added",
        f"action item {len(inc.action_items)}{f' ({owner})' if owner else ''}: {text.strip()}",
    )
    return inc


def complete_action(store: Store, incident_id: str, number: int) -> Incident:
    """Mark action item `number` (1-based, as listed) done."""
    inc = store.complete_incident_action(_id(store, incident_id), number - 1)
    _event(store, inc, "action_done", f"action item {number} done: {inc.action_items[number - 1]['text']}")
    return inc


def add_lesson(store: Store, incident_id: str, text: str) -> Incident:
    inc = store.add_incident_lesson(_id(store, incident_id), _text(text, "lesson"))
    _event(store, inc, "lesson_added", f"lesson learned: {text.strip()}")
    return inc


def close(store: Store, incident_id: str, root_cause: str, who: str = "") -> Incident:
    inc = store.close_incident(_id(store, incident_id), _text(root_cause, "root cause"))
    _event(
        store,
        inc,
        "incident_closed",
        f"incident {inc.id} closed by {who or 'an operator'}; root cause: {inc.root_cause}",
    )
    return inc


def _id(store: Store, incident_id: str) -> str:
    return get_incident(store, incident_id).id


def _text(text: str, what: str) -> str:
    if not text or not text.strip():
        raise UsageError(f"the {what} is empty; give its text")
    return text.strip()


def _event(store: Store, inc: Incident, kind: str, message: str) -> None:
    store.add_event(kind, message, incident_id=inc.id)


def group_lessons(lessons: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Lessons that start with "Process improvement", "Monitoring enhancement" or "Prevention strategy"
    (the procedure's three kinds) go under that heading, without the prefix; the rest under "Other"."""
    groups: dict[str, list[str]] = {}
    for lesson in lessons:
        text = str(lesson.get("text", "")).strip()
        m = _LESSON_PREFIX.match(text)
        if m:
            key = next(g for g in LESSON_GROUPS if g.lower()[:8] == m.group("group").lower()[:8])
            rest = text[m.end() :].strip()
            text = rest[:1].upper() + rest[1:] if rest else text
        else:
            key = "Other"
        groups.setdefault(key, []).append(text)
    order = [*LESSON_GROUPS, "Other"]
    return {k: groups[k] for k in order if k in groups}


def to_dict(view: IncidentView) -> dict[str, Any]:
    """`incident show --json`: the record, its deployment, the merged timeline and the derived timings."""
    return {
        "incident": asdict(view.incident),
        "env": view.env,
        "deployment": asdict(view.deployment) if view.deployment else None,
        "trigger": view.trigger,
        "evidence": view.evidence,
        "impact": view.impact,
        "jobs_touched": view.jobs_touched,
        "other_evidence": view.other_evidence,
        "timings": {
            "first_traffic_at": view.first_traffic_at,
            "decided_at": view.decided_at,
            "completed_at": view.completed_at,
            "first_traffic_to_decision_ms": view.detection_ms,
            "decision_to_stable_ms": view.restore_ms,
        },
        "timeline": [asdict(e) for e in view.events],
        "alarm_evaluations": [asdict(a) for a in view.alarm_evaluations],
        "lessons_grouped": group_lessons(view.incident.lessons),
    }


# --- formatting helpers -----------------------------------------------------------------------------------
def clock(ts: float | None) -> str:
    """Local wall clock to the millisecond (the timeline's resolution)."""
    if ts is None:
        return "—"
    sec, ms = divmod(round(ts * 1000), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)) + f".{ms:03d}"


def _zone(ts: float) -> str:
    z = time.strftime("%z", time.localtime(ts))
    return f"UTC{z[:3]}:{z[3:]}" if len(z) == 5 else (z or "local time")


def fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f} ms"


def _secs(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 120:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _num(v: Any) -> str:
    if v is None:
        return "—"
    f = float(v)
    return f"{int(f):,}" if f.is_integer() else f"{f:,.2f}"


def _pct(num: float, den: float) -> str:
    return "—" if not den else f"{100.0 * num / den:.1f} %"


_MD_SPECIAL = re.compile(r"([\\`*\[\]<|])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_MD_LINE_START = re.compile(r"^(?:[#>=]|[-+]\s)")
_MD_ORDERED = re.compile(r"^(\d+)([.)]\s)")


def md(text: Any) -> str:
    """Literal text in markdown: punctuation that would format is backslash-escaped (CommonMark allows it for
    any ASCII punctuation), block markers only where they would start a block; intraword underscores
    (`dlq_processor`) stay readable; newlines become spaces."""
    s = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split("\n")))
    s = _MD_ORDERED.sub(r"\1\\\2", s)
    return "\\" + s if _MD_LINE_START.match(s) else s


def code(text: Any) -> str:
    s = str(text).replace("\n", " ")
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _fence(text: str) -> str:
    ticks = "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}text\n{text.rstrip()}\n{ticks}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c if c else " " for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --- the report ------------------------------------------------------------------------------------------
def _cause(view: IncidentView) -> str:
    """What made backout (or someone) roll back, as the end of a sentence."""
    t = view.trigger
    kind = t.get("kind")
    reason = str(
        t.get("reason") or (view.deployment.reason if view.deployment else "") or view.incident.title
    )
    if kind == "alarm":
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
            f"Deployment {code(d.id)} in **{md(view.env)}** shifted traffic from v{good} to v{bad} with the "
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
            ["Versions", f"v{view.bad_version} rolled back → v{view.stable_version} restored"],
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
        rows.append(["Incident open for", _secs(inc.closed_at - inc.opened_at)])
    out += [_table(rows[0], rows[1:]), ""]
    return out


def impact_sentence(view: IncidentView) -> str:
    imp = view.impact or {}
    fns = imp.get("functions") or {}
    errs = sum(float(f.get("errors", 0)) for f in fns.values())
    inv = sum(float(f.get("invocations", 0)) for f in fns.values())
    api = imp.get("api") or {}
    parts = [f"v{view.bad_version} handled {_num(inv)} invocations, {_num(errs)} of them failed"]
    if api:
        parts.append(f"{_num(api.get('failed_requests', 0))} API requests failed")
    if view.jobs_touched is not None:
        parts.append(f"{_num(view.jobs_touched)} jobs were touched")
    dlq = sum(float(n) for n in (imp.get("dlq_arrivals") or {}).values())
    if dlq:
        parts.append(f"{_num(dlq)} messages were dead-lettered")
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
            out += [f"Jobs touched: **{_num(view.jobs_touched)}**.", ""]
        return out
    v = view.bad_version
    api = imp.get("api") or {}
    served, failed = float(api.get("requests_served", 0)), float(api.get("failed_requests", 0))
    dlq = imp.get("dlq_arrivals") or {}
    weights = [w for _, w in view.weights]
    d = view.deployment
    jobs = (
        _num(view.jobs_touched)
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
            f"Failed API requests (5xx served by v{v})",
            f"**{_num(failed)}** of {_num(served)} ({_pct(failed, served)})",
        ],
        [f"Jobs touched by v{v}", jobs],
        [
            "Messages dead-lettered",
            ", ".join(f"{code(q)}: {_num(n)}" for q, n in sorted(dlq.items())) if dlq else "none (no DLQ)",
        ],
        ["Peak share of traffic on v" + str(v), f"{max(weights):g} %" if weights else "—"],
        ["Duration (deployment start → 100 % stable)", _secs(imp.get("duration_seconds"))],
    ]
    out += [_table(["measure", "value"], rows), ""]
    fns = imp.get("functions") or {}
    if fns:
        out += [f"Invocations of v{v} by function (the stable version's are not counted):", ""]
        frows = []
        for fn, f in sorted(fns.items()):
            inv, err = float(f.get("invocations", 0)), float(f.get("errors", 0))
            frows.append([code(fn), _num(inv), _num(err), _pct(err, inv)])
        out += [_table(["function", "invocations", "errors", "error rate"], frows), ""]
    return out


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
        f"Every event of the deployment and the incident, to the millisecond ({_zone(t0)}); "
        f"T+ counts from {'the deployment start' if view.deployment else 'the first event'}.",
        "",
    ]
    rows = []
    for e in events:
        sev = f"**{e.severity}**" if e.severity == "critical" else e.severity
        rows.append([clock(e.ts), f"{e.ts - t0:+.3f}", sev, code(e.kind), md(e.message)])
    return out + [_table(["time", "T+ (s)", "severity", "event", "detail"], rows), ""]


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
    if rows:
        out += [
            "Alarm state changes of the new version (value of the newest window against the threshold):",
            "",
            _table(["time", "alarm", "state", "value", "threshold", "window"], rows),
            "",
        ]
    kind = view.trigger.get("kind")
    if kind in ("pre_traffic", "post_traffic") and view.trigger.get("output"):
        out += [
            f"Output of the failing {kind.replace('_', '-')} hook {code(view.trigger.get('hook', ''))}:",
            "",
            _fence(str(view.trigger["output"])[:4000]),
            "",
        ]
    if view.other_evidence:
        out += [
            "Other evidence kept with the incident:",
            "",
            _fence(json.dumps(view.other_evidence, indent=2, default=str)[:4000]),
            "",
        ]
    if len(out) == 2:
        out += ["No alarm evidence: this incident was not opened by an alarm.", ""]
    return out


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
        f"Error rate of v{v} per function ({ROLLING_SECONDS} s rolling, left axis) and the share of "
        f"traffic on v{v} (step line, right axis); the red line marks the rollback decision."
    )
    if image is None:
        return out + [caption, "", "(The chart is written next to the report with `-o FILE`.)", ""]
    return out + [f"![error rate and canary weight of v{v}]({image})", "", caption, ""]


def _notes(view: IncidentView) -> list[str]:
    notes = view.incident.notes
    if not notes:
        return []
    rows = [[clock(n.get("ts")), md(n.get("author") or "—"), md(n.get("text", ""))] for n in notes]
    return ["## Notes", "", _table(["time", "author", "note"], rows), ""]


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
    return out + [_table(["#", "action", "owner", "status"], rows), "", f"{done} of {len(items)} done.", ""]


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
    parts += _summary(view) + _impact(view) + _timeline(view) + _evidence(view)
    parts += _chart_section(view, image, has_chart) + _notes(view) + _root_cause(view) + _actions(view)
    parts += _lessons(view) + _footer(view, command)
    return "\n".join(parts)


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


# --- the chart ----------------------------------------------------------------------------------------------
def chart_available(view: IncidentView) -> bool:
    return bool(view.weights) or any(
        (f.get("per_second") or []) for f in ((view.impact or {}).get("functions") or {}).values()
    )


def _rolling_rate(per_second: list[list[float]], start: int, end: int) -> tuple[list[float], list[float]]:
    inv = {int(t): float(i) for t, i, _ in per_second}
    err = {int(t): float(e) for t, _, e in per_second}
    xs, ys = [], []
    for t in range(start, end):
        if not inv.get(t):
            continue  # no traffic on the version this second (before the canary, after the rollback): no rate
        window = range(t - ROLLING_SECONDS + 1, t + 1)
        n = sum(inv.get(s, 0.0) for s in window)
        xs.append(t + 1.0)  # the value covers the second [t, t+1): plot it at its end, as a trailing window
        ys.append(100.0 * sum(err.get(s, 0.0) for s in window) / n)
    return xs, ys


def render_chart(view: IncidentView) -> bytes | None:
    """PNG: error rate % of the new version per function over time, the canary weight % as a step line on a
    second axis, the alarm threshold and the rollback moment. None when there is nothing to draw."""
    if not chart_available(view):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without pyplot: no global backend state
    from matplotlib.figure import Figure

    imp = view.impact or {}
    fns = imp.get("functions") or {}
    weights = view.weights
    d = view.deployment
    t0 = (
        d.created_at
        if d
        else (
            weights[0][0]
            if weights
            else min(int(p[0]) for f in fns.values() for p in f.get("per_second") or [])
        )
    )
    window = imp.get("window") or []
    times = [t for t, _ in weights] + [float(p[0]) for f in fns.values() for p in f.get("per_second") or []]
    times += [x for x in (view.decided_at, view.completed_at) if x is not None]
    start = int(window[0]) if window else int(min(times))
    end = int(window[1]) if len(window) > 1 else int(max(times)) + 1
    end = max(end, int(max(times)) + 2)

    fig = Figure(figsize=(10, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    v = view.bad_version
    plotted = False
    colours = iter(
        ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"] * 9
    )
    for fn, f in sorted(fns.items()):
        ps = f.get("per_second") or []
        if not any(p[1] for p in ps):
            continue
        xs, ys = _rolling_rate(ps, start, end)
        ax.plot(
            [x - t0 for x in xs],
            ys,
            lw=1.8,
            marker="o",
            ms=2.5,
            color=next(colours),
            label=f"{fn} v{v} error rate",
        )
        plotted = True
    thresholds = sorted({a.threshold for a in view.alarm_evaluations if a.alarm.startswith("error-rate")})
    for thr in thresholds[:1]:
        ax.axhline(thr, color="dimgray", ls="--", lw=1, label=f"error-rate alarm threshold ({thr:g} %)")
    ax.set_ylim(-3, 103)
    ax.set_ylabel(f"error rate of v{v} (%)" if plotted else "error rate (no data)")
    ax.set_xlabel("seconds since the deployment started" if d else "seconds")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if weights:
        ax2 = ax.twinx()
        wx = [t - t0 for t, _ in weights] + [end - t0]
        wy = [w for _, w in weights] + [weights[-1][1]]
        ax2.step(wx, wy, where="post", color="tab:purple", lw=2.2, alpha=0.8, label=f"traffic on v{v} (%)")
        ax2.fill_between(wx, wy, step="post", color="tab:purple", alpha=0.08)
        ax2.set_ylim(-3, 103)
        ax2.set_ylabel(f"share of traffic on v{v} (%)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if view.decided_at is not None:
        x = view.decided_at - t0
        ln = ax.axvline(x, color="red", lw=1.6, label=f"rollback decided (+{x:.1f} s)")
        handles.append(ln)
        labels.append(ln.get_label())
        if view.completed_at is not None and view.completed_at > view.decided_at:
            ax.axvspan(x, view.completed_at - t0, color="red", alpha=0.15)
    ax.set_xlim(start - t0, end - t0)
    title = (
        f"{view.incident.id}: {d.id} v{d.stable_version} → v{d.target_version} in {view.env}"
        if d
        else f"{view.incident.id} in {view.env}"
    )
    ax.set_title(title + f" (started {clock(t0)})", fontsize=11)
    ax.legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --- writing ------------------------------------------------------------------------------------------------
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
