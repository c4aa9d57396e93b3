"""`GET /health` and `GET /health/detailed`: is this version answering, and can it reach what it needs."""

from __future__ import annotations

import re
import time
from typing import Any

from sda import __version__
from sda.config import ConfigError, Settings
from sda.jobs import iso
from sda.storage.base import Check

# an absolute file path (not the path of a URL: no word character, ':' or '/' just before it)
_ABS_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s'\"()\[\],:;/]+/)*([^\s'\"()\[\],:;/]*)")


def without_paths(text: str) -> str:
    """`/srv/x/data/jobs.db (3 jobs)` → `jobs.db (3 jobs)`: an unauthenticated health check must not
    tell a caller where the service keeps its data (the log has the full detail)."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "/", text)


def basic(settings: Settings) -> dict[str, Any]:
    return {
        "status": "healthy",
        "version": settings.function_version,
        "service_version": __version__,
        "environment": settings.environment,
        "timestamp": iso(),
    }


def detailed(settings: Settings) -> tuple[int, dict[str, Any]]:
    """(200 | 503, body): the storage, table and queue checks with their latency; failing ones named."""
    from sda.queue import get_queue
    from sda.storage import get_storage

    checks: list[Check] = []
    t0 = time.perf_counter()
    try:
        checks += get_storage(settings).check()
    except (ConfigError, Exception) as exc:  # noqa: BLE001 - a health check reports, never raises
        ms = (time.perf_counter() - t0) * 1000
        checks += [Check("storage", False, str(exc), ms), Check("table", False, str(exc), ms)]
    t0 = time.perf_counter()
    try:
        checks.append(get_queue(settings).check())
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("queue", False, str(exc), (time.perf_counter() - t0) * 1000))
    failing = [c.name for c in checks if not c.ok]
    body = {
        **basic(settings),
        "status": "unhealthy" if failing else "healthy",
        "storage_mode": settings.storage_mode,
        "checks": {
            c.name: {"ok": c.ok, "detail": without_paths(c.detail), "latency_ms": round(c.latency_ms, 2)}
            for c in checks
        },
        "failing": failing,
    }
    if failing:
        body["error"] = "unhealthy dependencies: " + ", ".join(failing)
    return (503 if failing else 200), body
