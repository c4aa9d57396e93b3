"""The guard: a small function in the stack that never leaves traffic split.

An EventBridge schedule invokes `handler` every minute. It reads the shared control-state table
(`backout_lambda.state_table`) for active deployments whose lease expired more than a grace period
ago — the process that drove them died, and nobody took them over with `backout deployment follow` —
and for each one:

1. takes the lease with a conditional write (fence + 1), so a driver that comes back, or a
   `follow` racing it, is refused instead of both acting;
2. records the deployment as RolledBack (why: whose lease expired when) before touching an alias,
   as backout's deployer does;
3. puts every live alias back on the stable release: `update_alias` to the stable version with no
   routing configuration;
4. opens an incident and notifies.

Standard library and boto3 only (no typer, no rich, no backout): it is packaged into the function
alone. Configuration, from the function's environment:

| variable | meaning |
|---|---|
| `BACKOUT_STATE_TABLE` | the table (the stack's `StateTable`) |
| `BACKOUT_GUARD_GRACE` | seconds after a lease's expiry before the guard acts (default 0) |
| `BACKOUT_NOTIFY_TOPIC` | optional SNS topic ARN: one message per rollback |
| `BACKOUT_NOTIFY_URL` | optional URL: the same notification POSTed as JSON (standard library) |

Notifications use backout's shape (`kind`, `environment`, `severity`, `deployment_id`, `incident_id`,
`reason`, `command`, …) but not apprise, which would not fit this function's package: SNS fans out
to e-mail, chat and pagers, and the URL reaches any webhook. A metric line in the handler wrapper's
EMF shape (`Backout` / `GuardRollbacks` {Environment}) is printed per rollback, so an alarm can page
on the guard having had to act.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backout_lambda import state_table as t

log = logging.getLogger(__name__)
DEFAULT_GRACE = 0.0  # act at the first run after the expiry: split at most lease expiry + one period
LIVE_ALIAS = "live"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The scheduled entry point: roll back every orphaned deployment; returns what it did."""
    import boto3

    table = boto3.resource("dynamodb").Table(os.environ["BACKOUT_STATE_TABLE"])
    grace = float(os.environ.get("BACKOUT_GUARD_GRACE", DEFAULT_GRACE))
    request = getattr(context, "aws_request_id", "") or f"{time.time():.0f}"
    return sweep(table, boto3.client("lambda"), grace=grace, holder=f"guard:{request}",
                 notify=_notifier(os.environ.get("BACKOUT_NOTIFY_TOPIC"), os.environ.get("BACKOUT_NOTIFY_URL")))


def sweep(table: Any, lam: Any, *, grace: float, holder: str, notify: Callable[[dict[str, Any]], None],
          now: Callable[[], float] = time.time, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """One pass: every active deployment whose lease expired more than `grace` seconds ago is rolled back."""
    rolled, skipped = [], []
    for item in _active(table):
        d = t.decode(item)
        expired_for = now() - t.number(item, "expires")
        if expired_for <= grace:
            skipped.append(d["id"])
            continue
        try:
            rolled.append(_roll_back(table, lam, item, d, holder, expired_for, notify, now, emit))
        except Exception as e:  # noqa: BLE001 - one deployment's failure must not spare the others
            if t.condition_failed(e):
                skipped.append(d["id"])  # taken over (by `follow` or another guard) between read and write
                continue
            log.exception("guard: rolling back %s failed", d["id"])
            raise
    return {"rolled_back": rolled, "left": skipped}


def _active(table: Any) -> list[dict[str, Any]]:
    """Active deployments, from the environment locks (one per environment with an active deployment)."""
    from boto3.dynamodb.conditions import Attr

    locks: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"FilterExpression": Attr(t.SK).eq("LOCK")}
    while True:
        page = table.scan(**kwargs)
        locks += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    out = []
    for lock in locks:
        item = table.get_item(Key=t.deployment_key(lock["deployment_id"]), ConsistentRead=True).get("Item")
        if item is not None and item.get("status") in t.ACTIVE_STATUSES:
            out.append(item)
    return out


