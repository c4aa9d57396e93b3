"""The worker function: consumes the `processing` queue and runs each job's pipeline.

Returns SQS partial-batch failures, built by powertools' BatchProcessor; when every
record of the batch failed it raises the first record's error instead, so the
invocation counts as a function error (the metric the rollback alarms watch) and
the message is retried (DLQ after 3 receives).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from backout_lambda import instrument
from sda import config
from sda.errors import PermanentError
from sda.observability import bind_context, make_logger, make_metrics
from sda.pipeline import Pipeline, parse_record
from sda.storage import get_storage

logger = make_logger("sda-worker")
metrics = make_metrics("sda-worker")


@instrument
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    bind_context(logger, context)
    settings = config.load()
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        # a direct invocation (e.g. the runbook's `lambda invoke --payload '{"test": true}'`)
        return {"status": "ok", "function": "worker", "version": settings.function_version}
    storage = get_storage(settings)

    def process(record: SQSRecord) -> None:
        """One record: a permanent problem is logged and acknowledged (returns); any other
        exception is transient and makes the processor report the record as failed."""
        try:
            msg = parse_record(record.raw_event)
        except PermanentError as exc:
            logger.error(
                "unprocessable message acknowledged",
                extra={"reason": str(exc), "message_id": record.raw_event.get("messageId")},
            )
            return
        outcome = Pipeline(storage, settings, logger, metrics, context).run(msg)
        logger.info("message done", extra={"job_id": msg.job_id, "outcome": outcome})

    # One processor per invocation: it keeps the batch's state on itself, and a warm worker may run
    # invocations concurrently. No raise from the processor on a fully failed batch: we raise the
    # record's own error, so the platform records its type (e.g. StorageUnavailable), not a wrapper.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    response = process_partial_response(event, process, processor)
    first_error = processor.exceptions[0][1] if processor.exceptions else None
    if first_error is not None and len(processor.exceptions) == len(records):
        raise first_error
    return dict(response)
