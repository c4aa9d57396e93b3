"""The control state of an AWS environment in a DynamoDB table every machine shares (`SharedStore`), and
`open_store`, which picks it or the local SQLite `Store`.

Why it looks the way it does:
- The same interface as `Store` (`ControlStore`) and the same frozen records, so the deployer, the
  runbooks and the API do not know which one they have; only the lease (`lease.Leases`) is extra.
- The table's layout is `backout_lambda.state_table`, shared with the guard function. boto3's
  resource layer does the typing (numbers as Decimal); nested values are JSON text.
- The one-deployment-per-environment lock is an item (`LOCK#<env>`) put with
  `attribute_not_exists` in the same transaction as the deployment, and deleted in the transaction
  that makes it terminal: two machines deploying at once, exactly one wins. A rollback keeps it until
  the rollback completes (`rollback_completed_at`): a driver that dies between recording RolledBack
  and the last alias leaves the lock, through which the guard finds the rollback and finishes it. The
  lock carries `record = "lock"` and `seq`, so the guard lists the locks from the `by_kind` index
  instead of scanning the table.
- Every write about a deployment this process holds the lease of is conditioned on its fence
  (a transaction with a ConditionCheck for events, alarm evaluations and snapshots); a refused one
  raises `LeaseLost`. A process that does not hold the lease may write a deployment only once it
  is over (a `reconcile` filling in a completion time); to change an active one it takes it over
  or asks its holder (`request`).
- Lists (deployments, incidents, drills, snapshots) read the `by_kind` index newest first and
  filter by environment: a table serves one stack, so they stay small. Index reads are eventually
  consistent on AWS (a record written a moment ago may be missing from a list, never from `get`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backout.control.lease import EXPIRY, RENEW, Lease, LeaseHeld, LeaseLost, holder_id
from backout.control.states import (
    ACTIVE_STATUSES,
    ALARM_STATES,
    CREATED,
    INCIDENT_SEVERITIES,
    ROLLED_BACK,
    SEVERITIES,
    STATUSES,
    TERMINAL_STATUSES,
    AlreadyActive,
    InvalidTransition,
    can_transition,
)
from backout.control.store import (
    AlarmEvaluation,
    ControlStore,
    Deployment,
    Drill,
    Event,
    Incident,
    SnapshotRecord,
    Store,
    already_active,
    canonical_id,
)
from backout.control.strategies import Step, Strategy
from backout.errors import UsageError
from backout.platforms.base import Release, SharedState
from backout_lambda import state_table as t
from backout_lambda.guard import LOCK_RECORD

if TYPE_CHECKING:
    from backout.manifest import Manifest
    from backout.platforms.base import Platform

log = logging.getLogger(__name__)

_UPDATABLE = {f.name for f in fields(Deployment)} - {
    "id", "env", "created_at", "status", "steps", "stable_versions", "target_versions"}
_REQUEST = "req_"  # attribute prefix of a request to the holder (`req_stop`, `req_approve`)


def open_store(manifest: Manifest, env: str, platform: Platform, state_dir: Path) -> ControlStore:
    """The environment's control store: the shared table when its platform names one (an AWS
    environment with `state_table`, or a stack with the `BackoutStateTable` output), else SQLite in
    the state dir."""
    return open_shared(platform) or Store.for_env(state_dir)


def open_shared(platform: Platform) -> SharedStore | None:
    """The shared store of the platform's environment, or None when its control state is local."""
    if isinstance(platform, SharedState):
        where = platform.state_table()
        if where is not None:
            return SharedStore(where.table, functions=where.functions, renew=where.lease_renew,
                               expiry=where.lease_expiry)
    return None


def _records(cls: type, d: dict[str, Any], **overrides: Any) -> Any:
    return cls(**{f.name: overrides.get(f.name, d.get(f.name, _default(f))) for f in fields(cls)})


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


