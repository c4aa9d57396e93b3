"""The Controller: the control plane of one environment, as the control API sees it.

It owns the Platform (through the protocol only), and later the deployer,
alarm evaluator and runbooks, and is ticked once a second by the supervisor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backout.control.deployer import Deployer
from backout.control.notify import Notifier
from backout.control.store import Deployment, Store
from backout.manifest import Manifest
from backout.platforms.base import MetricQuery, Platform

log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self, manifest: Manifest, env: str, platform: Platform, state_dir: Path, gateway_url: str = ""
    ) -> None:
        self.manifest = manifest
        self.env = env
        self.platform = platform
        self.state_dir = state_dir
        self.gateway_url = gateway_url
        self.started_at = time.time()
        self.on_shutdown: Callable[[], None] = lambda: None
        self.store = Store.for_env(state_dir)
        self.notifier = Notifier(manifest.environment(env).notify, on_result=self._delivery)
        self.deployer = Deployer(
            manifest,
            env,
            platform,
            self.store,
            self.notifier,
            gateway_url,
            after_rollback=self._after_rollback,
        )
        self._retire: dict[int, float] = {}

    def start(self) -> None:
        """Called once the platform runs: resume or finish whatever a previous supervisor left."""
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
        """Versions no alias routes to are kept warm for the rollback window, then let go."""
        now = time.time()
        live = {v for fn in self.platform.functions() for v in self.platform.get_weights(fn).versions}
        active = self.store.active_deployment(self.env)
        if active is not None:
            live |= {active.target_version, active.stable_version or active.target_version}
        for fn in self.platform.functions():
            for v in [v.version for v in self.platform.versions()]:
                if v in live or not self.platform.is_warm(fn, v):
                    self._retire.pop(v, None)
                    continue
                due = self._retire.setdefault(v, now + self.manifest.environment(self.env).rollback_window)
                if now >= due:
                    self.platform.retire(fn, v)

    def _after_rollback(self, d: Deployment, incident_id: str | None) -> None:
        """After every automatic rollback: run `verify` and keep its result with the incident."""
        report = self.verify()
        self.store.add_event("verify", report.summary(), deployment_id=d.id, incident_id=incident_id,
                             severity="info" if report.ok else "critical", data=report.as_dict())

    # --- runbooks ----------------------------------------------------------------------------------
    def live_alarms(self) -> dict[str, Any]:
        active = self.store.active_deployment(self.env)
        lv = self.deployer.live.get(active.id) if active else None
        return dict(lv.alarms) if lv else {}

    def verify(self) -> Any:
        from backout.runbooks.verify import verify

        return verify(self.manifest, self.env, self.platform, self.store, self.gateway_url, self.live_alarms())

    def smoke(self) -> list[Any]:
        from backout.runbooks.smoke import run_smoke

        return run_smoke(self.manifest, self.env, self.gateway_url)

    def runbook_status(self) -> dict[str, Any]:
        from backout.runbooks.status import status

        return status(self.env, self.manifest.service.name, self.platform, self.store, self.live_alarms(),
                      self.gateway_url)

    def rollback(self, to: int | None, reason: str, who: str) -> dict[str, Any]:
        from backout.runbooks.rollback import manual_rollback

        out = manual_rollback(env=self.env, service=self.manifest.service.name, platform=self.platform,
                              store=self.store, deployer=self.deployer, notifier=self.notifier, reason=reason,
                              who=who, to=to)
        report = self.verify()
        self.store.add_event("verify", report.summary(), deployment_id=out["deployment"],
                             incident_id=out.get("incident"), severity="info" if report.ok else "critical",
                             data=report.as_dict())
        out["verify"] = report.as_dict()
        return out

    def emergency_stop(self, reason: str, who: str) -> dict[str, Any]:
        from backout.runbooks.emergency import emergency_stop

        return emergency_stop(env=self.env, service=self.manifest.service.name, platform=self.platform,
                              store=self.store, deployer=self.deployer, notifier=self.notifier, reason=reason,
                              who=who)

    def resume(self, force: bool, who: str) -> dict[str, Any]:
        from backout.runbooks.emergency import resume

        return resume(env=self.env, spec=self.manifest.environment(self.env), platform=self.platform,
                      store=self.store, report=self.verify(), force=force, who=who)

    def drill(self, fault: str, target_seconds: float, allow_prod: bool, who: str) -> dict[str, Any]:
        from backout.runbooks.drill import drill

        return drill(manifest=self.manifest, env=self.env, platform=self.platform, store=self.store,
                     deployer=self.deployer, notifier=self.notifier, gateway_url=self.gateway_url,
                     send=self.platform.send_message, fault=fault, target_seconds=target_seconds,
                     allow_prod=allow_prod, who=who, verify=self.verify, smoke=self.smoke)

    def _delivery(self, result: Any) -> None:
        if not result.ok:
            self.store.add_event(
                "notify_failed",
                f"notification to {result.target} failed after {result.attempts} attempts: {result.error}",
                severity="warning",
                deployment_id=result.notification.deployment_id,
            )

    # --- read models for the API ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        p = self.platform
        functions = {}
        for fn in p.functions():
            w = p.get_weights(fn)
            functions[fn] = {
                "stable": w.stable,
                "canary": w.canary,
                "canary_weight": w.canary_weight,
                "weights": {str(k): v for k, v in w.versions.items()},
            }
        t = p.get_throttle()
        return {
            "env": self.env,
            "service": self.manifest.service.name,
            "gateway_url": self.gateway_url,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "functions": functions,
            "throttle": {"rate": t.rate, "burst": t.burst, "blocked": t.rate == 0},
            "processing": p.get_processing(),
            "queues": {q: p.queue_stats(q).as_dict() for q in p.queues()},
            "versions": [asdict(v) for v in p.versions()],
        }

    def metric_summary(self, fn: str, version: int | None, since: float) -> dict[str, Any]:
        """Totals and duration percentiles of one function (or one of its versions) since `since`."""
        from backout.platforms.base import NS_LAMBDA

        now = time.time()
        dims = {"FunctionName": fn}
        if version is not None:
            dims["ExecutedVersion"] = str(version)
        period = max(1, int(now - since) + 1)
        out: dict[str, Any] = {"function": fn, "version": version, "window_seconds": round(now - since)}
        for metric, stats in (
            ("Invocations", ("Sum",)),
            ("Errors", ("Sum",)),
            ("Throttles", ("Sum",)),
            ("Duration", ("Average", "p50", "p90", "p99", "Maximum")),
            ("ConcurrentExecutions", ("Maximum",)),
        ):
            for stat in stats:
                q = MetricQuery.of(NS_LAMBDA, metric, dims, since, now + 1, period, stat)
                pts = self.platform.metrics(q)
                value = _combine(pts, stat)
                out[f"{metric}.{stat}" if len(stats) > 1 or stat != "Sum" else metric] = value
        inv = out.get("Invocations") or 0
        out["error_rate_pct"] = round(100.0 * (out.get("Errors") or 0) / inv, 2) if inv else None
        return out


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
