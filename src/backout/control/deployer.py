"""The deployment state machine: publish → snapshot → pre-traffic → weighted steps under watch →
100 % → post-traffic → Succeeded, and on any alarm, hook failure, deadline or stop: every live
alias back to 100 % stable in one step.

Every transition is committed to the store *before* it is applied to the platform, so a
supervisor killed at any instant resumes (or finishes rolling back) into a state that the store
and the platform agree on: `resume()` re-applies the stored step's weights, re-evaluates the
alarms at once and goes on; `reconcile()` repairs aliases left half-way by a kill.

On a shared store (`lease.Leases`: AWS with a state table) the process that drives a deployment
holds its lease and renews it; another process asks it to stop or approve (`request`), and
`follow()` takes a deployment over once its driver's lease has expired (see `_untrusted` for when
the recorded step is trusted and when the takeover rolls back instead). A driver whose write is
refused by the fence (`LeaseLost`) stops driving at once and touches no alias.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout.control import preflight
from backout.control import states as st
from backout.control.alarms import ALARM, INSUFFICIENT_DATA, AlarmSet, Evaluation, default_rules
from backout.control.analysis import JudgeSet, default_judges, evaluate_all, unjudged, verdict, with_judge
from backout.control.hooks import HookContext, HookResult, run_hooks
from backout.control.lease import LeaseLost, Leases
from backout.control.notify import Notification, Notifier
from backout.control.store import ControlStore, Deployment, Incident
from backout.control.strategies import Step, Strategy, progress_deadline, resolve
from backout.control.traffic import Traffic
from backout.errors import OperationFailed, UsageError
from backout.manifest import Manifest
from backout.platforms.base import (
    NS_LAMBDA,
    Capacity,
    FunctionConfig,
    MetricQuery,
    Platform,
    Release,
    consistent_metrics,
    evaluation_interval,
)

log = logging.getLogger(__name__)

MANUAL = "ManualRollback"  # the strategy name a manual rollback is recorded under
# An incident's severity (by impact) → the notification's (what a target filters on with min_severity).
NOTIFY_SEVERITY = {"low": "info", "warning": "warning", "high": "warning", "critical": "critical"}
EVAL_INTERVAL = 0.25  # seconds between alarm evaluations while traffic is on the new version


KEEP_ENDED = 16  # ended deployments whose last alarm values stay in memory (their events stay in the store)


@dataclass
class Live:
    """What a follower of a running deployment sees besides the store: the alarms' current values."""

    alarms: dict[str, Evaluation] = field(default_factory=dict)
    traffic_started_at: float | None = None
    stop_requested: str | None = None
    stop_rollback: bool = True
    approved: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    lease_lost: str | None = None  # why this process no longer drives it (shared store)
    doing: str = ""  # the blocking call the runner is in, for the deadline's evidence ("running hook X")
    deadline_claimed: bool = False  # the runner or the watchdog acts on the deadline, never both


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
        store: ControlStore,
        notifier: Notifier,
        traffic: Traffic | None = None,
        after_rollback: Callable[[Deployment, str | None], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manifest = manifest
        self.env = env
        self.spec = manifest.environment(env)
        self.platform = platform
        self.store = store
        self.notifier = notifier
        self.traffic = traffic or Traffic(platform, store, env)
        self.after_rollback = after_rollback or (lambda d, inc: None)
        self.clock = clock
        self.live: dict[str, Live] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._switch = self.traffic.lock
        # a shared store's leases (None on one machine: the supervisor's flock makes it the only driver)
        self.leases: Leases | None = store if isinstance(store, Leases) else None
        self._followers: dict[str, threading.Thread] = {}

    # --- commands ------------------------------------------------------------------------------
    def create(
        self,
        source: Path | None = None,
        strategy: str | None = None,
        description: str = "",
        created_by: str = "",
        environment: dict[str, str] | None = None,
        release: int | None = None,
        strategy_obj: Strategy | None = None,
        configuration: dict[str, FunctionConfig] | None = None,
    ) -> Deployment:
        """Publish the new release (with `configuration`: the deploying operator's functions'
        configuration) and start deploying it; returns at once (follow it by id)."""
        strat = strategy_obj or resolve(strategy or self.spec.strategy, self.manifest)
        self.store.refuse_if_active(self.env)
        if release is None:
            target = self.platform.publish(source or self.manifest.source_dir, environment, description,
                                           configuration)
        else:
            target = self.release(release)
        stable = self.traffic.stable_release()
        if stable is None:
            raise UsageError(
                f"the live aliases of {self.env} point at no single release: "
                f"roll back to one first (backout rollback --to R --reason …)"
            )
        if self.traffic.live_release() == target:
            raise UsageError(f"release {target.label()} is already live in {self.env}: nothing to deploy")
        with self._lock:
            d = self.store.create_deployment(
                self.env, stable, target, strat, description=description, created_by=created_by
            )
            self._event(
                d,
                "created",
                f"deployment {d.id} created: {d.stable} → {d.target} with {strat.name}",
                data={"steps": strat.as_json(), "created_by": created_by},
            )
            self._preflight(d, strat)
            self._notify("deployment_started", d)
            d = self._leave_created(d)
        self._spawn(d)
        return d

    def _preflight(self, d: Deployment, strat: Strategy) -> None:
        """The thresholds against the stable version's own rates (control/preflight.py): a `preflight`
        event, a warning when a threshold would fire on a canary as healthy as the stable version."""
        try:
            findings = preflight.check(self.manifest, self.env, self.platform, dict(d.stable_versions),
                                       [(s.weight, s.hold) for s in strat.steps], self.clock(),
                                       target=dict(d.target_versions))
        except Exception as e:  # noqa: BLE001 - a prediction is no reason to refuse a deployment
            log.warning("deployment %s: pre-flight check unavailable: %s", d.id, e)
            self._event(d, "preflight", f"pre-flight check unavailable: {type(e).__name__}: {e}")
            return
        warn = [f for f in findings if f.warn]
        if not findings:
            message = "pre-flight: no traffic on the stable version to measure its rates"
        elif not warn:
            message = "pre-flight: no threshold would fire on a canary as healthy as the stable version"
        else:
            message = "pre-flight: " + "; ".join(f.sentence for f in warn)
        self._event(d, "preflight", message, severity="warning" if warn else "info",
                    data={"findings": [f.as_dict() for f in findings]})

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
        if self.leases is not None and not self.leases.holds(d.id):  # its driver runs elsewhere: ask it
            self.leases.request(d.id, "approve", {"who": who})
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
        if self.leases is not None and not self.leases.holds(d.id):
            d = self._stop_elsewhere(d, rollback, reason or f"stopped by {who or 'an operator'}", who)
            if not d.active:
                return d
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

    def release(self, release_id: int) -> Release:
        known = self.platform.releases()
        for r in known:
            if r.id == release_id:
                return r
        raise UsageError(f"unknown release {release_id} (published: {', '.join(str(r.id) for r in known) or 'none'})")

    def previous_release(self, current: Release) -> Release:
        """The release that was stable before `current` went live. A manual rollback that made `current`
        live does not count: its "stable" is the release rolled away from, and going back there is
        rolling forward."""
        for d in self.store.deployments(self.env, limit=200):
            if d.strategy == MANUAL:
                continue
            if (d.status == st.SUCCEEDED and d.target_release == current.id
                    and d.stable_release not in (None, current.id)):
                return self.release(int(d.stable_release))  # type: ignore[arg-type]
        older = [r for r in self.platform.releases() if r.id < current.id]
        if not older:
            raise UsageError(f"{current.label()} is the first release: there is nothing to roll back to")
        return older[-1]

    def manual_rollback(self, reason: str, who: str, to: int | None = None, incident: bool = True) -> dict[str, Any]:
        """The procedure's manual rollback. During a deployment: stop it with rollback. After one: every
        live alias back on the previous stable release (or `to`), at once when its instances are warm,
        else once they answer; recorded as a deployment (strategy `ManualRollback`) before the switch,
        so history, `verify` and a restarted process agree on what should be live. `incident=False`:
        the caller opens the incident for it (an emergency stop, whose incident names this record)."""
        if not reason.strip():
            raise UsageError("--reason is required: say why you roll back (it goes into the incident)")
        target_r = None if to is None else self.release(to)
        active = self.store.active_deployment(self.env)
        if active is not None and (to is None or to == active.stable_release):
            d = self.stop(active.id, rollback=True, reason=f"manual rollback by {who}: {reason}", who=who)
            if d.status == st.SUCCEEDED:  # it finished just before the stop: roll back from what it made live
                return self.manual_rollback(reason, who, to=d.stable_release)
            inc = self.store.incident_for_deployment(d.id)
            return {
                "mode": "stopped deployment",
                "deployment": d.id,
                "from": d.target_release,
                "to": d.stable_release,
                "from_label": d.target,
                "to_label": d.stable,
                "incident": inc.id if inc else None,
                "warm": True,
                "switch_ms": None
                if not (d.rollback_completed_at and d.rollback_decided_at)
                else round(1000 * (d.rollback_completed_at - d.rollback_decided_at), 1),
            }
        if active is not None:
            self.stop(active.id, rollback=True, reason=f"manual rollback to r{to} by {who}: {reason}", who=who)
        fns = self.platform.functions()
        live = self.traffic.live_release()
        stable = self.traffic.stable_release()
        split = any(self.platform.get_weights(fn).canary_weight > 0 for fn in fns)
        if target_r is None and split and stable is not None:
            # traffic is split (a deployment stopped without rollback): back out the canary, keep the stable
            current = next((d for d in self.store.deployments(self.env, limit=20) if d.stable_release == stable.id),
                           None)
            current_r = self.release(current.target_release) if current is not None else stable
            target_r = stable
        else:
            current_r = live or stable
            if current_r is None:
                raise UsageError("the live aliases point at no single release: name one with --to R")
            target_r = target_r or self.previous_release(current_r)
        if live == target_r:
            raise UsageError(f"{target_r.label()} is already live in {self.env}")
        decided = self.clock()
        warm = True
        if isinstance(self.platform, Capacity):  # cold target: start its instances, switch once they answer
            warm = all(self.platform.is_warm(fn, target_r.version(fn)) for fn in fns)
            for fn in fns:
                self.platform.prewarm(fn, target_r.version(fn))
        warmed = self.clock()
        with self._switch:
            d = self.store.create_deployment(self.env, current_r, target_r, Strategy(MANUAL, (Step(100.0, 0.0),)),
                                             description=f"manual rollback: {reason}", created_by=who)
            t0 = time.perf_counter()
            self.traffic.point_all(target_r)
            switch_ms = (time.perf_counter() - t0) * 1000
            done = self.clock()
            d = self.store.transition(d.id, st.SUCCEEDED, current_step=0, current_weight=100.0, reason=reason,
                                      rollback_decided_at=decided, rollback_completed_at=done)
        inc_id = self._record_manual(
            d, how=f"{'warm' if warm else f'cold: instances started in {warmed - decided:.1f} s'}, "
                   f"switch {switch_ms:.1f} ms", warm=warm, switch_ms=switch_ms, incident=incident)
        return {
            "mode": "rollback",
            "deployment": d.id,
            "from": current_r.id,
            "to": target_r.id,
            "from_label": current_r.label(),
            "to_label": target_r.label(),
            "incident": inc_id,
            "warm": warm,
            "switch_ms": round(switch_ms, 1),
            "warm_seconds": round(warmed - decided, 3),
        }

    # --- supervisor lifecycle ---------------------------------------------------------------------
    def resume(self) -> None:
        """After a (re)start: finish half-done rollbacks, repair aliases, continue active deployments."""
        self.reconcile()
        for d in self.store.active_deployments():
            if d.env != self.env or (self.leases is not None and not self._take_over(d, "restart")):
                continue
            if d.strategy == MANUAL:
                self._finish_manual(d)
            else:
                self._event(
                    d,
                    "resumed",
                    f"supervisor restarted: resuming {d.id} from {d.status}"
                    + (f" step {d.current_step + 1}" if d.current_step is not None else ""),
                )
                self._spawn(d, taken_over=self.leases is not None)

    # --- a deployment driven by another process (shared store) -------------------------------------
    def follow(self, deployment_id: str) -> Deployment:
        """Follow a deployment from this process. On a shared store, one driven elsewhere is taken over
        once its driver's lease has expired (at once when it already has; a conditional write, so of two
        followers one wins) and driven on from its recorded step. Returns at once."""
        d = self.store.get(deployment_id)
        if self.leases is None or not d.active:
            return d
        with self._lock:
            for th in (self._threads.get(d.id), self._followers.get(d.id)):
                if th is not None and th.is_alive():
                    return d
            th = threading.Thread(target=self._adopt, args=(d.id,), name=f"follow-{d.id}", daemon=True)
            self._followers[d.id] = th
            th.start()
        return d

    def _adopt(self, deployment_id: str) -> None:
        assert self.leases is not None
        while not self._closing.is_set():
            wait = self.leases.renew_seconds
            try:
                d = self.store.get(deployment_id)
                if not d.active:
                    return
                lease = self.leases.lease(d.id)
                now = time.time()
                if lease.expired(now) and self._take_over(d, "follow"):
                    if d.strategy == MANUAL:
                        self._finish_manual(self.store.get(d.id))
                    else:
                        self._spawn(self.store.get(d.id), taken_over=True)
                    return
                wait = min(wait, max(0.05, lease.expires - now + 0.05))
            except Exception:  # noqa: BLE001 - a failed read is tried again; the guard stays the backstop
                log.exception("following %s: trying again in %.0f s", deployment_id, wait)
            self._closing.wait(wait)

    def _take_over(self, d: Deployment, why: str) -> bool:
        """Take `d`'s expired lease (True), or leave it to its live holder (False)."""
        assert self.leases is not None
        before = self.leases.lease(d.id)
        if not self.leases.holds(d.id):
            try:
                self.leases.take_over(d.id)
            except UsageError as e:  # LeaseHeld (its holder renews it, or another process won), or over
                log.info("%s: not taken over (%s)", d.id, e)
                return False
        self._event(d, "taken_over",
                    f"{self.leases.holder} took {d.id} over ({why}) from {before.holder}, whose lease expired "
                    f"{max(0.0, time.time() - before.expires):.1f} s ago; going on from {d.status}"
                    + (f" step {d.current_step + 1}" if d.current_step is not None else ""),
                    severity="warning", data={"from": before.holder, "fence": before.fence + 1, "why": why})
        return True

    def _stop_elsewhere(self, d: Deployment, rollback: bool, reason: str, who: str) -> Deployment:
        """`d` is driven by another process: ask it to stop (it acts within an evaluation interval). If it
        does not before its lease expires — it is dead — take over and return `d` for stopping here."""
        assert self.leases is not None
        self.leases.request(d.id, "stop", {"rollback": rollback, "reason": reason, "who": who})
        self.store.add_event("stop_requested", f"{who or 'an operator'} asked {d.id}'s driver to stop it: {reason}",
                             deployment_id=d.id, severity="warning", ts=self.clock())
        give_up = time.monotonic() + self.leases.expiry_seconds + 30.0  # within the CLI's 120 s
        while True:
            cur = self.store.get(d.id)
            if not cur.active:
                return cur
            lease = self.leases.lease(d.id)
            if lease.expired() and self._take_over(cur, "stop"):
                return self.store.get(d.id)
            if time.monotonic() > give_up:  # alive (it renews) but busy: a hook, an approval wait
                raise OperationFailed(
                    f"asked {d.id}'s driver to stop it; it is {lease.describe()} and has not acted yet — it will "
                    f"at its next evaluation (follow it: backout deployment follow {d.id})")
            time.sleep(min(0.2, max(0.01, lease.expires - time.time())))

    def _keep_lease(self, deployment_id: str, runner: threading.Thread) -> None:
        """Renew the lease while this process drives the deployment; on LeaseLost tell the runner to stop."""
        assert self.leases is not None
        lv = self._live(deployment_id)
        while runner.is_alive() and not self._closing.wait(self.leases.renew_seconds):
            if not runner.is_alive():
                return
            try:
                self.leases.renew(deployment_id)
            except LeaseLost as e:
                lv.lease_lost = str(e)
                lv.wake.set()
                log.error("%s", e)
                return
            except Exception as e:  # noqa: BLE001 - a throttled or failed call: the next renewal tries again
                log.warning("renewing the lease of %s failed (trying again in %.0f s): %s", deployment_id,
                            self.leases.renew_seconds, e)

    def _requests(self, d: Deployment, lv: Live) -> None:
        """What other processes asked of the deployment this one drives (shared store): stop, approve."""
        if self.leases is None:
            return
        if lv.lease_lost is not None:
            raise LeaseLost(lv.lease_lost)
        asked = self.leases.requests(d.id)
        stop = asked.get("stop")
        if stop is not None and lv.stop_requested is None:
            lv.stop_rollback = bool(stop.get("rollback", True))
            lv.stop_requested = str(stop.get("reason") or f"stopped by {stop.get('who') or 'an operator'}")
        if "approve" in asked:
            lv.approved.set()

    def _untrusted(self, d: Deployment) -> str | None:
        """Why the recorded step cannot be trusted after a takeover (→ rollback), or None (→ go on).

        Trusted: the aliases route only to the stable and the new release's versions, with the weight
        the record says or the one before it — what a driver killed between its write and its alias
        update leaves: 0 % before traffic (Created … PreTraffic: the pre-traffic phase runs again),
        step i's weight or step i-1's (InProgress), 100 % or the last step's (PostTraffic). Anything
        else — a version of neither release, a weight no step gives (an alias moved by hand), aliases
        that cannot be read — is not: the takeover rolls back instead of guessing."""
        weights = [s.weight for s in d.steps]
        if d.status == st.IN_PROGRESS and d.current_step is not None:
            allowed = {weights[d.current_step], weights[d.current_step - 1] if d.current_step else 0.0}
        elif d.status == st.POST_TRAFFIC:
            allowed = {100.0, weights[-1] if weights else 100.0}
        else:
            allowed = {0.0}
        try:
            for fn in self.platform.functions():
                stable, target = d.stable_versions.get(fn), d.target_versions.get(fn)
                if stable == target or target is None:
                    continue
                w = self.platform.get_weights(fn)
                if not set(w.versions) <= {stable, target}:
                    return (f"{fn} routes to v{', v'.join(sorted(w.versions))}, not only to {d.stable} and "
                            f"{d.target}'s versions")
                on_target = w.versions.get(str(target), 0.0)
                if not any(abs(on_target - a) < 0.01 for a in allowed):
                    return (f"{fn} sends {on_target:g} % to {d.target}; the record ({d.status}"
                            + (f" step {d.current_step + 1}" if d.current_step is not None else "")
                            + f") allows {' or '.join(f'{a:g} %' for a in sorted(allowed))}")
        except Exception as e:  # noqa: BLE001 - aliases that cannot be read cannot be trusted
            return f"the live aliases cannot be read: {type(e).__name__}: {e}"
        return None

    def _finish_manual(self, d: Deployment) -> None:
        """A manual rollback killed between its record and its switch: the operator's decision stands,
        so finish the switch (no hooks, no steps) rather than run it as a deployment."""
        with self._switch:
            self.traffic.route({}, d.target_versions, 100.0)
            d = self.store.transition(d.id, st.SUCCEEDED, current_step=0, current_weight=100.0,
                                      rollback_decided_at=d.rollback_decided_at or d.created_at,
                                      rollback_completed_at=self.clock())
        self._record_manual(d, resumed=True)

    def _record_manual(self, d: Deployment, resumed: bool = False, incident: bool = True, **data: Any) -> str | None:
        """A manual rollback's event, incident and notification (once the switch is done); returns the
        incident (None when the caller opens it)."""
        reason = d.reason or d.description.removeprefix("manual rollback: ")
        who = d.created_by
        self.store.add_event(
            "manual_rollback",
            f"{'restart: ' if resumed else ''}{who} rolled back {d.stable} → {d.target}"
            + (f" ({data['how']})" if data.get("how") else "") + f": {reason}",
            deployment_id=d.id, severity="critical",
            data={"from": d.stable_release, "to": d.target_release, "who": who, "reason": reason,
                  "resumed": resumed, **{k: v for k, v in data.items() if k != "how"}},
        )
        if not incident:
            return None
        inc = self.open_incident(
            self.env, f"manual rollback {d.stable} → {d.target}: {reason}", severity="critical", deployment_id=d.id,
            trigger={"kind": "manual", "reason": reason, "who": who, "decided_at": d.rollback_decided_at,
                     "completed_at": d.rollback_completed_at},
            evidence={"alarms": [f"operator {who}: {reason}"]},
        )
        self._notify("rolled_back", d, reason=f"manual: {reason} ({who})", incident_id=inc.id,
                     command=f"backout incident show {inc.id} --env {self.env}", stable=d.target, target=d.stable)
        return inc.id

    def open_incident(self, env: str, title: str, **kw: Any) -> Incident:
        """`Store.open_incident`, announced: every incident (rollback, emergency stop) is notified as
        `incident_opened` with its id, why, and the commands that show it and the procedure. A rollback
        incident another writer opened first (the guard, on a shared store) is returned, not announced again."""
        opened_at = kw.setdefault("opened_at", self.clock())
        inc = self.store.open_incident(env, title, **kw)
        if (inc.opened_at, inc.title) != (opened_at, title):
            return inc
        try:
            self.notifier.notify(Notification(
                kind="incident_opened", environment=env, severity=NOTIFY_SEVERITY.get(inc.severity, "critical"),
                service=self.manifest.service.name,
                incident_id=inc.id, deployment_id=inc.deployment_id, reason=title,
                command=f"backout incident show {inc.id} --env {env}",
                extra={"Runbook": f"backout runbook --env {env}"}))
        except Exception:  # noqa: BLE001 - notifications never block a rollback
            log.exception("notification incident_opened failed")
        return inc

    def last_succeeded(self) -> tuple[Deployment, float] | None:
        """The environment's last deployment and its age in seconds (on this deployer's clock) when it
        is a deployment that succeeded — not a manual rollback — and nothing came after it: the release
        a rollback within the rollback window would take back."""
        last = next(iter(self.store.deployments(self.env, limit=1)), None)
        if last is None or last.status != st.SUCCEEDED or last.strategy == MANUAL:
            return None
        done = next((e.ts for e in reversed(self.store.events(deployment_id=last.id)) if e.kind == "succeeded"),
                    last.finished_at or last.created_at)
        return last, max(0.0, self.clock() - done)

    def reconcile(self) -> None:
        """Make the platform agree with the store after a kill between a commit and its effect."""
        if self.store.active_deployment(self.env) is not None:
            return
        last = next(iter(self.store.deployments(self.env, limit=1)), None)
        if last is None:
            return
        if last.status in (st.ROLLED_BACK, st.STOPPED, st.FAILED) and last.stable_release is not None:
            want, label = last.stable_versions, last.stable
        elif last.status == st.SUCCEEDED:
            want, label = last.target_versions, last.target
        else:
            return
        # a rollback committed but not completed was killed before (or during) its alias writes: from
        # 100 % the aliases point at the new version alone, which no check below would tell apart
        unfinished = last.status == st.ROLLED_BACK and not last.rollback_completed_at
        changed = False
        for fn in self.platform.functions():
            w = self.platform.get_weights(fn)
            v = want.get(fn)
            if v is None:
                continue
            if unfinished and w.versions != {v: 100.0}:
                self.platform.set_weights(fn, v)
                changed = True
            elif w.canary is not None and w.canary_weight > 0 and set(w.versions) != {v}:
                self.platform.set_weights(fn, v)
                changed = True
            elif w.canary is not None and w.stable != v and w.versions == {v: 100.0}:
                self.platform.set_weights(fn, v)
                changed = True
        if last.rollback_decided_at and not last.rollback_completed_at:
            self.store.update(last.id, rollback_completed_at=self.clock())
            changed = True
        if changed:
            self._event(
                last, "reconciled", f"live aliases set to {label} to agree with {last.id} ({last.status})"
            )
        if last.status == st.ROLLED_BACK and self.store.incident_for_deployment(last.id) is None:
            self._open_missing_incident(self.store.get(last.id))
        manual_done = last.strategy == MANUAL and last.status == st.SUCCEEDED
        if manual_done and self.store.incident_for_deployment(last.id) is None:
            self._record_manual(self.store.get(last.id), resumed=True)

    def _open_missing_incident(self, d: Deployment) -> None:
        """A kill between a rollback's commit and its incident: every rollback opens one, so open it now
        (with the `rolled_back` event's trigger and evidence when that was written)."""
        ev = next((e for e in reversed(self.store.events(deployment_id=d.id)) if e.kind == "rolled_back"), None)
        data = dict(ev.data) if ev is not None and isinstance(ev.data, dict) else {}
        kind = data.pop("trigger", "internal")
        evidence = data.pop("evidence", [d.reason])
        trigger = {"reason": d.reason, "decided_at": d.rollback_decided_at, "completed_at": d.rollback_completed_at,
                   **data, "kind": kind}
        inc = self.open_incident(self.env, f"{d.id} rolled back: {d.reason}", severity="critical",
                                 deployment_id=d.id, trigger=trigger, evidence={"alarms": evidence}, rollback=True)
        self.store.add_event("incident_opened", f"incident {inc.id} opened for {d.id} after a restart",
                             deployment_id=d.id, incident_id=inc.id, severity="critical", ts=self.clock())
        self._notify("rolled_back", d, reason=d.reason, evidence=evidence, incident_id=inc.id,
                     command=f"backout incident show {inc.id} --env {self.env}")

    def close(self) -> None:
        self._closing.set()
        for lv in self.live.values():
            lv.wake.set()
        for t in list(self._threads.values()) + list(self._followers.values()):
            t.join(timeout=5)
        if self.leases is not None:  # another process may take over at once (or the guard, after its grace)
            for d in self.store.active_deployments():
                if self.leases.holds(d.id):
                    try:
                        self.leases.release(d.id)
                    except Exception:  # noqa: BLE001 - it then expires by itself
                        log.exception("releasing the lease of %s failed", d.id)

    # --- the runner ---------------------------------------------------------------------------------
    def _spawn(self, d: Deployment, taken_over: bool = False) -> None:
        with self._lock:
            self._forget_ended()
            t = self._threads.get(d.id)
            if t is not None and t.is_alive():
                return
            t = threading.Thread(target=self._run, args=(d.id, taken_over), name=f"deploy-{d.id}", daemon=True)
            self._threads[d.id] = t
            t.start()
            if self.leases is not None:
                threading.Thread(target=self._keep_lease, args=(d.id, t), name=f"lease-{d.id}", daemon=True).start()

    def _forget_ended(self) -> None:
        """Keep the live state (last alarm values, threads) of the `KEEP_ENDED` newest deployments
        no thread of this process runs any more, and drop the rest: a supervisor lives through
        thousands of deployments (caller holds the lock)."""
        running = {k for k, t in (*self._threads.items(), *self._followers.items()) if t.is_alive()}
        ended = [k for k in self.live if k not in running]
        for k in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.live[k]
        for threads in (self._threads, self._followers):
            for k in [k for k in threads if k not in running and k not in self.live]:
                del threads[k]

    def _live(self, deployment_id: str) -> Live:
        with self._lock:
            return self.live.setdefault(deployment_id, Live())

    def _run(self, deployment_id: str, taken_over: bool = False) -> None:
        try:
            self._drive(deployment_id, taken_over)
        except LeaseLost as e:  # another process drives it now: stop here, touch nothing
            log.error("%s", e)

    def _drive(self, deployment_id: str, taken_over: bool) -> None:
        d = self.store.get(deployment_id)
        lv = self._live(d.id)
        try:
            if taken_over:
                why = self._untrusted(d)
                if why is not None:
                    raise RollbackNeeded("takeover", f"taken over, and the recorded step cannot be trusted: {why}",
                                         [why])
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
            threading.Thread(target=self._hold_deadline, args=(d.id, deadline, threading.current_thread()),
                             name=f"deadline-{d.id}", daemon=True).start()
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
        except LeaseLost:
            raise
        except Exception as e:  # noqa: BLE001 - a crash of the runner must still restore stable traffic
            cur = self.store.get(d.id)
            if not cur.active:  # an operator's stop or the deadline's watchdog ended it while the runner was busy
                log.info("deployment %s ended (%s) while its runner was busy (%s)", d.id, cur.status, e)
                return
            log.exception("deployment %s crashed", d.id)
            if cur.active:
                self._rollback(
                    cur, RollbackNeeded("internal", f"deployment runner failed: {type(e).__name__}: {e}", [])
                )

    def _hold_deadline(self, deployment_id: str, deadline: float, runner: threading.Thread) -> None:
        """The progress deadline while the runner is blocked where it does not look at it (a backup,
        instances starting, a hook): once the runner is past the deadline by more than its own checks
        allow for, roll back from here, as an operator's stop does; the runner finds the deployment over
        when its call returns. Why: `deadline_margin` promises that a deployment still running then is
        rolled back, whatever it is waiting for."""
        grace = 2 * evaluation_interval(self.platform, EVAL_INTERVAL) + 1.0
        lv = self._live(deployment_id)
        while True:
            if not runner.is_alive():
                return
            left = deadline + grace - self.clock()
            if left <= 0:
                break
            if self._closing.wait(min(left, 0.5)):
                return
        if lv.lease_lost is not None or (self.leases is not None and not self.leases.holds(deployment_id)):
            return  # another process drives it now: its own deadline applies
        d = self.store.get(deployment_id)
        if not d.active:
            return
        doing = lv.doing or (f"at step {(d.current_step or 0) + 1}" if d.current_step is not None else d.status)
        log.warning("deployment %s is past its progress deadline while %s: rolling back", d.id, doing)
        self._rollback(d, self._deadline_passed(d, lv, deadline, doing))

    def _deadline_passed(self, d: Deployment, lv: Live, deadline: float, doing: str) -> RollbackNeeded:
        """The deadline's rollback, for the runner or the watchdog; the first of them to get here sends
        the notification (`_rollback` itself switches the traffic exactly once)."""
        with self._lock:
            first, lv.deadline_claimed = not lv.deadline_claimed, True
        if first:
            self._notify("deadline_exceeded", d, reason="progress deadline exceeded")
        return RollbackNeeded(
            "deadline",
            f"progress deadline exceeded ({deadline - self._started_at(d):.0f} s)",
            [f"deployment still {doing} after the deadline"],
            {"while": doing},
        )

    def _started_at(self, d: Deployment) -> float:
        """When the deployment left approval (the progress deadline and the alarm windows start here)."""
        lv = self._live(d.id)
        if lv.traffic_started_at is None:
            ev = [e for e in self.store.events(deployment_id=d.id) if e.kind == "pre_traffic_started"]
            lv.traffic_started_at = ev[0].ts if ev else self.clock()
        return lv.traffic_started_at

    def _pre_traffic(self, d: Deployment) -> None:
        self._started_at(d)
        self._event(d, "pre_traffic_started", f"pre-traffic: back up data, warm {d.target}, run hooks")
        lv = self._live(d.id)
        lv.doing = "in pre-traffic, backing up the data"
        snap = self.platform.backup(label=f"before {d.id}")
        self.store.record_snapshot(self.env, snap.id, label=f"before {d.id}", deployment_id=d.id)
        self._event(
            d,
            "snapshot",
            f"data backup {snap.id} taken before any traffic shift",
            data={"snapshot": snap.id},
        )
        if isinstance(self.platform, Capacity):
            for fn in self.platform.functions():
                v = d.target_versions[fn]
                lv.doing = f"in pre-traffic, starting {fn} v{v}"
                try:
                    self.platform.prewarm(fn, v)
                except Exception as e:  # noqa: BLE001 - an init failure is a pre-traffic failure
                    raise RollbackNeeded(
                        "pre_traffic",
                        f"{fn} v{v} ({d.target}) does not start: {e}",
                        [f"{fn} v{v} init failed: {e}"],
                    ) from None
                if fn in d.stable_versions:
                    lv.doing = f"in pre-traffic, starting {fn} v{d.stable_versions[fn]}"
                    self.platform.prewarm(fn, d.stable_versions[fn])
        self._hooks("pre_traffic", d, self.clock())  # leaves `doing` empty once its hooks are done

    def _hooks(self, phase: str, d: Deployment, since: float) -> list[HookResult]:
        ctx = HookContext(
            self.manifest,
            self.env,
            self.platform,
            d.id,
            {fn: d.stable_versions.get(fn, d.target_versions[fn]) for fn in self.platform.functions()},
            dict(d.target_versions),
            since,
            d.target_release,
            alone_since=self._alone_since(d) if phase == "post_traffic" else None,
        )

        lv = self._live(d.id)
        label = phase.replace("_", "-")
        # what the runner waits for while each hook runs (in order), then nothing
        hooks = getattr(self.manifest.hooks, phase)
        waiting = [f"in {label}, running hook {h.name}" for h in hooks] + [""]
        lv.doing = waiting[0]

        def record(r: HookResult) -> bool:
            waiting.pop(0)  # hooks run in order: the next one starts now
            lv.doing = waiting[0]
            self._event(
                d,
                "hook_passed" if r.ok else "hook_failed",
                f"{label} hook {r.name} {'passed' if r.ok else 'FAILED'} in {r.seconds:.1f} s: "
                f"{r.output[:500]}",
                severity="info" if r.ok else "critical",
                data={"phase": phase, "hook": r.name, "ok": r.ok, "output": r.output, "checks": r.checks},
            )
            return self.store.get(d.id).active  # an operator's rollback during a hook ends the phase

        results = run_hooks(phase, hooks, ctx, on_result=record)
        for r in results:
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
                    f"{label} hook {r.name} failed",
                    [r.output[:1000]],
                    {"hook": r.name, "output": r.output, "checks": r.checks},
                )
        return results

    def _prewarm(self, d: Deployment, weight: float) -> None:
        """Before a step, start as many instances of the new version as its share of the recent peak
        concurrency needs, so the shift meets warm workers instead of a wave of cold starts (only on a
        platform with the optional Capacity protocol)."""
        if not isinstance(self.platform, Capacity):
            return
        now = self.clock()
        fns = self.platform.functions()
        start = (int(now) // 60 - 1) * 60
        try:
            series = self.platform.metrics([
                MetricQuery.of(NS_LAMBDA, "ConcurrentExecutions", {"FunctionName": fn}, start, now + 1, 60, "Maximum")
                for fn in fns
            ])
        except Exception as e:  # noqa: BLE001 - sizing is best effort: a metrics outage is no reason to roll back
            log.warning("deployment %s: peak concurrency unavailable, warming one instance: %s", d.id, e)
            series = [[] for _ in fns]
        for fn, pts in zip(fns, series, strict=True):
            spec = self.manifest.functions[fn]
            cap = spec.reserved_concurrency if spec.reserved_concurrency is not None else 16
            peak = max((p.value for p in pts), default=0.0)
            want = max(1, min(cap, math.ceil(peak * min(weight, 100.0) / 100.0) + 1))
            v = d.target_versions[fn]
            self._live(d.id).doing = f"warming {want} instance(s) of {fn} v{v} for {weight:g} %"
            try:
                self.platform.prewarm(fn, v, want)
            except Exception as e:  # noqa: BLE001 - an instance that cannot start is a failed deployment
                raise RollbackNeeded("pre_traffic", f"{fn} v{v} ({d.target}) does not start: {e}",
                                     [f"{fn} v{v}: {e}"]) from None

    def _apply_weights(self, d: Deployment, weight: float) -> None:
        self.traffic.route(d.stable_versions, d.target_versions, weight)

    def _shift(self, d: Deployment, lv: Live, deadline: float) -> Deployment:
        alarms = AlarmSet(default_rules(self.manifest, self.env, dict(d.target_versions), self._started_at(d)))
        judges = JudgeSet([], self.spec.judge_alpha)
        if d.stable_release is not None:
            fns = self.platform.functions()
            judges = JudgeSet(default_judges(self.manifest, self.env, {fn: d.target_versions[fn] for fn in fns},
                                             dict(d.stable_versions), self._started_at(d),
                                             open_seconds=consistent_metrics(self.platform)), self.spec.judge_alpha)
        start_index = d.current_step if d.current_step is not None else 0
        for i in range(start_index, len(d.steps)):
            step = d.steps[i]
            resuming = i == d.current_step and d.step_started_at is not None
            warm_from = self.clock()
            self._prewarm(d, step.weight)
            lv.doing = ""
            started = d.step_started_at if resuming else self.clock()
            with self._switch:
                d = self.store.transition(
                    d.id, st.IN_PROGRESS, current_step=i, current_weight=step.weight, step_started_at=started
                )
                self._apply_weights(d, step.weight)
            if not resuming:
                self._event(
                    d,
                    "step_reached",
                    f"step {i + 1}/{len(d.steps)}: {step.weight:g} % on {d.target}"
                    + (f", hold {step.hold:g} s" if step.hold else ""),
                    # how long warming its instances delayed the step (a late step is explained, not a mystery)
                    data={"step": i, "weight": step.weight, "hold": step.hold,
                          "warm_seconds": round(started - warm_from, 3)},
                )
                self._notify("step_reached", d, weight=step.weight)
            alone_since = self._alone_since(d) if step.weight >= 100.0 else None
            end = started + step.hold
            while True:
                self._watch(d, lv, alarms, judges, deadline, alone_since)
                if self.clock() >= end:
                    break
                lv.wake.wait(min(evaluation_interval(self.platform, EVAL_INTERVAL), max(0.0, end - self.clock())))
                lv.wake.clear()
        self._enough_data(d, lv, {j.name for j in judges.judges if j.starved})
        return self.store.transition(d.id, st.POST_TRAFFIC, expect=st.IN_PROGRESS)

    def _alone_since(self, d: Deployment) -> float | None:
        """When the new version took all the traffic for good (its first step at 100 %): from then on no
        judge can compare it with the stable version. -inf when no step ever split the traffic (AllAtOnce:
        nothing was compared at all); None before 100 %."""
        reached = [e for e in self.store.events(deployment_id=d.id) if e.kind == "step_reached"]
        full = [e.ts for e in reached if float(e.data.get("weight", 0.0)) >= 100.0]
        if not full:
            return None
        split = any(0.0 < float(e.data.get("weight", 0.0)) < 100.0 for e in reached)
        return min(full) if split else -math.inf

    def _enough_data(self, d: Deployment, lv: Live, uncomparable: Collection[str] = ()) -> None:
        """A deployment whose alarms never had the data to decide must not pass as judged: say so, and with
        `require_traffic = true` roll it back. A judge that had no stable traffic to compare with
        (`uncomparable`: at 100 % from the start, say) lacks no data of the new version: the thresholds
        watched in its place."""
        unchanged = {fn for fn, v in d.target_versions.items() if d.stable_versions.get(fn) == v}
        starved = sorted(k for k, e in lv.alarms.items()
                         if e.state == INSUFFICIENT_DATA and k.partition(":")[2] not in unchanged
                         and k not in uncomparable)
        if not starved:
            return
        msg = (f"not enough data to judge {d.target}: {', '.join(starved)} still INSUFFICIENT_DATA "
               f"(fewer than {self.spec.min_invocations} invocations of the new version)")
        if self.spec.require_traffic:
            raise RollbackNeeded("no_traffic", f"{msg}; require_traffic is set", [msg])
        self._event(d, "insufficient_data", f"{msg}: it goes on unjudged (require_traffic = true rolls it back)",
                    severity="warning", data={"alarms": starved})

    def _watch(self, d: Deployment, lv: Live, alarms: AlarmSet, judges: JudgeSet, deadline: float,
               alone_since: float | None = None) -> None:
        """One evaluation — every alarm and judge from one batched metrics call: store every state
        change; an ALARM that needs no confirmation (or whose judges cannot judge: `alone_since`, see
        `analysis.unjudged`), or a judge's → rollback; stop; deadline."""
        self._check_stop(d, lv)
        confirm = bool(self.spec.confirm_with_judge)
        # one batched metrics call; when it fails every alarm keeps its state (see `errors`), next time tries again
        for ch in evaluate_all(self.platform, alarms, judges, self.clock()):
            e = ch.evaluation
            severity = "critical" if e.state == ALARM else "info"
            message = f"{e.alarm}: {ch.previous or 'new'} → {e.state}: {e.detail}"
            if e.state == ALARM and e.evidence is None and confirm and judges.confirming(e.alarm):
                e = with_judge(e, judges)
                why = unjudged(e, judges, alone_since)
                if why is not None:
                    message = f"{e.alarm}: {ch.previous or 'new'} → {e.state}: {e.detail} — {why}"
                elif e.evidence is not None and e.evidence.e_value < e.evidence.threshold:
                    severity = "warning"
                    message = (f"{e.alarm}: {ch.previous or 'new'} → {e.state}: {e.detail} — waits for "
                               f"{e.evidence.judge} to confirm (confirm_with_judge)")
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
            self._event(d, "alarm_state", message, severity=severity, data=e.as_dict())
        lv.alarms = {**alarms.current, **judges.current}
        v = verdict(alarms, judges, confirm, alone_since)
        if v.trigger is not None:
            first = v.firing[0]
            raise RollbackNeeded(
                v.trigger,
                f"alarm {first.alarm} in ALARM: {first.detail}",
                [e.detail for e in v.firing],
                {"alarms": [e.as_dict() for e in v.firing]},
            )
        if self.clock() > deadline:
            raise self._deadline_passed(d, lv, deadline, f"at step {(d.current_step or 0) + 1}")

    def _check_stop(self, d: Deployment, lv: Live) -> None:
        if self._closing.is_set():
            raise _Closing()
        self._requests(d, lv)
        if lv.stop_requested is not None:
            if lv.stop_rollback:
                raise RollbackNeeded("manual", lv.stop_requested, [lv.stop_requested])
            raise _Stopped()

    def _post_traffic(self, d: Deployment, lv: Live) -> None:
        self._event(d, "post_traffic_started", f"post-traffic: 100 % on {d.target}, running hooks")
        since = self._started_at(d)
        self._hooks("post_traffic", d, since)
        self._check_stop(d, lv)

    def _succeed(self, d: Deployment) -> None:
        with self._switch:
            d = self.store.transition(d.id, st.SUCCEEDED, expect=st.POST_TRAFFIC, current_weight=100.0)
            self._apply_weights(d, 100.0)
        self._event(
            d,
            "succeeded",
            f"deployment {d.id} succeeded: {d.target} live; "
            f"{d.stable} kept ready for {self.spec.rollback_window:g} s",
        )
        self._notify("succeeded", d)

    def _rollback(self, d: Deployment, rb: RollbackNeeded) -> bool:
        """Roll back now; False when the deployment was already over (another thread got there first)."""
        with self._switch:
            if not self.store.get(d.id).active:
                return False  # a stop took over while the runner was busy, or the other way round
            decided = self.clock()
            d = self.store.transition(d.id, st.ROLLED_BACK, reason=rb.reason, rollback_decided_at=decided)
            self._apply_weights(d, 0.0)
            done = self.clock()
            d = self.store.update(d.id, rollback_completed_at=done)
        self._event(
            d,
            "rolled_back",
            f"rolled back to {d.stable} in {1000 * (done - decided):.0f} ms: {rb.reason}",
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
        inc = self.open_incident(
            self.env,
            f"{d.id} rolled back: {rb.reason}",
            severity=incident_severity(impact),
            deployment_id=d.id,
            trigger={"kind": rb.trigger, "reason": rb.reason, "decided_at": decided, "completed_at": done, **rb.data},
            evidence={"alarms": rb.evidence, "impact": impact},
            rollback=True,
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
        # stamped on the deployer's clock: `_started_at` and `measure_impact` read these times back against it
        self.store.add_event(kind, message, deployment_id=d.id, severity=severity, data=data, ts=self.clock())

    def _notify(self, kind: str, d: Deployment, **kw: Any) -> None:
        try:
            self.notifier.notify(
                Notification(
                    kind=kind,
                    environment=self.env,
                    deployment_id=d.id,
                    stable=kw.pop("stable", d.stable if d.stable_release is not None else None),
                    target=kw.pop("target", d.target),
                    service=self.manifest.service.name,
                    command=kw.pop("command", f"backout deployment show {d.id} --env {self.env}"),
                    **kw,
                )
            )
        except Exception:  # noqa: BLE001 - notifications never block a deployment or a rollback
            log.exception("notification %s failed", kind)


def incident_severity(impact: dict[str, Any]) -> str:
    """An incident's severity follows the bad version's impact: "low" when it never took traffic (a
    pre-traffic failure), "critical" when it failed requests, invocations or messages, else "high"
    (it took traffic, and the evidence shows no harm). An emergency stop is always critical."""
    if impact.get("error") is not None:
        return "critical"  # the impact could not be measured: assume the worst
    if impact.get("weights") and all(w == 0.0 for _, w in impact["weights"]):
        return "low"
    harm = (impact.get("api", {}).get("failed_requests", 0)
            + sum(f.get("errors", 0) for f in impact.get("functions", {}).values())
            + sum(impact.get("dlq_arrivals", {}).values()))
    return "critical" if harm else "high"


def measure_impact(
    manifest: Manifest, env: str, platform: Platform, store: ControlStore, d: Deployment, until: float
) -> dict[str, Any]:
    """What the bad release did, kept with the incident so its report needs no running platform:
    per-second invocations/errors of each function's new version, API 5xx it served, DLQ arrivals,
    and the canary weight over time (from the step events). One batched metrics call."""
    from backout.platforms.base import DLQ_ARRIVALS, NS_API, NS_BACKOUT

    # from the first traffic shift: the pre-traffic hook's test invocations are not the bad version's traffic
    events = store.events(deployment_id=d.id)
    first = next((e.ts for e in events if e.kind == "step_reached"), d.created_at)
    start = int(first)
    end = int(until) + 1
    fns = platform.functions()
    http_fn = next((fn for fn, f in manifest.functions.items() if f.http_events and fn in d.target_versions), None)
    dlqs = sorted({q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue})
    queries: list[MetricQuery] = []
    for fn in fns:
        dims = {"FunctionName": fn, "ExecutedVersion": d.target_versions[fn]}
        queries += [MetricQuery.of(NS_LAMBDA, "Invocations", dims, start, end, 1, "Sum"),
                    MetricQuery.of(NS_LAMBDA, "Errors", dims, start, end, 1, "Sum")]
    if http_fn is not None:  # a service with no HTTP function has no API figures (and CloudWatch refuses an
        api_dims = {"ApiName": manifest.service.name, "Stage": env,  # empty dimension value)
                    "ExecutedVersion": d.target_versions[http_fn]}
        queries += [MetricQuery.of(NS_API, "5XXError", api_dims, start, end, 1, "Sum"),
                    MetricQuery.of(NS_API, "Count", api_dims, start, end, 1, "Sum")]
    queries += [MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": q}, start, end, 1, "Sum") for q in dlqs]
    got = [{int(p.timestamp): p.value for p in pts} for pts in platform.metrics(queries)]
    if http_fn is None:
        got[2 * len(fns):2 * len(fns)] = [{}, {}]

    seconds = list(range(start, end))
    functions: dict[str, Any] = {}
    for i, fn in enumerate(fns):
        inv, err = got[2 * i], got[2 * i + 1]
        functions[fn] = {
            "version": d.target_versions[fn],
            "invocations": sum(inv.values()),
            "errors": sum(err.values()),
            "per_second": [[t, inv.get(t, 0.0), err.get(t, 0.0)] for t in seconds if t in inv or t in err],
        }
    failed, served = got[2 * len(fns)], got[2 * len(fns) + 1]
    dlq = {q: sum(got[2 * len(fns) + 2 + k].values()) for k, q in enumerate(dlqs)}
    jobs_touched = None
    if manifest.service.repair_function:
        rf = manifest.service.repair_function
        r = platform.invoke(rf, None, {"repair": "affected", "version": d.target_release,
                                       "versions": dict(d.target_versions)})
        if r.ok and isinstance(r.payload, dict):
            jobs_touched = len(r.payload.get("jobs", []))
    weights: list[list[float]] = [[d.created_at, 0.0]]
    for e in events:
        if e.kind == "step_reached" and isinstance(e.data, dict):
            weights.append([e.ts, float(e.data.get("weight", 0.0))])
        elif e.kind == "rolled_back":
            weights.append([e.ts, 0.0])
    return {
        "release": d.target_release,
        "stable_release": d.stable_release,
        "versions": dict(d.target_versions),
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
