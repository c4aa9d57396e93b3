"""Read models of an incident: everything its `show`, its JSON and its report need, read in one go from the
environment's control store, so a report can be written days later with or without a running supervisor.

Incidents opened by a manual rollback or an emergency stop carry no deployment or no impact; the derived
timings then are None instead of failing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from backout.control.store import AlarmEvaluation, ControlStore, Deployment, Event, Incident
from backout.runbooks.incidents.records import get_incident

LESSON_GROUPS = ("Process improvements", "Monitoring enhancements", "Prevention strategies")
_LESSON_PREFIX = re.compile(
    r"^\s*(?P<group>process\s+improvements?|monitoring\s+enhancements?|prevention\s+strateg(?:y|ies))"
    r"\s*(?:[:\-–—]\s*|\s+|$)",
    re.IGNORECASE,
)
_AUTOMATIC = {"alarm", "judge", "pre_traffic", "post_traffic", "deadline", "internal"}


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
    service: str = ""  # the manifest's service name (the communication texts name it)
    contacts: tuple[str, ...] = ()  # the environment's contacts, "on call: Dana Lee (#incidents)"

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
        """The rolled-back release's id."""
        imp = self.impact or {}
        return _first(imp.get("release"), imp.get("version"), self.deployment and self.deployment.target_release)

    @property
    def stable_version(self) -> int | None:
        """The id of the release traffic went back to."""
        imp = self.impact or {}
        return _first(imp.get("stable_release"), imp.get("stable_version"),
                      self.deployment and self.deployment.stable_release)

    @property
    def bad_label(self) -> str:
        """`r7`, or `r7 (worker v12)` where a function's version number differs from the release id."""
        return self.deployment.target if self.deployment is not None else f"r{self.bad_version}"

    @property
    def stable_label(self) -> str:
        return self.deployment.stable if self.deployment is not None else f"r{self.stable_version}"

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


def load(store: ControlStore, incident_id: str, env: str | None = None, service: str = "",
         contacts: tuple[str, ...] | list[str] = ()) -> IncidentView:
    """The incident `incident_id` (`3`, `INC-3`, `INC-0003`) and all its report needs; a UsageError naming
    the list command when there is no such incident. `service` and `contacts` come from the manifest."""
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
    return IncidentView(env or inc.env, inc, dep, events, evals, trigger, sentences, impact, jobs, other,
                        service=service, contacts=tuple(contacts))


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
