"""Emergency stop and resume (the data-corruption scenario's "IMMEDIATE: stop all processing").

In order, each step timed into the incident: throttle the API to 0 (clients get 429 with
Retry-After — the procedure's `update-stage ... /throttle/rateLimit` done at the path API Gateway
accepts) unless `keep_api` ("disable API endpoints *if necessary*": then only processing stops),
pause every event source mapping (messages wait; none lost, none dead-lettered), roll back — the
deployment in progress, or, when none is, the one that finished within the environment's rollback
window (the usual data-corruption case: a version that answers 200 and writes wrong data passed its
checks) — snapshot the data, open a critical incident, notify. `rollback=False` keeps whatever is
live. The incident records what was changed; `resume` puts back exactly that, and only after
`verify` passes (or with --force, recorded).
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

API, PROCESSING = "api", "processing"  # what an emergency stop changes, as its incident records it


def emergency_stop(ctx: RunbookContext, reason: str, who: str, keep_api: bool = False,
                   rollback: bool = True) -> dict[str, Any]:
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
    changed: list[str] = []  # recorded before each switch: resume restores what was asked, applied or not

    def block_api() -> str:
        changed.append(API)
        ctx.traffic.set_throttle(0, 0, who, f"emergency stop: {reason}")
        return f"API throttled to 0 (was rate {before.rate:g}, burst {before.burst}); clients get 429"

    def pause() -> str:
        changed.append(PROCESSING)
        ctx.traffic.set_processing(False, who, f"emergency stop: {reason}")
        return "event source mappings paused; messages wait in their queues"

    stopped: list[str] = []  # the deployment record the incident names (stopped, or the rollback's)
    rolled_back: dict[str, Any] = {}

    def stop_deployment() -> str:
        active = store.active_deployment(env)
        if active is None:
            return roll_back_finished()
        d = ctx.deployer.stop(active.id, rollback=rollback, reason=f"emergency stop by {who}: {reason}", who=who)
        stopped.append(active.id)
        if not rollback:
            return f"deployment {active.id} stopped at {d.current_weight:g} % on {active.target}, not rolled back " \
                   "(--no-rollback)"
        if d.status != st.ROLLED_BACK:
            raise RuntimeError(f"deployment {d.id} is {d.status}, not rolled back: roll back with `backout rollback`")
        return f"deployment {active.id} stopped and rolled back to {active.stable}"

    def roll_back_finished() -> str:
        """No deployment in progress: the one that finished within the rollback window is the suspect."""
        last = ctx.deployer.last_succeeded()
        if last is None:
            return "no deployment in progress"
        d, age = last
        window = ctx.spec.rollback_window
        made = f"no deployment in progress; {d.id} made {d.target} live {age:.0f} s ago"
        if not rollback:
            return f"{made}: it stays live (--no-rollback)"
        if age > window:
            return (f"{made}, past the {window:g} s rollback window: it stays live (if it is the cause: "
                    f"backout rollback --env {env} --reason …)")
        out = ctx.deployer.manual_rollback(f"emergency stop: {reason}", who, incident=False)
        rolled_back.update(out)
        stopped.append(out["deployment"])
        return (f"{made}, within the {window:g} s rollback window: rolled back {out['from_label']} → "
                f"{out['to_label']} ({out['deployment']}); repair what it wrote: "
                f"backout repair --deployment {out['deployment']} --env {env}")

    snap: list[str] = []

    def snapshot() -> str:
        s = platform.backup(label=f"emergency stop: {reason}")
        store.record_snapshot(env, s.id, label="emergency stop")
        snap.append(s.id)
        return f"data snapshot {s.id}"

    if keep_api:
        steps.append({"step": "keep API open", "ok": True, "ms": 0.0,
                      "detail": f"API left open at rate {before.rate:g}, burst {before.burst} (--keep-api): "
                                "requests are accepted, their work waits in the queues"})
    else:
        step("block API", block_api)
    step("pause processing", pause)
    step("stop deployment", stop_deployment)
    step("back up data", snapshot)
    inc = ctx.deployer.open_incident(
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
            "keep_api": keep_api,
            "rollback": rollback,
            "changed": changed,
            "rolled_back": rolled_back or None,
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
        "keep_api": keep_api,
        "changed": changed,
        "rolled_back": rolled_back or None,
        "total_ms": round((time.time() - started) * 1000, 1),
    }


def resume(ctx: RunbookContext, report: VerifyReport, force: bool, who: str) -> dict[str, Any]:
    """Put back what the open emergency stops changed — the API, processing, or both — and nothing
    else (an API left open by --keep-api keeps its throttle); both when no emergency stop is open."""
    env, spec, store = ctx.env, ctx.spec, ctx.store
    if not report.ok and not force:
        raise OperationFailed(f"not resuming: {report.summary()} (fix it, or --force to resume anyway)")
    open_emergencies = [
        i
        for i in store.incidents(env, status="open")
        if isinstance(i.trigger, dict) and i.trigger.get("kind") == "emergency"
    ]
    changed = {c for i in open_emergencies for c in i.trigger.get("changed", (API, PROCESSING))}
    if not open_emergencies:
        changed = {API, PROCESSING}
    done: list[str] = []
    if PROCESSING in changed:
        ctx.traffic.set_processing(True, who, "resume")
        done.append("processing on")
    if API in changed:
        # the API goes back to the throttle it had before the first open emergency stop, else the manifest's
        rate, burst = spec.throttle_rate, spec.throttle_burst
        before = [i.trigger.get("throttle_before") for i in open_emergencies
                  if API in i.trigger.get("changed", (API,)) and i.trigger.get("throttle_before")]
        if before and before[-1][0] > 0:
            rate, burst = float(before[-1][0]), int(before[-1][1])
        ctx.traffic.set_throttle(rate, burst, who, "resume")
        done.append(f"API throttle back to {rate:g}/s")
    else:
        done.append("API untouched (it was left open)")
    forced = force and not report.ok
    msg = f"resumed by {who}: {', '.join(done)}" + (
        " (FORCED past a failing verify)" if forced else " after verify passed"
    )
    for inc in open_emergencies:
        store.add_incident_note(inc.id, msg, author=who)
        store.add_event(
            "resumed",
            msg,
            incident_id=inc.id,
            severity="warning" if force else "info",
            data={"verify": report.as_dict(), "forced": force, "restored": sorted(changed)},
        )
    if not open_emergencies:
        store.add_event("resumed", msg, severity="info", data={"verify": report.as_dict(), "forced": force})
    ids = [i.id for i in open_emergencies]
    ctx.notifier.notify(
        Notification(
            kind="resumed",
            environment=env,
            service=ctx.service,
            severity="warning" if forced else "info",
            reason=msg,
            evidence=[report.summary()],
            incident_id=ids[0] if len(ids) == 1 else None,
            extra={"Incidents": ", ".join(ids)} if len(ids) > 1 else {},
            command=f"backout status --env {env}",
        )
    )
    return {
        "resumed": True,
        "forced": forced,
        "restored": sorted(changed),
        "verify": report.as_dict(),
        "incidents": ids,
        "at": time.time(),
    }
