"""The deployment state machine: publish → snapshot → pre-traffic → weighted steps under watch →
100 % → post-traffic → Succeeded, and on any alarm, hook failure, deadline or stop: every live
alias back to 100 % stable in one step.

Every transition is committed to the store *before* it is applied to the platform, so a
supervisor killed at any instant resumes (or finishes rolling back) into a state that the store
and the platform agree on: `resume()` re-applies the stored step's weights, re-evaluates the
alarms at once and goes on; `reconcile()` repairs aliases left half-way by a kill.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout.control import store as st
from backout.control.alarms import ALARM, AlarmSet, Evaluation, default_rules
from backout.control.analysis import JudgeSet, LatencyJudge
from backout.control.hooks import HookContext, HookResult, run_hooks
from backout.control.notify import Notification, Notifier
from backout.control.store import Deployment, Store
from backout.control.strategies import Strategy, progress_deadline, resolve
from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.base import Platform

log = logging.getLogger(__name__)

EVAL_INTERVAL = 0.25  # seconds between alarm evaluations while traffic is on the new version


@dataclass
class Live:
    """What a follower of a running deployment sees besides the store: the alarms' current values."""

    alarms: dict[str, Evaluation] = field(default_factory=dict)
    traffic_started_at: float | None = None
    stop_requested: str | None = None
    stop_rollback: bool = True
    approved: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)


