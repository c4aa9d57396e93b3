"""The Controller: the control plane of one environment, as the server's API sees it.

It wires the store, the notifier, the deployer (with its Traffic) and the runbook context over one
Platform, reached through the protocols only; the process that hosts it ticks it once a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backout.control.deployer import Deployer
from backout.control.notify import Notifier
from backout.control.shared_store import open_store
from backout.control.store import Deployment
from backout.manifest import Manifest
from backout.platforms.base import LIVE_ALIAS, NS_LAMBDA, Capacity, MetricQuery, Platform, period_at_least
from backout.runbooks import backups, drill, emergency, emergency_drill, repair, rollback, smoke, status, verify
from backout.runbooks.context import RunbookContext

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, manifest: Manifest, env: str, platform: Platform, state_dir: Path) -> None:
        self.manifest = manifest
        self.env = env
        self.platform = platform
        self.state_dir = state_dir
        self.started_at = time.time()
        self.on_shutdown: Callable[[], None] = lambda: None
        self.store = open_store(manifest, env, platform, state_dir)
        self.notifier = Notifier(manifest.environment(env).notify, on_result=self._delivery,
                                 contacts=manifest.contact_lines(env))
        self.deployer = Deployer(manifest, env, platform, self.store, self.notifier,
                                 after_rollback=self._after_rollback)
        self.ctx = RunbookContext(manifest, env, platform, self.store, self.deployer, self.notifier,
                                  live_alarms=self.live_alarms)
        self._retire: dict[tuple[str, str], float] = {}

    def start(self) -> None:
        """Called once the platform runs: put the switches back where the operator left them, then
        resume or finish whatever a previous process left."""
        for what in self.deployer.traffic.reconcile_switches():
            self.store.add_event("reconciled", f"restart: {what} (as stored)", severity="warning")
        self.deployer.resume()

    def close(self) -> None:
        """Called before the platform stops."""
        self.deployer.close()
        self.notifier.close()

    def tick(self) -> None:
        # Deployments need no tick: create() starts each runner and resume() restarts them after a
        # restart. (A tick that spawned runners for any active record raced the manual rollback's
        # own short-lived record.)
        self._retire_old_versions()

    def _retire_old_versions(self) -> None:
        """Versions no alias routes to are kept warm for the rollback window, then let go (only on a
        platform with the optional Capacity protocol)."""
        p = self.platform
        if not isinstance(p, Capacity):
            return
        now = time.time()
        active = self.store.active_deployment(self.env)
        window = self.manifest.environment(self.env).rollback_window
        for fn in p.functions():
            live = set(p.get_weights(fn).versions)
            if active is not None:
                live |= {active.target_versions.get(fn), active.stable_versions.get(fn)} - {None}  # type: ignore[arg-type]
            for r in p.releases():
                v = r.version(fn)
                key = (fn, v)
                if v in live or not p.is_warm(fn, v):
                    self._retire.pop(key, None)
                    continue
                due = self._retire.setdefault(key, now + window)
                if now >= due:
                    p.retire(fn, v)

    def _after_rollback(self, d: Deployment, incident_id: str | None) -> None:
        """After every automatic rollback: run `verify` and keep its result with the incident."""
        report = self.verify()
        self.store.add_event("verify", report.summary(), deployment_id=d.id, incident_id=incident_id,
                             severity="info" if report.ok else "critical", data=report.as_dict())

    def live_alarms(self) -> dict[str, Any]:
        active = self.store.active_deployment(self.env)
        lv = self.deployer.live.get(active.id) if active else None
        return dict(lv.alarms) if lv else {}

    # --- runbooks ----------------------------------------------------------------------------------
    def verify(self) -> verify.VerifyReport:
        return verify.verify(self.ctx)

    def smoke(self) -> list[Any]:
        return smoke.run_smoke(self.ctx)

    def runbook_status(self) -> dict[str, Any]:
        return status.status(self.ctx)

    def rollback(self, to: int | None, reason: str, who: str) -> dict[str, Any]:
        return rollback.manual_rollback(self.ctx, reason, who, to)

    def emergency_stop(self, reason: str, who: str, keep_api: bool = False, rollback: bool = True) -> dict[str, Any]:
        return emergency.emergency_stop(self.ctx, reason, who, keep_api=keep_api, rollback=rollback)

    def resume(self, force: bool, who: str) -> dict[str, Any]:
        return emergency.resume(self.ctx, self.verify(), force, who)

    def drill(self, fault: str, target_seconds: float, allow_prod: bool, who: str,
              kind: str = "rollback") -> dict[str, Any]:
        if kind == "emergency":
            return emergency_drill.emergency_drill(self.ctx, allow_prod, who)
        return drill.drill(self.ctx, fault, target_seconds, allow_prod, who)

    def backups(self) -> list[dict[str, Any]]:
        return backups.list_backups(self.ctx)

    def backup(self, label: str) -> dict[str, Any]:
        return backups.create(self.ctx, label)

    def restore(self, backup_id: str, yes: bool, who: str) -> dict[str, Any]:
        return backups.restore(self.ctx, backup_id, yes, who)

    def repair(self, deployment_id: str, dry_run: bool, who: str) -> dict[str, Any]:
        return repair.repair(self.ctx, deployment_id, dry_run, who)

    def _delivery(self, result: Any) -> None:
        if not result.ok:
            self.store.add_event(
                "notify_failed",
                f"notification to {result.target} failed after {result.attempts} attempts: {result.error}",
                severity="warning",
                deployment_id=result.notification.deployment_id,
            )

    # --- read models for the API ------------------------------------------------------------
    def platform_view(self) -> dict[str, Any]:
        p = self.platform
        functions = {}
        for fn in p.functions():
            w = p.get_weights(fn)
            functions[fn] = {
                "stable": w.stable,
                "canary": w.canary,
                "canary_weight": w.canary_weight,
                "weights": dict(w.versions),
            }
        t = p.get_throttle()
        return {
            "env": self.env,
            "service": self.manifest.service.name,
            "gateway_url": p.endpoint(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "functions": functions,
            "throttle": {"rate": t.rate, "burst": t.burst, "blocked": t.rate == 0},
            "processing": p.get_processing(),
            "queues": status.queue_view(self.manifest, p),
            "releases": [r.as_dict() for r in p.releases()],
            "stale_release": status.stale_release(self.manifest, self.deployer.traffic.live_release()),
        }

    def metric_summary(self, fn: str, version: str | None, since: float) -> dict[str, Any]:
        """Totals and duration percentiles of one function's traffic (or one version's) since `since`, and
        the same per version that served any of it: invocations through the live alias only, so backout's
        own probes (sent to a version directly) are not counted. One aligned period covers the window
        (CloudWatch's semantics); two batched calls."""
        now = time.time()
        period = period_at_least(now - since)
        start = (int(since) // period) * period
        alias = {"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}"}
        out: dict[str, Any] = {"function": fn, "version": version, "window_seconds": round(now - start),
                               "units": dict(SUMMARY_UNITS)}
        if version is not None:
            out.update(self._summary({**alias, "ExecutedVersion": str(version)}, start, now, period))
            return out
        candidates = list(dict.fromkeys(r.version(fn) for r in reversed(self.platform.releases())
                                        if fn in r.versions))[:MAX_SUMMARY_VERSIONS]
        served = self.platform.metrics([
            MetricQuery.of(NS_LAMBDA, "Invocations", {**alias, "ExecutedVersion": v}, start, now + 1, period, "Sum")
            for v in candidates])
        out.update(self._summary(alias, start, now, period))
        out["versions"] = {v: self._summary({**alias, "ExecutedVersion": v}, start, now, period)
                           for v, pts in sorted(zip(candidates, served, strict=True), key=lambda x: int(x[0])
                                                if x[0].isdigit() else 0) if sum(p.value for p in pts)}
        return out

    def _summary(self, dims: dict[str, str], start: int, now: float, period: int) -> dict[str, Any]:
        wanted = [("Invocations", "Sum"), ("Errors", "Sum"), ("Throttles", "Sum"), ("Duration", "Average"),
                  ("Duration", "p50"), ("Duration", "p90"), ("Duration", "p99"), ("Duration", "Maximum"),
                  ("ConcurrentExecutions", "Maximum")]
        series = self.platform.metrics([MetricQuery.of(NS_LAMBDA, m, dims, start, now + 1, period, stat)
                                        for m, stat in wanted])
        out: dict[str, Any] = {}
        for (metric, stat), pts in zip(wanted, series, strict=True):
            key = metric if stat == "Sum" else f"{metric}.{stat}"
            out[key] = _combine(pts, stat)
        inv = out.get("Invocations") or 0
        out["error_rate_pct"] = round(100.0 * (out.get("Errors") or 0) / inv, 2) if inv else None
        return out


SUMMARY_UNITS = {"Invocations": "count", "Errors": "count", "Throttles": "count", "Duration.Average": "ms",
                 "Duration.p50": "ms", "Duration.p90": "ms", "Duration.p99": "ms", "Duration.Maximum": "ms",
                 "ConcurrentExecutions.Maximum": "count", "error_rate_pct": "%"}
MAX_SUMMARY_VERSIONS = 20  # the newest versions looked at for a per-version breakdown


def _combine(points: list[Any], stat: str) -> float | None:
    if not points:
        return None
    if stat == "Sum":
        return sum(p.value for p in points)
    if stat == "Maximum":
        return max(p.value for p in points)
    if stat == "Average":
        n = sum(p.sample_count for p in points)
        return sum(p.value * p.sample_count for p in points) / n if n else None
    return max(p.value for p in points)
