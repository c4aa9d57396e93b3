"""The repair function: the service's half of backout's data-repair runbook.

backout knows which version was bad and which snapshot was taken before it took traffic; only the
service knows its schema. So backout invokes this function (through the live alias: the good
version's code) with:

  {"repair": "affected", "version": N, "versions": {fn: v}}
                                            → {"jobs": [job ids a function processed with its bad version]}
  {"repair": "diff", "snapshot": SIDE}      → how the jobs now differ from a snapshot
  {"repair": "restore_jobs", "job_ids": [...], "snapshot": SIDE, "requeue": true}
        a job the snapshot holds as completed gets that record and its output files back;
        any other job (queued in the snapshot, or submitted after it) is reset to queued and
        re-sent to the processing queue, so the stable version redoes it.

`SIDE` is where the platform restored the backup beside the live data (`restore_to_side`): a
snapshot directory of the data dir locally; on AWS a JSON object naming the side table restored
from the jobs table's backup, the files bucket and the backup's instant (the bucket's object
versions current then). Both are read through one `SideCopy` interface, so the repair below is the
same on both; the live table is written job by job, never swapped. Jobs only the good version
handled are never touched.
"""

from __future__ import annotations

from typing import Any

from backout_lambda import instrument
from sda import config
from sda.jobs import queue_message, reset_for_reprocessing
from sda.observability import bind_context, make_logger
from sda.queue import get_queue
from sda.storage import Storage, get_storage, open_side_copy
from sda.storage.base import SideCopy

logger = make_logger("sda-repair")


def _affected(storage: Storage, event: dict[str, Any]) -> list[dict[str, Any]]:
    """Jobs a bad release processed. With `versions` ({function: version}, as backout sends: Lambda
    numbers versions per function) a job counts when the function that processed it ran that
    function's bad version; with `version` alone, when its processed_by.version is that number."""
    versions = event.get("versions")
    if not versions:
        return storage.jobs_processed_by(event["version"])
    out: dict[str, dict[str, Any]] = {}
    for fn, v in versions.items():
        for j in storage.jobs_processed_by(v):
            by = j.get("processed_by") or {}
            if by.get("function") in (fn, None, "") or by.get("function") not in versions:
                out[j["job_id"]] = j
    return list(out.values())


@instrument
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    bind_context(logger, context)
    settings = config.load()
    action = event.get("repair") if isinstance(event, dict) else None
    if action is None:
        return {"status": "ok", "function": "repair", "version": settings.function_version}
    storage = get_storage(settings)
    if action == "affected":
        return {"jobs": sorted(j["job_id"] for j in _affected(storage, event))}
    if action == "diff":
        snap = {j["job_id"]: j for j in open_side_copy(settings, event["snapshot"]).list_jobs()}
        current = {j["job_id"]: j for j in storage.list_jobs(limit=10**9)}  # every job: the limit is an int
        return {
            "only_current": len(set(current) - set(snap)),
            "only_snapshot": len(set(snap) - set(current)),
            "changed": sum(1 for k in set(current) & set(snap) if current[k] != snap[k]),
            "jobs_now": len(current),
            "jobs_in_snapshot": len(snap),
        }
    if action == "restore_jobs":
        return _restore(storage, open_side_copy(settings, event["snapshot"]), settings, event)
    raise ValueError(f"unknown repair action {action!r}")


def _restore(storage: Storage, side: SideCopy, settings: config.Settings, event: dict[str, Any]) -> dict[str, Any]:
    queue = get_queue(settings)
    restored, reset, requeued, missing = [], [], [], []
    for job_id in event["job_ids"]:
        current = storage.get_job(job_id)
        old = side.get_job(job_id)
        if current is None and old is None:
            missing.append(job_id)
            continue
        if old is not None and old.get("status") == "completed":
            for name, data in side.job_files(old).items():  # outputs and checkpoints
                storage.put_file(old, name, data)
            storage.put_job(old)
            restored.append(job_id)
            continue
        base = old if old is not None else current
        job = reset_for_reprocessing(
            base, reason="data repair: processed by a rolled-back version", by=f"repair v{settings.function_version}"
        )
        storage.put_job(job)
        reset.append(job_id)
        if event.get("requeue", True):
            queue.send(queue_message(job))
            requeued.append(job_id)
    logger.info("repair done", extra={"restored": len(restored), "reset": len(reset), "missing": len(missing)})
    return {"restored": restored, "reset": reset, "requeued": requeued, "missing": missing}
