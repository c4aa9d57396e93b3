"""`backout repair --deployment ID`: the data-corruption scenario's repair, job by job.

Finds the jobs the rolled-back version processed (the service records `processed_by`), restores
each to its state in the pre-deployment snapshot (a job submitted after it goes back to queued),
and re-queues them so the stable version reprocesses them. Jobs only the good version handled are
untouched — unlike restoring a whole snapshot, which would lose every job submitted since.

The service owns its schema, so the work happens in its repair function (manifest
`service.repair_function`), invoked through the live alias — the good version's code — with:
  {"repair": "affected", "version": N}                  → {"jobs": [ids]}
  {"repair": "restore_jobs", "job_ids": [...], "snapshot": LOCATION, "requeue": true}
                                                        → {"restored": [...], "reset": [...], "requeued": [...]}
"""

from __future__ import annotations

import time
from typing import Any

from backout.control import store as st
from backout.control.store import Deployment, Store
from backout.errors import OperationFailed, UsageError
from backout.manifest import Manifest
from backout.platforms.base import Platform
from backout.runbooks.rollback import MANUAL


def bad_version_and_snapshot(store: Store, env: str, d: Deployment) -> tuple[int, str]:
    """Which version did the damage, and the snapshot taken before it took traffic."""
    if d.strategy == MANUAL:
        bad = d.stable_version
        origin = next(
            (
                x
                for x in store.deployments(env, limit=500)
                if x.status == st.SUCCEEDED and x.target_version == bad and x.strategy != MANUAL
            ),
            None,
        )
        if bad is None or origin is None:
            raise UsageError(f"{d.id} rolled back v{bad}, but no deployment of v{bad} with a snapshot is recorded")
        snaps = store.snapshots(env, deployment_id=origin.id)
    else:
        if d.status not in (st.ROLLED_BACK, st.STOPPED):
            raise UsageError(f"deployment {d.id} is {d.status}: repair is for a rolled-back version's jobs")
        bad = d.target_version
        snaps = store.snapshots(env, deployment_id=d.id)
    if not snaps:
        raise UsageError(f"no pre-deployment snapshot recorded for v{bad}")
    return int(bad), snaps[0].platform_snapshot_id  # type: ignore[arg-type]


def repair(
    manifest: Manifest, platform: Platform, store: Store, env: str, deployment_id: str, dry_run: bool, who: str
) -> dict[str, Any]:
    fn = manifest.service.repair_function
    if fn is None:
        raise UsageError("the manifest names no service.repair_function: backout cannot know which jobs to repair")
    d = store.get(deployment_id)
    bad, snap = bad_version_and_snapshot(store, env, d)
    r = platform.invoke(fn, None, {"repair": "affected", "version": bad})
    if not r.ok:
        raise OperationFailed(f"repair function {fn} failed listing v{bad}'s jobs: {r.payload}")
    jobs = list(r.payload.get("jobs", []))
    out: dict[str, Any] = {"deployment": d.id, "bad_version": bad, "snapshot": snap, "jobs": jobs, "dry_run": dry_run}
    if dry_run or not jobs:
        return out
    t0 = time.time()
    r = platform.invoke(
        fn,
        None,
        {"repair": "restore_jobs", "job_ids": jobs, "snapshot": platform.snapshot_location(snap), "requeue": True},
    )
    if not r.ok:
        raise OperationFailed(f"repair function {fn} failed restoring jobs: {r.payload}")
    out.update(r.payload)
    out["seconds"] = round(time.time() - t0, 3)
    msg = (
        f"{who} repaired {len(jobs)} job(s) processed by v{bad}: restored {len(r.payload.get('restored', []))} "
        f"from {snap}, reset {len(r.payload.get('reset', []))}, re-queued {len(r.payload.get('requeued', []))}"
    )
    store.add_event("repair", msg, deployment_id=d.id, severity="warning", data=out)
    inc = store.incident_for_deployment(d.id)
    if inc is not None:
        store.add_incident_note(inc.id, msg, author=who)
    return out
