"""The DLQ processor: every message that exhausted its receives fails its job, with a classified reason.

The classification comes from the attempts the worker recorded on the job:

* `timeout`                   the last attempt's watchdog fired before the runtime stopped it
* `crash`                     the last attempt started and never recorded an outcome (the process
                              died: killed, crashed or out of memory), or recorded MemoryError
* `repeated_transient_error`  the attempts ended in recorded errors (storage down, a bug …)
* `no_attempt`                no attempt was recorded (the worker failed before reaching the job)

The message body is kept on the job (`dead_letter.message_body`), so nothing acknowledged is lost
and the job can be re-submitted or redriven. A `JobDeadLettered` metric is emitted for each message.
Draining the DLQ here does not hide arrivals: the platform counts them as they arrive.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aws_lambda_powertools.metrics import single_metric

from backout_lambda import instrument
from sda import config
from sda.errors import StatusConflict
from sda.jobs import iso
from sda.observability import NAMESPACE, MetricUnit, bind_context, make_logger, make_metrics
from sda.storage import get_storage

logger = make_logger("sda-dlq")
metrics = make_metrics("sda-dlq")

REASONS = {
    "timeout": "the worker timed out",
    "crash": "the worker process died (crash or out of memory)",
    "repeated_transient_error": "every attempt failed with an error",
    "no_attempt": "the worker never reached the job (import error, crash at start or storage outage)",
}


_TIMEOUT = re.compile(r"timed?\s*out", re.I)
_MEMORY = re.compile(r"MemoryError|out of memory|\bOOM\b", re.I)
_CRASH = re.compile(r"Runtime\.ExitError|exited|killed|signal|segmentation|core dumped", re.I)


def last_error(record: dict[str, Any]) -> str | None:
    """The platform's note on why the last receive failed (local: `LastError`; Lambda: `ErrorMessage`)."""
    attrs = record.get("messageAttributes") or {}
    for key in ("LastError", "ErrorMessage"):
        value = attrs.get(key) or {}
        text = value.get("stringValue") or value.get("StringValue")
        if text:
            return str(text)
    return None


def classify(job: dict[str, Any] | None, record: dict[str, Any]) -> tuple[str, str]:
    """(classification, human reason) for one dead-lettered message, from the attempts the worker
    recorded on the job and the platform's last error on the message."""
    attempts = list((job or {}).get("attempts") or [])
    hint = last_error(record)
    last = attempts[-1] if attempts else {}
    stage = last.get("stage") or (job or {}).get("current_stage") or "start"
    outcome = last.get("outcome")
    suffix = f" (platform: {hint})" if hint else ""
    if outcome == "timeout" or (hint and _TIMEOUT.search(hint)):
        return "timeout", f"{REASONS['timeout']} in {stage}{suffix}"
    if outcome == "out_of_memory" or (hint and _MEMORY.search(hint)):
        return "crash", f"the worker ran out of memory in {stage}{suffix}"
    if (attempts and outcome in ("started", None)) or (hint and _CRASH.search(hint)):
        return "crash", f"{REASONS['crash']} in {stage}{suffix}"
    errors = [a.get("error") for a in attempts if a.get("outcome") in ("transient_error", "error") and a.get("error")]
    if errors or hint:
        detail = errors[-1] if errors else hint
        count = len(attempts) or "all"
        return "repeated_transient_error", f"{count} attempts failed; last error in {stage}: {detail}"
    return "no_attempt", REASONS["no_attempt"]


def _job_id(body: str) -> str | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    return data.get("job_id") if isinstance(data, dict) and isinstance(data.get("job_id"), str) else None


def _emit(classification: str) -> None:
    metrics.add_metric(name="JobDeadLettered", unit=MetricUnit.Count, value=1)
    with single_metric(
        name="JobDeadLettered", unit=MetricUnit.Count, value=1, namespace=metrics.namespace or NAMESPACE
    ) as metric:
        metric.add_dimension(name="Classification", value=classification)


def process(record: dict[str, Any], storage: Any) -> str:
    body = record.get("body") or ""
    attrs = record.get("attributes") or {}
    job_id = _job_id(body)
    job = storage.get_job(job_id) if job_id else None
    classification, reason = classify(job, record)
    dead_letter = {
        "classification": classification,
        "reason": reason,
        "message_id": record.get("messageId"),
        "message_body": body,
        "receive_count": attrs.get("ApproximateReceiveCount"),
        "sent_at": attrs.get("SentTimestamp"),
        "dead_lettered_at": iso(),
        "source_queue": record.get("eventSourceARN"),
    }
    if job is None:
        logger.error(
            "dead-lettered message for no known job",
            extra={"job_id": job_id, "body": body[:500], "classification": "unknown_job"},
        )
        _emit("unknown_job")
        return "unknown_job"
    stage = (job.get("attempts") or [{}])[-1].get("stage") or job.get("current_stage")  # where it stopped
    try:
        storage.update_job(
            job["job_id"],
            {
                "status": "failed",
                "current_stage": stage,
                "dead_letter": dead_letter,
                "error": {
                    "message": reason,
                    "stage": stage,
                    "failed_at": iso(),
                    "code": "DEAD_LETTERED",
                    "kind": "dead_letter",
                    "reason": classification,
                },
            },
            only_if_status={"queued", "processing", "failed"},
        )
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
    except StatusConflict:
        # completed after all (a slow duplicate dead-lettered): keep the result, keep the evidence
        storage.update_job(job["job_id"], {"dead_letter": dead_letter})
        classification = "completed_duplicate"
    logger.warning(
        "job dead-lettered",
        extra={"job_id": job["job_id"], "classification": classification, "reason": reason},
    )
    _emit(classification)
    return classification


@instrument
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    bind_context(logger, context)
    settings = config.load()
    records = event.get("Records") if isinstance(event, dict) else None
    if not records:
        return {"status": "ok", "function": "dlq_processor", "version": settings.function_version}
    storage = get_storage(settings)
    failures, errors = [], []
    for record in records:
        try:
            process(record, storage)
        except Exception as exc:  # storage down: leave the message on the DLQ for the next try
            logger.exception("could not process a dead-lettered message", extra={"message_id": record.get("messageId")})
            failures.append({"itemIdentifier": str(record.get("messageId", ""))})
            errors.append(exc)
    if errors and len(errors) == len(records):
        raise errors[0]
    return {"batchItemFailures": failures}
