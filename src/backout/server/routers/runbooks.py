"""Runbook routes: status, verify, rollback, emergency stop/resume, backups, repair, drills."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from backout.server.controller import Controller


class WhoBody(BaseModel):
    who: str = ""
    reason: str = ""
    force: bool = False
    yes: bool = False


class EmergencyBody(BaseModel):
    reason: str = ""
    who: str = ""
    keep_api: bool = False  # pause processing only; the API stays open
    rollback: bool = True  # False: whatever is live stays live


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
    kind: Literal["rollback", "emergency"] = "rollback"
    fault: str = "errors=0.5"
    target_seconds: float = 60.0
    allow_prod: bool = False
    who: str = ""


def router(c: Controller) -> APIRouter:
    r = APIRouter()

    @r.get("/status")
    def status() -> dict[str, Any]:
        return c.runbook_status()

    @r.post("/verify")
    def verify() -> dict[str, Any]:
        return c.verify().as_dict()

    @r.post("/rollback")
    def rollback(body: RollbackBody) -> dict[str, Any]:
        return c.rollback(body.to, body.reason, body.who)

    @r.post("/emergency-stop")
    def emergency(body: EmergencyBody) -> dict[str, Any]:
        return c.emergency_stop(body.reason, body.who, keep_api=body.keep_api, rollback=body.rollback)

    @r.post("/resume")
    def resume(body: WhoBody) -> dict[str, Any]:
        return c.resume(body.force, body.who)

    @r.get("/backups")
    def backup_list() -> list[dict[str, Any]]:
        return c.backups()

    @r.post("/backups")
    def backup_create(body: BackupBody) -> dict[str, Any]:
        return c.backup(body.label)

    @r.post("/backups/{backup_id}/restore")
    def backup_restore(backup_id: str, body: WhoBody) -> dict[str, Any]:
        return c.restore(backup_id, body.yes, body.who)

    @r.post("/repair")
    def repair_jobs(body: RepairBody) -> dict[str, Any]:
        return c.repair(body.deployment, body.dry_run, body.who)

    @r.post("/drills")
    def drill(body: DrillBody) -> dict[str, Any]:
        return c.drill(body.fault, body.target_seconds, body.allow_prod, body.who, kind=body.kind)

    @r.get("/drills")
    def drills() -> list[dict[str, Any]]:
        return [{**asdict(d), "kind": d.kind} for d in c.store.drills(c.env)]

    return r
