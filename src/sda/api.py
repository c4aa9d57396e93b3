"""The api function: upload a drawing, follow its job, download the results, check health.

Routes (API Gateway REST v1 proxy events, powertools' APIGatewayRestResolver):
    POST /process-drawing             202 {job_id, status, estimated_time_seconds, message, correlation_id}
    GET  /status/{job_id}             200 status view | 404
    GET  /download/{job_id}/{type}    excel (.xlsx bytes) | components (JSON); 404 | 409 not completed
    GET  /health                      200 {status, version}
    GET  /health/detailed             200 | 503 naming the failing dependency
Every error body is {error, error_code, timestamp, correlation_id}; every response carries
X-Correlation-ID. A resolver is built per invocation (≈0.1 ms) because powertools keeps the
current event on the resolver, which several threads of one process must not share.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from backout_lambda import instrument
from sda import config, faults, health
from sda.errors import JobExists, QueueUnavailable, StorageUnavailable, UploadError
from sda.jobs import is_job_id, iso, new_job, new_job_id, queue_message, status_view
from sda.observability import bind_context, make_logger

logger = make_logger("sda-api")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_CORRELATION = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_ID_ATTEMPTS = 8


def _json(status: int, body: Any, correlation_id: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, default=str),
        headers={"X-Correlation-ID": correlation_id, **(headers or {})},
    )


def error_body(code: str, message: str, correlation_id: str) -> dict[str, Any]:
    return {"error": message, "error_code": code, "timestamp": iso(), "correlation_id": correlation_id}


def _error(status: int, code: str, message: str, correlation_id: str) -> Response:
    return _json(status, error_body(code, message, correlation_id), correlation_id)


def _correlation_id(event: dict[str, Any]) -> str:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == "x-correlation-id" and isinstance(value, str) and _CORRELATION.match(value):
            return value
    request_id = (event.get("requestContext") or {}).get("requestId")
    return request_id if isinstance(request_id, str) and _CORRELATION.match(request_id) else str(uuid.uuid4())


_EXECUTE_API_HOST = re.compile(r"\.execute-api\.[a-z0-9-]+\.amazonaws\.com(?::\d+)?$", re.I)


def _url_prefix(event: dict[str, Any]) -> str:
    """`/{stage}` when the client called API Gateway's default domain (where URLs carry the stage);
    nothing behind a custom domain or the local gateway, which serve the routes at the root."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    stage = (event.get("requestContext") or {}).get("stage")
    if stage and _EXECUTE_API_HOST.search(str(headers.get("host", ""))):
        return f"/{stage}"
    return ""


def _submit(event: dict[str, Any], settings: config.Settings, cid: str) -> Response:
    from sda import pdf
    from sda.errors import PermanentError
    from sda.pipeline import CONTEXT_TEXT, DRAWING
    from sda.queue import get_queue
    from sda.storage import get_storage
    from sda.uploads import parse_submission, safe_filename

    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    sub = parse_submission(event, headers, settings.max_upload_bytes)
    try:
        info = pdf.inspect(sub.drawing.data)
    except PermanentError as exc:
        raise UploadError(422, exc.code, str(exc)) from exc

    storage = get_storage(settings)
    input_files: dict[str, Any] = {
        "drawing": {
            "name": DRAWING,
            "original_name": safe_filename(sub.drawing.filename),
            "size": len(sub.drawing.data),
            "pages": info.pages,
        },
        "context": None,
        "context_text": None,
    }
    if sub.context is not None:
        input_files["context"] = {
            "name": f"context.{sub.context_kind}",
            "kind": sub.context_kind,
            "original_name": safe_filename(sub.context.filename, f"context.{sub.context_kind}"),
            "size": len(sub.context.data),
        }
    if sub.context_text:
        input_files["context_text"] = {
            "name": CONTEXT_TEXT,
            "kind": "txt",
            "original_name": "context_text",
            "size": len(sub.context_text.encode()),
        }
    submitted_by = {"version": settings.function_version, "function": settings.function_name, "at": iso()}
    for _ in range(MAX_ID_ATTEMPTS):
        job = new_job(new_job_id(), sub.client_name, sub.project_name, correlation_id=cid, submitted_by=submitted_by)
        job["input_files"] = input_files
        try:
            storage.create_job(job)
            break
        except JobExists:
            logger.info("job id collision: drawing a new one", extra={"job_id": job["job_id"]})
    else:
        raise StorageUnavailable("could not reserve a unique job id")

    job_id = job["job_id"]
    try:
        storage.put_file(job, DRAWING, sub.drawing.data, "application/pdf")
        if sub.context is not None:
            storage.put_file(job, input_files["context"]["name"], sub.context.data, sub.context.content_type)
        if sub.context_text:
            storage.put_file(job, CONTEXT_TEXT, sub.context_text.encode(), "text/plain; charset=utf-8")
        message_id = get_queue(settings).send(queue_message(job))
    except (StorageUnavailable, QueueUnavailable) as exc:
        stage = "queueing" if isinstance(exc, QueueUnavailable) else "upload"
        try:
            storage.update_job(
                job_id,
                {
                    "status": "failed",
                    "error": {
                        "message": str(exc),
                        "stage": stage,
                        "failed_at": iso(),
                        "code": "SUBMISSION_FAILED",
                        "kind": "submission",
                        "reason": stage,
                    },
                },
            )
        except Exception:  # noqa: BLE001 - the original fault is what the caller needs to hear about
            logger.exception("could not mark the job failed", extra={"job_id": job_id})
        raise
    estimate = min(600, 5 + 2 * info.pages + (5 if sub.context or sub.context_text else 0))
    logger.info(
        "job queued",
        extra={
            "job_id": job_id,
            "message_id": message_id,
            "pages": info.pages,
            "bytes": len(sub.drawing.data),
        },
    )
    return _json(
        202,
        {
            "job_id": job_id,
            "status": "queued",
            "estimated_time_seconds": estimate,
            "message": f"Drawing accepted; follow GET /status/{job_id}",
            "correlation_id": cid,
            "status_url": f"{_url_prefix(event)}/status/{job_id}",
        },
        cid,
    )


