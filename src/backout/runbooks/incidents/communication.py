"""What to tell people outside the team ("Communication" of rollback-procedures.md: update the status
page, notify customers, brief support), written from the incident's own record so nobody composes it
under pressure: a status-page / customer update — what happened, the counted impact, the current
state — and, once the incident is closed, the "resolved" notice.

Plain sentences for readers who know neither backout nor the release ids: no commands, no version
numbers, times in UTC. The status words are those status pages use (Identified, Monitoring,
Resolved). Both texts are drafts an operator pastes; they say only what the record holds.
"""

from __future__ import annotations

import time
from typing import Any

from backout.control.notify import Notification
from backout.runbooks.incidents.formatting import num, pct
from backout.runbooks.incidents.views import IncidentView

# what each default alarm means to a customer
_ALARM_WORDS = {
    "error-rate": "failed requests and jobs",
    "api-5xx": "errors on API requests",
    "dlq-arrivals": "jobs that could not be processed",
    "duration-p99": "slow processing",
    "latency": "slow processing",
    "queue-age": "processing delays",
}


def utc(ts: float | None, date: bool = False) -> str:
    if ts is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M UTC" if date else "%H:%M UTC", time.gmtime(ts))


def _count(n: float, noun: str) -> str:
    return f"{num(n)} {noun}" + ("" if n == 1 else "s")


def _span(seconds: float) -> str:
    return "less than a minute" if seconds < 60 else f"{round(seconds / 60)} min"


def _service(view: IncidentView) -> str:
    return f"{view.service or 'The service'} ({view.env})"


def _symptom(view: IncidentView) -> str:
    t = view.trigger
    names = [str(a.get("alarm", "")) for a in t.get("alarms") or [] if isinstance(a, dict)]
    names += [str(t.get("reason", ""))]
    for key, words in _ALARM_WORDS.items():
        if any(key in n for n in names):
            return words
    return "errors" if t.get("kind") in ("alarm", "judge", "post_traffic", "deadline", "internal") else "problems"


def _resumed_at(view: IncidentView) -> float | None:
    return next((e.ts for e in view.events if e.kind == "resumed"), None)


def _repaired(view: IncidentView) -> int:
    """Jobs put right by `backout repair` (re-queued for the good version, or restored)."""
    n = 0
    for e in view.events:
        if e.kind == "repair" and isinstance(e.data, dict):
            n += len(e.data.get("jobs") or [])
    return n


def _changed(view: IncidentView) -> set[str]:
    """What an emergency stop switched off: the API, processing (both for records older than --keep-api)."""
    return set(view.trigger.get("changed") or ("api", "processing"))


def what_happened(view: IncidentView) -> str:
    t, kind = view.trigger, view.trigger.get("kind")
    first = view.first_traffic_at or view.decided_at or view.incident.opened_at
    if kind == "pre_traffic":
        return (f"At {utc(view.decided_at)} a new version of {_service(view)} failed its checks before it "
                "served anyone; it was withdrawn and never reached customers.")
    if kind == "emergency":
        stopped = ("stopped processing and paused the API" if "api" in _changed(view)
                   else "paused processing (the API stayed open and kept accepting submissions)")
        rolled = " and returned to the previous version" if t.get("rolled_back") or view.deployment else ""
        return (f"At {utc(view.incident.opened_at)} we {stopped} of {_service(view)}{rolled} to protect your "
                f"data: {t.get('reason') or view.incident.title}.")
    if kind == "manual":
        return (f"A new version of {_service(view)} caused problems ({t.get('reason') or 'reported by users'}); "
                f"we returned to the previous version at {utc(view.completed_at)}.")
    return (f"From {utc(first)} a new version of {_service(view)} caused {_symptom(view)}. It was detected "
            f"automatically and the previous version restored at {utc(view.completed_at)}.")