class SharedStore:
    """The control state in one DynamoDB table (boto3 `Table` resource), shared by every machine."""

    def __init__(self, table: Any, *, holder: str | None = None, renew: float = RENEW, expiry: float = EXPIRY,
                 functions: dict[str, str] | None = None, alias: str = "live",
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.holder = holder or holder_id()
        self.renew_seconds = renew
        self.expiry_seconds = expiry
        self.functions = dict(functions or {})  # backout function → Lambda function (what the guard moves)
        self.alias = alias
        self.clock = clock
        self._fences: dict[str, int] = {}  # deployment → the fence this process took or created it with
        self.path = f"dynamodb:{getattr(table, 'name', '?')}"

    def close(self) -> None:
        """Nothing to close (boto3 pools its connections); here for the `ControlStore` interface."""

    def __enter__(self) -> SharedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low level --------------------------------------------------------------------------
    def _client(self) -> Any:
        return self.table.meta.client

    def _item(self, key: dict[str, str]) -> dict[str, Any] | None:
        return self.table.get_item(Key=key, ConsistentRead=True).get("Item")

    def _query(self, **kw: Any) -> Iterator[dict[str, Any]]:
        while True:
            page = self.table.query(**kw)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _list(self, record: str, env: str | None, limit: int | None, keep: Callable[[dict[str, Any]], bool]
              = lambda d: True, newest_first: bool = True) -> list[dict[str, Any]]:
        from boto3.dynamodb.conditions import Key

        out = []
        for item in self._query(IndexName=t.KIND_INDEX, KeyConditionExpression=Key("record").eq(record),
                                ScanIndexForward=not newest_first):
            d = t.decode(item)
            if (env is None or d.get("env") == env) and keep(d):
                out.append(d)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def _fence_check(self, did: str) -> dict[str, Any]:
        """A transaction item: this process still holds `did` with the fence it took."""
        return {"ConditionCheck": {
            "TableName": self.table.name, "Key": (t.deployment_key(did)),
            "ConditionExpression": "holder = :me AND fence = :f",
            "ExpressionAttributeValues": ({":me": self.holder, ":f": self._fences[did]})}}

    def _put(self, item: dict[str, Any], did: str | None) -> None:
        """Put `item`; fenced when it is about a deployment this process holds."""
        if did is None or did not in self._fences:
            self.table.put_item(Item=item)
            return
        try:
            self._client().transact_write_items(TransactItems=[
                self._fence_check(did), {"Put": {"TableName": self.table.name, "Item": (item)}}])
        except Exception as e:
            if t.condition_failed(e):
                raise self._lost(did) from None
            raise

    def _lost(self, did: str) -> LeaseLost:
        lease = self.lease(did)
        return LeaseLost(f"deployment {did}: this process ({self.holder}) no longer holds its lease — it is "
                         f"{lease.describe(self.clock())}; the write was refused and this process stops driving it")

    # --- deployments ---------------------------------------------------------------------------
    @staticmethod
    def _deployment(d: dict[str, Any]) -> Deployment:
        return _records(Deployment, d, steps=tuple(Step.from_dict(s) for s in d.get("steps") or []),
                        stable_versions={k: str(v) for k, v in (d.get("stable_versions") or {}).items()},
                        target_versions={k: str(v) for k, v in (d.get("target_versions") or {}).items()},
                        current_weight=float(d.get("current_weight") or 0.0))

    def _raw(self, deployment_id: str) -> dict[str, Any]:
        did = canonical_id("d-", deployment_id)
        item = self._item(t.deployment_key(did))
        if item is None:
            raise UsageError(f"no deployment {deployment_id!r} (list them with: backout deployments)")
        return item

    def create_deployment(self, env: str, stable: Release | None, target: Release, strategy: Strategy, *,
                          description: str = "", created_by: str = "", now: float | None = None) -> Deployment:
        """A new deployment in `Created`, its lease held by this process; AlreadyActive naming the
        active one and its holder when the environment has one (the lock item's condition)."""
        self.refuse_if_active(env)
        seq = t.next_id(self.table, "deployment")
        did = f"d-{seq:04d}"
        created = self.clock() if now is None else now
        record = {
            "id": did, "env": env, "seq": seq, "record": "deployment",
            "stable_release": None if stable is None else stable.id, "target_release": target.id,
            "stable_versions": {} if stable is None else dict(stable.versions),
            "target_versions": dict(target.versions), "strategy": strategy.name, "steps": strategy.as_json(),
            "status": CREATED, "current_step": None, "current_weight": 0.0, "step_started_at": None,
            "created_at": created, "finished_at": None, "description": description, "reason": "",
            "created_by": created_by, "rollback_decided_at": None, "rollback_completed_at": None,
            "holder": self.holder, "fence": 1, "expires": self.clock() + self.expiry_seconds,
            "functions": self.functions, "alias": self.alias,
        }
        try:
            self._client().transact_write_items(TransactItems=[
                {"Put": {"TableName": self.table.name,
                         "Item": ({**t.lock_key(env), "deployment_id": did, "record": LOCK_RECORD, "seq": seq,
                                   "env": env}),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Put": {"TableName": self.table.name,
                         "Item": ({**t.deployment_key(did), **t.encode(record)}),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
            ])
        except Exception as e:
            if t.condition_failed(e):
                self.refuse_if_active(env)  # names the one that won
            raise
        self._fences[did] = 1
        return self._deployment(t.decode(record))

    def refuse_if_active(self, env: str) -> None:
        active = self.active_deployment(env)
        if active is not None:
            raise already_active(active, self.lease(active.id).describe(self.clock()))
        rolling = self._rolling_back(env)
        if rolling is not None:
            raise AlreadyActive(
                f"deployment {rolling.id} is rolling back in {env}: it is RolledBack, but its rollback has not "
                f"completed (not every alias is back on {rolling.stable} yet; "
                f"{self.lease(rolling.id).describe(self.clock())}); wait for it — if its driver died, the "
                f"guard finishes it within a minute of the lease's expiry (backout deployment show {rolling.id})")

    def _rolling_back(self, env: str) -> Deployment | None:
        """The deployment the lock of `env` still names though it is over: a rollback not completed."""
        lock = self._item(t.lock_key(env))
        d = None if lock is None else self.find(lock["deployment_id"])
        return d if d is not None and d.status == ROLLED_BACK and d.rollback_completed_at is None else None

    def get(self, deployment_id: str) -> Deployment:
        return self._deployment(t.decode(self._raw(deployment_id)))

    def find(self, deployment_id: str) -> Deployment | None:
        try:
            return self.get(deployment_id)
        except UsageError:
            return None

    def active_deployment(self, env: str) -> Deployment | None:
        lock = self._item(t.lock_key(env))
        if lock is None:
            return None
        d = self.find(lock["deployment_id"])
        return d if d is not None and d.active else None

    def active_deployments(self) -> list[Deployment]:
        rows = self._list("deployment", None, None, lambda d: d.get("status") in ACTIVE_STATUSES, newest_first=False)
        return [self._deployment(d) for d in rows]

    def deployments(self, env: str | None = None, limit: int | None = 50) -> list[Deployment]:
        return [self._deployment(d) for d in self._list("deployment", env, limit)]

    def transition(self, deployment_id: str, status: str, *, expect: str | Iterable[str] | None = None,
                   **fields_: Any) -> Deployment:
        """As `Store.transition`; conditioned on the status read (and the fence when this process holds it)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        expected = {expect} if isinstance(expect, str) else (set(expect) if expect is not None else None)
        self._check_fields(fields_)
        now = self.clock()
        cur = t.decode(self._raw(deployment_id))
        did = cur["id"]
        if expected is not None and cur["status"] not in expected:
            raise InvalidTransition(f"deployment {did} is {cur['status']}, not {' or '.join(sorted(expected))}")
        if not can_transition(cur["status"], status):
            raise InvalidTransition(f"deployment {did} is {cur['status']}; it cannot become {status}")
        values = dict(fields_)
        values["status"] = status
        if status in TERMINAL_STATUSES and "finished_at" not in fields_ and cur.get("finished_at") is None:
            values["finished_at"] = now
        if status == ROLLED_BACK and cur.get("rollback_decided_at") is None and "rollback_decided_at" not in fields_:
            values["rollback_decided_at"] = now
        # a rollback keeps the lock until it completes (the guard finishes one whose driver died)
        completed = values.get("rollback_completed_at", cur.get("rollback_completed_at"))
        unfinished = status == ROLLED_BACK and completed is None
        self._write(cur, values, lock_env=cur["env"] if status in TERMINAL_STATUSES and not unfinished else None)
        return self.get(did)

    def update(self, deployment_id: str, **fields_: Any) -> Deployment:
        self._check_fields(fields_)
        cur = t.decode(self._raw(deployment_id))
        lock_env = None
        if cur["status"] == ROLLED_BACK and fields_.get("rollback_completed_at") is not None:
            lock = self._item(t.lock_key(cur["env"]))  # the rollback completes: its lock goes with it
            lock_env = cur["env"] if lock is not None and lock.get("deployment_id") == cur["id"] else None
        self._write(cur, dict(fields_), lock_env=lock_env)
        return self.get(cur["id"])

    def _write(self, cur: dict[str, Any], values: dict[str, Any], lock_env: str | None) -> None:
        """Set `values` on the deployment `cur` as read: conditioned on its status not having changed,
        and on this process's fence (or, without the lease, on the deployment being over)."""
        did = cur["id"]
        names = {f"#k{i}": k for i, k in enumerate(values)}
        encoded = t.encode(values)
        sets = [f"#k{i} = :v{i}" for i, k in enumerate(values) if k in encoded]
        removes = [f"#k{i}" for i, k in enumerate(values) if k not in encoded]
        attr_values: dict[str, Any] = {f":v{i}": encoded[k] for i, k in enumerate(values) if k in encoded}
        expr = ("SET " + ", ".join(sets) if sets else "") + (" REMOVE " + ", ".join(removes) if removes else "")
        names["#status"] = "status"
        attr_values[":was"] = cur["status"]
        cond = "#status = :was"
        if did in self._fences:
            cond += " AND holder = :me AND fence = :f"
            attr_values.update({":me": self.holder, ":f": self._fences[did]})
        elif cur["status"] in ACTIVE_STATUSES:
            lease = self._lease(cur)
            raise LeaseLost(f"deployment {did} is {lease.describe(self.clock())}: take it over "
                            f"(backout deployment follow {did}) or ask its holder to stop it")
        update = {"TableName": self.table.name, "Key": (t.deployment_key(did)),
                  "UpdateExpression": expr.strip(), "ConditionExpression": cond,
                  "ExpressionAttributeNames": names, "ExpressionAttributeValues": (attr_values)}
        items: list[dict[str, Any]] = [{"Update": update}]
        if lock_env is not None:
            items.append({"Delete": {"TableName": self.table.name, "Key": (t.lock_key(lock_env)),
                                     "ConditionExpression": "deployment_id = :d",
                                     "ExpressionAttributeValues": ({":d": did})}})
        try:
            self._client().transact_write_items(TransactItems=items)
        except Exception as e:
            if not t.condition_failed(e):
                raise
            now = t.decode(self._raw(did))
            if did in self._fences and (now.get("holder") != self.holder or now.get("fence") != self._fences[did]):
                raise self._lost(did) from None
            raise InvalidTransition(f"deployment {did} changed meanwhile: it is {now['status']} now") from None

    @staticmethod
    def _check_fields(fields_: dict[str, Any]) -> None:
        unknown = set(fields_) - _UPDATABLE
        if unknown:
            raise TypeError(f"not updatable deployment fields: {', '.join(sorted(unknown))}")

    # --- the lease ---------------------------------------------------------------------------------
    @staticmethod
    def _lease(item: dict[str, Any]) -> Lease:
        return Lease(str(item["id"]), str(item.get("holder", "")), t.number(item, "expires"),
                     int(item.get("fence", 0)))

    def lease(self, deployment_id: str) -> Lease:
        return self._lease(t.decode(self._raw(deployment_id)))

    def holds(self, deployment_id: str) -> bool:
        return canonical_id("d-", deployment_id) in self._fences

    def renew(self, deployment_id: str) -> Lease:
        did = canonical_id("d-", deployment_id)
        if did not in self._fences:
            raise self._lost(did)
        expires = self.clock() + self.expiry_seconds
        try:
            self.table.update_item(Key=t.deployment_key(did), UpdateExpression="SET expires = :e",
                                   ConditionExpression="holder = :me AND fence = :f",
                                   ExpressionAttributeValues=t.encode(
                                       {":e": expires, ":me": self.holder, ":f": self._fences[did]}))
        except Exception as e:
            if t.condition_failed(e):
                raise self._lost(did) from None
            raise
        return Lease(did, self.holder, expires, self._fences[did])

    def take_over(self, deployment_id: str) -> Lease:
        raw = self._raw(deployment_id)
        cur = t.decode(raw)
        did = cur["id"]
        if cur["status"] not in ACTIVE_STATUSES:
            raise UsageError(f"deployment {did} is already {cur['status']}: there is nothing to take over")
        lease = self._lease(cur)
        if lease.holder == self.holder and self._fences.get(did) == lease.fence:
            return self.renew(did)
        now = self.clock()
        if not lease.expired(now):
            raise LeaseHeld(f"deployment {did} is {lease.describe(now)}; it can be taken over once that "
                            f"process stops renewing it")
        expires = now + self.expiry_seconds
        values = {**t.encode({":me": self.holder, ":next": lease.fence + 1, ":e": expires, ":f": lease.fence,
                              ":was": cur["status"]}), ":old": raw.get("expires", 0)}
        try:
            self.table.update_item(
                Key=t.deployment_key(did), UpdateExpression="SET holder = :me, fence = :next, expires = :e",
                ConditionExpression="fence = :f AND expires = :old AND #s = :was",
                ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues=values)
        except Exception as e:
            if t.condition_failed(e):
                raise LeaseHeld(f"deployment {did} was taken over meanwhile: {self.lease(did).describe()}") from None
            raise
        self._fences[did] = lease.fence + 1
        return Lease(did, self.holder, expires, lease.fence + 1)

    def release(self, deployment_id: str) -> None:
        did = canonical_id("d-", deployment_id)
        if did not in self._fences:
            return
        try:
            self.table.update_item(Key=t.deployment_key(did), UpdateExpression="SET expires = :e",
                                   ConditionExpression="holder = :me AND fence = :f",
                                   ExpressionAttributeValues=t.encode(
                                       {":e": self.clock(), ":me": self.holder, ":f": self._fences[did]}))
        except Exception as e:
            if not t.condition_failed(e):
                raise

    def request(self, deployment_id: str, kind: str, data: dict[str, Any]) -> None:
        did = canonical_id("d-", deployment_id)
        try:
            self.table.update_item(
                Key=t.deployment_key(did), UpdateExpression="SET #r = :v",
                ConditionExpression="#s IN (" + ", ".join(f":a{i}" for i in range(len(ACTIVE_STATUSES))) + ")",
                ExpressionAttributeNames={"#r": _REQUEST + kind, "#s": "status"},
                ExpressionAttributeValues={":v": json.dumps({**data, "ts": self.clock()}),
                                           **{f":a{i}": s for i, s in enumerate(ACTIVE_STATUSES)}})
        except Exception as e:
            if t.condition_failed(e):
                raise UsageError(f"deployment {did} is already {self.get(did).status}") from None
            raise

    def requests(self, deployment_id: str) -> dict[str, Any]:
        item = self._raw(deployment_id)
        return {k[len(_REQUEST):]: json.loads(v) for k, v in item.items() if k.startswith(_REQUEST)}

    # --- events --------------------------------------------------------------------------------
    def add_event(self, kind: str, message: str, *, deployment_id: str | None = None,
                  incident_id: str | None = None, severity: str = "info", data: Any = None,
                  ts: float | None = None) -> Event:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        did = None if deployment_id is None else canonical_id("d-", deployment_id)
        iid = None if incident_id is None else canonical_id("INC-", incident_id)
        eid = t.next_id(self.table, "event")
        record = {"id": eid, "eid": eid, "deployment_id": did, "incident_id": iid,
                  "ts": self.clock() if ts is None else ts, "kind": kind, "severity": severity,
                  "message": message, "data": data}
        self._put({**t.event_key(eid, did, iid), **t.encode(record)}, did)
        return _records(Event, record)

    def events(self, *, deployment_id: str | None = None, incident_id: str | None = None,
               after_id: int | None = None, limit: int | None = None) -> list[Event]:
        from boto3.dynamodb.conditions import Attr, Key

        start = f"EV#{(after_id or 0) + 1:012d}"
        items: dict[int, dict[str, Any]] = {}
        pks = []
        if deployment_id is not None:
            pks.append(f"DEP#{canonical_id('d-', deployment_id)}")
        if incident_id is not None:
            iid = canonical_id("INC-", incident_id)
            pks.append(f"INC#{iid}")
            for it in self._query(IndexName=t.INCIDENT_INDEX, KeyConditionExpression=Key("incident_id").eq(iid)
                                  & Key("eid").gt(after_id or 0)):
                items[int(it["eid"])] = it
        if deployment_id is None and incident_id is None:
            kw: dict[str, Any] = {"FilterExpression": Attr("sk").begins_with("EV#") & Attr("eid").gt(after_id or 0)}
            while True:
                page = self.table.scan(**kw)
                items.update({int(it["eid"]): it for it in page.get("Items", [])})
                if "LastEvaluatedKey" not in page:
                    break
                kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        for pk in pks:
            for it in self._query(KeyConditionExpression=Key("pk").eq(pk) & Key("sk").between(start, "EV#~"),
                                  ConsistentRead=True):
                items[int(it["eid"])] = it
        events = sorted((_records(Event, t.decode(it)) for it in items.values()), key=lambda e: (e.ts, e.id))
        return events[:limit] if limit is not None else events

    # --- alarm evaluations -------------------------------------------------------------------
    def record_alarm_evaluation(self, deployment_id: str, alarm: str, state: str, value: float | None,
                                threshold: float, comparison: str, window_seconds: float, detail: str = "",
                                ts: float | None = None) -> AlarmEvaluation:
        if state not in ALARM_STATES:
            raise ValueError(f"alarm state must be one of {ALARM_STATES}, not {state!r}")
        did = canonical_id("d-", deployment_id)
        aid = t.next_id(self.table, "alarm_evaluation")
        record = {"id": aid, "deployment_id": did, "alarm": alarm, "ts": self.clock() if ts is None else ts,
                  "state": state, "value": value, "threshold": threshold, "comparison": comparison,
                  "window_seconds": window_seconds, "detail": detail}
        self._put({"pk": f"DEP#{did}", "sk": f"AE#{aid:012d}", **t.encode(record)}, did)
        return _records(AlarmEvaluation, record)

    def alarm_evaluations(self, deployment_id: str, alarm: str | None = None) -> list[AlarmEvaluation]:
        from boto3.dynamodb.conditions import Key

        did = canonical_id("d-", deployment_id)
        rows = [_records(AlarmEvaluation, t.decode(it)) for it in self._query(
            KeyConditionExpression=Key("pk").eq(f"DEP#{did}") & Key("sk").begins_with("AE#"), ConsistentRead=True)]
        return sorted((r for r in rows if alarm is None or r.alarm == alarm), key=lambda r: (r.ts, r.id))

    # --- incidents -----------------------------------------------------------------------------
    @staticmethod
    def _incident(d: dict[str, Any]) -> Incident:
        return _records(Incident, d, action_items=list(d.get("action_items") or []),
                        notes=list(d.get("notes") or []), lessons=list(d.get("lessons") or []))

    def open_incident(self, env: str, title: str, *, severity: str = "critical", deployment_id: str | None = None,
                      trigger: Any = None, evidence: Any = None, opened_at: float | None = None,
                      rollback: bool = False) -> Incident:
        if severity not in INCIDENT_SEVERITIES:
            raise ValueError(f"severity must be one of {INCIDENT_SEVERITIES}, not {severity!r}")
        seq = t.next_id(self.table, "incident")
        record = t.incident_record(seq, env, title, severity=severity,
                                   deployment_id=None if deployment_id is None else canonical_id("d-", deployment_id),
                                   trigger=trigger, evidence=evidence,
                                   opened_at=self.clock() if opened_at is None else opened_at)
        try:
            t.put_incident(self.table, record, rollback=rollback and deployment_id is not None)
        except t.AlreadyOpened as first:
            return self.get_incident(first.incident_id)
        return self._incident(record)

    def _incident_raw(self, incident_id: str) -> dict[str, Any]:
        item = self._item(t.incident_key(canonical_id("INC-", incident_id)))
        if item is None:
            raise UsageError(f"no incident {incident_id!r} (list them with: backout incidents)")
        return item

    def get_incident(self, incident_id: str) -> Incident:
        return self._incident(t.decode(self._incident_raw(incident_id)))

    def incidents(self, env: str | None = None, status: str | None = None,
                  limit: int | None = None) -> list[Incident]:
        rows = self._list("incident", env, limit, lambda d: status is None or d.get("status") == status)
        return [self._incident(d) for d in rows]

    def incident_for_deployment(self, deployment_id: str) -> Incident | None:
        from boto3.dynamodb.conditions import Key

        did = canonical_id("d-", deployment_id)
        page = self.table.query(KeyConditionExpression=Key("pk").eq(f"DEP#{did}") & Key("sk").begins_with("INC#"),
                                ScanIndexForward=False, Limit=1, ConsistentRead=True)
        items = page.get("Items", [])
        return self.get_incident(items[0]["incident"]) if items else None

    def _change(self, incident_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Incident:
        """Read, change, write back conditioned on what was read (optimistic; retried on a race)."""
        for _ in range(10):
            raw = self._incident_raw(incident_id)
            cur = t.decode(raw)
            new = change(cur)
            encoded = t.encode(new)
            names = {f"#k{i}": k for i, k in enumerate(new)}
            sets = ", ".join(f"#k{i} = :v{i}" for i, k in enumerate(new) if k in encoded)
            values: dict[str, Any] = {f":v{i}": encoded[k] for i, k in enumerate(new) if k in encoded}
            conds = []
            for i, k in enumerate(new):
                if k in raw:
                    conds.append(f"#k{i} = :o{i}")
                    values[f":o{i}"] = raw[k]
                else:
                    conds.append(f"attribute_not_exists(#k{i})")
            try:
                self.table.update_item(Key=t.incident_key(cur["id"]), UpdateExpression="SET " + sets,
                                       ConditionExpression=" AND ".join(conds), ExpressionAttributeNames=names,
                                       ExpressionAttributeValues=values)
                return self.get_incident(cur["id"])
            except Exception as e:
                if not t.condition_failed(e):
                    raise
        raise UsageError(f"incident {incident_id} changes too often to update; try again")

    def _append(self, incident_id: str, column: str, item: dict[str, Any]) -> Incident:
        return self._change(incident_id, lambda cur: {column: [*(cur.get(column) or []), item]})

    def add_incident_note(self, incident_id: str, text: str, author: str = "") -> Incident:
        return self._append(incident_id, "notes", {"text": text, "author": author, "ts": self.clock()})

    def add_incident_action(self, incident_id: str, text: str, owner: str = "") -> Incident:
        return self._append(incident_id, "action_items",
                            {"text": text, "owner": owner, "done": False, "ts": self.clock()})

    def add_incident_lesson(self, incident_id: str, text: str) -> Incident:
        return self._append(incident_id, "lessons", {"text": text, "ts": self.clock()})

    def complete_incident_action(self, incident_id: str, index: int) -> Incident:
        def done(cur: dict[str, Any]) -> dict[str, Any]:
            items = [dict(a) for a in cur.get("action_items") or []]
            if not 0 <= index < len(items):
                raise UsageError(f"incident {cur['id']} has no action item {index + 1} (it has {len(items)})")
            items[index]["done"] = True
            return {"action_items": items}

        return self._change(incident_id, done)

    def set_root_cause(self, incident_id: str, root_cause: str) -> Incident:
        return self._change(incident_id, lambda cur: {"root_cause": root_cause})

    def close_incident(self, incident_id: str, root_cause: str | None = None,
                       now: float | None = None) -> Incident:
        def close(cur: dict[str, Any]) -> dict[str, Any]:
            if cur.get("status") == "closed":
                raise UsageError(f"incident {cur['id']} is already closed")
            out = {"status": "closed", "closed_at": self.clock() if now is None else now}
            return out if root_cause is None else {**out, "root_cause": root_cause}

        return self._change(incident_id, close)

    # --- drills, switches, snapshots ----------------------------------------------------------
    def record_drill(self, env: str, fault: str, target_seconds: float, started_at: float,
                     finished_at: float | None, passed: bool, detection_seconds: float | None = None,
                     rollback_seconds: float | None = None, detail: Any = None) -> Drill:
        seq = t.next_id(self.table, "drill")
        record = {"id": f"drill-{seq:04d}", "env": env, "seq": seq, "record": "drill", "fault": fault,
                  "target_seconds": target_seconds, "started_at": started_at, "finished_at": finished_at,
                  "passed": passed, "detection_seconds": detection_seconds, "rollback_seconds": rollback_seconds,
                  "detail": detail}
        self.table.put_item(Item={"pk": f"DRILL#{record['id']}", "sk": "DRILL", **t.encode(record)})
        return _records(Drill, record)

    def drills(self, env: str | None = None, limit: int | None = None) -> list[Drill]:
        return [_records(Drill, d) for d in self._list("drill", env, limit)]

    def set_switch(self, env: str, key: str, value: Any, who: str = "", reason: str = "") -> None:
        self.table.put_item(Item={"pk": f"SWITCH#{env}", "sk": key, **t.encode(
            {"key": key, "value": value, "ts": self.clock(), "who": who, "reason": reason})})

    def switches(self, env: str) -> dict[str, Any]:
        from boto3.dynamodb.conditions import Key

        return {d["key"]: d.get("value") for d in (t.decode(it) for it in self._query(
            KeyConditionExpression=Key("pk").eq(f"SWITCH#{env}"), ConsistentRead=True))}

    def record_snapshot(self, env: str, platform_snapshot_id: str, label: str = "",
                        deployment_id: str | None = None, created_at: float | None = None) -> SnapshotRecord:
        seq = t.next_id(self.table, "snapshot")
        did = None if deployment_id is None else canonical_id("d-", deployment_id)
        record = {"id": f"snap-{seq:04d}", "env": env, "seq": seq, "record": "snapshot", "deployment_id": did,
                  "created_at": self.clock() if created_at is None else created_at, "label": label,
                  "platform_snapshot_id": platform_snapshot_id}
        self._put({"pk": f"SNAP#{record['id']}", "sk": "SNAP", **t.encode(record)}, did)
        return _records(SnapshotRecord, record)

    def snapshots(self, env: str | None = None, deployment_id: str | None = None) -> list[SnapshotRecord]:
        did = None if deployment_id is None else canonical_id("d-", deployment_id)
        rows = self._list("snapshot", env, None, lambda d: did is None or d.get("deployment_id") == did)
        return [_records(SnapshotRecord, d) for d in rows]
