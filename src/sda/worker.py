"""The worker function: consumes the `processing` queue and runs each job's pipeline.

Returns SQS partial-batch failures; when every record of the batch failed it
raises instead, so the invocation counts as a function error (the metric the
rollback alarms watch) and the message is retried (DLQ after 3 receives).
"""

from __future__ import annotations

from typing import Any

from sda import config
from sda.errors import PermanentError
from sda.observability import bind_context, make_logger, make_metrics
from sda.pipeline import Pipeline, parse_record
from sda.storage import get_storage

logger = make_logger("sda-worker")
metrics = make_metrics("sda-worker")


@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    bind_context(logger, context)
    settings = config.load()
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        # a direct invocation (e.g. the runbook's `lambda invoke --payload '{"test": true}'`)
        return {"status": "ok", "function": "worker", "version": settings.function_version}
    storage = get_storage(settings)
    failures: list[dict[str, str]] = []
    errors: list[BaseException] = []
    for record in records:
        try:
            msg = parse_record(record)
        except PermanentError as exc:
            logger.error(
                "unprocessable message acknowledged",
                extra={"reason": str(exc), "message_id": record.get("messageId")},
            )
            continue
        try:
            outcome = Pipeline(storage, settings, logger, metrics, context).run(msg)
            logger.info("message done", extra={"job_id": msg.job_id, "outcome": outcome})
        except Exception as exc:  # transient: retried by the queue (batchItemFailures or a raise)
            failures.append({"itemIdentifier": str(record.get("messageId", ""))})
            errors.append(exc)
    if errors and len(errors) == len(records):
        raise errors[0]
    return {"batchItemFailures": failures}
