"""Metric routes: raw CloudWatch-style queries (batched), a function's summary, Prometheus text (the control
plane's families, `server.metrics`, and the platform's own figures)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from backout.errors import UsageError
from backout.platforms.base import MetricQuery
from backout.server import metrics
from backout.server.controller import Controller


class MetricQueryBody(BaseModel):
    namespace: str
    metric: str
    dimensions: dict[str, str] = Field(default_factory=dict)
    start: float
    end: float
    period: int = Field(default=60, ge=1)
    statistic: str = "Sum"


def router(c: Controller) -> APIRouter:
    r = APIRouter()
    p = c.platform
    registry = metrics.registry(c)  # one per app: tests build many apps in one process

    @r.post("/metrics/query")
    def metrics_query(body: MetricQueryBody | list[MetricQueryBody]) -> Any:
        bodies = body if isinstance(body, list) else [body]
        try:
            qs = [MetricQuery.of(b.namespace, b.metric, b.dimensions, b.start, b.end, b.period, b.statistic)
                  for b in bodies]
        except ValueError as e:
            raise UsageError(str(e)) from None
        out = [[asdict(pt) for pt in series] for series in p.metrics(qs)]
        return out if isinstance(body, list) else out[0]

    @r.get("/metrics/summary/{fn}")
    def metric_summary(fn: str, since: float, version: str | None = None) -> dict[str, Any]:
        if fn not in c.manifest.functions:
            raise UsageError(f"no function named {fn!r}")
        return c.metric_summary(fn, version, time.time() - since)

    @r.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(registry), media_type=metrics.EXPOSITION)

    return r
