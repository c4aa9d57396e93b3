"""The layout of backout's shared control-state table (DynamoDB), in one place for the two programs that
read and write it: backout's control plane (`backout.control.shared_store`) and the guard function
(`backout_lambda.guard`), which runs in the stack with nothing but boto3 and the standard library.

One table, string keys `pk` / `sk`, two sparse global secondary indexes:

| item | pk | sk | notes |
|---|---|---|---|
| deployment | `DEP#d-0007` | `DEP` | the record, plus the lease: `holder`, `expires`, `fence`; `requests` |
| event | `DEP#d-0007` / `INC#INC-0003` / `EVENTS` | `EV#<id, 12 digits>` | under its deployment, else its incident |
| alarm evaluation | `DEP#d-0007` | `AE#<id>` | |
| incident → deployment | `DEP#d-0007` | `INC#INC-0003` | what `incident_for_deployment` reads |
| incident | `INC#INC-0003` | `INC` | |
| drill, snapshot | `DRILL#drill-0002`, `SNAP#snap-0004` | `DRILL`, `SNAP` | |
| environment lock | `LOCK#prod` | `LOCK` | `deployment_id` of the active one: one per environment (see below) |
| switch | `SWITCH#prod` | the switch's key | |
| id counter | `SEQ` | `deployment`, `incident`, `event`, … | atomic `ADD` |

Index `by_kind` (`record` S, `seq` N) lists deployments, incidents, drills, snapshots and locks newest first;
index `by_incident` (`incident_id` S, `eid` N) finds an incident's events that sit under its
deployment. Values: numbers as Decimal (boto3's resource layer types them, also in transactions sent
through the table's `meta.client`), nested data (steps, evidence, event data …) as JSON text, so any
float (even an infinite e-value) round-trips.

A lock carries `record="lock"` and `seq`, so the guard finds every lock with one Query of `by_kind`;
a rolled-back deployment keeps its lock until `rollback_completed_at` is set, so an unfinished
rollback is found and finished by the next guard run.

The lease: `holder` (host:pid:uuid of the process driving the deployment), `expires` (epoch seconds
on the holder's clock) and `fence` (raised by one at every takeover). Every write of the holder is
conditioned on `fence`, so a process that lost the lease is refused instead of overwriting the new
holder's decisions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

PK, SK = "pk", "sk"
ROLLBACK_INCIDENT = "ONCE#rollback-incident"  # under DEP#<id>: which incident is the deployment's rollback's
KIND_INDEX, INCIDENT_INDEX = "by_kind", "by_incident"
ACTIVE_STATUSES = ("Created", "AwaitingApproval", "PreTraffic", "InProgress", "PostTraffic")
ROLLED_BACK = "RolledBack"
CONDITION_FAILED = "ConditionalCheckFailedException"
# nested values, stored as JSON text
JSON_FIELDS = frozenset({"steps", "stable_versions", "target_versions", "action_items", "notes", "lessons",
                         "trigger", "evidence", "data", "detail", "value", "requests", "functions"})


def _index(name: str, hash_key: str, range_key: str) -> dict[str, Any]:
    return {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"},
                          {"AttributeName": range_key, "KeyType": "RANGE"}]}


# the table's definition: infrastructure/template.yaml's StateTable says the same (a unit test compares them)
SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": PK, "KeyType": "HASH"}, {"AttributeName": SK, "KeyType": "RANGE"}],
    "AttributeDefinitions": [{"AttributeName": a, "AttributeType": k} for a, k in (
        (PK, "S"), (SK, "S"), ("record", "S"), ("seq", "N"), ("incident_id", "S"), ("eid", "N"))],
    "GlobalSecondaryIndexes": [_index(KIND_INDEX, "record", "seq"), _index(INCIDENT_INDEX, "incident_id", "eid")],
}


def create_table(client: Any, name: str) -> None:
    """Create the table (on demand) and wait until it is active: for a stack without the template's
    StateTable, for tests and benchmarks against an emulator."""
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **SCHEMA)
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})


def deployment_key(deployment_id: str) -> dict[str, str]:
    return {PK: f"DEP#{deployment_id}", SK: "DEP"}


def incident_key(incident_id: str) -> dict[str, str]:
    return {PK: f"INC#{incident_id}", SK: "INC"}


def lock_key(env: str) -> dict[str, str]:
    return {PK: f"LOCK#{env}", SK: "LOCK"}


def event_key(eid: int, deployment_id: str | None, incident_id: str | None) -> dict[str, str]:
    pk = f"DEP#{deployment_id}" if deployment_id else f"INC#{incident_id}" if incident_id else "EVENTS"
    return {PK: pk, SK: f"EV#{eid:012d}"}


def encode(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as an item for boto3's resource layer: None left out, floats as Decimal, nested data
    as JSON text (non-finite floats too: DynamoDB numbers have no infinity)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if v is None:
            continue
        if k in JSON_FIELDS:
            out[k] = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, float):
            out[k] = Decimal(repr(v)) if math.isfinite(v) else json.dumps(v)
        else:
            out[k] = v
    return out


def decode(item: Mapping[str, Any], json_fields: Iterable[str] = JSON_FIELDS) -> dict[str, Any]:
    """An item back as plain Python: Decimal → int or float, JSON text → its value."""
    nested = set(json_fields)
    out: dict[str, Any] = {}
    for k, v in item.items():
        if k in nested and isinstance(v, str):
            out[k] = json.loads(v)
        elif isinstance(v, Decimal):
            out[k] = int(v) if v % 1 == 0 else float(v)
        else:
            out[k] = v
    return out


def number(item: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    v = item.get(key)
    return default if v is None else float(v)


def next_id(table: Any, kind: str) -> int:
    """The next number of `kind` (deployment, incident, event, …): one atomic counter per kind."""
    got = table.update_item(Key={PK: "SEQ", SK: kind}, UpdateExpression="ADD n :one",
                            ExpressionAttributeValues={":one": 1}, ReturnValues="UPDATED_NEW")
    return int(got["Attributes"]["n"])


def put_event(table: Any, kind: str, message: str, *, deployment_id: str | None = None,
              incident_id: str | None = None, severity: str = "info", data: Any = None,
              ts: float) -> dict[str, Any]:
    """An event, unconditioned (the guard's own writes follow its conditional takeover)."""
    eid = next_id(table, "event")
    record = {"id": eid, "eid": eid, "deployment_id": deployment_id, "incident_id": incident_id, "ts": ts,
              "kind": kind, "severity": severity, "message": message, "data": data}
    table.put_item(Item={**event_key(eid, deployment_id, incident_id), **encode(record)})
    return record


def incident_record(seq: int, env: str, title: str, *, severity: str, deployment_id: str | None, trigger: Any,
                    evidence: Any, opened_at: float) -> dict[str, Any]:
    return {"seq": seq, "id": f"INC-{seq:04d}", "env": env, "deployment_id": deployment_id,
            "severity": severity, "status": "open", "title": title, "opened_at": opened_at, "closed_at": None,
            "root_cause": "", "action_items": [], "notes": [], "lessons": [], "trigger": trigger,
            "evidence": evidence}


class AlreadyOpened(Exception):
    """The deployment's rollback incident was opened first by another writer (its id)."""

    def __init__(self, incident_id: str) -> None:
        super().__init__(incident_id)
        self.incident_id = incident_id


def incident_puts(table: Any, record: Mapping[str, Any], rollback: bool = False) -> list[dict[str, Any]]:
    """A transaction's Puts of an incident of a deployment: the incident, the pointer from its
    deployment and, for the deployment's one rollback incident, a conditional marker — of two writers
    that finish the same rollback (a restarted driver's reconcile, the guard), the second's transaction
    is refused and it takes the first one's incident (`taken_by`)."""
    did, iid = record["deployment_id"], record["id"]
    puts: list[dict[str, Any]] = [
        {"Put": {"TableName": table.name, "Item": {**incident_key(iid), **encode(record), "record": "incident"}}},
        {"Put": {"TableName": table.name, "Item": {PK: f"DEP#{did}", SK: f"INC#{iid}", "incident": iid}}},
    ]
    if rollback:
        puts.append({"Put": {"TableName": table.name,
                             "Item": {PK: f"DEP#{did}", SK: ROLLBACK_INCIDENT, "incident": iid},
                             "ConditionExpression": "attribute_not_exists(pk)"}})
    return puts


def taken_by(table: Any, deployment_id: str, e: Exception) -> str | None:
    """After a refused transaction with a rollback marker: the incident another writer made the
    deployment's rollback incident, when that was the refusal (None otherwise)."""
    if not condition_failed(e):
        return None
    item = table.get_item(Key={PK: f"DEP#{deployment_id}", SK: ROLLBACK_INCIDENT}, ConsistentRead=True).get("Item")
    return None if item is None else str(item["incident"])


def put_incident(table: Any, record: Mapping[str, Any], rollback: bool = False) -> None:
    """The incident and, when it has one, the pointer from its deployment. `rollback`: the
    deployment's one rollback incident; raises AlreadyOpened when another writer opened it first."""
    did = record.get("deployment_id")
    if did:
        try:
            table.meta.client.transact_write_items(TransactItems=incident_puts(table, record, rollback))
        except Exception as e:
            first = taken_by(table, did, e) if rollback else None
            if first is None:
                raise
            raise AlreadyOpened(first) from None
    else:
        table.put_item(Item={**incident_key(record["id"]), **encode(record), "record": "incident"})


def condition_failed(e: Exception) -> bool:
    """A conditional write (or a transaction with one) refused on its condition."""
    response = getattr(e, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    if code == CONDITION_FAILED:
        return True
    if code == "TransactionCanceledException":
        reasons = response.get("CancellationReasons") or []
        return any(r.get("Code") == "ConditionalCheckFailed" for r in reasons) or not reasons
    return False
