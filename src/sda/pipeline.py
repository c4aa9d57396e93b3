"""The worker's pipeline: one job through its stages, each checkpointed and recorded on the job.

Stages: pdf_processing → context_processing (only with context) → drawing_analysis
→ excel_generation → evaluation. A stage whose checkpoint exists and that is
listed in `stages_completed` is not run again, and every output has a fixed
name, so a message delivered twice (at-least-once) yields one result.

Failure policy (the point of this module):
* `PermanentError` (the input's fault): the job is `failed` with stage and reason; the message is
  acknowledged.
* anything else (storage down, a bug, out of memory): the attempt is recorded if possible and the
  exception propagates, so the message is retried and after three receives lands in the DLQ,
  where the DLQ processor classifies it.
A watchdog records `timeout` on the attempt just before the runtime would stop the invocation, which
lets the DLQ processor tell a timeout from a crash.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sda import faults
from sda.config import Settings
from sda.errors import FileMissing, PermanentError, StatusConflict
from sda.jobs import iso, now, planned_stages
from sda.observability import MetricUnit, remaining_seconds
from sda.storage import Storage

DRAWING = "drawing.pdf"
CONTEXT_TEXT = "context_text.txt"
EXCEL = "schedule.xlsx"
COMPONENTS = "components.json"
EVALUATION = "evaluation.json"


def checkpoint_name(stage: str) -> str:
    return f"checkpoints/{stage}.json"


@dataclass(frozen=True)
class Message:
    job_id: str
    correlation_id: str
    receive_count: int
    message_id: str
    body: str


def parse_record(record: dict[str, Any]) -> Message:
    """An SQS record → Message; a body that names no job is a permanent problem."""
    body = record.get("body") or ""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"message body is not JSON: {body[:80]!r}", "BAD_MESSAGE") from exc
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
        raise PermanentError(f"message names no job: {body[:80]!r}", "BAD_MESSAGE")
    attrs = record.get("attributes") or {}
    try:
        receive_count = int(attrs.get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        receive_count = 1
    return Message(
        job_id=data["job_id"],
        correlation_id=str(data.get("correlation_id") or ""),
        receive_count=receive_count,
        message_id=str(record.get("messageId") or ""),
        body=body,
    )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=False, default=str).encode()


class Pipeline:
    """Runs one message. `run` returns "completed" | "failed" | "skipped"; raises on transient faults."""

    def __init__(self, storage: Storage, settings: Settings, logger: Any, metrics: Any, context: Any = None) -> None:
        self.storage = storage
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
        self.remaining = remaining_seconds(context)
        self.attempt_id = uuid.uuid4().hex[:12]
        self._started = time.monotonic()

    # -- attempts --------------------------------------------------------------------------------

    def _set_attempt(self, job_id: str, **fields: Any) -> dict[str, Any] | None:
        job = self.storage.get_job(job_id)
        if job is None:
            return None
        attempts = list(job.get("attempts") or [])
        for a in attempts:
            if a.get("attempt_id") == self.attempt_id:
                a.update(fields)
        return self.storage.update_job(job_id, {"attempts": attempts})

    def _record_safely(self, job_id: str, **fields: Any) -> None:
        """Best effort: when storage itself is the fault, the DLQ processor works without it."""
        try:
            self._set_attempt(job_id, **fields)
        except Exception as exc:  # noqa: BLE001
            self.logger.warning("could not record the attempt", extra={"job_id": job_id, "error": str(exc)})

    def _start_watchdog(self, job_id: str, stage_ref: dict[str, str | None]) -> threading.Timer | None:
        if self.remaining is None:
            return None
        margin = min(2.0, max(0.2, self.remaining * 0.1))
        delay = max(0.05, self.remaining - margin)

        def fire() -> None:
            self.logger.error("invocation about to time out", extra={"job_id": job_id, "stage": stage_ref["stage"]})
            self._record_safely(
                job_id,
                outcome="timeout",
                ended_at=iso(),
                stage=stage_ref["stage"],
                error=f"timed out after {delay + margin:.1f}s in {stage_ref['stage']}",
            )

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()
        return timer

    # -- run ---------------------------------------------------------------------------------------

    def run(self, msg: Message) -> str:
        log_keys = {
            "job_id": msg.job_id,
            "correlation_id": msg.correlation_id,
            "receive_count": msg.receive_count,
        }
        job = self.storage.get_job(msg.job_id)
        if job is None:
            self.logger.error("message for an unknown job: acknowledged", extra=log_keys)
            return "skipped"
        status = job.get("status")
        error = job.get("error") or {}
        if status == "completed" or (status == "failed" and error.get("kind") != "dead_letter"):
            self.logger.info(f"job already {status}: duplicate delivery acknowledged", extra=log_keys)
            return "skipped"

        processed_by = {
            "version": self.settings.function_version,
            "function": self.settings.function_name,
            "at": iso(),
        }
        attempt = {
            "attempt_id": self.attempt_id,
            "receive_count": msg.receive_count,
            "message_id": msg.message_id,
            "version": self.settings.function_version,
            "function": self.settings.function_name,
            "pid": os.getpid(),
            "started_at": iso(),
            "ended_at": None,
            "outcome": "started",
            "stage": None,
            "error": None,
        }
        attempts = list(job.get("attempts") or []) + [attempt]
        try:
            job = self.storage.update_job(
                msg.job_id,
                {"status": "processing", "processed_by": processed_by, "attempts": attempts, "error": None},
                only_if_status={"queued", "processing", "failed"},
            )
        except StatusConflict:
            self.logger.info("job completed meanwhile: acknowledged", extra=log_keys)
            return "skipped"
        self.logger.info("processing job", extra=log_keys)

        stage_ref: dict[str, str | None] = {"stage": None}
        timer = self._start_watchdog(msg.job_id, stage_ref)
        try:
            result = self._stages(job, stage_ref)
        except PermanentError as exc:
            stage = stage_ref["stage"]
            self.logger.warning(
                "permanent input problem: job failed", extra={**log_keys, "stage": stage, "reason": str(exc)}
            )
            self.storage.update_job(
                msg.job_id,
                {
                    "status": "failed",
                    "current_stage": stage,
                    "error": {
                        "message": str(exc),
                        "stage": stage,
                        "failed_at": iso(),
                        "code": exc.code,
                        "kind": "permanent",
                        "reason": "invalid_input",
                    },
                },
            )
            self._record_safely(msg.job_id, outcome="failed", ended_at=iso(), stage=stage, error=str(exc))
            self.metrics.add_metric(name="StageFailure", unit=MetricUnit.Count, value=1)
            self.metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
            return "failed"
        except MemoryError:
            self._record_safely(
                msg.job_id,
                outcome="out_of_memory",
                ended_at=iso(),
                stage=stage_ref["stage"],
                error="MemoryError",
            )
            self.metrics.add_metric(name="StageFailure", unit=MetricUnit.Count, value=1)
            raise
        except Exception as exc:
            self.logger.exception(
                "stage failed: the message will be retried", extra={**log_keys, "stage": stage_ref["stage"]}
            )
            self._record_safely(
                msg.job_id,
                outcome="transient_error",
                ended_at=iso(),
                stage=stage_ref["stage"],
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            self.metrics.add_metric(name="StageFailure", unit=MetricUnit.Count, value=1)
            raise
        finally:
            if timer is not None:
                timer.cancel()

        elapsed = time.monotonic() - self._started
        summary = {**result["summary"], "processing_time_seconds": round(elapsed, 3)}
        job = self.storage.get_job(msg.job_id) or job
        attempts = list(job.get("attempts") or [])
        for a in attempts:
            if a.get("attempt_id") == self.attempt_id:
                a.update(outcome="completed", ended_at=iso(), stage=None)
        self.storage.update_job(
            msg.job_id,
            {
                "status": "completed",
                "current_stage": None,
                "summary": summary,
                "components_count": result["count"],
                "output_files": result["outputs"],
                "attempts": attempts,
                "error": None,
            },
        )
        self.metrics.add_metric(name="JobsCompleted", unit=MetricUnit.Count, value=1)
        self.metrics.add_metric(name="ProcessingDuration", unit=MetricUnit.Milliseconds, value=elapsed * 1000)
        self.logger.info("job completed", extra={**log_keys, "components": result["count"]})
        return "completed"

    def _stages(self, job: dict[str, Any], stage_ref: dict[str, str | None]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        if faults.roll("worker_error_rate"):
            raise faults.InjectedFault("injected worker fault (SDA_FAULTS=worker_error_rate)")
        planned = planned_stages(job)
        for index, stage in enumerate(planned):
            stage_ref["stage"] = stage
            done = stage in (job.get("stages_completed") or [])
            if done:
                try:
                    results[stage] = json.loads(self.storage.get_file(job, checkpoint_name(stage)))
                    continue
                except FileMissing:
                    self.logger.warning("checkpoint missing: re-running stage", extra={"stage": stage})
            started = iso()
            job = self.storage.update_job(job["job_id"], {"current_stage": stage})
            t0 = time.monotonic()
            output = getattr(self, f"_{stage}")(job, results)
            self.storage.put_file(job, checkpoint_name(stage), _dumps(output), "application/json")
            results[stage] = output
            stages = dict(job.get("stages") or {})
            stages[stage] = {
                "started_at": started,
                "completed_at": iso(),
                "duration_ms": round((time.monotonic() - t0) * 1000, 1),
            }
            completed = list(job.get("stages_completed") or [])
            if stage not in completed:
                completed.append(stage)
            # the next stage becomes current in the same write: a status read in between never shows a
            # stage as both current and completed
            following = planned[index + 1] if index + 1 < len(planned) else stage
            job = self.storage.update_job(
                job["job_id"], {"stages_completed": completed, "stages": stages, "current_stage": following}
            )
            self.metrics.add_metric(name="StageSuccess", unit=MetricUnit.Count, value=1)
        analysis = results["drawing_analysis"]
        evaluation = results["evaluation"]
        schedule = analysis["schedule"]
        meta = schedule["metadata"]
        by_type: dict[str, int] = {}
        for c in analysis["components"]:
            by_type[c["type"]] = by_type.get(c["type"], 0) + 1
        summary = {
            "total_components": len(analysis["components"]),
            "by_type": by_type,
            "doors": meta.get("total_doors"),
            "card_readers": meta.get("total_card_readers"),
            "exit_buttons": meta.get("total_exit_buttons"),
            "locks": meta.get("total_locks"),
            "cameras": meta.get("total_cameras"),
            "lock_type": schedule["locks"].get("type"),
            "drawing_number": meta.get("drawing_number"),
            "building": meta.get("building"),
            "level": meta.get("level"),
            "pages": meta.get("pages"),
            "overall_assessment": evaluation["overall_assessment"],
            "completeness": evaluation["completeness"],
            "consistency": evaluation["consistency"],
            "issues": len(evaluation["issues"]),
            "warnings": schedule.get("warnings", []),
            "skipped_pages": schedule.get("skipped_pages", []),
        }
        prefix = f"{job['client_slug']}/{job['project_slug']}/{job['job_id']}"
        outputs = {
            "excel": f"{prefix}/{EXCEL}",
            "components": f"{prefix}/{COMPONENTS}",
            "evaluation": f"{prefix}/{EVALUATION}",
        }
        return {"summary": summary, "count": len(analysis["components"]), "outputs": outputs}

    # -- stages --------------------------------------------------------------------------------------

    def _pdf_processing(self, job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        from sda.pdf import extract_pages

        try:
            data = self.storage.get_file(job, DRAWING)
        except FileMissing as exc:
            raise PermanentError(f"the uploaded drawing is missing: {exc}", "INPUT_MISSING") from exc
        pages = extract_pages(data)
        chars = sum(len(p["text"].strip()) for p in pages)
        if chars == 0 and not any(p.get("scanned") for p in pages):
            # neither text nor an image: nothing a reader (or OCR) could ever get from it
            raise PermanentError(
                "the drawing has no text layer and no scanned image; text extraction found nothing",
                "NO_TEXT_LAYER",
            )
        scanned = [p["page"] for p in pages if p.get("scanned")]
        return {"page_count": len(pages), "chars": chars, "pages": pages, "scanned_pages": scanned}

    def _context_processing(self, job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        from sda import context

        files = job.get("input_files") or {}
        sources = []
        for key in ("context", "context_text"):
            spec = files.get(key)
            if not spec:
                continue
            try:
                data = self.storage.get_file(job, spec["name"])
            except FileMissing as exc:
                raise PermanentError(f"the uploaded context is missing: {exc}", "INPUT_MISSING") from exc
            sources.append((spec.get("original_name") or spec["name"], spec.get("kind", "txt"), data))
        return context.process(sources)

    def _drawing_analysis(self, job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        from sda.analysis import analyze, components, public_schedule

        delay = faults.number("worker_latency_ms")
        if delay:
            time.sleep(delay / 1000.0)
        if faults.enabled("worker_hang"):
            time.sleep((self.remaining or 300.0) + 5.0)
        if faults.enabled("worker_crash"):
            self.logger.error("SDA_FAULTS=worker_crash: exiting hard")
            os._exit(137)
        defaults = (results.get("context_processing") or {}).get("defaults") or {}
        schedule = analyze(results["pdf_processing"]["pages"], defaults)
        if faults.enabled("corrupt_results"):
            schedule["doors"] = schedule["doors"][::2]
            for d in schedule["doors"]:
                d["location"] = "Unknown"
            schedule["metadata"]["total_doors"] = len(schedule["doors"])
        comps = components(schedule)
        public = public_schedule(schedule)
        document = {"job_id": job["job_id"], "schedule": public, "components": comps, "count": len(comps)}
        self.storage.put_file(job, COMPONENTS, _dumps(document), "application/json")
        return {"schedule": schedule, "components": comps}

    def _excel_generation(self, job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        from openpyxl.utils.exceptions import IllegalCharacterError

        from sda import excel

        analysis = results["drawing_analysis"]
        created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
        try:
            data = excel.build(job, analysis["schedule"], analysis["components"], created=created)
        except IllegalCharacterError as exc:  # a control character in the input: no retry can help
            raise PermanentError(
                "the schedule cannot hold a control character from the input (client or project name)",
                "INVALID_TEXT",
            ) from exc
        key = self.storage.put_file(job, EXCEL, data, excel.CONTENT_TYPE)
        return {"key": key, "bytes": len(data), "rows": len(analysis["components"])}

    def _evaluation(self, job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        from sda.evaluation import evaluate

        evaluation = evaluate(results["drawing_analysis"]["schedule"])
        evaluation["evaluated_at"] = iso(now())
        self.storage.put_file(job, EVALUATION, _dumps(evaluation), "application/json")
        return evaluation
