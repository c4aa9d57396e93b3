"""Emergency stop and resume (the data-corruption scenario's "IMMEDIATE: stop all processing").

In order, each step timed into the incident: throttle the API to 0 (clients get 429 with
Retry-After — the procedure's `update-stage ... /throttle/rateLimit` done at the path API Gateway
accepts), pause every event source mapping (messages wait; none lost, none dead-lettered), stop
any deployment with rollback, snapshot the data, open a critical incident, notify.
`resume` re-enables processing and the API only after `verify` passes (or with --force, recorded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backout.control import states as st
from backout.control.notify import Notification
from backout.errors import OperationFailed, UsageError
from backout.runbooks.context import RunbookContext
from backout.runbooks.verify import VerifyReport


def emergency_stop(ctx: RunbookContext, reason: str, who: str) -> dict[str, Any]:
    """Every switch goes through the deployer's Traffic (stored first, then applied), so a restarted
    process keeps the API blocked and processing paused until `resume`."""
    env, platform, store = ctx.env, ctx.platform, ctx.store
    if not reason.strip():
        raise UsageError("--reason is required for an emergency stop")
    steps: list[dict[str, Any]] = []
    started = time.time()

    def step(name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - later steps still run; the failure is in the incident
            detail, ok = f"{type(e).__name__}: {e}", False
        steps.append({"step": name, "ok": ok, "ms": round((time.perf_counter() - t0) * 1000, 2), "detail": detail})

    before = platform.get_throttle()

    def block_api() -> str:
        ctx.traffic.set_throttle(0, 0, who, f"emergency stop: {reason}")
        return f"API throttled to 0 (was rate {before.rate:g}, burst {before.burst}); clients get 429"

    def pause() -> str:
        ctx.traffic.set_processing(False, who, f"emergency stop: {reason}")
        return "event source mappings paused; messages wait in their queues"

    stopped: list[str] = []

    def stop_deployment() -> str:
        active = store.active_deployment(env)
        if active is None:
            return "no deployment in progress"
        d = ctx.deployer.stop(active.id, rollback=True, reason=f"emergency stop by {who}: {reason}", who=who)
        stopped.append(active.id)
        if d.status != st.ROLLED_BACK:
            raise RuntimeError(f"deployment {d.id} is {d.status}, not rolled back: roll back with `backout rollback`")
        return f"deployment {active.id} stopped and rolled back to {active.stable}"

    snap: list[str] = []

    def snapshot() -> str:
        s = platform.backup(label=f"emergency stop: {reason}")
        store.record_snapshot(env, s.id, label="emergency stop")
        snap.append(s.id)
        return f"data snapshot {s.id}"

    step("block API", block_api)
    step("pause processing", pause)
    step("stop deployment", stop_deployment)
    step("back up data", snapshot)
    inc = store.open_incident(
        env,
        f"emergency stop: {reason}",
        severity="critical",
        deployment_id=stopped[0] if stopped else None,
        trigger={
            "kind": "emergency",
            "reason": reason,
            "who": who,
            "decided_at": started,
            "completed_at": time.time(),
            "steps": steps,
            "throttle_before": [before.rate, before.burst],
        },
        evidence={"alarms": [f"operator {who}: {reason}"], "snapshot": snap[0] if snap else None},
    )
    for s in steps:
        store.add_event(
            "emergency_step",
            f"{s['step']}: {s['detail']} ({s['ms']:.1f} ms)",
            incident_id=inc.id,
            severity="critical" if not s["ok"] else "warning",
            data=s,
        )
    t0 = time.perf_counter()
    ctx.notifier.notify(
        Notification(
            kind="emergency_stop",
            environment=env,
            service=ctx.service,
            reason=f"{reason} ({who})",
            incident_id=inc.id,
            evidence=[f"{s['step']}: {s['detail']}" for s in steps],
            command=f"backout incident show {inc.id} --env {env}",
        )
    )
    steps.append(
        {
            "step": "notify",
            "ok": True,
            "ms": round((time.perf_counter() - t0) * 1000, 2),
            "detail": "notifications queued",
        }
    )
    return {
        "incident": inc.id,
        "steps": steps,
        "snapshot": snap[0] if snap else None,
        "total_ms": round((time.time() - started) * 1000, 1),
    }


def resume(ctx: RunbookContext, report: VerifyReport, force: bool, who: str) -> dict[str, Any]:
    env, spec, store = ctx.env, ctx.spec, ctx.store
    if not report.ok and not force:
        raise OperationFailed(f"not resuming: {report.summary()} (fix it, or --force to resume anyway)")
    open_emergencies = [
        i
        for i in store.incidents(env, status="open")
        if isinstance(i.trigger, dict) and i.trigger.get("kind") == "emergency"
    ]
    # the API goes back to the throttle it had before the first open emergency stop, else the manifest's
    rate, burst = spec.throttle_rate, spec.throttle_burst
    before = [i.trigger.get("throttle_before") for i in open_emergencies if i.trigger.get("throttle_before")]
    if before and before[-1][0] > 0:
        rate, burst = float(before[-1][0]), int(before[-1][1])
    ctx.traffic.set_processing(True, who, "resume")
    ctx.traffic.set_throttle(rate, burst, who, "resume")
    msg = f"resumed by {who}: processing on, API throttle back to {rate:g}/s" + (
        " (FORCED past a failing verify)" if force and not report.ok else " after verify passed"
    )
    for inc in open_emergencies:
        store.add_incident_note(inc.id, msg, author=who)
        store.add_event(
            "resumed",
            msg,
            incident_id=inc.id,
            severity="warning" if force else "info",
            data={"verify": report.as_dict(), "forced": force},
        )
    if not open_emergencies:
        store.add_event("resumed", msg, severity="info", data={"verify": report.as_dict(), "forced": force})
    return {
        "resumed": True,
        "forced": force and not report.ok,
        "verify": report.as_dict(),
        "incidents": [i.id for i in open_emergencies],
        "at": time.time(),
    }
