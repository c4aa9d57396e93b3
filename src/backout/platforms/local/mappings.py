"""Event source mappings: poll a queue and invoke a function with SQS batches, as Lambda does.

The one rule: a message is deleted only after the function succeeded on it. A failed
batch stays in the queue and comes back after the retry delay (counting a receive, so
poison messages reach the DLQ); a throttled or paused batch is *released* (its receive
undone), so neither a throttle nor an operator's pause ever dead-letters a message.

With `route` (the live alias's choice of version), the version is chosen at the receive and
recorded with the messages, and the batch goes to exactly that version: a message that ends in
the DLQ is attributed to the version that received it last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from backout.platforms.base import InvokeResult
from backout.platforms.local.queues import ATTR_SOURCE_QUEUE, Message, QueueStore

log = logging.getLogger(__name__)

ACCOUNT_ID = "000000000000"
SENDER_ID = ACCOUNT_ID
POLL_WAIT = 1.0  # long-poll length; pausing or stopping interrupts it
THROTTLE_BACKOFF_MIN = 0.1
THROTTLE_BACKOFF_MAX = 2.0
ERROR_PAUSE = 0.5  # after the store itself failed (e.g. disk full): don't spin


def queue_arn(queue: str, region: str = "local") -> str:
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{queue}"


def sqs_record(m: Message, region: str = "local") -> dict[str, Any]:
    """One Lambda SQS event record for a received message."""
    attributes = {
        "ApproximateReceiveCount": str(m.receive_count),
        "SentTimestamp": str(int(m.sent_at * 1000)),
        "SenderId": SENDER_ID,
        "ApproximateFirstReceiveTimestamp": str(int((m.first_received_at or m.sent_at) * 1000)),
    }
    if ATTR_SOURCE_QUEUE in m.attributes:
        attributes["DeadLetterQueueSourceArn"] = queue_arn(m.attributes[ATTR_SOURCE_QUEUE], region)
    return {
        "messageId": m.id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": attributes,
        "messageAttributes": {
            k: {"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": "String"}
            for k, v in m.attributes.items()
        },
        "md5OfBody": hashlib.md5(m.body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn(m.queue, region),
        "awsRegion": region,
    }


def batch_item_failures(payload: Any, ids: set[str]) -> set[str] | None:
    """The message ids a successful invocation reported as failed (ReportBatchItemFailures).

    None means "treat the whole batch as failed": Lambda does so when an itemIdentifier is
    missing, empty or not in the batch.
    """
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError:
            return set()
    if not isinstance(payload, dict):
        return set()
    items = payload.get("batchItemFailures")
    if not items:
        return set()
    if not isinstance(items, list):
        return None
    failed: set[str] = set()
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not ident or ident not in ids:
            return None
        failed.add(ident)
    return failed


def _error_text(result: InvokeResult) -> str:
    p = result.payload
    if isinstance(p, dict) and ("errorType" in p or "errorMessage" in p):
        return f"{p.get('errorType', result.error)}: {p.get('errorMessage', '')}"
    return str(result.error)


class EventSourceMapping:
    """`concurrency` poller threads feeding `function` from `queue`, batch by batch."""

    def __init__(
        self,
        store: QueueStore,
        queue: str,
        function: str,
        invoke: Callable[..., InvokeResult],
        batch_size: int = 10,
        concurrency: int = 1,
        retry_after: float | None = None,
        enabled: bool = True,
        region: str = "local",
        route: Callable[[str], str] | None = None,
    ) -> None:
        """`invoke(fn, event)` goes through the alias; with `route(fn)` → version it is called as
        `invoke(fn, event, version)` with the version recorded at the receive."""
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        self.store = store
        self.queue = queue
        self.function = function
        self.invoke = invoke
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.retry_after = retry_after
        self.region = region
        self._receiver = None if route is None else (lambda: route(function))
        self._want = enabled  # the operator's switch (set_enabled)
        self._stopping = threading.Event()
        self._interrupt = threading.Event()  # set while paused or stopping: cuts long polls short
        if not enabled:
            self._interrupt.set()
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._in_flight = 0  # messages handed to the function and not yet settled
        self._active = 0  # pollers not parked (receiving or processing)
        self.counters = {"batches": 0, "succeeded": 0, "failed": 0, "throttled": 0, "released": 0}

    # --- control ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pollers (idempotent)."""
        with self._cond:
            if self._threads:
                return
            self._stopping.clear()
            if self._want:
                self._interrupt.clear()
            for i in range(self.concurrency):
                t = threading.Thread(
                    target=self._run, name=f"esm-{self.queue}-{self.function}-{i}", daemon=True
                )
                self._threads.append(t)
                self._active += 1
                t.start()

    def stop(self, drain_timeout: float = 10.0) -> bool:
        """Stop receiving and wait for in-flight batches; False if one was still running at the timeout.

        A batch still running is not lost: its messages become visible again after their timeout.
        """
        with self._cond:
            self._stopping.set()
            self._interrupt.set()
            self._cond.notify_all()
            threads = list(self._threads)
        end = time.monotonic() + drain_timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        drained = not any(t.is_alive() for t in threads)
        if drained:
            with self._cond:
                self._threads = []
        return drained

    def set_enabled(self, enabled: bool) -> None:
        """Pause or resume. Pausing lets in-flight batches finish; waiting messages stay in the queue."""
        with self._cond:
            self._want = enabled
            if enabled and not self._stopping.is_set():
                self._interrupt.clear()
            elif not enabled:
                self._interrupt.set()
            self._cond.notify_all()

    @property
    def enabled(self) -> bool:
        return self._want

    @property
    def in_flight(self) -> int:
        """Messages handed to the function and not yet deleted or given back."""
        with self._cond:
            return self._in_flight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no batch is in flight and, when paused or stopped, every poller has parked."""

        def idle() -> bool:
            running = self._want and not self._stopping.is_set()
            return self._in_flight == 0 and (running or self._active == 0)

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    # --- pollers ------------------------------------------------------------------------------
    def _running(self) -> bool:
        return self._want and not self._stopping.is_set()

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stopping.is_set():
                if not self._want:
                    self._park()
                    continue
                try:
                    msgs = self.store.receive(
                        self.queue, self.batch_size, wait=POLL_WAIT, cancel=self._interrupt, receiver=self._receiver
                    )
                except Exception:
                    log.exception("mapping %s → %s: receive failed", self.queue, self.function)
                    self._interrupt.wait(ERROR_PAUSE)
                    continue
                if not msgs:
                    continue
                if not self._running():
                    # Received just as we were paused: give them back, the receive does not count.
                    self._release(msgs, 0.0)
                    continue
                backoff = self._process(msgs, backoff)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _park(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._want or self._stopping.is_set())
            self._active += 1

    def _process(self, msgs: list[Message], backoff: float) -> float:
        """Invoke once and settle every message; returns the next throttle backoff."""
        with self._cond:
            self._in_flight += len(msgs)
        try:
            event = {"Records": [sqs_record(m, self.region) for m in msgs]}
            error = ""
            version = msgs[0].receiver
            try:
                result: InvokeResult | None = (
                    self.invoke(self.function, event) if version is None else self.invoke(self.function, event, version)
                )
            except Exception as e:  # the runtime itself failed: same as a function error
                log.exception("mapping %s → %s: invoke raised", self.queue, self.function)
                result = None
                error = f"{type(e).__name__}: {e}"
            self._count("batches")
            if result is not None and result.throttled:
                backoff = min(max(THROTTLE_BACKOFF_MIN, backoff * 2), THROTTLE_BACKOFF_MAX)
                self._count("throttled")
                self._release(msgs, backoff)
                self._interrupt.wait(backoff)
                return backoff
            if result is None or result.error is not None:
                if result is not None:
                    error = _error_text(result)
                self._fail(msgs, error)
                return 0.0
            failed = batch_item_failures(result.payload, {m.id for m in msgs})
            if failed is None:
                self._fail(msgs, "invalid batchItemFailures in the function's response")
                return 0.0
            for m in msgs:
                if m.id in failed:
                    self._fail([m], "reported in batchItemFailures")
                else:
                    self._settle(lambda m=m: self.store.delete(self.queue, m.receipt_handle))
                    self._count("succeeded")
            return 0.0
        finally:
            with self._cond:
                self._in_flight -= len(msgs)
                self._cond.notify_all()

    def _fail(self, msgs: list[Message], error: str) -> None:
        """Leave the messages in the queue: visible again after retry_after (else the queue's timeout)."""
        for m in msgs:
            self._count("failed")
            self._settle(
                lambda m=m: self.store.record_failure(self.queue, m.receipt_handle, error, self.retry_after)
            )

    def _release(self, msgs: list[Message], delay: float) -> None:
        for m in msgs:
            self._count("released")
            self._settle(lambda m=m: self.store.release(self.queue, m.receipt_handle, delay))

    def _count(self, key: str) -> None:
        with self._cond:
            self.counters[key] += 1

    def _settle(self, op: Callable[[], object]) -> None:
        # A failure here only delays the message (it reappears after its visibility timeout).
        try:
            op()
        except Exception:
            log.exception("mapping %s → %s: settling a message failed", self.queue, self.function)
