"""The guard: a small function in the stack that never leaves traffic split.

An EventBridge schedule invokes `handler` every minute. It reads the shared control-state table
(`backout_lambda.state_table`) for the deployments the environment locks point at, and acts on two
kinds:

- an active one whose lease expired more than a grace period ago — the process that drove it died,
  and nobody took it over with `backout deployment follow`;
- a RolledBack one whose rollback never completed (no `rollback_completed_at`) and whose lease
  expired — an earlier guard run, or the backout process that decided the rollback, stopped before
  every alias was back on stable. The environment lock stays until the rollback completes, so such
  a deployment is still found here (and a new deployment is refused meanwhile).

For each one it:

1. takes the lease with a conditional write (fence + 1, its own expiry of `WORK_LEASE`), so a driver
   that comes back, a `follow` or another guard run racing it is refused instead of both acting; an
   active deployment is recorded RolledBack (why: whose lease expired when) in the same write,
   before an alias is touched, as backout's deployer does;
2. puts every live alias back on the stable release: `update_alias` to the stable version with no
   routing configuration (all of them, even when one fails; repeating it is harmless);
3. records the `rolled_back` event and opens the incident, each once (a retry finds them), and
   notifies;
4. records `rollback_completed_at` and deletes the environment lock in one transaction.

A step that fails (an `update_alias` refused or throttled) leaves the deployment RolledBack without
completion and the lock in place; the run gives its lease back and fails (an error of the function),
and the next run finishes the rollback from step 1.

Standard library and boto3 only (no typer, no rich, no backout): it is packaged into the function
alone. Configuration, from the function's environment:

| variable | meaning |
|---|---|
| `BACKOUT_STATE_TABLE` | the table (the stack's `StateTable`) |
| `BACKOUT_GUARD_GRACE` | seconds after a lease's expiry before the guard acts (default 0) |
| `BACKOUT_NOTIFY_TOPIC` | optional SNS topic ARN: one message per rollback |
| `BACKOUT_NOTIFY_URL` | optional URL: the same notification POSTed as JSON (standard library) |

The locks are found with a Query of the `by_kind` index (`record = "lock"`), not a Scan of the table,
whose events and alarm evaluations grow with every deployment: backout writes each lock with
`record` and `seq`. A lock written by a backout older than that has neither and is not seen.

Notifications use backout's shape (`kind`, `environment`, `severity`, `deployment_id`, `incident_id`,
`reason`, `command`, …) but not apprise, which would not fit this function's package: SNS fans out
to e-mail, chat and pagers, and the URL reaches any webhook. A metric line in the handler wrapper's
EMF shape (`Backout` / `GuardRollbacks` {Environment}) is printed per completed rollback, so an alarm
can page on the guard having had to act.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backout_lambda import state_table as t

log = logging.getLogger(__name__)
DEFAULT_GRACE = 0.0  # act at the first run after the expiry: split at most lease expiry + one period
LIVE_ALIAS = "live"


WORK_LEASE = 60.0  # the guard's own lease on a rollback it carries out: its function's Timeout (template.yaml)
LOCK_RECORD = "lock"  # the `record` of an environment lock: the `by_kind` index lists them


class Incomplete(RuntimeError):
    """A rollback this run left unfinished: the invocation fails (the function's Errors metric), and the
    next run finishes it."""


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The scheduled entry point: roll back every orphaned deployment; returns what it did."""
    import boto3

    table = boto3.resource("dynamodb").Table(os.environ["BACKOUT_STATE_TABLE"])
    grace = float(os.environ.get("BACKOUT_GUARD_GRACE", DEFAULT_GRACE))
    request = getattr(context, "aws_request_id", "") or f"{time.time():.0f}"
    out = sweep(table, boto3.client("lambda"), grace=grace, holder=f"guard:{request}",
                notify=_notifier(os.environ.get("BACKOUT_NOTIFY_TOPIC"), os.environ.get("BACKOUT_NOTIFY_URL")))
    if out["failed"]:
        raise Incomplete(f"guard: the rollback of {', '.join(out['failed'])} did not complete (done: "
                         f"{[r['deployment'] for r in out['rolled_back']]}); the next run finishes it")
    return out


def sweep(table: Any, lam: Any, *, grace: float, holder: str, notify: Callable[[dict[str, Any]], None],
          now: Callable[[], float] = time.time, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """One pass: every active deployment whose lease expired more than `grace` seconds ago is rolled back,
    and every rollback left unfinished is finished. One deployment's failure spares none of the others."""
    rolled: list[dict[str, Any]] = []
    skipped: list[str] = []
    failed: list[str] = []
    for item in _locked(table):
        d = t.decode(item)
        did = d["id"]
        try:
            if d.get("status") in t.ACTIVE_STATUSES:
                expired_for = now() - t.number(item, "expires")
                if expired_for <= grace:
                    skipped.append(did)
                    continue
                item = _decide(table, item, d, holder, expired_for, now())
            elif d.get("status") == t.ROLLED_BACK and d.get("rollback_completed_at") is None:
                if now() < t.number(item, "expires"):
                    skipped.append(did)  # its driver (a backout process, another guard run) is at it
                    continue
                item = _resume(table, item, d, holder, now())
            else:
                continue  # the index lags a lock's deletion: this one is over
        except Exception as e:  # noqa: BLE001 - one deployment's failure must not spare the others
            if t.condition_failed(e):
                skipped.append(did)  # taken over (by `follow` or another guard) between read and write
            else:
                log.exception("guard: taking %s failed", did)
                failed.append(did)
            continue
        try:
            rolled.append(_finish(table, lam, item, holder, notify, now, emit))
        except Exception as e:  # noqa: BLE001 - as above; the lock stays, so the next run finds it again
            if t.condition_failed(e):
                skipped.append(did)  # this run was slower than its lease: another run took it
                continue
            log.exception("guard: the rollback of %s did not complete; the next run finishes it", did)
            failed.append(did)
            _give_back(table, item, holder, now())
    return {"rolled_back": rolled, "left": skipped, "failed": failed}


def _locked(table: Any) -> list[dict[str, Any]]:
    """The deployments the environment locks point at (a Query of the `by_kind` index: the locks only,
    not the table's events), each read consistently."""
    from boto3.dynamodb.conditions import Key

    out = []
    kwargs: dict[str, Any] = {"IndexName": t.KIND_INDEX, "KeyConditionExpression": Key("record").eq(LOCK_RECORD)}
    while True:
        page = table.query(**kwargs)
        for lock in page.get("Items", []):
            item = table.get_item(Key=t.deployment_key(lock["deployment_id"]), ConsistentRead=True).get("Item")
            if item is not None:
                out.append(item)
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _active_values() -> dict[str, str]:
    return {f":a{i}": s for i, s in enumerate(t.ACTIVE_STATUSES)}


def _decide(table: Any, item: dict[str, Any], d: dict[str, Any], holder: str, expired_for: float,
            at: float) -> dict[str, Any]:
    """Take the lease and record the deployment RolledBack, in one conditional write (fence unchanged
    since read); the lock stays until the rollback completes. Returns the item as written."""
    did, fence, old = d["id"], int(d.get("fence", 0)), d.get("holder", "?")
    reason = (f"guard: the lease of {old} expired {expired_for:.0f} s ago and nobody took {did} over; "
              f"every live alias back on r{d.get('stable_release')}")
    why = json.dumps({"holder": old, "fence": fence, "expired_for": round(expired_for, 3), "decided": True})
    got = table.update_item(
        Key=t.deployment_key(did),
        UpdateExpression="SET #s = :rb, holder = :me, fence = :next, expires = :until, reason = :why, "
                         "rollback_decided_at = :now, finished_at = :now, guard_took = :guard",
        ConditionExpression="fence = :fence AND expires = :expires AND #s IN (" + ", ".join(_active_values()) + ")",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":rb": t.ROLLED_BACK, ":me": holder, ":next": fence + 1, ":why": reason, ":guard": why,
            **t.encode({":until": at + WORK_LEASE, ":now": at}), ":fence": fence, ":expires": item["expires"],
            **_active_values()},
        ReturnValues="ALL_NEW")
    return got["Attributes"]


def _resume(table: Any, item: dict[str, Any], d: dict[str, Any], holder: str, at: float) -> dict[str, Any]:
    """Take the lease of a rollback left unfinished (by an earlier run, or by the backout process that
    decided it): conditioned on its fence and on it still being unfinished."""
    fence = int(d.get("fence", 0))
    expired_for = at - t.number(item, "expires")
    why = json.dumps({"holder": d.get("holder", "?"), "fence": fence, "expired_for": round(expired_for, 3),
                      "decided": False})
    got = table.update_item(
        Key=t.deployment_key(d["id"]),
        UpdateExpression="SET holder = :me, fence = :next, expires = :until, "
                         "guard_took = if_not_exists(guard_took, :guard)",
        ConditionExpression="fence = :fence AND expires = :expires AND #s = :rb "
                            "AND attribute_not_exists(rollback_completed_at)",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":me": holder, ":next": fence + 1, ":guard": why, ":rb": t.ROLLED_BACK,
                                   **t.encode({":until": at + WORK_LEASE}), ":fence": fence,
                                   ":expires": item["expires"]},
        ReturnValues="ALL_NEW")
    return got["Attributes"]


