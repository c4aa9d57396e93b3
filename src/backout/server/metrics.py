"""Control-plane metrics for Prometheus: what the deployer, the alarms, the incidents and the drills of one
environment are doing, as the `flagger_canary_*` / `rollout_info` families do for Flagger and Argo.

Why a custom collector that reads the store at scrape time rather than counters bumped by the deployer:
every rollback, emergency stop and drill is already a durable record (an incident, a deployment's
`rollback_decided_at`/`rollback_completed_at`, a drill row), so the totals survive a supervisor restart,
agree with `backout incident list` to the unit, and the deployment machinery needs no hooks. Totals are
monotonic because the store only ever appends those records. One registry per app (`registry()`), never
prometheus_client's global one: tests build many apps in one process.

The families (deployment phase/step/weights, alarm state/value/threshold, rollbacks and emergency stops by
reason, decision-to-stable and drill histograms, lease age, switches, queues) are listed in
docs/dashboard.md.

The gateway's request latency histogram (`backout_gateway_request_duration_seconds`) belongs to the
platform that runs the gateway (local); `/metrics` serves it next to these, with the `env` label added
(`with_env`) as on every family here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from backout.control.states import ALARM_STATES, ROLLED_BACK, STATUSES
from backout.platforms.base import PrometheusExport
from backout.server import memory

if TYPE_CHECKING:
    from backout.control.store import AlarmEvaluation, Deployment
    from backout.server.controller import Controller

log = logging.getLogger(__name__)

EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"
# Rollback times are milliseconds to seconds; drills' fault-to-stable times are seconds to minutes.
ROLLBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DRILL_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
EMERGENCY = "emergency"


def registry(controller: Controller) -> CollectorRegistry:
    """A registry of its own for one app: the control-plane collector, then the platform's own figures
    when it exports any."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ControlPlaneCollector(controller))
    if isinstance(controller.platform, PrometheusExport):
        reg.register(_PlatformCollector(controller.platform, controller.env))
    return reg


def exposition(reg: CollectorRegistry) -> str:
    """What `/metrics` answers: every family of `reg` in the text format."""
    return generate_latest(reg).decode()


def with_env(families: Iterable[Metric], env: str) -> Iterator[Metric]:
    """Each family with an `env` label on every sample that has none. The platform serves one environment,
    but its own figures (the gateway's latency histogram) do not name it: without the label a dashboard
    or an alert over several environments' /metrics would mix them."""
    for fam in families:
        fam.samples = [s if "env" in s.labels else s._replace(labels={"env": env, **s.labels})
                       for s in fam.samples]
        yield fam


class _PlatformCollector:
    """The platform's families, labelled with the environment, collected at each scrape."""

    def __init__(self, platform: PrometheusExport, env: str) -> None:
        self.platform, self.env = platform, env

    def collect(self) -> Iterator[Metric]:
        return with_env(self.platform.metric_families(), self.env)


