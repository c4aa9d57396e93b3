"""What the dashboard shows of one environment, read in one go: `backout status` plus the newest
deployment with its chart, every alarm against its threshold with its evidence sentence, incidents and
drills. Plain dicts and dataclasses, rendered by the templates; the stream re-reads it every second.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from backout.control.alarms import CanaryEvidence
from backout.platforms.base import LIVE_ALIAS, NS_LAMBDA, MetricQuery
from backout.runbooks.incidents.chart import rate_points
from backout.server.dashboard.charts import ChartData, svg, weight_steps
from backout.server.endpoints import read_endpoints
from backout.server.metrics import target_weight

if TYPE_CHECKING:
    from backout.control.store import Deployment
    from backout.server.controller import Controller

log = logging.getLogger(__name__)

CHART_SECONDS = 600  # the chart shows at most the last ten minutes of a deployment
RECENT = 10  # incidents and drills listed


def environments(c: Controller) -> list[dict[str, Any]]:
    """Every environment of the manifest: whether its supervisor runs and where its dashboard is."""
    out = []
    for name, spec in c.manifest.environments.items():
        ep = None if name == c.env else read_endpoints(c.manifest.state_dir(name))
        url = ep.get("control_url") if ep else None
        out.append({"name": name, "platform": spec.platform, "current": name == c.env,
                    "running": name == c.env or ep is not None, "dashboard": f"{url}/ui" if url else None})
    return out


def alarms(c: Controller, d: Deployment | None) -> list[dict[str, Any]]:
    """The active deployment's alarms and judges as evaluated now; after it ended, the last evaluation of
    each (so a rolled-back deployment shows the alarm that fired, red, with its sentence)."""
    live = c.live_alarms()
    rows: dict[str, dict[str, Any]] = {}
    if live:
        for name, e in live.items():
            rows[name] = {"alarm": name, "state": e.state, "value": e.value, "threshold": e.threshold,
                          "comparison": e.comparison, "detail": e.detail, "ts": e.ts,
                          "evidence": e.evidence.sentence() if e.evidence is not None else None}
    elif d is not None:
        for a in c.store.alarm_evaluations(d.id):  # oldest first: the last one of each alarm wins
            rows[a.alarm] = {"alarm": a.alarm, "state": a.state, "value": a.value, "threshold": a.threshold,
                             "comparison": a.comparison, "detail": a.detail, "ts": a.ts, "evidence": None}
        fired = _fired(c, d)
        for row in rows.values():
            if row["state"] == "ALARM" and row["alarm"] in fired:
                row["evidence"] = _evidence(fired[row["alarm"]], row["detail"])
    return sorted(rows.values(), key=lambda r: (r["state"] != "ALARM", r["alarm"]))


def _fired(c: Controller, d: Deployment) -> dict[str, dict[str, Any]]:
    """The evaluations the rollback was decided on, by alarm name: the incident's trigger keeps them (the
    `rolled_back` event too, before the incident is written). Its evidence list is only sentences, in the
    firing order, which says nothing about which alarm each belongs to."""
    inc = c.store.incident_for_deployment(d.id)
    data = inc.trigger if inc is not None else next(
        (e.data for e in reversed(c.store.events(deployment_id=d.id)) if e.kind == "rolled_back"), None)
    alarms = data.get("alarms") if isinstance(data, dict) else None
    return {str(a["alarm"]): a for a in alarms or [] if isinstance(a, dict) and "alarm" in a}


def _evidence(fired: dict[str, Any], detail: str) -> str | None:
    """The line under an alarm that fired: its judge's comparison (as the live rows show it), else the
    detail it fired with when that says more than its last stored evaluation."""
    ev = fired.get("evidence")
    if isinstance(ev, dict):
        try:
            return CanaryEvidence(**ev).sentence()
        except (TypeError, ValueError):  # written by another version: fall back to the detail
            pass
    said = str(fired.get("detail") or "")
    return said if said and said != detail else None


def chart(c: Controller, d: Deployment, rows: list[dict[str, Any]], now: float) -> str:
    """The deployment's weight steps and its new version's measured error rate, as SVG."""
    events = c.store.events(deployment_id=d.id)
    end = d.finished_at or now
    start = max(d.created_at, end - CHART_SECONDS)
    per_second: dict[int, list[float]] = {}
    try:
        qs = []
        for fn, v in d.target_versions.items():
            dims = {"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}", "ExecutedVersion": str(v)}
            qs += [MetricQuery.of(NS_LAMBDA, "Invocations", dims, int(start), int(end) + 1, 1, "Sum"),
                   MetricQuery.of(NS_LAMBDA, "Errors", dims, int(start), int(end) + 1, 1, "Sum")]
        series = c.platform.metrics(qs) if qs else []
        for i, pts in enumerate(series):
            for p in pts:
                row = per_second.setdefault(int(p.timestamp), [0.0, 0.0])
                row[i % 2] += p.value
    except Exception as e:  # noqa: BLE001 - a platform without per-second metrics: the chart has weights only
        log.debug("dashboard chart metrics: %s", e)
    ps = [[t, inv, err] for t, (inv, err) in sorted(per_second.items())]
    threshold = next((r["threshold"] for r in rows if r["alarm"].startswith("error-rate")), None)
    data = ChartData(start, end, weight_steps(d, events), rate_points(ps, int(start), int(end) + 1), threshold)
    return svg(data, f"{d.id}: share of traffic on {d.target} and its error rate")


def snapshot(c: Controller) -> dict[str, Any]:
    """Everything the page shows, read now."""
    now = time.time()
    st = c.runbook_status()
    latest = next(iter(c.store.deployments(c.env, limit=1)), None)
    rows = alarms(c, latest)
    dep = None
    if latest is not None:
        step = latest.current_step
        dep = {**asdict(latest), "stable": latest.stable, "target": latest.target, "weight": target_weight(latest),
               "step_label": f"{step + 1}/{len(latest.steps)}" if step is not None else "-",
               "chart": chart(c, latest, rows, now)}
    incidents = c.store.incidents(c.env, limit=RECENT)
    return {
        "env": c.env,
        "service": st.get("service"),
        "gateway_url": st.get("gateway_url"),
        "now": now,
        "environments": environments(c),
        "functions": st["functions"],
        "live_release": _live_release(c),
        "deployment": dep,
        "alarms": rows,
        "api": st["api"],
        "processing": st["processing"],
        "queues": st["queues"],
        "incidents": [{"id": i.id, "severity": i.severity, "status": i.status, "title": i.title,
                       "opened_at": i.opened_at} for i in incidents],
        "drills": [asdict(d) for d in c.store.drills(c.env, limit=RECENT)],
        "warnings": st.get("warnings", []),
    }


def _live_release(c: Controller) -> str | None:
    r = c.deployer.traffic.live_release()
    return None if r is None else f"r{r.id}"
