"""The storage interface: one jobs table and one file store per environment.

Two implementations (`local`: SQLite + a directory; `aws`: DynamoDB + S3)
behave the same, so the handlers and the data-repair runbook never branch on
the mode. Every method that can fail because a dependency is down raises
`StorageUnavailable` (transient: the worker's message is retried).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sda.errors import InvalidFileName

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Check:
    """One dependency check of `GET /health/detailed`."""

    name: str
    ok: bool
    detail: str
    latency_ms: float


def check_file_name(name: str) -> str:
    """A job file name is one to three plain segments (`drawing.pdf`, `checkpoints/x.json`).

    Anything else (absolute, `..`, backslashes, empty segments) is refused, so no
    caller-provided text can make a key or path leave the job's folder."""
    parts = name.split("/")
    if not 1 <= len(parts) <= 3 or any(p in (".", "..") or not _SEGMENT.match(p) for p in parts):
        raise InvalidFileName(f"invalid job file name {name!r}")
    return name


def job_prefix(job: dict[str, Any]) -> str:
    """`{client}/{project}/{job_id}`: slugs, so the prefix itself is always safe."""
    return f"{job['client_slug']}/{job['project_slug']}/{job['job_id']}"


@runtime_checkable
class Storage(Protocol):
    mode: str

    def create_job(self, job: dict[str, Any]) -> None:
        """Insert a new job; `JobExists` when its id is taken (ids are unique across processes)."""

    def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    def update_job(
        self, job_id: str, changes: dict[str, Any], *, only_if_status: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """Merge top-level fields atomically and return the new record; sets `updated_at`.
        `JobNotFound` if absent; `StatusConflict` if `only_if_status` is given and not matched."""

    def put_job(self, job: dict[str, Any]) -> None:
        """Write a record wholesale (data repair); inserts or replaces."""

    def list_jobs(
        self, *, status: str | None = None, client_name: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Newest first."""

    def jobs_processed_by(self, version: str | int) -> list[dict[str, Any]]:
        """Jobs whose `processed_by.version` is `version` (what a bad version touched)."""

    def put_file(self, job: dict[str, Any], name: str, data: bytes, content_type: str | None = None) -> str:
        """Store bytes under the job's folder; returns the key (relative to the store)."""

    def get_file(self, job: dict[str, Any], name: str) -> bytes:
        """`FileMissing` when absent."""

    def has_file(self, job: dict[str, Any], name: str) -> bool: ...

    def check(self) -> list[Check]:
        """Health of the `table` and the `storage` (file store), each with its latency."""


@runtime_checkable
class SideCopy(Protocol):
    """The jobs table and file store as a backup holds them, restored beside the live ones (a
    snapshot directory locally, a side table and the bucket's object versions on AWS). Read-only:
    the data-repair function copies what it needs from here into the live `Storage`."""

    def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job of the copy."""

    def job_files(self, job: dict[str, Any]) -> dict[str, bytes]:
        """Every file under the job's folder as the copy holds it (outputs and checkpoints), by its
        name relative to the folder (`schedule.xlsx`, `checkpoints/x.json`)."""
