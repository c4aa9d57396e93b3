"""Deployment routes: create, list, show (with live alarms, events and, on a shared store, the lease),
follow (take over once the driver's lease expired), approve, stop."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from backout.server.controller import Controller
from backout.server.routers.platform import FunctionConfigBody, configuration


class DeployBody(BaseModel):
    source: str | None = None
    strategy: str | None = None
    description: str = ""
    created_by: str = ""
    environment: dict[str, str] = Field(default_factory=dict)
    release: int | None = None
    configuration: dict[str, FunctionConfigBody] | None = None


class StopBody(BaseModel):
    rollback: bool = True
    reason: str = ""
    who: str = ""


def router(c: Controller) -> APIRouter:
    r = APIRouter()
    deployer, store = c.deployer, c.store

    def view(d: Any, after_event: int | None = None) -> dict[str, Any]:
        lv = deployer.live.get(d.id)
        inc = store.incident_for_deployment(d.id)
        lease = deployer.leases.lease(d.id) if deployer.leases is not None else None
        return {
            "deployment": {**asdict(d), "stable": d.stable, "target": d.target},
            "lease": None if lease is None else {**asdict(lease), "here": lease.holder == deployer.leases.holder},
            "alarms": {k: e.as_dict() for k, e in (lv.alarms.items() if lv else [])},
            "events": [asdict(e) for e in store.events(deployment_id=d.id, after_id=after_event)],
            "incident": asdict(inc) if inc else None,
            "now": time.time(),
        }

    @r.post("/deployments")
    def deploy(body: DeployBody) -> dict[str, Any]:
        d = deployer.create(
            Path(body.source) if body.source else None,
            body.strategy,
            body.description,
            body.created_by,
            body.environment or None,
            body.release,
            configuration=configuration(body.configuration),
        )
        return view(d)

    @r.get("/deployments")
    def deployments(limit: int = 50) -> list[dict[str, Any]]:
        return [{**asdict(d), "stable": d.stable, "target": d.target} for d in store.deployments(c.env, limit=limit)]

    @r.get("/deployments/{deployment_id}")
    def deployment(deployment_id: str, after_event: int | None = None) -> dict[str, Any]:
        return view(store.get(deployment_id), after_event)

    @r.post("/deployments/{deployment_id}/follow")
    def follow(deployment_id: str) -> dict[str, Any]:
        """Follow from this process: on a shared store it takes the deployment over once the lease expired."""
        return view(deployer.follow(deployment_id))

    @r.post("/deployments/{deployment_id}/approve")
    def approve(deployment_id: str, body: StopBody) -> dict[str, Any]:
        return view(deployer.approve(deployment_id, body.who))

    @r.post("/deployments/{deployment_id}/stop")
    def stop(deployment_id: str, body: StopBody) -> dict[str, Any]:
        return view(deployer.stop(deployment_id, body.rollback, body.reason, body.who))

    return r