def _roll_back(table: Any, lam: Any, item: dict[str, Any], d: dict[str, Any], holder: str, expired_for: float,
               notify: Callable[[dict[str, Any]], None], now: Callable[[], float],
               emit: Callable[[str], None]) -> dict[str, Any]:
    did, env = d["id"], d["env"]
    old_holder, fence = d.get("holder", "?"), int(d.get("fence", 0))
    reason = (f"guard: the lease of {old_holder} expired {expired_for:.0f} s ago and nobody took {did} over; "
              f"every live alias back on r{d.get('stable_release')}")
    decided = now()
    # 1 + 2: take the lease and record the decision in one conditional transaction (fence unchanged since read)
    table.meta.client.transact_write_items(TransactItems=[
        {"Update": {
            "TableName": table.name, "Key": (t.deployment_key(did)),
            "UpdateExpression": "SET #s = :rb, holder = :me, fence = :next, expires = :never, reason = :why, "
                                "rollback_decided_at = :now, finished_at = :now",
            "ConditionExpression": "fence = :fence AND expires = :expires AND #s IN (" + ", ".join(
                f":a{i}" for i in range(len(t.ACTIVE_STATUSES))) + ")",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": ({
                ":rb": t.ROLLED_BACK, ":me": holder, ":next": fence + 1, ":never": 0, ":why": reason,
                ":now": t.encode({"x": decided})["x"], ":fence": fence, ":expires": item["expires"],
                **{f":a{i}": s for i, s in enumerate(t.ACTIVE_STATUSES)}}),
        }},
        {"Delete": {"TableName": table.name, "Key": (t.lock_key(env)),
                    "ConditionExpression": "deployment_id = :d",
                    "ExpressionAttributeValues": ({":d": did})}},
    ])
    # 3: every alias to stable, no routing configuration
    functions: dict[str, str] = d.get("functions") or {}
    stable: dict[str, str] = d.get("stable_versions") or {}
    alias = d.get("alias") or LIVE_ALIAS

    def point(fn: str) -> None:
        lam.update_alias(FunctionName=functions[fn], Name=alias, FunctionVersion=str(stable[fn]),
                         RoutingConfig={"AdditionalVersionWeights": {}})

    targets = [fn for fn in functions if fn in stable]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        list(pool.map(point, targets))
    done = now()
    table.update_item(Key=t.deployment_key(did), UpdateExpression="SET rollback_completed_at = :done",
                      ConditionExpression="holder = :me",
                      ExpressionAttributeValues={":done": t.encode({"x": done})["x"], ":me": holder})
    evidence = [f"lease of {old_holder} expired {expired_for:.0f} s before the guard ran (fence {fence})"]
    t.put_event(table, "rolled_back", f"rolled back to r{d.get('stable_release')} by the guard: {reason}",
                deployment_id=did, severity="critical", ts=done,
                data={"trigger": "guard", "reason": reason, "evidence": evidence, "decided_at": decided,
                      "completed_at": done, "holder": old_holder, "functions": sorted(targets)})
    # 4: the incident and its notification
    seq = t.next_id(table, "incident")
    inc = t.incident_record(seq, env, f"{did} rolled back by the guard: its driver stopped renewing the lease",
                            severity="critical", deployment_id=did,
                            trigger={"kind": "guard", "reason": reason, "decided_at": decided, "completed_at": done,
                                     "holder": old_holder},
                            evidence={"alarms": evidence}, opened_at=done)
    t.put_incident(table, inc)
    t.put_event(table, "incident_opened", f"incident {inc['id']} opened for {did} by the guard",
                deployment_id=did, incident_id=inc["id"], severity="critical", ts=now())
    emit(json.dumps({"_aws": {"Timestamp": int(done * 1000), "CloudWatchMetrics": [{
        "Namespace": "Backout", "Dimensions": [["Environment"]],
        "Metrics": [{"Name": "GuardRollbacks", "Unit": "Count", "StorageResolution": 60}]}]},
        "Environment": env, "GuardRollbacks": 1}))
    try:
        notify({"kind": "rolled_back", "environment": env, "severity": "critical", "deployment_id": did,
                "incident_id": inc["id"], "reason": reason, "evidence": evidence, "ts": done,
                "command": f"backout incident show {inc['id']} --env {env}"})
    except Exception:  # noqa: BLE001 - a notification never undoes a rollback
        log.exception("guard: notification for %s failed", did)
    return {"deployment": did, "incident": inc["id"], "seconds": round(done - decided, 3)}


def _notifier(topic: str | None, url: str | None) -> Callable[[dict[str, Any]], None]:
    def send(n: dict[str, Any]) -> None:
        subject = f"[{n['environment']}] {n['deployment_id']} rolled back by the guard ({n['incident_id']})"
        body = json.dumps(n, indent=1)
        if topic:
            import boto3

            boto3.client("sns").publish(TopicArn=topic, Subject=subject[:100], Message=body)
        if url:
            req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the operator's own URL
                resp.read()

    return send
