"""The job record: ids, stages, progress and the public status view.

A job is a plain dict (JSON-serialisable) so that both storages keep it
wholesale and the data-repair runbook can read and rewrite it without this
package. Fields:

    job_id, company_client_job, company_id, client_name, project_name,
    client_slug, project_slug, status, created_at, updated_at,
    current_stage, stages_completed, stages {stage: {started_at, completed_at, duration_ms}},
    input_files {drawing: {name, original_name, size, pages}, context: {...}|None, context_text: {...}|None},
    output_files {excel, components, evaluation}, summary, components_count,
    error {message, stage, failed_at, code, reason}, processed_by {version, function, at},
    submitted_by {version, function, at}, attempts [..], dead_letter {...}, correlation_id
"""

from __future__ import annotations

import re
import secrets
import string
import unicodedata
from datetime import UTC, datetime
from typing import Any

from sda.config import COMPANY_ID

STATUSES = ("queued", "processing", "completed", "failed")
STAGES = ("pdf_processing", "context_processing", "drawing_analysis", "excel_generation", "evaluation")
STEP_TEXT = {
    "queued": "Waiting in queue",
    "pdf_processing": "Reading the PDF",
    "context_processing": "Reading the context",
    "drawing_analysis": "Analysing the drawing",
    "excel_generation": "Generating the Excel schedule",
    "evaluation": "Evaluating the results",
    "completed": "Completed",
}
JOB_ID_RE = re.compile(r"^job_\d{17}_[a-z0-9]{4}$")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds: sortable as text (the GSIs' sort key)."""
    ts = ts or now()
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def new_job_id(ts: datetime | None = None) -> str:
    """`job_YYYYMMDDHHMMSSmmm_xxxx`; the random suffix makes collisions rare and the storage's
    unique insert makes them impossible (the caller retries with a new id)."""
    ts = ts or now()
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(4))
    return f"job_{ts.strftime('%Y%m%d%H%M%S')}{ts.microsecond // 1000:03d}_{suffix}"


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_RE.match(value))


def slug(value: str, fallback: str = "unnamed") -> str:
    """A safe single path component: lowercase ascii, digits, `_`; never `.` or `/`."""
    text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return text[:64] or fallback


def new_job(
    job_id: str,
    client_name: str,
    project_name: str,
    *,
    created: datetime | None = None,
    correlation_id: str = "",
    submitted_by: dict[str, Any] | None = None,
) -> dict[str, Any]:
    created_at = iso(created)
    client_slug = slug(client_name)
    return {
        "job_id": job_id,
        "company_client_job": f"{COMPANY_ID}#{client_slug}#{job_id}",
        "company_id": COMPANY_ID,
        "client_name": client_name,
        "project_name": project_name,
        "client_slug": client_slug,
        "project_slug": slug(project_name),
        "status": "queued",
        "created_at": created_at,
        "updated_at": created_at,
        "current_stage": None,
        "stages_completed": [],
        "stages": {},
        "input_files": {},
        "output_files": {},
        "summary": None,
        "components_count": None,
        "error": None,
        "processed_by": None,
        "submitted_by": submitted_by,
        "attempts": [],
        "dead_letter": None,
        "correlation_id": correlation_id,
    }


def planned_stages(job: dict[str, Any]) -> list[str]:
    """The stages this job runs: context_processing only when there is context."""
    files = job.get("input_files") or {}
    has_context = bool(files.get("context") or files.get("context_text"))
    return [s for s in STAGES if s != "context_processing" or has_context]


def progress(job: dict[str, Any]) -> dict[str, Any]:
    """0 queued, 10..90 while processing (by stages done), 100 completed."""
    status = job.get("status")
    if status == "queued":
        return {"percentage": 0, "current_step": STEP_TEXT["queued"]}
    if status == "completed":
        return {"percentage": 100, "current_step": STEP_TEXT["completed"]}
    planned = planned_stages(job)
    done = len([s for s in planned if s in (job.get("stages_completed") or [])])
    pct = min(90, 10 + (80 * done) // max(1, len(planned)))
    stage = job.get("current_stage")
    if status == "failed":
        err = job.get("error") or {}
        where = err.get("stage") or stage or "unknown stage"
        return {"percentage": pct, "current_step": f"Failed at {where}"}
    return {"percentage": pct, "current_step": STEP_TEXT.get(stage or "", "Starting")}


def status_view(job: dict[str, Any], url_prefix: str = "") -> dict[str, Any]:
    """The body of `GET /status/{job_id}`."""
    job_id = job["job_id"]
    files: dict[str, Any] = {}
    outputs = job.get("output_files") or {}
    if job.get("status") == "completed" and outputs.get("excel"):
        files["excel"] = {"download_url": f"{url_prefix}/download/{job_id}/excel"}
    if job.get("status") == "completed" and outputs.get("components"):
        files["components"] = {
            "count": job.get("components_count") or 0,
            "download_url": f"{url_prefix}/download/{job_id}/components",
        }
    err = job.get("error")
    processed_by = job.get("processed_by")
    return {
        "job_id": job_id,
        "status": job.get("status"),
        "client_name": job.get("client_name"),
        "project_name": job.get("project_name"),
        "created_at": job.get("created_at"),
        "updated_at": job.get("updated_at"),
        "current_stage": job.get("current_stage"),
        "stages_completed": list(job.get("stages_completed") or []),
        "progress": progress(job),
        "files": files,
        "summary": job.get("summary"),
        "error": (
            {
                "message": err.get("message"),
                "stage": err.get("stage"),
                "failed_at": err.get("failed_at"),
                "code": err.get("code"),
                "reason": err.get("reason"),
            }
            if err
            else None
        ),
        "processed_by": dict(processed_by) if processed_by else None,
    }


def queue_message(job: dict[str, Any]) -> str:
    """The processing queue's message body for a job (what the api sends; what a repair re-sends)."""
    import json

    return json.dumps(
        {
            "job_id": job["job_id"],
            "company_client_job": job["company_client_job"],
            "correlation_id": job.get("correlation_id") or "",
            "submitted_at": job["created_at"],
        }
    )


def reset_for_reprocessing(job: dict[str, Any], reason: str, by: str = "") -> dict[str, Any]:
    """A copy of `job` back in `queued` with its results cleared, for the data-repair runbook:
    `put_job` it and send `queue_message` again, and the worker redoes every stage (attempts and
    earlier repairs are kept as history)."""
    previous = {
        "at": iso(),
        "reason": reason,
        "by": by,
        "previous_status": job.get("status"),
        "previous_processed_by": job.get("processed_by"),
        "previous_summary": job.get("summary"),
    }
    return {
        **job,
        "status": "queued",
        "updated_at": iso(),
        "current_stage": None,
        "stages_completed": [],
        "stages": {},
        "output_files": {},
        "summary": None,
        "components_count": None,
        "error": None,
        "dead_letter": None,
        "processed_by": None,
        "repairs": list(job.get("repairs") or []) + [previous],
    }
