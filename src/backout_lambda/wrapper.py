"""`@instrument`: per-version signals from inside the function, one EMF line per invocation.

AWS/Lambda's own metrics arrive per minute and late, API Gateway's `5XXError` has no version
dimension, and SQS does not count the messages a redrive policy moves into a DLQ; a canary judged
on them is judged minutes late or not per version at all. So every handler of a backout service is
decorated, and each invocation prints one Embedded Metric Format line (namespace `Backout`,
1-second resolution) that CloudWatch Logs turns into metrics keyed by function and version:

| metric | dimension sets | when |
|---|---|---|
| Invocations, Errors, Duration | [FunctionName, ExecutedVersion], [FunctionName] | every invocation |
| Count, 4XXError, 5XXError | [ApiName, Stage, ExecutedVersion], [ApiName, Stage] | API Gateway proxy events |
| DeadLetterArrivals | [QueueName, ExecutedVersion], [QueueName] | SQS batches, when the DLQ is configured |

Errors is 1 when the handler raised (the exception is re-raised unchanged) or when an SQS batch
reported any failed record. An exception of an API handler counts as 5XX (API Gateway answers 502).
DeadLetterArrivals counts the failed records on their final receive (ApproximateReceiveCount ≥
maxReceiveCount): the redrive policy moves exactly those to the DLQ.

Read from the function's environment on every invocation (microseconds, and tests can change it):
`BACKOUT_FUNCTION` (else `AWS_LAMBDA_FUNCTION_NAME`) → FunctionName; `AWS_LAMBDA_FUNCTION_VERSION`
→ ExecutedVersion; `BACKOUT_SERVICE` → ApiName; `BACKOUT_ENV` → Stage; `BACKOUT_MAX_RECEIVE_COUNT`
and `BACKOUT_DLQ_NAME` → DeadLetterArrivals (not emitted unless both are set).

Metrics never break a handler: a failure to build or print the line is logged once per process and
the handler's result or exception passes through unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from backout_lambda import emf, events

log = logging.getLogger("backout_lambda")

Handler = TypeVar("Handler", bound=Callable[..., Any])

UNKNOWN_VERSION = "$LATEST"  # what Lambda sets when the unpublished function runs

_logged: set[str] = set()
_logged_lock = threading.Lock()


def instrument(handler: Handler) -> Handler:
    """Decorate a Lambda handler `handler(event, context)` so that each invocation emits its metrics."""
    default_name = f"{getattr(handler, '__module__', '')}.{getattr(handler, '__qualname__', 'handler')}".lstrip(".")

    @functools.wraps(handler)
    def instrumented(event: Any, context: Any) -> Any:
        start = time.perf_counter()
        try:
            result = handler(event, context)
        except BaseException:
            _emit(event, None, True, start, default_name)
            raise
        _emit(event, result, False, start, default_name)
        return result

    return instrumented  # type: ignore[return-value]


def invocation_line(
    event: Any,
    result: Any,
    raised: bool,
    duration_ms: float,
    *,
    environ: Mapping[str, str] | None = None,
    default_name: str = "handler",
    timestamp_ms: int | None = None,
) -> str:
    """The EMF line of one invocation (what `instrument` prints, without the newline), from its event
    and outcome."""
    env = os.environ if environ is None else environ
    version = env.get("AWS_LAMBDA_FUNCTION_VERSION") or UNKNOWN_VERSION
    dimensions = {
        "FunctionName": env.get("BACKOUT_FUNCTION") or env.get("AWS_LAMBDA_FUNCTION_NAME") or default_name,
        "ExecutedVersion": version,
    }
    values: dict[str, float] = {"Invocations": 1, "Errors": 1 if raised else 0, "Duration": round(duration_ms, 3)}
    groups = [emf.FUNCTION]

    if events.is_api_request(event):
        status = events.http_status(result, raised)
        context = event["requestContext"]
        dimensions["ApiName"] = env.get("BACKOUT_SERVICE") or str(context.get("apiId") or "unknown")
        dimensions["Stage"] = env.get("BACKOUT_ENV") or str(context.get("stage") or "$default")
        values.update({"Count": 1, "4XXError": int(400 <= status < 500), "5XXError": int(status >= 500)})
        groups.append(emf.API)
    else:
        records = events.sqs_records(event)
        if records is not None:
            failed = events.failed_records(records, result, raised)
            if failed:
                values["Errors"] = 1
            dlq = _dead_letter_queue(env)
            if dlq is not None:
                dlq_name, max_receive_count = dlq
                dimensions["QueueName"] = dlq_name
                values["DeadLetterArrivals"] = events.final_failures(failed, max_receive_count)
                groups.append(emf.DLQ)

    now_ms = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return emf.line(now_ms, groups, dimensions, values)


def _dead_letter_queue(env: Mapping[str, str]) -> tuple[str, int] | None:
    """(DLQ name, maxReceiveCount) from the environment; None when either is unset or unusable."""
    name = env.get("BACKOUT_DLQ_NAME", "").strip()
    raw = env.get("BACKOUT_MAX_RECEIVE_COUNT", "").strip()
    if not name or not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        _log_once(
            "max_receive_count",
            "backout_lambda: BACKOUT_MAX_RECEIVE_COUNT=%r is not a positive integer; DeadLetterArrivals is not emitted",
            raw,
        )
        return None
    return name, count


def _emit(event: Any, result: Any, raised: bool, start: float, default_name: str) -> None:
    try:
        text = invocation_line(event, result, raised, (time.perf_counter() - start) * 1000.0,
                               default_name=default_name)
        out = sys.stdout
        out.write(text + "\n")  # one write: lines of concurrent threads never interleave
        out.flush()
    except Exception as exc:  # noqa: BLE001 - metrics must never change what the handler did
        _log_once("emit", "backout_lambda: could not emit the invocation's metrics (%s: %s); the handler's "
                  "result is unaffected; further failures are not logged", type(exc).__name__, exc)


def _log_once(key: str, message: str, *args: Any) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    try:
        log.warning(message, *args)
    except Exception:  # noqa: BLE001, S110 - a broken log handler must not break the handler either
        pass
