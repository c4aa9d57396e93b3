"""The quarterly emergency drill ("Test emergency procedures quarterly"): emergency stop → verify → resume,
rehearsed under the rollback drill's synthetic traffic, each step timed against its target, and nothing lost.

Under way: GET requests through the API and tagged messages to the queues marked `drill = true` (as the
rollback drill sends them). The drill stops the environment as an operator would (`emergency-stop`, without
rolling back what is live: the release is not the problem here), checks that the stop holds — the API answers
429, processing is paused, the messages sent meanwhile wait in their queue — runs `verify`, resumes, and waits
until the queues have processed what waited. Then it accounts for every request and message: each request was
answered (2xx, or 429 while stopped: the client was told to retry), each message was processed — none failed
(5xx, a broken connection), none reached a DLQ, none was left behind. Recorded as a drill of kind `emergency`
(fault `emergency`); `backout status` warns when the last passing one is older than 90 days. The incident the
stop opened is closed as the drill's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from backout import outbound
from backout.control.notify import Notification
from backout.errors import UsageError
from backout.runbooks import emergency
from backout.runbooks.context import RunbookContext
from backout.runbooks.drill import DRILL_HEADER, SyntheticTraffic, clean_up, drill_queues, refuse_prod
from backout.runbooks.verify import verify

EMERGENCY = "emergency"  # the drill's kind, stored as its fault
# step → target seconds: a stop is a few switches; verify is the procedure's full validation; the backlog the
# stop built must be processed within a minute of resuming
TARGETS = {"emergency stop": 10.0, "stop holds": 10.0, "verify": 60.0, "resume": 10.0, "backlog processed": 60.0}
BASELINE = 1.0  # seconds of traffic before the stop, and while stopped before verify
CHECK_TIMEOUT = 5.0


def emergency_drill(ctx: RunbookContext, allow_prod: bool, who: str) -> dict[str, Any]:
    """Rehearse emergency stop → verify → resume under synthetic traffic; passes when every step meets its
    target, verify passes, and every request and message is accounted for."""
    manifest, env, platform, store = ctx.manifest, ctx.env, ctx.platform, ctx.store
    refuse_prod(env, ctx.spec, allow_prod)
    if store.active_deployment(env) is not None:
        raise UsageError("a deployment is in progress: drill when it has finished")
    if platform.get_throttle().rate == 0 or not platform.get_processing():
        raise UsageError(f"an emergency stop is in effect: `backout resume --env {env}` first")
    tag = f"drill-{uuid.uuid4().hex[:12]}"
    traffic = SyntheticTraffic(manifest, platform.endpoint(), platform.send_message, tag)
    steps: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.time()

    def step(name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - a failed step fails the drill; the next ones still put things back
            ok, detail = False, f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        in_time = seconds <= TARGETS[name]
        steps.append({"step": name, "ok": ok and in_time, "seconds": round(seconds, 3), "target_seconds":
                      TARGETS[name], "detail": detail})
        if not ok:
            failures.append(f"{name}: {detail}")
        elif not in_time:
            failures.append(f"{name} took {seconds:.1f} s > target {TARGETS[name]:g} s")
        return ok

    stop: dict[str, Any] = {}
    report: list[Any] = []
    traffic.start()
    try:
        time.sleep(BASELINE)

        def stop_now() -> tuple[bool, str]:
            stop.update(emergency.emergency_stop(ctx, f"emergency drill {tag}", who, rollback=False))
            bad = [s for s in stop["steps"] if not s["ok"]]
            return not bad, "; ".join(f"{s['step']}: {s['detail']}" for s in (bad or stop["steps"]))

        step("emergency stop", stop_now)
        step("stop holds", lambda: _holds(ctx, traffic, tag))
        time.sleep(BASELINE)  # messages keep arriving while stopped: they must wait, not fail

        def check() -> tuple[bool, str]:
            report.append(verify(ctx))
            return report[0].ok, report[0].summary()

        step("verify", check)

        def resume() -> tuple[bool, str]:
            r = emergency.resume(ctx, report[0], force=not report[0].ok, who=who)  # never leave it stopped
            return not r["forced"], f"resumed: {', '.join(r['restored'])}" + (" (FORCED)" if r["forced"] else "")

        step("resume", resume)
        time.sleep(BASELINE)  # served again, before the traffic stops
    finally:
        traffic.stop()
        if platform.get_throttle().rate == 0 or not platform.get_processing():  # a step raised before resume
            emergency.resume(ctx, verify(ctx), force=True, who=who)
    step("backlog processed", lambda: _drained(ctx, TARGETS["backlog processed"]))
    left = clean_up(manifest, platform, tag)
    sent = dict(traffic.stats)
    dlqs = {manifest.queues[q].dead_letter_queue for q in drill_queues(manifest)} - {None}
    dead = sum(n for q, n in left.items() if q in dlqs)
    waiting = sum(n for q, n in left.items() if q not in dlqs)
    accounted = {
        "requests_sent": sent["sent"],
        "requests_served": sent["sent"] - sent["throttled"] - sent["http_errors"],
        "requests_throttled": sent["throttled"],  # 429 + Retry-After while stopped: the client knows to retry
        "requests_failed": sent["http_errors"],  # 5xx or no answer: lost
        "messages_sent": sent["messages"],
        "messages_processed": sent["messages"] - dead - waiting,
        "messages_dead_lettered": dead,
        "messages_left_waiting": waiting,
    }
    lost = accounted["requests_failed"] + dead + waiting
    if lost:
        failures.append(f"lost {accounted['requests_failed']} request(s) (5xx or no answer), {dead} message(s) "
                        f"dead-lettered, {waiting} left unprocessed")
    if stop.get("incident") and store.get_incident(stop["incident"]).status == "open":
        store.close_incident(stop["incident"], root_cause=f"emergency drill {tag}: stopped on purpose")
    passed = not failures
    total = sum(s["seconds"] for s in steps)
    rec = store.record_drill(
        env, EMERGENCY, sum(TARGETS.values()), started, time.time(), passed,
        detection_seconds=next((s["seconds"] for s in steps if s["step"] == "emergency stop"), None),
        rollback_seconds=next((s["seconds"] for s in steps if s["step"] == "resume"), None),
        detail={"kind": EMERGENCY, "tag": tag, "who": who, "steps": steps, "accounted": accounted,
                "incident": stop.get("incident"), "verify": report[0].as_dict() if report else None,
                "failures": failures},
    )
    store.add_event("drill", f"emergency drill {rec.id} {'passed' if passed else 'FAILED'}: stop → verify → "
                    f"resume in {total:.1f} s, {lost} lost", severity="info" if passed else "warning",
                    data={"drill": rec.id})
    ctx.notifier.notify(Notification(
        kind="drill_result", environment=env, service=manifest.service.name, passed=passed,
        reason="; ".join(failures) or f"emergency stop → verify → resume in {total:.1f} s, nothing lost",
        command=f"backout drill list --env {env}",
    ))
    return {"drill": rec.id, "kind": EMERGENCY, "passed": passed, "steps": steps, "accounted": accounted,
            "failures": failures, "incident": stop.get("incident"), "seconds": round(total, 3)}


def _holds(ctx: RunbookContext, traffic: SyntheticTraffic, tag: str) -> tuple[bool, str]:
    """The stop is in effect: the API answers 429 (when the service has a GET route to ask) and processing is
    paused."""
    problems, seen = [], []
    if traffic.paths:
        r = outbound.get(f"{ctx.platform.endpoint()}{traffic.paths[0]}", headers={DRILL_HEADER: tag},
                      timeout=CHECK_TIMEOUT)
        seen.append(f"GET {traffic.paths[0]} → {r.status_code}")
        if r.status_code != 429:
            problems.append(f"the API answered {r.status_code}, not 429")
    if ctx.platform.get_processing():
        problems.append("processing is still on")
    else:
        seen.append("processing paused")
    return not problems, "; ".join(problems or seen)


def _drained(ctx: RunbookContext, timeout: float) -> tuple[bool, str]:
    """Every drill queue empty again (nothing visible or in flight): what waited was processed."""
    queues = drill_queues(ctx.manifest)
    deadline = time.monotonic() + timeout
    while True:
        depth = {q: (a.visible + a.in_flight) for q in queues for a in [ctx.platform.queue_attributes(q)]}
        if not any(depth.values()):
            return True, f"{', '.join(queues) or 'no drill queue'}: empty"
        if time.monotonic() > deadline:
            return False, ", ".join(f"{q}: {n} waiting" for q, n in depth.items() if n)
        time.sleep(0.1)