def _give_back(table: Any, item: dict[str, Any], holder: str, at: float) -> None:
    """Let this run's lease expire now, so that the next run (or Lambda's retry) need not wait for it."""
    try:
        table.update_item(Key=t.deployment_key(str(item["id"])), UpdateExpression="SET expires = :now",
                          ConditionExpression="holder = :me AND fence = :f",
                          ExpressionAttributeValues={**t.encode({":now": at}), ":me": holder, ":f": item["fence"]})
    except Exception:  # noqa: BLE001 - it then expires by itself, WORK_LEASE later
        log.exception("guard: giving back the lease of %s failed", item["id"])


def _finish(table: Any, lam: Any, item: dict[str, Any], holder: str, notify: Callable[[dict[str, Any]], None],
            now: Callable[[], float], emit: Callable[[str], None]) -> dict[str, Any]:
    """Steps 2-4 on a deployment this run holds: every step is harmless to repeat, the records are
    written once and only while this run still holds the lease."""
    d = t.decode(item)
    did, env, fence = d["id"], d["env"], int(d["fence"])
    took = json.loads(d.get("guard_took") or "{}")
    old_holder, expired_for = took.get("holder", "?"), float(took.get("expired_for", 0.0))
    by_guard = bool(took.get("decided"))
    decided = float(d.get("rollback_decided_at") or now())
    reason = str(d.get("reason") or "")
    # 2: every alias to stable, no routing configuration; each one tried even when another fails
    functions: dict[str, str] = d.get("functions") or {}
    stable: dict[str, str] = d.get("stable_versions") or {}
    alias = d.get("alias") or LIVE_ALIAS
    targets = [fn for fn in functions if fn in stable]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        moves = [pool.submit(lam.update_alias, FunctionName=functions[fn], Name=alias,
                             FunctionVersion=str(stable[fn]), RoutingConfig={"AdditionalVersionWeights": {}})
                 for fn in targets]
    for move in moves:
        move.result()
    done = now()
    # 3: the records, once each
    if by_guard:
        evidence = [f"lease of {old_holder} expired {expired_for:.0f} s before the guard ran "
                    f"(fence {took.get('fence')})"]
        message = f"rolled back to r{d.get('stable_release')} by the guard: {reason}"
        title = f"{did} rolled back by the guard: its driver stopped renewing the lease"
    else:
        evidence = [f"{old_holder} recorded the rollback but stopped before every alias was back on stable; "
                    f"its lease expired {expired_for:.0f} s before the guard ran (fence {took.get('fence')})"]
        message = f"rollback to r{d.get('stable_release')} completed by the guard: {reason}"
        title = f"{did} rolled back: {reason} (completed by the guard: its driver stopped)"
    if not _has_event(table, did, "rolled_back"):
        _fenced(table, did, holder, fence, _event_item(
            table, "rolled_back", message, did, None, done,
            {"trigger": "guard", "reason": reason, "evidence": evidence, "decided_at": decided,
             "completed_at": done, "holder": old_holder, "functions": sorted(targets)}))
    incident = _incident_of(table, did)
    if incident is None:
        seq = t.next_id(table, "incident")
        inc = t.incident_record(seq, env, title, severity="critical", deployment_id=did,
                                trigger={"kind": "guard", "reason": reason, "decided_at": decided,
                                         "completed_at": done, "holder": old_holder},
                                evidence={"alarms": evidence}, opened_at=done)
        try:  # as the deployment's one rollback incident
            _fenced(table, did, holder, fence,
                    _event_item(table, "incident_opened", f"incident {inc['id']} opened for {did} by the guard",
                                did, inc["id"], now(), None),
                    puts=t.incident_puts(table, inc, rollback=True))
            incident = inc["id"]
        except Exception as e:  # a restarted driver finishing the same rollback opened it first: take that one
            first = t.taken_by(table, did, e)
            if first is None:
                raise
            incident = first
    if "guard_notified" not in item:  # at least once: a run stopped after this notifies again
        try:
            notify({"kind": "rolled_back", "environment": env, "severity": "critical", "deployment_id": did,
                    "incident_id": incident, "reason": reason, "evidence": evidence, "ts": done,
                    "command": f"backout incident show {incident} --env {env}"})
        except Exception:  # noqa: BLE001 - a notification never undoes a rollback
            log.exception("guard: notification for %s failed", did)
    # 4: complete; the lock goes with it, and a new deployment may start
    table.meta.client.transact_write_items(TransactItems=[
        {"Update": {"TableName": table.name, "Key": t.deployment_key(did),
                    "UpdateExpression": "SET rollback_completed_at = :done, expires = :done, guard_notified = :inc",
                    "ConditionExpression": "holder = :me AND fence = :f "
                                           "AND attribute_not_exists(rollback_completed_at)",
                    "ExpressionAttributeValues": {**t.encode({":done": done}), ":inc": incident, ":me": holder,
                                                  ":f": fence}}},
        {"Delete": {"TableName": table.name, "Key": t.lock_key(env), "ConditionExpression": "deployment_id = :d",
                    "ExpressionAttributeValues": {":d": did}}},
    ])
    emit(json.dumps({"_aws": {"Timestamp": int(done * 1000), "CloudWatchMetrics": [{
        "Namespace": "Backout", "Dimensions": [["Environment"]],
        "Metrics": [{"Name": "GuardRollbacks", "Unit": "Count", "StorageResolution": 60}]}]},
        "Environment": env, "GuardRollbacks": 1}))
    return {"deployment": did, "incident": incident, "seconds": round(done - decided, 3)}