def build_app(settings: config.Settings, cid: str, event: dict[str, Any]) -> APIGatewayRestResolver:
    """Routes read the request from `event`, never `app.current_event`: powertools keeps that on a
    class attribute (BaseRouter.current_event), shared by every thread of the process."""
    app = APIGatewayRestResolver()

    @app.post("/process-drawing")
    def process_drawing() -> Response:
        return _submit(event, settings, cid)

    @app.get("/status/<job_id>")
    def status(job_id: str) -> Response:
        from sda.storage import get_storage

        job = get_storage(settings).get_job(job_id) if is_job_id(job_id) else None
        if job is None:
            return _error(404, "JOB_NOT_FOUND", f"no job {job_id!r}", cid)
        return _json(200, status_view(job, _url_prefix(event)), cid)

    @app.get("/download/<job_id>/<file_type>")
    def download(job_id: str, file_type: str) -> Response:
        from sda.errors import FileMissing
        from sda.pipeline import COMPONENTS, EXCEL
        from sda.storage import get_storage

        storage = get_storage(settings)
        job = storage.get_job(job_id) if is_job_id(job_id) else None
        if job is None:
            return _error(404, "JOB_NOT_FOUND", f"no job {job_id!r}", cid)
        if file_type not in ("excel", "components"):
            return _error(404, "UNKNOWN_FILE_TYPE", f"no file type {file_type!r} (excel, components)", cid)
        if job.get("status") != "completed":
            return _error(409, "JOB_NOT_COMPLETED", f"job {job_id} is {job.get('status')}, not completed", cid)
        name = EXCEL if file_type == "excel" else COMPONENTS
        try:
            data = storage.get_file(job, name)
        except FileMissing:
            logger.error("completed job without its output", extra={"job_id": job_id, "file": name})
            return _error(500, "FILE_MISSING", f"the {file_type} file of job {job_id} is missing", cid)
        if file_type == "excel":
            return Response(
                status_code=200,
                content_type=XLSX,
                body=data,
                headers={
                    "X-Correlation-ID": cid,
                    "Content-Disposition": f'attachment; filename="{job_id}_schedule.xlsx"',
                },
            )
        return Response(
            status_code=200,
            content_type=content_types.APPLICATION_JSON,
            body=data.decode(),
            headers={"X-Correlation-ID": cid},
        )

    @app.get("/health")
    def health_basic() -> Response:
        return _json(200, health.basic(settings), cid)

    @app.get("/health/detailed")
    def health_detailed() -> Response:
        code, body = health.detailed(settings)
        return _json(code, body, cid)

    @app.not_found
    def not_found(_: Exception) -> Response:
        return _error(404, "NOT_FOUND", f"no route {event.get('httpMethod')} {event.get('path')}", cid)

    @app.exception_handler(UploadError)
    def upload_error(exc: UploadError) -> Response:
        logger.info("request refused", extra={"status": exc.status, "error_code": exc.code, "reason": str(exc)})
        return _error(exc.status, exc.code, str(exc), cid)

    @app.exception_handler(StorageUnavailable)
    def storage_down(exc: StorageUnavailable) -> Response:
        logger.error("storage unavailable", extra={"reason": str(exc)})
        return _error(503, "STORAGE_UNAVAILABLE", str(exc), cid)

    @app.exception_handler(QueueUnavailable)
    def queue_down(exc: QueueUnavailable) -> Response:
        logger.error("queue unavailable", extra={"reason": str(exc)})
        return _error(503, "QUEUE_UNAVAILABLE", str(exc), cid)

    @app.exception_handler(config.ConfigError)
    def misconfigured(exc: config.ConfigError) -> Response:
        logger.error("misconfigured", extra={"reason": str(exc)})
        return _error(500, "MISCONFIGURED", str(exc), cid)

    @app.exception_handler(Exception)
    def server_fault(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return _error(500, "INTERNAL_ERROR", "internal server error", cid)

    return app


@instrument
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    delay = faults.number("api_latency_ms")
    if delay:
        time.sleep(delay / 1000.0)
    if faults.roll("api_error_rate"):
        raise faults.InjectedFault("injected api fault (SDA_FAULTS=api_error_rate)")
    if not isinstance(event, dict) or "httpMethod" not in event:
        # a direct invocation, e.g. the runbook's `lambda invoke --payload '{"test": true}'`
        try:
            settings = config.load()
            return health.basic(settings)
        except config.ConfigError as exc:
            return {"status": "unhealthy", "error": str(exc)}
    cid = _correlation_id(event)
    bind_context(logger, context, correlation_id=cid)
    try:
        settings = config.load()
    except config.ConfigError as exc:
        logger.error("misconfigured", extra={"reason": str(exc)})
        body = json.dumps(error_body("MISCONFIGURED", str(exc), cid))
        return {
            "statusCode": 500,
            "body": body,
            "isBase64Encoded": False,
            "headers": {"Content-Type": "application/json", "X-Correlation-ID": cid},
        }
    return build_app(settings, cid, event).resolve(event, context)
