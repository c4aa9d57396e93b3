"""Backups of the service's data and their restore ("4. Restore data from backups").

Every deployment snapshots the data before any traffic shifts; operators can take one at any
time. Restoring a whole snapshot silently loses every job submitted since, so `restore` first asks
the service how many jobs it would drop and refuses without `--yes`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from backout.control.store import ControlStore
from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.base import Platform
from backout.runbooks.context import RunbookContext


def create(ctx: RunbookContext, label: str) -> dict[str, Any]:
    platform, store, env = ctx.platform, ctx.store, ctx.env
    s = platform.backup(label=label or "manual backup")
    rec = store.record_snapshot(env, s.id, label=label or "manual backup")
    return {"id": rec.id, "snapshot": s.id, "created_at": s.created_at, "label": rec.label, "detail": s.detail}


def list_backups(ctx: RunbookContext) -> list[dict[str, Any]]:
    platform, store, env = ctx.platform, ctx.store, ctx.env
    by_platform = {s.id: s for s in platform.backups()}
    out = []
    for rec in store.snapshots(env):
        s = by_platform.get(rec.platform_snapshot_id)
        out.append({**asdict(rec), "available": s is not None, "detail": s.detail if s else {}})
    return sorted(out, key=lambda r: r["created_at"])


def resolve(store: ControlStore, env: str, backup_id: str) -> str:
    """A backup id (`snap-0003`) or a platform snapshot id → the platform snapshot id."""
    for rec in store.snapshots(env):
        if backup_id in (rec.id, rec.platform_snapshot_id):
            return rec.platform_snapshot_id
    raise UsageError(f"no backup {backup_id!r} in {env} (see `backout backup list --env {env}`)")


def restore(ctx: RunbookContext, backup_id: str, yes: bool, who: str) -> dict[str, Any]:
    manifest, platform, store, env = ctx.manifest, ctx.platform, ctx.store, ctx.env
    sid = resolve(store, env, backup_id)
    diff = service_diff(manifest, platform, sid)
    if not yes:
        dropped = diff.get("only_current")
        what = (
            f"{dropped} job(s) submitted since the backup would be lost"
            if dropped is not None
            else "data written since the backup would be lost"
            + (f" (the service could not count it: {diff['error']})" if diff.get("error") else "")
        )
        raise UsageError(
            f"restoring {backup_id} replaces all data: {what}; to repair only a bad version's jobs use "
            f"`backout repair --deployment ID`; to restore anyway add --yes"
        )
    was_processing = platform.get_processing()
    ctx.traffic.set_processing(False, who, f"restoring backup {backup_id}")  # no worker writes during the swap
    t0 = time.time()
    try:
        platform.restore(sid)
    finally:
        ctx.traffic.set_processing(was_processing, who, f"restored backup {backup_id}")
    store.add_event(
        "backup_restored",
        f"{who} restored backup {backup_id} ({sid}); {diff}",
        severity="warning",
        data={"backup": backup_id, "snapshot": sid, "diff": diff, "who": who},
    )
    return {"restored": backup_id, "snapshot": sid, "diff": diff, "seconds": round(time.time() - t0, 3)}


def service_diff(manifest: Manifest, platform: Platform, snapshot_id: str) -> dict[str, Any]:
    """Ask the service (its repair function) what differs between now and the snapshot."""
    fn = manifest.service.repair_function
    if fn is None:
        return {}
    r = platform.invoke(fn, None, {"repair": "diff", "snapshot": platform.restore_to_side(snapshot_id)})
    if not r.ok or not isinstance(r.payload, dict):
        return {"error": str(r.payload)[:300]}
    return r.payload
