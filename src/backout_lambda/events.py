"""What one invocation's event and result say about it: its kind (API request, SQS batch or
other) and its outcome (HTTP status class; records failed, and failed on their final receive).

Shapes are Lambda's own: API Gateway proxy events (REST v1: `httpMethod` + `requestContext`; HTTP
API v2: `version` "2.0" + `routeKey`), SQS batches (`Records` whose `eventSource` is `aws:sqs`).
Events and results are JSON objects, so `dict` is checked (an ABC check would cost microseconds on
every invocation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BAD_GATEWAY = 502  # what API Gateway answers for a function error or a malformed proxy result


def is_api_request(event: Any) -> bool:
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        return False
    return "httpMethod" in event or (event.get("version") == "2.0" and "routeKey" in event)


def sqs_records(event: Any) -> list[Mapping[str, Any]] | None:
    """The batch's records, or None when the event is not an SQS batch."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not records:
        return None
    first = records[0]
    if not isinstance(first, dict) or first.get("eventSource") != "aws:sqs":
        return None
    return records


def http_status(result: Any, raised: bool) -> int:
    """The status API Gateway answers for this result: the proxy result's `statusCode`, or 502 when
    the function raised or returned something API Gateway cannot map."""
    if raised or not isinstance(result, dict):
        return BAD_GATEWAY
    status = result.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return BAD_GATEWAY
    return status


def failed_records(records: list[Mapping[str, Any]], result: Any, raised: bool) -> list[Mapping[str, Any]]:
    """The records Lambda returns to the queue after this invocation (ReportBatchItemFailures).

    All of them when the function raised, or when `batchItemFailures` is not a list or names an
    item that is missing, empty or not in the batch (Lambda then fails the whole batch); none when
    the result has no failures."""
    if raised:
        return list(records)
    if not isinstance(result, dict):
        return []
    items = result.get("batchItemFailures")
    if not items:
        return []
    if not isinstance(items, list):
        return list(records)
    by_id = {r.get("messageId"): r for r in records}
    failed: dict[Any, Mapping[str, Any]] = {}
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not ident or ident not in by_id:
            return list(records)
        failed[ident] = by_id[ident]
    return list(failed.values())


def receive_count(record: Mapping[str, Any]) -> int:
    """`attributes.ApproximateReceiveCount` (0 when absent or not a number)."""
    attributes = record.get("attributes")
    raw = attributes.get("ApproximateReceiveCount") if isinstance(attributes, dict) else None
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def final_failures(failed: list[Mapping[str, Any]], max_receive_count: int) -> int:
    """How many failed records the redrive policy moves to the DLQ now: those on their final receive."""
    return sum(1 for r in failed if receive_count(r) >= max_receive_count)