def histogram(name: str, doc: str, labels: dict[str, str], values: Sequence[float], buckets: Sequence[float],
              family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    """Cumulative buckets over every recorded value (what a Histogram would hold had it seen them all)."""
    fam = family or HistogramMetricFamily(name, doc, labels=list(labels))
    cum = [(_le(b), float(sum(1 for v in values if v <= b))) for b in buckets]
    cum.append(("+Inf", float(len(values))))
    fam.add_metric(list(labels.values()), cum, sum_value=float(sum(values)))
    return fam


def _le(b: float) -> str:
    return repr(float(b))


def target_weight(d: Deployment) -> float:
    """Share of traffic on the deployment's target now: a rolled-back one has none, whatever step it
    reached (the store keeps the step's weight for the record)."""
    return 0.0 if d.status == ROLLED_BACK else float(d.current_weight)


def emergency_scope(trigger: dict[str, Any]) -> str:
    """full (API blocked, processing paused, rolled back), keep_api, or no_rollback."""
    if trigger.get("keep_api"):
        return "keep_api"
    if trigger.get("rollback") is False:
        return "no_rollback"
    return "full"


def _restore_seconds(trigger: object) -> float | None:
    """Decision → 100 % stable of the rollback an incident records (automatic or manual). An emergency
    stop's incident times all its steps (snapshot included), not the switch: left out."""
    if not isinstance(trigger, dict) or trigger.get("kind") == EMERGENCY:
        return None
    decided, done = trigger.get("decided_at"), trigger.get("completed_at")
    if not isinstance(decided, int | float) or not isinstance(done, int | float):
        return None
    return max(0.0, float(done) - float(decided))


def lease_age(controller: Controller, now: float) -> float | None:
    """Seconds since the driver of the active deployment last showed it is alive; None when nothing is
    active. Grows without bound when the driver died.

    A shared store has a lease, renewed by whichever process drives the deployment (maybe another
    machine): its age is the time since the last renewal (a released lease reads as a full expiry old).
    On one machine there is none, and this process is the driver: the time since it last evaluated the
    alarms (or, before the first evaluation, started its step)."""
    active = controller.store.active_deployment(controller.env)
    if active is None:
        return None
    leases = controller.deployer.leases
    if leases is not None:
        lease = leases.lease(active.id)
        return max(0.0, now - (lease.expires - leases.expiry_seconds))
    lv = controller.deployer.live.get(active.id)
    seen = [e.ts for e in (lv.alarms.values() if lv else [])]
    seen += [t for t in (active.step_started_at, active.created_at) if t is not None]
    return max(0.0, now - max(seen))


class ControlPlaneCollector:
    """Reads the controller's store, live alarms and platform switches at every scrape."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect(self.c.deployer.clock())
        except Exception:  # a scrape never takes the API down; the log says what broke
            log.exception("control-plane metrics failed")

    def _collect(self, now: float) -> Iterator[Metric]:
        c, env = self.c, self.c.env
        store = c.store
        latest = next(iter(store.deployments(env, limit=1)), None)
        yield from self._deployment(env, latest)
        yield from self._weights(env)
        yield from self._alarms(env)
        incidents = store.incidents(env)
        rollbacks = CounterMetricFamily("backout_rollbacks", "Rollbacks (each opened an incident), by trigger",
                                        labels=["env", "reason"])
        stops = CounterMetricFamily("backout_emergency_stops", "Emergency stops, by scope", labels=["env", "reason"])
        by_reason: dict[str, int] = {}
        by_scope: dict[str, int] = {"full": 0}
        for inc in incidents:
            trig = inc.trigger if isinstance(inc.trigger, dict) else {}
            kind = str(trig.get("kind") or "unknown")
            if kind == EMERGENCY:
                scope = emergency_scope(trig)
                by_scope[scope] = by_scope.get(scope, 0) + 1
            elif inc.deployment_id is not None:
                by_reason[kind] = by_reason.get(kind, 0) + 1
        for reason, n in sorted((by_reason or {"alarm": 0}).items()):
            rollbacks.add_metric([env, reason], float(n))
        for scope, n in sorted(by_scope.items()):
            stops.add_metric([env, scope], float(n))
        yield rollbacks
        yield stops
        open_inc = GaugeMetricFamily("backout_open_incidents", "Open incidents", labels=["env"])
        open_inc.add_metric([env], float(sum(1 for i in incidents if i.status == "open")))
        yield open_inc
        restore = [_restore_seconds(inc.trigger) for inc in incidents]
        restore = [s for s in restore if s is not None]
        yield histogram("backout_rollback_decision_to_stable_seconds",
                        "Rollback decision to 100 % of traffic on the stable release", {"env": env}, restore,
                        ROLLBACK_BUCKETS)
        yield from self._drills(env)
        age = lease_age(c, now)
        lease = GaugeMetricFamily("backout_deployment_lease_age_seconds",
                                  "Seconds since the driver of the active deployment last showed it is alive",
                                  labels=["env"])
        if age is not None:
            lease.add_metric([env], age)
        yield lease
        yield from self._switches(env)
        yield self._memory(env)

    @staticmethod
    def _memory(env: str) -> Metric:
        fam = GaugeMetricFamily("backout_supervisor_memory_bytes",
                                "This process's memory by part (server/memory.py: usage)", labels=["env", "part"])
        for part, n in memory.usage().items():
            fam.add_metric([env, part], float(n))
        return fam

    def _deployment(self, env: str, d: Deployment | None) -> Iterator[Metric]:
        info = GaugeMetricFamily("backout_deployment_info", "The newest deployment (1)",
                                 labels=["env", "deployment", "stable", "target", "strategy", "status"])
        phase = GaugeMetricFamily("backout_deployment_phase", "The newest deployment's status (1) among all",
                                  labels=["env", "phase"])
        step = GaugeMetricFamily("backout_deployment_step", "The newest deployment's step, 1-based (0: none yet)",
                                 labels=["env"])
        steps = GaugeMetricFamily("backout_deployment_steps", "Steps of the newest deployment's strategy",
                                  labels=["env"])
        weight = GaugeMetricFamily("backout_deployment_weight_percent",
                                   "Share of traffic on the newest deployment's target release", labels=["env"])
        if d is not None:
            info.add_metric([env, d.id, d.stable, d.target, d.strategy, d.status], 1.0)
            for s in STATUSES:
                phase.add_metric([env, s], 1.0 if s == d.status else 0.0)
            step.add_metric([env], float(0 if d.current_step is None else d.current_step + 1))
            steps.add_metric([env], float(len(d.steps)))
            weight.add_metric([env], target_weight(d))
        yield from (info, phase, step, steps, weight)

    def _weights(self, env: str) -> Iterator[Metric]:
        fam = GaugeMetricFamily("backout_canary_weight_percent", "Share of the live alias per version it routes to",
                                labels=["env", "function", "version", "role"])
        p = self.c.platform
        for fn in p.functions():
            w = p.get_weights(fn)
            for v, pct in w.versions.items():
                fam.add_metric([env, fn, str(v), "canary" if v == w.canary and v != w.stable else "stable"], pct)
        yield fam

    def _alarms(self, env: str) -> Iterator[Metric]:
        state = GaugeMetricFamily("backout_alarm_state", "Alarm (or judge) state of the active deployment (1)",
                                  labels=["env", "alarm", "state"])
        value = GaugeMetricFamily("backout_alarm_value", "Alarm value: the newest period with data",
                                  labels=["env", "alarm"])
        threshold = GaugeMetricFamily("backout_alarm_threshold", "Alarm threshold", labels=["env", "alarm"])
        live = self.c.live_alarms()
        for name, e in sorted(live.items()):
            for s in ALARM_STATES:
                state.add_metric([env, name, s], 1.0 if s == e.state else 0.0)
            if e.value is not None:
                value.add_metric([env, name], float(e.value))
            threshold.add_metric([env, name], float(e.threshold))
        if not live:
            for name, a in sorted(self._stored_alarms().items()):
                for s in ALARM_STATES:
                    state.add_metric([env, name, s], 1.0 if s == a.state else 0.0)
                threshold.add_metric([env, name], float(a.threshold))
        yield from (state, value, threshold)

    def _stored_alarms(self) -> dict[str, AlarmEvaluation]:
        """The active deployment's alarms as its driver last stored them, when that driver is another
        process (a shared store): the store keeps every state change, so the newest row of each alarm is
        its state now. Its value is left out: it is that of the change, maybe minutes old."""
        active = self.c.store.active_deployment(self.c.env)
        if active is None:
            return {}
        return {a.alarm: a for a in self.c.store.alarm_evaluations(active.id)}  # oldest first: the newest wins

    def _drills(self, env: str) -> Iterator[Metric]:
        drills = self.c.store.drills(env)
        fam = HistogramMetricFamily("backout_drill_rollback_seconds",
                                    "Drills: first faulty traffic to 100 % stable", labels=["env", "result"])
        last = GaugeMetricFamily("backout_drill_last_timestamp_seconds", "When the newest drill started (epoch)",
                                 labels=["env", "result"])
        for result, passed in (("passed", True), ("failed", False)):
            mine = [d for d in drills if d.passed is passed]
            secs = [(d.detection_seconds or 0.0) + (d.rollback_seconds or 0.0) for d in mine
                    if d.detection_seconds is not None or d.rollback_seconds is not None]
            histogram("", "", {"env": env, "result": result}, secs, DRILL_BUCKETS, family=fam)
            if mine:
                last.add_metric([env, result], max(d.started_at for d in mine))
        yield fam
        yield last

    def _switches(self, env: str) -> Iterator[Metric]:
        p = self.c.platform
        blocked = GaugeMetricFamily("backout_api_blocked", "The API throttle is 0 (1)", labels=["env"])
        blocked.add_metric([env], 1.0 if p.get_throttle().rate == 0 else 0.0)
        processing = GaugeMetricFamily("backout_processing_enabled", "Queue processing is on (1)", labels=["env"])
        processing.add_metric([env], 1.0 if p.get_processing() else 0.0)
        queues = GaugeMetricFamily("backout_queue_messages", "Messages in a queue", labels=["env", "queue", "dlq",
                                                                                           "state"])
        dlqs = {q.dead_letter_queue for q in self.c.manifest.queues.values() if q.dead_letter_queue}
        for q in p.queues():
            a = p.queue_attributes(q)
            is_dlq = "true" if q in dlqs else "false"
            queues.add_metric([env, q, is_dlq, "visible"], float(a.visible))
            queues.add_metric([env, q, is_dlq, "in_flight"], float(a.in_flight))
        yield from (blocked, processing, queues)
