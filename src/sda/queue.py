"""Sending a job to the processing queue: the local platform's queue store, or SQS.

`PROCESSING_QUEUE_URL` set → SQS (`send_message`); otherwise the local
platform's SQLite queue store in `BACKOUT_PLATFORM_DB`, queue `PROCESSING_QUEUE`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

from sda.config import Settings
from sda.errors import QueueUnavailable
from sda.storage.base import Check


class JobQueue(Protocol):
    def send(self, body: str) -> str:
        """Enqueue one message; returns its message id. `QueueUnavailable` on failure."""

    def check(self) -> Check: ...


class LocalQueue:
    """The local platform's queue store (`backout.platforms.local.queues.QueueStore`)."""

    def __init__(self, platform_db: Path | None, queue_name: str) -> None:
        self.platform_db = platform_db
        self.queue_name = queue_name
        self._store: Any = None

    def _require_db(self) -> Path:
        if self.platform_db is None:
            raise QueueUnavailable("BACKOUT_PLATFORM_DB is not set (the local queue store is unknown)")
        if not self.platform_db.is_file():
            raise QueueUnavailable(f"queue database {self.platform_db} does not exist")
        return self.platform_db

    def _queue_store(self) -> Any:
        db = self._require_db()
        if self._store is None:
            from backout.platforms.local.queues import QueueStore

            self._store = QueueStore(db)
        return self._store

    def send(self, body: str) -> str:
        try:
            return str(self._queue_store().send(self.queue_name, body))
        except QueueUnavailable:
            raise
        except Exception as exc:  # the store is another package: any failure is a queue fault
            raise QueueUnavailable(f"cannot send to queue {self.queue_name!r}: {exc}") from exc

    def check(self) -> Check:
        t0 = time.perf_counter()
        try:
            # existence first: a health check must never create the platform's database
            attrs = self._queue_store().attributes(self.queue_name)
            ok, detail = True, f"{self.queue_name} in {self.platform_db}"
            if isinstance(attrs, dict) and attrs.get("dead_letter_queue"):
                detail += f" (DLQ {attrs['dead_letter_queue']})"
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            ok, detail = False, f"queue {self.queue_name!r}: {exc}"
        return Check("queue", ok, detail, (time.perf_counter() - t0) * 1000)


class SqsQueue:
    def __init__(self, queue_url: str, session: Any | None = None) -> None:
        import boto3

        self.queue_url = queue_url
        self._sqs = (session or boto3.session.Session()).client("sqs")

    def send(self, body: str) -> str:
        try:
            return self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)["MessageId"]
        except Exception as exc:  # botocore errors: the queue is unreachable or refuses
            raise QueueUnavailable(f"cannot send to {self.queue_url}: {exc}") from exc

    def check(self) -> Check:
        t0 = time.perf_counter()
        try:
            attrs = self._sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            ok, detail = True, f"{self.queue_url} ({attrs.get('ApproximateNumberOfMessages', '?')} visible)"
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"{self.queue_url}: {exc}"
        return Check("queue", ok, detail, (time.perf_counter() - t0) * 1000)


_cache: dict[tuple[str, ...], JobQueue] = {}
_lock = threading.Lock()


def get_queue(settings: Settings) -> JobQueue:
    if settings.processing_queue_url:
        key: tuple[str, ...] = ("sqs", settings.processing_queue_url)
    else:
        key = ("local", str(settings.platform_db), settings.processing_queue)
    with _lock:
        queue = _cache.get(key)
        if queue is None:
            if settings.processing_queue_url:
                queue = SqsQueue(settings.processing_queue_url)
            else:
                queue = LocalQueue(settings.platform_db, settings.processing_queue)
            _cache[key] = queue
    return queue


def reset_cache() -> None:
    with _lock:
        _cache.clear()