class RollbackNeeded(Exception):
    def __init__(
        self, trigger: str, reason: str, evidence: list[str], data: dict[str, Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.trigger = trigger
        self.reason = reason
        self.evidence = evidence
        self.data = data or {}


class Deployer:
    def __init__(
        self,
        manifest: Manifest,
        env: str,
        platform: Platform,
        store: Store,
        notifier: Notifier,
        gateway_url: str = "",
        after_rollback: Callable[[Deployment, str | None], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.env = env
        self.spec = manifest.environment(env)
        self.platform = platform
        self.store = store
        self.notifier = notifier
        self.gateway_url = gateway_url
        self.after_rollback = after_rollback or (lambda d, inc: None)
        self.live: dict[str, Live] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = threading.Event()
        self._lock = threading.Lock()
        # held while a status change and its alias writes are applied: a stop that takes over from a
        # busy runner and the runner itself never interleave their weights
        self._switch = threading.RLock()

    # --- commands ------------------------------------------------------------------------------
    def create(
        self,
        source: Path | None = None,
        strategy: str | None = None,
        description: str = "",
        created_by: str = "",
        environment: dict[str, str] | None = None,
        version: int | None = None,
        strategy_obj: Strategy | None = None,
    ) -> Deployment:
        """Publish the new version and start deploying it; returns at once (follow it by id)."""
        strat = strategy_obj or resolve(strategy or self.spec.strategy, self.manifest)
        active = self.store.active_deployment(self.env)
        if active is not None:
            raise self.store._already_active(active)
        if version is None:
            version = self.platform.publish(source or self.manifest.source_dir, environment, description)
        else:
            known = [v.version for v in self.platform.versions()]
            if version not in known:
                raise UsageError(
                    f"unknown version {version} (published: {', '.join(map(str, known)) or 'none'})"
                )
        fns = self.platform.functions()
        stable = self.platform.get_weights(fns[0]).stable
        if all(
            self.platform.get_weights(f).stable == version and not self.platform.get_weights(f).canary
            for f in fns
        ):
            raise UsageError(f"version {version} is already live in {self.env}: nothing to deploy")
        with self._lock:  # tick() spawns runners under this lock: none may see the deployment half-made
            d = self.store.create_deployment(
                self.env, stable, version, strat, description=description, created_by=created_by
            )
            self._event(
                d,
                "created",
                f"deployment {d.id} created: v{stable} → v{version} with {strat.name}",
                data={"steps": strat.as_json(), "created_by": created_by},
            )
            self._notify("deployment_started", d)
            d = self._leave_created(d)
        self._spawn(d)
        return d

    def _leave_created(self, d: Deployment) -> Deployment:
        """Created → AwaitingApproval (environments with require_approval) or PreTraffic. Done before
        `create` returns, so its caller can tell the operator at once that an approval is needed."""
        if not self.spec.require_approval:
            return self.store.transition(d.id, st.PRE_TRAFFIC, expect=st.CREATED)
        d = self.store.transition(d.id, st.AWAITING_APPROVAL, expect=st.CREATED)
        self._event(
            d,
            "approval_needed",
            f"{d.id} waits for approval: backout approve {d.id} --env {self.env}",
            severity="warning",
        )
        self._notify("approval_needed", d, command=f"backout approve {d.id} --env {self.env}")
        return d

    def approve(self, deployment_id: str, who: str = "") -> Deployment:
        d = self.store.get(deployment_id)
        if d.status != st.AWAITING_APPROVAL:
            raise UsageError(f"deployment {d.id} is {d.status}, not waiting for approval")
        self._event(d, "approved", f"approved by {who or 'an operator'}")
        self._live(d.id).approved.set()
        self._live(d.id).wake.set()
        return d

    def stop(
        self, deployment_id: str, rollback: bool = True, reason: str = "", who: str = "", wait: float = 2.0
    ) -> Deployment:
        """Stop an active deployment (CodeDeploy stop-deployment); with rollback, 100 % stable.

        The runner notices within an evaluation interval while traffic shifts; when it is busy longer
        (a hook, workers starting) the stop is applied from here after `wait` seconds — an operator's
        rollback must not wait for a 90 s hook — and the runner finds the deployment over on return."""
        d = self.store.get(deployment_id)
        if not d.active:
            raise UsageError(f"deployment {d.id} is already {d.status}")
        lv = self._live(d.id)
        lv.stop_rollback = rollback
        lv.stop_requested = reason or f"stopped by {who or 'an operator'}"
        lv.wake.set()
        t = self._threads.get(d.id)
        if t is not None and t.is_alive():
            t.join(timeout=wait)
        done_here = False
        if self.store.get(d.id).active:  # no runner, or a busy one: stop from here, now
            if rollback:
                done_here = self._rollback(d, RollbackNeeded("manual", lv.stop_requested, [lv.stop_requested]))
            else:
                done_here = self._finish_stop(d, lv)
        if not done_here and t is not None and t.is_alive():
            t.join(timeout=10.0)  # the runner stopped it and is opening the incident: return with it
        return self.store.get(d.id)

    # --- supervisor lifecycle ---------------------------------------------------------------------
    def resume(self) -> None:
        """After a (re)start: finish half-done rollbacks, repair aliases, continue active deployments."""
        self.reconcile()
        for d in self.store.active_deployments():
            if d.env == self.env:
                self._event(
                    d,
                    "resumed",
                    f"supervisor restarted: resuming {d.id} from {d.status}"
                    + (f" step {d.current_step + 1}" if d.current_step is not None else ""),
                )
                self._spawn(d)

    def reconcile(self) -> None:
        """Make the platform agree with the store after a kill between a commit and its effect."""
        if self.store.active_deployment(self.env) is not None:
            return
        last = next(iter(self.store.deployments(self.env, limit=1)), None)
        if last is None:
            return
        if last.status in (st.ROLLED_BACK, st.STOPPED, st.FAILED) and last.stable_version is not None:
            want = last.stable_version
        elif last.status == st.SUCCEEDED:
            want = last.target_version
        else:
            return
        changed = False
        for fn in self.platform.functions():
            w = self.platform.get_weights(fn)
            if w.canary is not None and w.canary_weight > 0 and set(w.versions) != {want}:
                self.platform.set_weights(fn, want)
                changed = True
            elif w.canary is not None and w.stable != want and w.versions == {want: 100.0}:
                self.platform.set_weights(fn, want)
                changed = True
        if last.rollback_decided_at and not last.rollback_completed_at:
            self.store.update(last.id, rollback_completed_at=time.time())
            changed = True
        if changed:
            self._event(
                last, "reconciled", f"live aliases set to v{want} to agree with {last.id} ({last.status})"
            )

    def close(self) -> None:
        self._closing.set()
        for lv in self.live.values():
            lv.wake.set()
        for t in list(self._threads.values()):
            t.join(timeout=5)

    # --- the runner ---------------------------------------------------------------------------------
    def _spawn(self, d: Deployment) -> None:
        with self._lock:
            t = self._threads.get(d.id)
            if t is not None and t.is_alive():
                return
            t = threading.Thread(target=self._run, args=(d.id,), name=f"deploy-{d.id}", daemon=True)
            self._threads[d.id] = t
            t.start()

    def _live(self, deployment_id: str) -> Live:
        with self._lock:
            return self.live.setdefault(deployment_id, Live())

    def _run(self, deployment_id: str) -> None:
        d = self.store.get(deployment_id)
        lv = self._live(d.id)
        try:
            if d.status == st.CREATED:
                d = self._leave_created(d)
            if d.status == st.AWAITING_APPROVAL:
                while not lv.approved.is_set():
                    self._check_stop(d, lv)
                    if self._closing.is_set():
                        return
                    lv.wake.wait(0.5)
                    lv.wake.clear()
                d = self.store.transition(d.id, st.PRE_TRAFFIC, expect=st.AWAITING_APPROVAL)
            deadline_base = self._started_at(d)
            deadline = deadline_base + progress_deadline(d.strategy_obj, self.spec.deadline_margin)
            if d.status == st.PRE_TRAFFIC:
                self._pre_traffic(d)
                d = self.store.transition(d.id, st.IN_PROGRESS, expect=st.PRE_TRAFFIC)
            if d.status == st.IN_PROGRESS:
                d = self._shift(d, lv, deadline)
            if d.status == st.POST_TRAFFIC:
                self._post_traffic(d, lv)
                self._succeed(d)
        except RollbackNeeded as rb:
            self._rollback(self.store.get(d.id), rb)
        except _Stopped:
            self._finish_stop(self.store.get(d.id), lv)
        except _Closing:
            return
        except Exception as e:  # noqa: BLE001 - a crash of the runner must still restore stable traffic
            cur = self.store.get(d.id)
            if not cur.active and self._live(d.id).stop_requested is not None:
                log.info("deployment %s was stopped while its runner was busy (%s)", d.id, e)
                return
            log.exception("deployment %s crashed", d.id)
            if cur.active:
                self._rollback(
                    cur, RollbackNeeded("internal", f"deployment runner failed: {type(e).__name__}: {e}", [])
                )

    def _started_at(self, d: Deployment) -> float:
        """When the deployment left approval (the progress deadline and the alarm windows start here)."""
        lv = self._live(d.id)
        if lv.traffic_started_at is None:
            ev = [e for e in self.store.events(deployment_id=d.id) if e.kind == "pre_traffic_started"]
            lv.traffic_started_at = ev[0].ts if ev else time.time()
        return lv.traffic_started_at

    def _pre_traffic(self, d: Deployment) -> None:
        self._started_at(d)
        self._event(
            d, "pre_traffic_started", f"pre-traffic: snapshot data, warm v{d.target_version}, run hooks"
        )
        snap = self.platform.snapshot(label=f"before {d.id}")
        self.store.record_snapshot(self.env, snap.id, label=f"before {d.id}", deployment_id=d.id)
        self._event(
            d,
            "snapshot",
            f"data snapshot {snap.id} taken before any traffic shift",
            data={"snapshot": snap.id},
        )
        for fn in self.platform.functions():
            try:
                self.platform.warm(fn, d.target_version)
            except Exception as e:  # noqa: BLE001 - an init failure is a pre-traffic failure
                raise RollbackNeeded(
                    "pre_traffic",
                    f"v{d.target_version} of {fn} does not start: {e}",
                    [f"{fn} v{d.target_version} init failed: {e}"],
                ) from None
            if d.stable_version is not None:
                self.platform.warm(fn, d.stable_version)
        self._hooks("pre_traffic", d, time.time())

    def _hooks(self, phase: str, d: Deployment, since: float) -> list[HookResult]:
        ctx = HookContext(
            self.manifest,
            self.env,
            self.platform,
            self.gateway_url,
            d.id,
            {fn: d.stable_version or d.target_version for fn in self.platform.functions()},
            d.target_version,
            since,
        )
        results = run_hooks(phase, getattr(self.manifest.hooks, phase), ctx)
        for r in results:
            self._event(
                d,
                "hook_passed" if r.ok else "hook_failed",
                f"{phase.replace('_', '-')} hook {r.name} {'passed' if r.ok else 'FAILED'} in {r.seconds:.1f} s: "
                f"{r.output[:500]}",
                severity="info" if r.ok else "critical",
                data={"phase": phase, "hook": r.name, "ok": r.ok, "output": r.output, "checks": r.checks},
            )
            if not r.ok:
                self._notify(
                    "hook_failed",
                    d,
                    reason=f"{phase} hook {r.name} failed",
                    evidence=[r.output[:500]],
                    hook=f"{phase}: {r.name}",
                )
                raise RollbackNeeded(
                    phase,
                    f"{phase.replace('_', '-')} hook {r.name} failed",
                    [r.output[:1000]],
                    {"hook": r.name, "output": r.output, "checks": r.checks},
                )
        return results

    def _prewarm(self, d: Deployment, weight: float) -> None:
        """Before a step, start as many workers of the new version as its share of the recent peak
        concurrency needs, so the shift meets warm workers instead of a wave of cold starts."""
        from backout.platforms.base import NS_LAMBDA, MetricQuery

        now = time.time()
        for fn in self.platform.functions():
            spec = self.manifest.functions[fn]
            cap = spec.reserved_concurrency if spec.reserved_concurrency is not None else 16
            pts = self.platform.metrics(MetricQuery.of(NS_LAMBDA, "ConcurrentExecutions", {"FunctionName": fn},
                                                       now - 60, now + 1, 60, "Maximum"))
            peak = max((p.value for p in pts), default=0.0)
            want = max(1, min(cap, math.ceil(peak * min(weight, 100.0) / 100.0) + 1))
            try:
                self.platform.warm(fn, d.target_version, want)
            except Exception as e:  # noqa: BLE001 - a worker that cannot start is a failed deployment
                raise RollbackNeeded("pre_traffic", f"v{d.target_version} of {fn} does not start: {e}",
                                     [f"{fn} v{d.target_version}: {e}"]) from None

    def _apply_weights(self, d: Deployment, weight: float) -> None:
        for fn in self.platform.functions():
            if weight <= 0 or d.stable_version is None:
                self.platform.set_weights(fn, d.stable_version or d.target_version)
            else:
                self.platform.set_weights(fn, d.stable_version, d.target_version, min(weight, 100.0))

    def _shift(self, d: Deployment, lv: Live, deadline: float) -> Deployment:
        alarms = AlarmSet(
            default_rules(
                self.manifest, self.env, self.platform.functions(), d.target_version, self._started_at(d)
            )
        )
        judges = JudgeSet([])
        if self.spec.latency_judge and d.stable_version is not None:
            judges = JudgeSet([LatencyJudge(fn, d.target_version, d.stable_version, self._started_at(d),
                                            window=self.spec.alarm_window, min_samples=self.spec.min_invocations)
                               for fn in self.platform.functions()])
        start_index = d.current_step if d.current_step is not None else 0
        for i in range(start_index, len(d.steps)):
            step = d.steps[i]
            resuming = i == d.current_step and d.step_started_at is not None
            self._prewarm(d, step.weight)
            started = d.step_started_at if resuming else time.time()
            with self._switch:
                d = self.store.transition(
                    d.id, st.IN_PROGRESS, current_step=i, current_weight=step.weight, step_started_at=started
                )
                self._apply_weights(d, step.weight)
            if not resuming:
                self._event(
                    d,
                    "step_reached",
                    f"step {i + 1}/{len(d.steps)}: {step.weight:g} % on v{d.target_version}"
                    + (f", hold {step.hold:g} s" if step.hold else ""),
                    data={"step": i, "weight": step.weight, "hold": step.hold},
                )
                self._notify("step_reached", d, weight=step.weight)
            end = started + step.hold
            while True:
                self._watch(d, lv, alarms, judges, deadline)
                if time.time() >= end:
                    break
                lv.wake.wait(min(EVAL_INTERVAL, max(0.0, end - time.time())))
                lv.wake.clear()
        return self.store.transition(d.id, st.POST_TRAFFIC, expect=st.IN_PROGRESS)

    def _watch(self, d: Deployment, lv: Live, alarms: AlarmSet, judges: JudgeSet, deadline: float) -> None:
        """One evaluation: store every alarm state change; any ALARM → rollback; stop; deadline."""
        self._check_stop(d, lv)
        for ch in [*alarms.evaluate(self.platform), *judges.evaluate(self.platform)]:
            e = ch.evaluation
            self.store.record_alarm_evaluation(
                d.id,
                e.alarm,
                e.state,
                e.value,
                e.threshold,
                e.comparison,
                e.window_seconds,
                e.detail,
                ts=e.ts,
            )
            self._event(
                d,
                "alarm_state",
                f"{e.alarm}: {ch.previous or 'new'} → {e.state}: {e.detail}",
                severity="critical" if e.state == ALARM else "info",
                data=e.as_dict(),
            )
        lv.alarms = {**alarms.current, **judges.current}
        firing = alarms.alarming() + judges.alarming()
        if firing:
            raise RollbackNeeded(
                "alarm",
                f"alarm {firing[0].alarm} in ALARM: {firing[0].detail}",
                [e.detail for e in firing],
                {"alarms": [e.as_dict() for e in firing]},
            )
        if time.time() > deadline:
            self._notify("deadline_exceeded", d, reason="progress deadline exceeded")
            raise RollbackNeeded(
                "deadline",
                f"progress deadline exceeded ({deadline - self._started_at(d):.0f} s)",
                [f"deployment still at step {(d.current_step or 0) + 1} after the deadline"],
            )

    def _check_stop(self, d: Deployment, lv: Live) -> None:
        if self._closing.is_set():
            raise _Closing()
        if lv.stop_requested is not None:
            if lv.stop_rollback:
                raise RollbackNeeded("manual", lv.stop_requested, [lv.stop_requested])
            raise _Stopped()

    def _post_traffic(self, d: Deployment, lv: Live) -> None:
        self._event(d, "post_traffic_started", f"post-traffic: 100 % on v{d.target_version}, running hooks")
        since = self._started_at(d)
        self._hooks("post_traffic", d, since)
        self._check_stop(d, lv)

    def _succeed(self, d: Deployment) -> None:
        with self._switch:
            d = self.store.transition(d.id, st.SUCCEEDED, expect=st.POST_TRAFFIC, current_weight=100.0)
            for fn in self.platform.functions():
                self.platform.set_weights(fn, d.target_version)
        self._event(
            d,
            "succeeded",
            f"deployment {d.id} succeeded: v{d.target_version} live; "
            f"v{d.stable_version} kept warm for {self.spec.rollback_window:g} s",
        )
        self._notify("succeeded", d)

    def _rollback(self, d: Deployment, rb: RollbackNeeded) -> bool:
        """Roll back now; False when the deployment was already over (another thread got there first)."""
        with self._switch:
            if not self.store.get(d.id).active:
                return False  # a stop took over while the runner was busy, or the other way round
            decided = time.time()
            d = self.store.transition(d.id, st.ROLLED_BACK, reason=rb.reason, rollback_decided_at=decided)
            self._apply_weights(d, 0.0)
            done = time.time()
            d = self.store.update(d.id, rollback_completed_at=done)
        self._event(
            d,
            "rolled_back",
            f"rolled back to v{d.stable_version} in {1000 * (done - decided):.0f} ms: {rb.reason}",
            severity="critical",
            data={
                "trigger": rb.trigger,
                "reason": rb.reason,
                "evidence": rb.evidence,
                "decided_at": decided,
                "completed_at": done,
                **rb.data,
            },
        )
        try:
            impact = measure_impact(self.manifest, self.env, self.platform, self.store, d, until=done + 1)
        except Exception as e:  # noqa: BLE001 - the report loses its numbers, the rollback stands
            log.exception("impact of %s could not be measured", d.id)
            impact = {"error": f"{type(e).__name__}: {e}"}
        inc = self.store.open_incident(
            self.env,
            f"{d.id} rolled back: {rb.reason}",
            severity="critical",
            deployment_id=d.id,
            trigger={"kind": rb.trigger, "reason": rb.reason, "decided_at": decided, "completed_at": done, **rb.data},
            evidence={"alarms": rb.evidence, "impact": impact},
        )
        self.store.add_event(
            "incident_opened",
            f"incident {inc.id} opened for {d.id}",
            deployment_id=d.id,
            incident_id=inc.id,
            severity="critical",
        )
        self._notify(
            "rolled_back",
            d,
            reason=rb.reason,
            evidence=rb.evidence,
            incident_id=inc.id,
            command=f"backout incident show {inc.id} --env {self.env}",
        )
        try:
            self.after_rollback(d, inc.id)
        except Exception:  # noqa: BLE001 - verification problems are reported, never undo a rollback
            log.exception("after-rollback step failed for %s", d.id)
        return True

    def _finish_stop(self, d: Deployment, lv: Live) -> bool:
        with self._switch:
            d = self.store.get(d.id)
            if not d.active:
                return False
            self.store.transition(d.id, st.STOPPED, reason=lv.stop_requested or "stopped")
        self._event(
            d,
            "stopped",
            f"deployment {d.id} stopped without rollback at {d.current_weight:g} %",
            severity="warning",
        )
        self._notify("stopped", d, reason=lv.stop_requested or "")
        return True

    # --- helpers ----------------------------------------------------------------------------------
    def _event(
        self,
        d: Deployment,
        kind: str,
        message: str,
        severity: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        self.store.add_event(kind, message, deployment_id=d.id, severity=severity, data=data)

    def _notify(self, kind: str, d: Deployment, **kw: Any) -> None:
        try:
            self.notifier.notify(
                Notification(
                    kind=kind,
                    environment=self.env,
                    deployment_id=d.id,
                    stable_version=d.stable_version,
                    target_version=d.target_version,
                    service=self.manifest.service.name,
                    command=kw.pop("command", f"backout deployment show {d.id} --env {self.env}"),
                    **kw,
                )
            )
        except Exception:  # noqa: BLE001 - notifications never block a deployment or a rollback
            log.exception("notification %s failed", kind)


def measure_impact(
    manifest: Manifest, env: str, platform: Platform, store: Store, d: Deployment, until: float
) -> dict[str, Any]:
    """What the bad version did, kept with the incident so its report needs no running platform:
    per-second invocations/errors of the new version per function, API 5xx it served, DLQ
    arrivals, and the canary weight over time (from the step events)."""
    from backout.platforms.base import DLQ_ARRIVALS, NS_API, NS_BACKOUT, NS_LAMBDA, MetricQuery

    # from the first traffic shift: the pre-traffic hook's test invocations are not the bad version's traffic
    events = store.events(deployment_id=d.id)
    first = next((e.ts for e in events if e.kind == "step_reached"), d.created_at)
    start = int(first)
    end = int(until) + 1
    v = str(d.target_version)

    def series(ns: str, metric: str, dims: dict[str, str]) -> dict[int, float]:
        pts = platform.metrics(MetricQuery.of(ns, metric, dims, start, end, 1, "Sum"))
        return {int(p.timestamp): p.value for p in pts}

    seconds = list(range(start, end))
    functions: dict[str, Any] = {}
    for fn in platform.functions():
        inv = series(NS_LAMBDA, "Invocations", {"FunctionName": fn, "ExecutedVersion": v})
        err = series(NS_LAMBDA, "Errors", {"FunctionName": fn, "ExecutedVersion": v})
        functions[fn] = {
            "invocations": sum(inv.values()),
            "errors": sum(err.values()),
            "per_second": [[t, inv.get(t, 0.0), err.get(t, 0.0)] for t in seconds if t in inv or t in err],
        }
    api_dims = {"ApiName": manifest.service.name, "Stage": env, "ExecutedVersion": v}
    failed = series(NS_API, "5XXError", api_dims)
    served = series(NS_API, "Count", api_dims)
    dlq = {}
    for q in manifest.queues.values():
        if q.dead_letter_queue:
            arrivals = series(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": q.dead_letter_queue})
            dlq[q.dead_letter_queue] = sum(arrivals.values())
    jobs_touched = None
    if manifest.service.repair_function:
        r = platform.invoke(manifest.service.repair_function, None, {"repair": "affected", "version": d.target_version})
        if r.ok and isinstance(r.payload, dict):
            jobs_touched = len(r.payload.get("jobs", []))
    weights: list[list[float]] = [[d.created_at, 0.0]]
    for e in events:
        if e.kind == "step_reached" and isinstance(e.data, dict):
            weights.append([e.ts, float(e.data.get("weight", 0.0))])
        elif e.kind == "rolled_back":
            weights.append([e.ts, 0.0])
    return {
        "version": d.target_version,
        "stable_version": d.stable_version,
        "window": [start, end],
        "functions": functions,
        "api": {"requests_served": sum(served.values()), "failed_requests": sum(failed.values()),
                "per_second_5xx": [[t, c] for t, c in sorted(failed.items())]},
        "dlq_arrivals": dlq,
        "jobs_touched": jobs_touched,
        "weights": weights,
        "duration_seconds": round(until - d.created_at, 3),
    }


class _Stopped(Exception):
    pass


class _Closing(Exception):
    pass
