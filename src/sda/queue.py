"""Sending a job to the processing queue: SQS through boto3, on AWS and on the local platform alike.

`PROCESSING_QUEUE_URL` names the queue. On AWS the stack sets it; the local platform sets it too
(one `<NAME>_QUEUE_URL` per queue of the manifest) together with `AWS_ENDPOINT_URL_SQS`, which boto3
reads, so the same `send_message` reaches the local platform's SQS-compatible endpoint.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from sda.config import Settings
from sda.errors import QueueUnavailable
from sda.storage.base import Check


class JobQueue(Protocol):
    def send(self, body: str) -> str:
        """Enqueue one message; returns its message id. `QueueUnavailable` on failure."""

    def check(self) -> Check: ...


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
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"]
            )["Attributes"]
            ok, detail = True, f"{self.queue_url} ({attrs.get('ApproximateNumberOfMessages', '?')} visible)"
            if "RedrivePolicy" in attrs:
                detail += " with a DLQ"
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            ok, detail = False, f"{self.queue_url}: {exc}"
        return Check("queue", ok, detail, (time.perf_counter() - t0) * 1000)


_cache: dict[str, JobQueue] = {}
_lock = threading.Lock()


def get_queue(settings: Settings) -> JobQueue:
    """The processing queue's client (one per URL: a boto3 client is thread-safe and slow to build)."""
    url = settings.processing_queue_url
    if not url:
        raise QueueUnavailable("PROCESSING_QUEUE_URL is not set (the platform names the processing queue)")
    with _lock:
        queue = _cache.get(url)
        if queue is None:
            queue = _cache[url] = SqsQueue(url)
    return queue


def reset_cache() -> None:
    with _lock:
        _cache.clear()
