"""`backout repair --deployment ID`: the data-corruption scenario's repair, job by job.

Finds the jobs the rolled-back version processed (the service records `processed_by`), restores
each to its state in the pre-deployment snapshot (a job submitted after it goes back to queued),
and re-queues them so the stable version reprocesses them. Jobs only the good version handled are
untouched — unlike restoring a whole snapshot, which would lose every job submitted since.

The service owns its schema, so the work happens in its repair function (manifest
`service.repair_function`), invoked through the live alias — the good version's code — with:
  {"repair": "affected", "version": N, "versions": {function: version}}
                                                        → {"jobs": [ids]}
  {"repair": "restore_jobs", "job_ids": [...], "snapshot": LOCATION, "requeue": true}
                                                        → {"restored": [...], "reset": [...], "requeued": [...]}
LOCATION is the platform's `restore_to_side` of the backup, passed on unchanged: a snapshot directory
locally; on AWS a JSON object (as text) naming the side tables restored beside the live ones, the
buckets and the backup's instant. The live tables are never swapped.
"""

from __future__ import annotations

import time
from typing import Any

from backout.control import states as st
from backout.control.deployer import MANUAL
from backout.control.store import ControlStore, Deployment
from backout.errors import OperationFailed, UsageError
from backout.runbooks.context import RunbookContext


def bad_release_and_snapshot(store: ControlStore, env: str, d: Deployment) -> tuple[int, dict[str, str], str]:
    """Which release did the damage (its id and each function's version), and the backup taken
    before it took traffic."""
    if d.strategy == MANUAL:
        bad, versions = d.stable_release, dict(d.stable_versions)
        origin = next(
            (
                x
                for x in store.deployments(env, limit=500)
                if x.status == st.SUCCEEDED and x.target_release == bad and x.strategy != MANUAL
            ),
            None,
        )
        if bad is None or origin is None:
            raise UsageError(f"{d.id} rolled back {d.stable}, but no deployment of it with a backup is recorded")
        snaps = store.snapshots(env, deployment_id=origin.id)
    else:
        if d.status not in (st.ROLLED_BACK, st.STOPPED):
            raise UsageError(f"deployment {d.id} is {d.status}: repair is for a rolled-back release's jobs")
        bad, versions = d.target_release, dict(d.target_versions)
        snaps = store.snapshots(env, deployment_id=d.id)
    if not snaps:
        raise UsageError(f"no pre-deployment backup recorded for r{bad}")
    return int(bad), versions, snaps[0].platform_snapshot_id  # type: ignore[arg-type]


def repair(ctx: RunbookContext, deployment_id: str, dry_run: bool, who: str) -> dict[str, Any]:
    """Restore, job by job, what a rolled-back release wrote, from the backup taken before it took
    traffic; the service's own repair function does the work (backout cannot know its schema)."""
    manifest, platform, store, env = ctx.manifest, ctx.platform, ctx.store, ctx.env
    fn = manifest.service.repair_function
    if fn is None:
        raise UsageError("the manifest names no service.repair_function: backout cannot know which jobs to repair")
    d = store.get(deployment_id)
    bad, versions, snap = bad_release_and_snapshot(store, env, d)
    r = platform.invoke(fn, None, {"repair": "affected", "version": bad, "versions": versions})
    if not r.ok:
        raise OperationFailed(f"repair function {fn} failed listing r{bad}'s jobs: {r.payload}")
    jobs = list(r.payload.get("jobs", []))
    out: dict[str, Any] = {"deployment": d.id, "bad_release": bad, "bad_versions": versions, "snapshot": snap,
                           "jobs": jobs, "dry_run": dry_run}
    if dry_run or not jobs:
        return out
    t0 = time.time()
    r = platform.invoke(
        fn,
        None,
        {"repair": "restore_jobs", "job_ids": jobs, "snapshot": platform.restore_to_side(snap), "requeue": True},
    )
    if not r.ok:
        raise OperationFailed(f"repair function {fn} failed restoring jobs: {r.payload}")
    out.update(r.payload)
    out["seconds"] = round(time.time() - t0, 3)
    msg = (
        f"{who} repaired {len(jobs)} job(s) processed by r{bad}: restored {len(r.payload.get('restored', []))} "
        f"from {snap}, reset {len(r.payload.get('reset', []))}, re-queued {len(r.payload.get('requeued', []))}"
    )
    store.add_event("repair", msg, deployment_id=d.id, severity="warning", data=out)
    inc = store.incident_for_deployment(d.id)
    if inc is not None:
        store.add_incident_note(inc.id, msg, author=who)
    return out
