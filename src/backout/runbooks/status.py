"""`backout status`: the first command an on-call engineer runs.

Live version and weights per function, the active deployment and its step, alarm states, API
throttle and processing, queue and DLQ depths, open incidents, and the last drill — with a
warning when the last passing drill is older than the procedure's monthly cadence.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from backout.control.store import Store
from backout.platforms.base import Platform

DRILL_MAX_AGE_DAYS = 30


def status(
    env: str, service: str, platform: Platform, store: Store, live_alarms: dict[str, Any], gateway_url: str
) -> dict[str, Any]:
    now = time.time()
    functions = {}
    for fn in platform.functions():
        w = platform.get_weights(fn)
        functions[fn] = {
            "weights": {str(v): p for v, p in w.versions.items()},
            "stable": w.stable,
            "canary": w.canary,
            "canary_weight": w.canary_weight,
        }
    active = store.active_deployment(env)
    throttle = platform.get_throttle()
    drills = store.drills(env)
    last = max(drills, key=lambda d: d.started_at) if drills else None
    passing = [d for d in drills if d.passed]
    last_pass = max(passing, key=lambda d: d.started_at) if passing else None
    warnings = []
    if last_pass is None:
        warnings.append(f"no passing rollback drill on record: run `backout drill --env {env}` (monthly)")
    elif now - last_pass.started_at > DRILL_MAX_AGE_DAYS * 86400:
        age = (now - last_pass.started_at) / 86400
        warnings.append(
            f"last passing rollback drill is {age:.0f} days old (> {DRILL_MAX_AGE_DAYS}): "
            f"run `backout drill --env {env}`"
        )
    if throttle.rate == 0:
        warnings.append(f"API blocked (throttle 0): resume with `backout resume --env {env}`")
    if not platform.get_processing():
        warnings.append(f"processing paused: resume with `backout resume --env {env}`")
    queues = {q: platform.queue_stats(q).as_dict() for q in platform.queues()}
    for q, s in queues.items():
        if s["dlq_arrivals"] and (s["visible"] or s["in_flight"]):
            warnings.append(f"{s['visible'] + s['in_flight']} message(s) waiting in DLQ {q}")
    incidents = [asdict(i) for i in store.incidents(env, status="open")]
    if incidents:
        warnings.append(f"{len(incidents)} open incident(s): `backout incident list --env {env}`")
    dep = None
    if active is not None:
        step = active.current_step
        dep = {**asdict(active), "step_label": f"{step + 1}/{len(active.steps)}" if step is not None else "-"}
    return {
        "env": env,
        "service": service,
        "gateway_url": gateway_url,
        "functions": functions,
        "deployment": dep,
        "alarms": {k: (e.as_dict() if hasattr(e, "as_dict") else e) for k, e in live_alarms.items()},
        "api": {"rate": throttle.rate, "burst": throttle.burst, "blocked": throttle.rate == 0},
        "processing": platform.get_processing(),
        "queues": queues,
        "incidents": [{k: i[k] for k in ("id", "severity", "title", "opened_at", "deployment_id")} for i in incidents],
        "last_drill": asdict(last) if last else None,
        "last_passing_drill_at": last_pass.started_at if last_pass else None,
        "warnings": warnings,
        "at": now,
    }
