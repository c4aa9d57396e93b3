"""`backout status`: the first command an on-call engineer runs.

Live version and weights per function, the active deployment and its step, alarm states, API
throttle and processing, queue and DLQ depths, open incidents, the last drill — with a
warning when the last passing rollback drill is older than the procedure's monthly cadence, or the last
emergency drill older than its quarterly one — and whom to
call (the environment's contacts) and where notifications go.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from backout.control.store import Drill
from backout.manifest import Manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT, NS_SQS, MetricQuery, Platform, Release
from backout.runbooks.context import RunbookContext
from backout.runbooks.verify import queue_ages

DRILL_MAX_AGE_DAYS = 30  # "Testing Rollback Procedures": monthly
EMERGENCY_DRILL_MAX_AGE_DAYS = 90  # "Test emergency procedures quarterly"


COUNTER_WINDOW = 3600  # seconds of queue counters shown next to the depths


def queue_view(manifest: Manifest, platform: Platform, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Every queue as an operator reads it: SQS's attributes, the age of the oldest message, and the
    last hour's counters — the counters are metrics (SQS keeps none), all queues in one call."""
    now = time.time() if now is None else now
    names = platform.queues()
    ages = queue_ages(platform, names, now)
    start = (int(now - COUNTER_WINDOW) // 60) * 60
    wanted = [(NS_SQS, "NumberOfMessagesSent", "sent"), (NS_SQS, "NumberOfMessagesReceived", "received"),
              (NS_SQS, "NumberOfMessagesDeleted", "deleted"), (NS_BACKOUT, "MovedToDLQ", "moved_to_dlq"),
              (NS_BACKOUT, DLQ_ARRIVALS, "dlq_arrivals")]
    queries = [MetricQuery.of(ns, m, {"QueueName": q}, start, int(now) + 1, 60, "Sum")
               for q in names for ns, m, _ in wanted]
    series = platform.metrics(queries) if queries else []
    dlqs = {q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue}
    out: dict[str, dict[str, Any]] = {}
    for i, q in enumerate(names):
        a = platform.queue_attributes(q)
        row: dict[str, Any] = {**a.as_dict(), "age_of_oldest": ages.get(q, 0.0), "is_dlq": q in dlqs,
                               "counters_window_seconds": COUNTER_WINDOW}
        for k, (_, _, key) in enumerate(wanted):
            row[key] = int(sum(p.value for p in series[i * len(wanted) + k]))
        out[q] = row
    return out


def stale_release(manifest: Manifest, live: Release | None) -> str | None:
    """A warning when the manifest's source changed after the live release was published: `up` serves
    the live release, not the working tree, and a newcomer expects to see their edit."""
    if live is None:
        return None
    src = manifest.source_dir
    roots = [src / p for p in manifest.service.packages] or [src]
    newest, newest_path = 0.0, None
    for root in roots:
        files = [root] if root.is_file() else (root.rglob("*") if root.is_dir() else [])
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                m = f.stat().st_mtime
                if m > newest:
                    newest, newest_path = m, f
    if newest_path is None or newest <= live.created_at + 1.0:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(live.created_at))
    return (f"the live release {live.label()} (published {when}) is older than the source tree "
            f"({newest_path.relative_to(manifest.root) if newest_path.is_relative_to(manifest.root) else newest_path}"
            " changed since): `backout deploy` publishes it, or start with `backout up --publish`")


def drill_warnings(drills: list[Drill], env: str, now: float) -> list[str]:
    """The procedure's drill cadence: a passing rollback drill every month, an emergency drill every quarter."""
    out = []
    for kind, days, command, cadence in (
        ("rollback", DRILL_MAX_AGE_DAYS, f"backout drill --env {env}", "monthly"),
        ("emergency", EMERGENCY_DRILL_MAX_AGE_DAYS, f"backout drill --emergency --env {env}", "quarterly"),
    ):
        passed = [d.started_at for d in drills if d.kind == kind and d.passed]
        if not passed:
            out.append(f"no passing {kind} drill on record: run `{command}` ({cadence})")
        elif now - max(passed) > days * 86400:
            out.append(f"last passing {kind} drill is {(now - max(passed)) / 86400:.0f} days old (> {days}): "
                       f"run `{command}`")
    return out


def status(ctx: RunbookContext) -> dict[str, Any]:
    """`backout status`: the first thing on call — live versions, deployment, alarms, switches,
    queues, incidents, drills, and what needs doing."""
    env, platform, store = ctx.env, ctx.platform, ctx.store
    live_alarms = ctx.live_alarms()
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
    all_drills = store.drills(env)
    drills = [d for d in all_drills if d.kind == "rollback"]
    last = max(drills, key=lambda d: d.started_at) if drills else None
    emergencies = [d for d in all_drills if d.kind == "emergency"]
    last_emergency = max(emergencies, key=lambda d: d.started_at) if emergencies else None
    passing = [d for d in drills if d.passed]
    last_pass = max(passing, key=lambda d: d.started_at) if passing else None
    warnings = drill_warnings(all_drills, env, now)
    if throttle.rate == 0:
        warnings.append(f"API blocked (throttle 0): resume with `backout resume --env {env}`")
    if not platform.get_processing():
        warnings.append(f"processing paused: resume with `backout resume --env {env}`")
    queues = queue_view(ctx.manifest, platform, now)
    for q, s in queues.items():
        if s["is_dlq"] and (s["visible"] or s["in_flight"]):
            warnings.append(f"{s['visible'] + s['in_flight']} message(s) waiting in DLQ {q}")
    incidents = [asdict(i) for i in store.incidents(env, status="open")]
    if incidents:
        warnings.append(f"{len(incidents)} open incident(s): `backout incident list --env {env}`")
    dep = None
    if active is not None:
        step = active.current_step
        dep = {**asdict(active), "stable": active.stable, "target": active.target,
               "step_label": f"{step + 1}/{len(active.steps)}" if step is not None else "-"}
    return {
        "env": env,
        "service": ctx.service,
        "gateway_url": ctx.gateway_url,
        "functions": functions,
        "deployment": dep,
        "alarms": {k: (e.as_dict() if hasattr(e, "as_dict") else e) for k, e in live_alarms.items()},
        "api": {"rate": throttle.rate, "burst": throttle.burst, "blocked": throttle.rate == 0},
        "processing": platform.get_processing(),
        "queues": queues,
        "incidents": [{k: i[k] for k in ("id", "severity", "title", "opened_at", "deployment_id")} for i in incidents],
        "contacts": [{"role": role.replace("_", " "), "name": c.name, "channel": c.channel}
                     for role, c in ctx.manifest.contacts_for(env).items()],
        "notify": ctx.notifier.targets,  # secrets masked
        "last_drill": asdict(last) if last else None,
        "last_passing_drill_at": last_pass.started_at if last_pass else None,
        "last_emergency_drill": asdict(last_emergency) if last_emergency else None,
        "warnings": warnings,
        "at": now,
    }
