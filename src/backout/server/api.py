"""The control plane's HTTP API (FastAPI), used by the CLI and by dashboards.

Every route needs the environment's bearer token (`state_dir/token`, mode
0600). User errors come back as 400 `{"error": "..."}` so the CLI can print
them on one line and exit 2.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from backout.control.controller import Controller
from backout.errors import OperationFailed, UsageError
from backout.platforms.base import MetricQuery


class PublishBody(BaseModel):
    source: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    description: str = ""


class AliasBody(BaseModel):
    stable: int
    canary: int | None = None
    weight: float = Field(default=0.0, ge=0, le=100)


class InvokeBody(BaseModel):
    version: int | None = None
    payload: Any = Field(default_factory=dict)


class DeployBody(BaseModel):
    source: str | None = None
    strategy: str | None = None
    description: str = ""
    created_by: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    version: int | None = None


class StopBody(BaseModel):
    rollback: bool = True
    reason: str = ""
    who: str = ""


class WhoBody(BaseModel):
    who: str = ""
    reason: str = ""
    force: bool = False
    yes: bool = False


class RollbackBody(BaseModel):
    to: int | None = None
    reason: str = ""
    who: str = ""


class BackupBody(BaseModel):
    label: str = ""


class RepairBody(BaseModel):
    deployment: str
    dry_run: bool = False
    who: str = ""


class DrillBody(BaseModel):
    fault: str = "errors=0.5"
    target_seconds: float = 60.0
    allow_prod: bool = False
    who: str = ""


class ThrottleBody(BaseModel):
    rate: float = Field(ge=0)
    burst: int = Field(ge=0)


class ProcessingBody(BaseModel):
    enabled: bool


class MetricQueryBody(BaseModel):
    namespace: str
    metric: str
    dimensions: dict[str, str] = Field(default_factory=dict)
    start: float
    end: float
    period: int = Field(default=60, ge=1)
    statistic: str = "Sum"


def build_app(controller: Controller, token: str) -> FastAPI:
    app = FastAPI(title="backout control API", version="1", docs_url=None, redoc_url=None)
    expected = f"Bearer {token}".encode()
    platform = controller.platform

    def auth(request: Request) -> None:
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise HTTPException(
                status_code=401, detail="missing or wrong bearer token (see the env's state dir)"
            )

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(OperationFailed)
    async def _failed(_: Request, exc: OperationFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness only (no token): used by `up --detach` to know the supervisor answers."""
        return {"ok": True, "env": controller.env}

    api = [Depends(auth)]

    @app.get("/status", dependencies=api)
    def status() -> dict[str, Any]:
        return controller.runbook_status()

    @app.get("/platform", dependencies=api)
    def platform_view() -> dict[str, Any]:
        return controller.status()

    @app.post("/shutdown", dependencies=api)
    def shutdown() -> dict[str, Any]:
        controller.on_shutdown()
        return {"stopping": True}

    @app.post("/publish", dependencies=api)
    def publish(body: PublishBody) -> dict[str, Any]:
        src = Path(body.source) if body.source else controller.manifest.source_dir
        v = platform.publish(src, body.environment or None, body.description)
        return {"version": v}

    @app.get("/versions", dependencies=api)
    def versions() -> list[dict[str, Any]]:
        return [asdict(v) for v in platform.versions()]

    @app.get("/aliases/{fn}", dependencies=api)
    def get_alias(fn: str) -> dict[str, Any]:
        return asdict(platform.get_weights(fn))

    @app.put("/aliases/{fn}", dependencies=api)
    def set_alias(fn: str, body: AliasBody) -> dict[str, Any]:
        if body.canary is not None:
            platform.warm(fn, body.canary)
        platform.warm(fn, body.stable)
        platform.set_weights(fn, body.stable, body.canary, body.weight if body.canary is not None else 0.0)
        return asdict(platform.get_weights(fn))

    @app.post("/invoke/{fn}", dependencies=api)
    def invoke(fn: str, body: InvokeBody) -> dict[str, Any]:
        return asdict(platform.invoke(fn, body.version, body.payload))

    @app.get("/queues", dependencies=api)
    def queues() -> list[dict[str, Any]]:
        return [platform.queue_stats(q).as_dict() for q in platform.queues()]

    @app.get("/queues/{name}", dependencies=api)
    def queue(name: str) -> dict[str, Any]:
        return platform.queue_stats(name).as_dict()

    @app.post("/queues/{name}/redrive", dependencies=api)
    def redrive(name: str) -> dict[str, Any]:
        return {"moved": platform.redrive(name)}

    @app.post("/throttle", dependencies=api)
    def throttle(body: ThrottleBody) -> dict[str, Any]:
        platform.set_throttle(body.rate, body.burst)
        return asdict(platform.get_throttle())

    @app.post("/processing", dependencies=api)
    def processing(body: ProcessingBody) -> dict[str, Any]:
        platform.set_processing(body.enabled)
        return {"enabled": platform.get_processing()}

    @app.post("/metrics/query", dependencies=api)
    def metrics_query(body: MetricQueryBody) -> list[dict[str, Any]]:
        q = MetricQuery.of(
            body.namespace, body.metric, body.dimensions, body.start, body.end, body.period, body.statistic
        )
        return [asdict(p) for p in platform.metrics(q)]

    @app.get("/metrics/summary/{fn}", dependencies=api)
    def metric_summary(fn: str, since: float, version: int | None = None) -> dict[str, Any]:
        if fn not in controller.manifest.functions:
            raise UsageError(f"no function named {fn!r}")
        return controller.metric_summary(fn, version, time.time() - since)

    @app.get("/metrics", dependencies=api, response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        store = getattr(platform, "metrics_store", None)
        if store is None:
            raise UsageError("this platform exports metrics through CloudWatch, not /metrics")
        return PlainTextResponse(store.prometheus(), media_type="text/plain; version=0.0.4")

    @app.get("/health", dependencies=api)
    def health() -> dict[str, Any]:
        h = platform.health()
        return {"ok": h.ok, "checks": [asdict(c) for c in h.checks]}

    deployer = controller.deployer
    store = controller.store

    def deployment_view(d: Any, after_event: int | None = None) -> dict[str, Any]:
        lv = deployer.live.get(d.id)
        inc = store.incident_for_deployment(d.id)
        return {
            "deployment": asdict(d),
            "alarms": {k: e.as_dict() for k, e in (lv.alarms.items() if lv else [])},
            "events": [asdict(e) for e in store.events(deployment_id=d.id, after_id=after_event)],
            "incident": asdict(inc) if inc else None,
            "now": time.time(),
        }

    @app.post("/deployments", dependencies=api)
    def deploy(body: DeployBody) -> dict[str, Any]:
        d = deployer.create(
            Path(body.source) if body.source else None,
            body.strategy,
            body.description,
            body.created_by,
            body.environment or None,
            body.version,
        )
        return deployment_view(d)

    @app.get("/deployments", dependencies=api)
    def deployments(limit: int = 50) -> list[dict[str, Any]]:
        return [asdict(d) for d in store.deployments(controller.env, limit=limit)]

    @app.get("/deployments/{deployment_id}", dependencies=api)
    def deployment(deployment_id: str, after_event: int | None = None) -> dict[str, Any]:
        return deployment_view(store.get(deployment_id), after_event)

    @app.post("/deployments/{deployment_id}/approve", dependencies=api)
    def approve(deployment_id: str, body: StopBody) -> dict[str, Any]:
        return deployment_view(deployer.approve(deployment_id, body.who))

    @app.post("/deployments/{deployment_id}/stop", dependencies=api)
    def stop(deployment_id: str, body: StopBody) -> dict[str, Any]:
        return deployment_view(deployer.stop(deployment_id, body.rollback, body.reason, body.who))

    from backout.runbooks import backups, repair

    @app.post("/verify", dependencies=api)
    def verify() -> dict[str, Any]:
        return controller.verify().as_dict()

    @app.post("/rollback", dependencies=api)
    def rollback(body: RollbackBody) -> dict[str, Any]:
        return controller.rollback(body.to, body.reason, body.who)

    @app.post("/emergency-stop", dependencies=api)
    def emergency(body: WhoBody) -> dict[str, Any]:
        return controller.emergency_stop(body.reason, body.who)

    @app.post("/resume", dependencies=api)
    def resume(body: WhoBody) -> dict[str, Any]:
        return controller.resume(body.force, body.who)

    @app.get("/backups", dependencies=api)
    def backup_list() -> list[dict[str, Any]]:
        return backups.list_backups(platform, store, controller.env)

    @app.post("/backups", dependencies=api)
    def backup_create(body: BackupBody) -> dict[str, Any]:
        return backups.create(platform, store, controller.env, body.label)

    @app.post("/backups/{backup_id}/restore", dependencies=api)
    def backup_restore(backup_id: str, body: WhoBody) -> dict[str, Any]:
        return backups.restore(controller.manifest, platform, store, controller.env, backup_id, body.yes, body.who)

    @app.post("/repair", dependencies=api)
    def repair_jobs(body: RepairBody) -> dict[str, Any]:
        return repair.repair(controller.manifest, platform, store, controller.env, body.deployment, body.dry_run,
                             body.who)

    @app.post("/drills", dependencies=api)
    def drill(body: DrillBody) -> dict[str, Any]:
        return controller.drill(body.fault, body.target_seconds, body.allow_prod, body.who)

    @app.get("/drills", dependencies=api)
    def drills() -> list[dict[str, Any]]:
        return [asdict(d) for d in store.drills(controller.env)]

    return app
