"""Manual rollback ("2. Manual Rollback" of the procedure, without GitHub Actions or CloudFormation).

During a deployment it stops it with rollback. After one, it puts every live alias back on the
previous stable version (or `--to`): instantly when that version is still warm, else it starts
its workers first and switches only once they answer. The switch is recorded as a deployment
(strategy `ManualRollback`) so history, `verify` and a restarted supervisor all agree on which
version should be live; an incident records who and why.
"""

from __future__ import annotations

import time
from typing import Any

from backout.control import store as st
from backout.control.deployer import Deployer
from backout.control.notify import Notification, Notifier
from backout.control.store import Store
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.platforms.base import Platform

MANUAL = "ManualRollback"


def live_version(platform: Platform) -> int:
    w = platform.get_weights(platform.functions()[0])
    if w.canary is not None and w.canary_weight >= 100:
        return w.canary
    return w.stable


def previous_version(store: Store, env: str, current: int, known: list[int]) -> int:
    """The version that was stable before `current` went live. A manual rollback that made `current` live
    does not count: its "stable" is the version rolled away from, and going back there is rolling forward."""
    for d in store.deployments(env, limit=200):
        if d.strategy == MANUAL:
            continue
        if d.status == st.SUCCEEDED and d.target_version == current and d.stable_version not in (None, current):
            return int(d.stable_version)  # type: ignore[arg-type]
    older = [v for v in known if v < current]
    if not older:
        raise UsageError(f"v{current} is the first version: there is nothing to roll back to")
    return max(older)


def manual_rollback(
    *,
    env: str,
    service: str,
    platform: Platform,
    store: Store,
    deployer: Deployer,
    notifier: Notifier,
    reason: str,
    who: str,
    to: int | None = None,
) -> dict[str, Any]:
    if not reason.strip():
        raise UsageError("--reason is required: say why you roll back (it goes into the incident)")
    known = [v.version for v in platform.versions()]
    if to is not None and to not in known:
        raise UsageError(f"unknown version {to} (published: {', '.join(map(str, known))})")
    active = store.active_deployment(env)
    if active is not None and (to is None or to == active.stable_version):
        d = deployer.stop(active.id, rollback=True, reason=f"manual rollback by {who}: {reason}", who=who)
        if d.status == st.SUCCEEDED:  # it finished just before the stop: roll back from what it made live
            return manual_rollback(env=env, service=service, platform=platform, store=store, deployer=deployer,
                                   notifier=notifier, reason=reason, who=who, to=d.stable_version)
        inc = store.incident_for_deployment(d.id)
        return {
            "mode": "stopped deployment",
            "deployment": d.id,
            "from": d.target_version,
            "to": d.stable_version,
            "incident": inc.id if inc else None,
            "warm": True,
            "switch_ms": None
            if not (d.rollback_completed_at and d.rollback_decided_at)
            else round(1000 * (d.rollback_completed_at - d.rollback_decided_at), 1),
        }
    if active is not None:
        deployer.stop(active.id, rollback=True, reason=f"manual rollback to v{to} by {who}: {reason}", who=who)
    current = live_version(platform)
    w = platform.get_weights(platform.functions()[0])
    if to is None and w.canary is not None and 0 < w.canary_weight < 100:
        # traffic is split (a deployment stopped without rollback): back out the canary, keep the stable
        current, target = w.canary, w.stable
    else:
        target = to if to is not None else previous_version(store, env, current, known)
    if target == current and all(platform.get_weights(f).versions == {target: 100.0} for f in platform.functions()):
        raise UsageError(f"v{target} is already live in {env}")
    decided = time.time()
    fns = platform.functions()
    warm = all(platform.is_warm(fn, target) for fn in fns)
    for fn in fns:  # cold target: start its workers and switch only once they answer
        platform.warm(fn, target)
    warmed = time.time()
    d = store.create_deployment(
        env,
        current,
        target,
        Strategy(MANUAL, (Step(100.0, 0.0),)),
        description=f"manual rollback: {reason}",
        created_by=who,
    )
    t0 = time.perf_counter()
    for fn in fns:
        platform.set_weights(fn, target)
    switch_ms = (time.perf_counter() - t0) * 1000
    done = time.time()
    d = store.transition(
        d.id,
        st.SUCCEEDED,
        current_step=0,
        current_weight=100.0,
        reason=reason,
        rollback_decided_at=decided,
        rollback_completed_at=done,
    )
    store.add_event(
        "manual_rollback",
        f"{who} rolled back v{current} → v{target} "
        f"({'warm' if warm else f'cold: workers started in {warmed - decided:.1f} s'}, "
        f"switch {switch_ms:.1f} ms): {reason}",
        deployment_id=d.id,
        severity="critical",
        data={"from": current, "to": target, "who": who, "reason": reason, "warm": warm, "switch_ms": switch_ms},
    )
    inc = store.open_incident(
        env,
        f"manual rollback v{current} → v{target}: {reason}",
        severity="critical",
        deployment_id=d.id,
        trigger={"kind": "manual", "reason": reason, "who": who, "decided_at": decided, "completed_at": done},
        evidence={"alarms": [f"operator {who}: {reason}"]},
    )
    notifier.notify(
        Notification(
            kind="rolled_back",
            environment=env,
            service=service,
            deployment_id=d.id,
            stable_version=target,
            target_version=current,
            reason=f"manual: {reason} ({who})",
            incident_id=inc.id,
            command=f"backout incident show {inc.id} --env {env}",
        )
    )
    return {
        "mode": "rollback",
        "deployment": d.id,
        "from": current,
        "to": target,
        "incident": inc.id,
        "warm": warm,
        "switch_ms": round(switch_ms, 1),
        "warm_seconds": round(warmed - decided, 3),
    }