def _fenced(table: Any, did: str, holder: str, fence: int, *items: dict[str, Any],
            puts: Sequence[dict[str, Any]] = ()) -> None:
    """Put `items` (and the transaction elements `puts`) only while this run holds `did`'s lease (a
    slower run that lost it writes nothing)."""
    table.meta.client.transact_write_items(TransactItems=[
        {"ConditionCheck": {"TableName": table.name, "Key": t.deployment_key(did),
                            "ConditionExpression": "holder = :me AND fence = :f",
                            "ExpressionAttributeValues": {":me": holder, ":f": fence}}},
        *puts,
        *({"Put": {"TableName": table.name, "Item": item}} for item in items)])


def _event_item(table: Any, kind: str, message: str, did: str, incident: str | None, ts: float,
                data: Any) -> dict[str, Any]:
    eid = t.next_id(table, "event")
    record = {"id": eid, "eid": eid, "deployment_id": did, "incident_id": incident, "ts": ts, "kind": kind,
              "severity": "critical", "message": message, "data": data}
    return {**t.event_key(eid, did, incident), **t.encode(record)}


def _has_event(table: Any, did: str, kind: str) -> bool:
    from boto3.dynamodb.conditions import Attr, Key

    kwargs: dict[str, Any] = {"KeyConditionExpression": Key(t.PK).eq(f"DEP#{did}") & Key(t.SK).begins_with("EV#"),
                              "FilterExpression": Attr("kind").eq(kind), "ConsistentRead": True}
    while True:
        page = table.query(**kwargs)
        if page.get("Items"):
            return True
        if "LastEvaluatedKey" not in page:
            return False
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _incident_of(table: Any, did: str) -> str | None:
    from boto3.dynamodb.conditions import Key

    page = table.query(KeyConditionExpression=Key(t.PK).eq(f"DEP#{did}") & Key(t.SK).begins_with("INC#"),
                       Limit=1, ConsistentRead=True)
    items = page.get("Items", [])
    return str(items[0]["incident"]) if items else None


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