def counted_impact(view: IncidentView) -> str:
    """The numbers the record holds, as sentences; says so when there are none."""
    parts: list[str] = []
    imp: dict[str, Any] = view.impact or {}
    api = imp.get("api") or {}
    served, failed = float(api.get("requests_served", 0) or 0), float(api.get("failed_requests", 0) or 0)
    if served:
        parts.append(f"{num(failed)} of {num(served)} API requests to the new version failed ({pct(failed, served)})")
    fns = imp.get("functions") or {}
    inv = sum(float(f.get("invocations", 0)) for f in fns.values())
    err = sum(float(f.get("errors", 0)) for f in fns.values())
    if inv:
        parts.append(f"{num(err)} of {_count(inv, 'processing attempt')} failed")
    dlq = sum(float(n) for n in (imp.get("dlq_arrivals") or {}).values())
    if dlq:
        parts.append(f"{_count(dlq, 'job')} could not be processed and {'was' if dlq == 1 else 'were'} set aside")
    repaired = _repaired(view)
    if repaired:
        parts.append(f"{_count(repaired, 'job')} processed by the faulty version "
                     f"{'was' if repaired == 1 else 'were'} corrected and processed again")
    elif view.jobs_touched:
        parts.append(f"{_count(view.jobs_touched, 'job')} {'was' if view.jobs_touched == 1 else 'were'} "
                     "processed by the faulty version")
    if view.trigger.get("kind") == "emergency":
        end = _resumed_at(view) or view.incident.closed_at
        refused = "new submissions were refused and " if "api" in _changed(view) else ""
        if end is None:
            parts.append(f"since {utc(view.incident.opened_at)} {refused.replace('were', 'are')}processing is "
                         "paused; submitted work waits in the queue and none is lost")
        else:
            parts.append(f"{refused}processing was paused for {_span(end - view.incident.opened_at)}; submitted "
                         "work waited in the queue and none was lost")
    if view.trigger.get("kind") == "pre_traffic":
        return "No customer request reached the faulty version."
    if not parts:
        return "No failed requests or jobs were recorded."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def current_state(view: IncidentView) -> tuple[str, str]:
    """(status word, sentence)."""
    if view.incident.status == "closed":
        return "Resolved", f"Resolved at {utc(view.incident.closed_at)}."
    if view.trigger.get("kind") == "emergency":
        resumed = _resumed_at(view)
        if resumed is not None:
            return "Monitoring", f"Service was restored at {utc(resumed)}; we are monitoring it closely."
        api = " and new submissions are refused" if "api" in _changed(view) else ""
        return ("Identified", f"Processing is paused{api} while we investigate; work already submitted is kept "
                              "and will be processed when service resumes.")
    return ("Monitoring", "The previous version serves all requests and the service is operating normally; we "
                          "are investigating the cause.")


def status_update(view: IncidentView) -> str:
    """The status-page / customer update for the incident as its record stands now."""
    word, state = current_state(view)
    return "\n".join([
        f"[{word}] {_service(view)} — {utc(time.time(), date=True)}",
        f"What happened: {what_happened(view)}",
        f"Impact: {counted_impact(view)}",
        f"Current state: {state}",
    ])


def resolved_notice(view: IncidentView) -> str | None:
    """The "resolved" notice; None while the incident is open."""
    inc = view.incident
    if inc.status != "closed":
        return None
    lines = [
        f"[Resolved] {_service(view)} — {utc(inc.closed_at, date=True)}",
        f"What happened: {what_happened(view)}",
        f"Impact: {counted_impact(view)}",
    ]
    if inc.root_cause:
        lines.append(f"Cause: {inc.root_cause.rstrip('.')}.")
    lines.append(f"Resolved at {utc(inc.closed_at)}: the service is operating normally. We apologise for the "
                 "disruption.")
    return "\n".join(lines)


def resolution(view: IncidentView) -> Notification:
    """The `incident_closed` notification of a closed incident: its root cause, and the resolved notice
    ready for the status page."""
    inc = view.incident
    return Notification(
        kind="incident_closed", environment=view.env, service=view.service, incident_id=inc.id,
        deployment_id=inc.deployment_id, reason=f"root cause: {inc.root_cause}" if inc.root_cause else "",
        notice=resolved_notice(view) or "", command=f"backout incident report {inc.id} --env {view.env}",
    )
