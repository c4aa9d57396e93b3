"""Rollback drills ("Testing Rollback Procedures": monthly, in staging).

A drill republishes the current stable code with an injected fault (`BACKOUT_FAULT` in the
release's environment — no code change, so it works for any service), generates its own synthetic
traffic (tagged: GET requests through the API carry `X-Backout-Drill`, which the gateway counts under
`Origin=drill`; messages go only to queues the manifest marks `drill = true`, with the message
attribute `backout-drill`, and are removed from those queues and their DLQs afterwards), deploys the
faulty version, and passes only if the *automatic* rollback completes within
the target; then `verify` and `smoke` must pass too. The result is recorded (`backout drill list`)
and `backout status` warns when the last passing drill is older than 30 days. The quarterly emergency
drill (stop → verify → resume) is `backout.runbooks.emergency_drill`.

The drill's canary takes 50 % of traffic (not the environment's 10 %), so that its own modest
synthetic traffic gives the alarms enough of the faulty version's invocations to decide quickly.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from backout.control import states as st
from backout.control.notify import Notification
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.manifest import EnvironmentSpec, Manifest
from backout.runbooks.context import RunbookContext
from backout.runbooks.smoke import run_smoke
from backout.runbooks.verify import settle_seconds, verify

FAULTS = {
    "errors": re.compile(r"^errors=(0(\.\d+)?|1(\.0+)?)$"),
    "latency": re.compile(r"^latency=\d+(\.\d+)?(ms|s)$"),
    "crash": re.compile(r"^crash$"),
    "dlq": re.compile(r"^dlq$"),
}
DRILL_WEIGHT = 50.0
HTTP_RATE = 20.0  # synthetic requests per second
QUEUE_RATE = 5.0  # synthetic messages per second per consumed queue


def refuse_prod(env: str, spec: EnvironmentSpec, allow_prod: bool) -> None:
    """Drills inject real failures: never in prod (or an environment that needs approvals) by accident."""
    if (env == "prod" or spec.require_approval) and not allow_prod:
        raise UsageError(f"drills inject real failures: refused for {env} without --allow-prod")


def parse_fault(fault: str) -> str:
    f = fault.strip().lower()
    if not any(p.match(f) for p in FAULTS.values()):
        raise UsageError(f"--fault {fault!r}: use errors=0.5, latency=3s, crash or dlq")
    return f


DRILL_HEADER = "X-Backout-Drill"  # on every synthetic request: the gateway counts them apart (Origin=drill)
DRILL_ATTRIBUTE = "backout-drill"  # on every synthetic message: the drill removes its own messages after


class SyntheticTraffic:
    """The drill's own load, tagged with its `tag`: GET requests through the API on every GET route
    (path parameters filled with `drill`), and — only to queues the manifest marks `drill = true` —
    small messages the consumer must accept or reject cleanly. Nothing is written into a queue the
    manifest does not offer for drills."""

    def __init__(self, manifest: Manifest, gateway_url: str, send: Callable[..., str], tag: str = "drill") -> None:
        self.paths = [
            re.sub(r"\{[^}]+\}", "drill", h.path)
            for f in manifest.functions.values()
            for h in f.http_events
            if h.method == "GET"
        ]
        self.queues = drill_queues(manifest)
        self.gateway_url = gateway_url
        self.send = send
        self.tag = tag
        # sent = answered + no answer; http_errors = 5xx + no answer; throttled = 429 (an emergency stop's)
        self.stats = {"requests": 0, "http_errors": 0, "messages": 0, "sent": 0, "throttled": 0}
        self._counting = threading.Lock()  # 48 sender threads: every request counted exactly once
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0

    def start(self) -> None:
        if self.paths:
            self._threads.append(threading.Thread(target=self._http, daemon=True, name="drill-http"))
        if self.queues:
            self._threads.append(threading.Thread(target=self._queue, daemon=True, name="drill-queue"))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _http(self) -> None:
        """Open-loop load: a request every 1/HTTP_RATE s whatever the answers' latency, like real clients."""
        from concurrent.futures import ThreadPoolExecutor

        headers = {"User-Agent": "backout-drill", DRILL_HEADER: self.tag}

        def one(c: httpx.Client, path: str) -> None:
            self._count("sent")
            try:
                r = c.get(path, headers=headers)
                self._count("requests")
                if r.status_code >= 500:
                    self._count("http_errors")
                elif r.status_code == 429:
                    self._count("throttled")
            except httpx.HTTPError:
                self._count("http_errors")

        i = 0
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(base_url=self.gateway_url, timeout=30, limits=limits) as c, \
                ThreadPoolExecutor(max_workers=48, thread_name_prefix="drill-http") as pool:
            while not self._stop.wait(1.0 / HTTP_RATE):
                pool.submit(one, c, self.paths[i % len(self.paths)])
                i += 1

    def _count(self, key: str) -> None:
        with self._counting:
            self.stats[key] += 1

    def _queue(self) -> None:
        while not self._stop.wait(1.0 / QUEUE_RATE):
            self.send_messages()

    def send_messages(self) -> None:
        """One tagged message to each drill queue."""
        for q in self.queues:
            self._seq += 1
            self.send(q, json.dumps({"backout_drill": True, "seq": self._seq}), {DRILL_ATTRIBUTE: self.tag})
            self._count("messages")


