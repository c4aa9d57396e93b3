"""Platform routes: releases, aliases (operator overrides go through Traffic), invoke, queues, switches."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backout.errors import UsageError
from backout.platforms.base import FunctionConfig
from backout.runbooks.release_diff import diff_releases
from backout.runbooks.status import queue_view
from backout.server.controller import Controller


class FunctionConfigBody(BaseModel):
    """One function's configuration as the deploying operator's `backout.toml` states it (the
    supervisor's own copy of the manifest may be older)."""

    handler: str
    timeout: float = Field(ge=0)
    memory: int = Field(ge=64, le=10240)
    environment: dict[str, str] = Field(default_factory=dict)


def configuration(bodies: dict[str, FunctionConfigBody] | None) -> dict[str, FunctionConfig] | None:
    if bodies is None:
        return None
    return {fn: FunctionConfig(b.handler, b.timeout, b.memory, dict(b.environment)) for fn, b in bodies.items()}


class PublishBody(BaseModel):
    source: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    configuration: dict[str, FunctionConfigBody] | None = None


class AliasBody(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)  # versions are strings, as Lambda's; 7 means "7"

    stable: str
    canary: str | None = None
    weight: float = Field(default=0.0, ge=0, le=100)
    who: str = ""


class InvokeBody(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    version: str | None = None
    payload: Any = Field(default_factory=dict)


class PurgeBody(BaseModel):
    yes: bool = False
    who: str = ""


class ThrottleBody(BaseModel):
    rate: float = Field(ge=0)
    burst: int = Field(ge=0)
    who: str = ""
    reason: str = ""


class ProcessingBody(BaseModel):
    enabled: bool
    who: str = ""
    reason: str = ""


def router(c: Controller) -> APIRouter:
    r = APIRouter()
    p = c.platform
    traffic = c.deployer.traffic

    @r.get("/platform")
    def platform_view() -> dict[str, Any]:
        return c.platform_view()

    @r.post("/shutdown")
    def shutdown() -> dict[str, Any]:
        c.on_shutdown()
        return {"stopping": True}

    @r.post("/publish")
    def publish(body: PublishBody) -> dict[str, Any]:
        src = Path(body.source) if body.source else c.manifest.source_dir
        return p.publish(src, body.environment or None, body.description, configuration(body.configuration)).as_dict()

    @r.get("/releases")
    def releases() -> list[dict[str, Any]]:
        return [x.as_dict() for x in p.releases()]

    @r.get("/releases/diff")
    def releases_diff(a: int, b: int) -> dict[str, Any]:
        return diff_releases(p, a, b).as_dict()

    @r.get("/aliases/{fn}")
    def get_alias(fn: str) -> dict[str, Any]:
        _known(c, fn)
        return asdict(p.get_weights(fn))

    @r.put("/aliases/{fn}")
    def set_alias(fn: str, body: AliasBody) -> dict[str, Any]:
        _known(c, fn)
        traffic.override(fn, body.stable, body.canary, body.weight, body.who)
        return asdict(p.get_weights(fn))

    @r.post("/invoke/{fn}")
    def invoke(fn: str, body: InvokeBody) -> dict[str, Any]:
        _known(c, fn)
        return asdict(p.invoke(fn, body.version, body.payload))

    @r.get("/queues")
    def queues() -> list[dict[str, Any]]:
        return list(queue_view(c.manifest, p).values())

    @r.get("/queues/{name}")
    def queue(name: str) -> dict[str, Any]:
        view = queue_view(c.manifest, p)
        if name not in view:
            raise UsageError(f"no queue named {name!r} (known: {', '.join(view)})")
        return view[name]

    @r.post("/queues/{name}/redrive")
    def redrive(name: str) -> dict[str, Any]:
        return p.start_redrive(name).as_dict()

    @r.get("/queues/{name}/messages")
    def peek(name: str, limit: int = 10) -> list[dict[str, Any]]:
        return [m.as_dict() for m in p.peek_messages(name, limit)]

    @r.post("/queues/{name}/purge")
    def purge(name: str, body: PurgeBody) -> dict[str, Any]:
        if not body.yes:
            raise UsageError(f"purging {name} deletes every message in it: confirm with --yes")
        deleted = p.purge_queue(name)
        c.store.add_event("queue_purged", f"{body.who or 'someone'} purged {name}: {deleted} message(s) deleted",
                          severity="warning", data={"queue": name, "deleted": deleted, "who": body.who})
        return {"queue": name, "deleted": deleted}

    @r.get("/queues/{name}/redrives")
    def redrives(name: str) -> list[dict[str, Any]]:
        return [t.as_dict() for t in p.redrive_status(name)]

    @r.post("/throttle")
    def throttle(body: ThrottleBody) -> dict[str, Any]:
        return asdict(traffic.set_throttle(body.rate, body.burst, body.who, body.reason))

    @r.post("/processing")
    def processing(body: ProcessingBody) -> dict[str, Any]:
        traffic.set_processing(body.enabled, body.who, body.reason)
        return {"enabled": p.get_processing()}

    @r.get("/health")
    def health() -> dict[str, Any]:
        checks = p.describe()
        return {"ok": all(x.ok for x in checks), "checks": [asdict(x) for x in checks]}

    return r


def _known(c: Controller, fn: str) -> None:
    if fn not in c.manifest.functions:
        raise UsageError(f"no function named {fn!r} (known: {', '.join(c.manifest.functions)})")