def drill_queues(manifest: Manifest) -> list[str]:
    """The queues a drill may write to: those marked `drill = true` that a function consumes."""
    consumed = {e.queue for f in manifest.functions.values() for e in f.queue_events}
    return sorted(n for n, q in manifest.queues.items() if q.drill and n in consumed)


def clean_up(manifest: Manifest, platform: Any, tag: str) -> dict[str, int]:
    """Remove the drill's own messages from its queues and their DLQs (after the faulty version failed
    them, or the stable one left them unprocessed): queue → how many were removed."""
    out: dict[str, int] = {}
    for q in drill_queues(manifest):
        for name in (q, manifest.queues[q].dead_letter_queue):
            if name is not None and name not in out:
                out[name] = platform.delete_tagged(name, DRILL_ATTRIBUTE, tag)
    return out


def drill(ctx: RunbookContext, fault: str, target_seconds: float, allow_prod: bool, who: str) -> dict[str, Any]:
    """The procedure's monthly rollback drill: the live release republished with a fault, deployed
    under synthetic traffic; passes when an alarm rolls it back within the target and verify and the
    smoke tests pass after."""
    manifest, env, platform, store, deployer = ctx.manifest, ctx.env, ctx.platform, ctx.store, ctx.deployer
    refuse_prod(env, manifest.environment(env), allow_prod)
    fault = parse_fault(fault)
    if target_seconds <= 0:
        raise UsageError("--target-seconds must be positive")
    if store.active_deployment(env) is not None:
        raise UsageError("a deployment is in progress: drill when it has finished")
    started = time.time()
    live = deployer.traffic.live_release()
    if live is None:
        raise UsageError("traffic is split or the aliases point at no single release: roll back first")
    faulty = platform.republish(live.id, {"BACKOUT_FAULT": fault}, description=f"drill: r{live.id} with {fault}")
    tag = f"drill-{uuid.uuid4().hex[:12]}"
    traffic = SyntheticTraffic(manifest, platform.endpoint(), platform.send_message, tag)
    traffic.start()
    detail: dict[str, Any] = {"stable": live.id, "faulty_release": faulty.id, "faulty_versions": faulty.versions,
                              "who": who, "tag": tag}
    try:
        time.sleep(2.0)  # a baseline of the stable version for the judges
        strategy = Strategy("Drill", (Step(DRILL_WEIGHT, target_seconds + 30.0), Step(100.0, 0.0)))
        d = deployer.create(
            release=faulty.id, strategy_obj=strategy, description=f"rollback drill: {fault}", created_by=who
        )
        deadline = time.time() + target_seconds + 90
        while time.time() < deadline:
            d = store.get(d.id)
            # a rollback is done once its incident is open (the deployer measures the impact in between)
            if d.terminal and (d.status != st.ROLLED_BACK or store.incident_for_deployment(d.id) is not None):
                break
            time.sleep(0.1)
    finally:
        traffic.stop()
    detail["deployment"] = d.id
    detail["traffic"] = traffic.stats
    events = store.events(deployment_id=d.id)
    first_traffic = next((e.ts for e in events if e.kind == "step_reached"), None)
    rb = next((e for e in events if e.kind == "rolled_back"), None)
    trigger = rb.data.get("trigger") if rb and isinstance(rb.data, dict) else None
    detection = (d.rollback_decided_at - first_traffic) if (first_traffic and d.rollback_decided_at) else None
    rollback_s = (
        (d.rollback_completed_at - d.rollback_decided_at) if d.rollback_completed_at and d.rollback_decided_at else None
    )
    reasons = []
    if d.status != st.ROLLED_BACK:
        reasons.append(f"deployment ended {d.status}, not RolledBack")
        if d.active:
            deployer.stop(d.id, rollback=True, reason="drill timed out", who=who)
    elif trigger not in ("alarm", "judge"):
        reasons.append(f"rolled back by {trigger}, not by an alarm or a judge")
    total = (d.rollback_completed_at - first_traffic) if (first_traffic and d.rollback_completed_at) else None
    if total is None or total > target_seconds:
        reasons.append(
            f"rollback took {total:.1f} s > target {target_seconds:g} s"
            if total is not None
            else "no automatic rollback"
        )
    # messages the faulty version failed just before the rollback still reach the DLQ one retry later
    time.sleep(settle_seconds(manifest) + 1.0)
    detail["cleaned_up"] = clean_up(manifest, platform, tag)  # before verify: the drill's messages are not a fault
    v = verify(ctx)
    sm = run_smoke(ctx)
    detail["verify"] = v.as_dict()
    detail["smoke"] = [s.__dict__ for s in sm]
    detail["reason"] = rb.data.get("reason") if rb and isinstance(rb.data, dict) else None
    if not v.ok:
        reasons.append(v.summary())
    if not all(s.ok for s in sm):
        reasons.append("smoke tests failed: " + "; ".join(s.name for s in sm if not s.ok))
    passed = not reasons
    detail["failures"] = reasons
    rec = store.record_drill(
        env,
        fault,
        target_seconds,
        started,
        time.time(),
        passed,
        detection_seconds=detection,
        rollback_seconds=rollback_s,
        detail=detail,
    )
    inc = store.incident_for_deployment(d.id)
    if inc is not None and inc.status == "open":
        store.close_incident(inc.id, root_cause=f"rollback drill {rec.id}: fault {fault} injected on purpose")
    store.add_event(
        "drill",
        f"drill {rec.id} {'passed' if passed else 'FAILED'}: {fault}, automatic rollback in "
        f"{total if total is not None else float('nan'):.1f} s (target {target_seconds:g} s)",
        deployment_id=d.id,
        severity="info" if passed else "warning",
        data={"drill": rec.id},
    )
    ctx.notifier.notify(
        Notification(
            kind="drill_result",
            environment=env,
            service=manifest.service.name,
            passed=passed,
            deployment_id=d.id,
            reason="; ".join(reasons) or f"rolled back in {total:.1f} s",
            command=f"backout drill list --env {env}",
        )
    )
    return {
        "drill": rec.id,
        "passed": passed,
        "fault": fault,
        "target_seconds": target_seconds,
        "detection_seconds": detection,
        "rollback_seconds": rollback_s,
        "first_traffic_to_stable_seconds": total,
        "deployment": d.id,
        "failures": reasons,
        "detail": detail,
    }
