"""The service's data on AWS: DynamoDB tables and S3 buckets.

- `backup`: an on-demand `create_backup` of every table (named `<backup id>.<table>`, so
  `list_backups` finds a backup's tables again from any machine) and, for every bucket, the instant
  of the backup: the bucket's object versions as of then are its copy (versioning must be on,
  which `describe` checks). S3 keeps an object's LastModified to the second, so with buckets the
  backup returns only once the second it was taken in is over: an object the new release writes
  afterwards always carries a later second than the backup's instant.
  After each backup, the oldest beyond the environment's `backups_keep` are deleted (`delete_backup`).
- `restore_to_side`: `restore_table_from_backup` into a side table `<table>-side-<backup id>`
  (reused when it already exists); the live table is never touched. The location handed to the
  service's repair function is JSON: `{"tables": {name: side}, "live_tables": {name: live},
  "buckets": {name: bucket}, "as_of": epoch}` — it reads old jobs from the side table and old files
  as the object versions current at `as_of`.
- `restore`: the procedure's full restore: the side table's items replace the live table's (items
  written since are deleted), and every object goes back to its version as of the backup.
- `describe`: `describe_table` (ACTIVE) and a write/read/delete probe item per table; `head_bucket`
  and the bucket's versioning per bucket.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from backout.errors import UsageError
from backout.platforms.aws.config import Clients, Resources, aws_errors
from backout.platforms.base import Backup, CheckResult

PROBE = "__backout_probe__"


class AwsData:
    def __init__(self, clients: Clients, resources: Callable[[], Resources], keep: int = 0) -> None:
        self.clients = clients
        self.resources = resources
        self.keep = keep  # after each backup, the oldest beyond this many are deleted (0: none)

    # --- backups ------------------------------------------------------------------------------------
    def backup(self, label: str = "") -> Backup:
        r = self.resources()
        ddb = self.clients("dynamodb")
        bid = time.strftime("bk-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]
        created = time.time()
        tables: dict[str, str] = {}
        taken: list[float] = []  # DynamoDB's instant of each table's backup
        for name, table in r.tables.items():
            with aws_errors(f"table {name} ({table})"):
                d = ddb.create_backup(TableName=table, BackupName=f"{bid}.{name}")["BackupDetails"]
            tables[name] = d["BackupArn"]
            taken.append(_epoch(d.get("BackupCreationDateTime", created)))
        buckets = {name: {"bucket": b, "versioning": self._versioning(b)} for name, b in r.buckets.items()}
        # the instant `backups()` finds again from the table backups, and what the repair reads the
        # buckets' versions as of; an object written after this returns carries a later second
        as_of = min(taken, default=created)
        if buckets:
            time.sleep(max(0.0, math.floor(max([created, *taken])) + 1 - time.time()))
        self.prune()
        return Backup(bid, created, label, {"tables": tables, "buckets": buckets, "as_of": as_of})

    def prune(self) -> list[str]:
        """`delete_backup` of every table backup of the backups beyond the newest `keep`; their ids.
        (The buckets' part of a backup is an instant: nothing to delete.)"""
        if self.keep <= 0:
            return []
        ddb = self.clients("dynamodb")
        old = self.backups()[: -self.keep]
        for b in old:
            for name, arn in b.detail["tables"].items():
                with aws_errors(f"deleting backup {b.id} of table {name}"):
                    ddb.delete_backup(BackupArn=arn)
        return [b.id for b in old]

    def backups(self) -> list[Backup]:
        ddb = self.clients("dynamodb")
        found: dict[str, dict[str, Any]] = {}
        for name, table in self.resources().tables.items():
            with aws_errors(f"table {name} ({table})"):
                pages = ddb.get_paginator("list_backups").paginate(TableName=table) \
                    if ddb.can_paginate("list_backups") else [ddb.list_backups(TableName=table)]
                for page in pages:
                    for s in page.get("BackupSummaries", []):
                        bid, _, tname = str(s.get("BackupName", "")).rpartition(".")
                        if not bid.startswith("bk-") or tname != name:
                            continue
                        t = _epoch(s["BackupCreationDateTime"])
                        b = found.setdefault(bid, {"tables": {}, "created": t})
                        b["tables"][name] = s["BackupArn"]
                        b["created"] = min(b["created"], t)
        buckets = {name: {"bucket": b} for name, b in self.resources().buckets.items()}
        return sorted((Backup(bid, b["created"], "", {"tables": b["tables"], "buckets": buckets,
                                                      "as_of": b["created"]})
                       for bid, b in found.items()), key=lambda x: x.created_at)

    def _find(self, backup_id: str) -> Backup:
        for b in self.backups():
            if b.id == backup_id:
                return b
        raise UsageError(f"no backup {backup_id!r} (see `backout backup list`)")

    def restore_to_side(self, backup_id: str) -> str:
        b = self._find(backup_id)
        r = self.resources()
        ddb = self.clients("dynamodb")
        sides: dict[str, str] = {}
        for name, arn in b.detail["tables"].items():
            side = f"{r.tables[name]}-side-{backup_id}"[:255]
            if not self._exists(side):
                with aws_errors(f"restore of backup {backup_id} ({name})"):
                    ddb.restore_table_from_backup(TargetTableName=side, BackupArn=arn)
            ddb.get_waiter("table_exists").wait(TableName=side, WaiterConfig={"Delay": 2, "MaxAttempts": 900})
            sides[name] = side
        return json.dumps({"tables": sides, "live_tables": dict(r.tables), "buckets": dict(r.buckets),
                           "as_of": b.detail["as_of"], "backup": backup_id})

    def restore(self, backup_id: str) -> None:
        """Side tables first, then their items over the live tables; objects back to their versions."""
        where = json.loads(self.restore_to_side(backup_id))
        ddb = self.clients("dynamodb")
        for name, side in where["tables"].items():
            live = where["live_tables"][name]
            keys = [k["AttributeName"] for k in ddb.describe_table(TableName=live)["Table"]["KeySchema"]]
            keep = set()
            for item in _scan(ddb, side):
                ddb.put_item(TableName=live, Item=item)
                keep.add(json.dumps([item[k] for k in keys], sort_keys=True))
            for item in _scan(ddb, live, keys):
                if json.dumps([item[k] for k in keys], sort_keys=True) not in keep:
                    ddb.delete_item(TableName=live, Key={k: item[k] for k in keys})
        for bucket in where["buckets"].values():
            self._rewind(bucket, float(where["as_of"]))

    def _rewind(self, bucket: str, as_of: float) -> None:
        """Every key back to its newest version at `as_of`; keys created since are deleted."""
        s3 = self.clients("s3")
        newest: dict[str, tuple[float, str | None]] = {}
        current: dict[str, str] = {}
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                t = _epoch(v["LastModified"])
                is_object = "ETag" in v or "Size" in v
                if v.get("IsLatest"):
                    current[v["Key"]] = v["VersionId"] if is_object else ""
                if t <= as_of and t >= newest.get(v["Key"], (-1.0, None))[0]:
                    newest[v["Key"]] = (t, v["VersionId"] if is_object else None)
        for key, cur in current.items():
            want = newest.get(key, (0.0, None))[1]
            if want is None:
                if cur:
                    s3.delete_object(Bucket=bucket, Key=key)
            elif want != cur:
                s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": want})

    # --- health ------------------------------------------------------------------------------------
    def describe(self) -> list[CheckResult]:
        r = self.resources()
        out = [self._table_check(name, t) for name, t in r.tables.items()]
        for name, b in r.buckets.items():
            t0 = time.perf_counter()
            try:
                self.clients("s3").head_bucket(Bucket=b)
                versioning = self._versioning(b)
                ok = versioning == "Enabled"
                detail = f"s3://{b} reachable; versioning {versioning}" + ("" if ok else ": backups cannot "
                                                                              "restore its objects")
            except Exception as e:  # noqa: BLE001 - a check reports, never raises
                ok, detail = False, f"s3://{b}: {type(e).__name__}: {e}"
            out.append(CheckResult(f"bucket {name}", ok, detail, _ms(t0)))
        return out

    def _table_check(self, name: str, table: str) -> CheckResult:
        t0 = time.perf_counter()
        ddb = self.clients("dynamodb")
        try:
            d = ddb.describe_table(TableName=table)["Table"]
            if d.get("TableStatus") != "ACTIVE":
                return CheckResult(f"table {name}", False, f"{table} is {d.get('TableStatus')}", _ms(t0))
            types = {a["AttributeName"]: a["AttributeType"] for a in d["AttributeDefinitions"]}
            # a key of its own per check: two machines verifying at once (the lease holder after its
            # rollback, an operator's verify elsewhere) would otherwise delete each other's probe
            tag = secrets.randbits(40)
            key = {k["AttributeName"]: _probe_value(types[k["AttributeName"]], tag) for k in d["KeySchema"]}
            ddb.put_item(TableName=table, Item={**key, "ts": {"N": str(time.time())}})
            ok = "Item" in ddb.get_item(TableName=table, Key=key, ConsistentRead=True)
            ddb.delete_item(TableName=table, Key=key)
            detail = f"{table} ACTIVE, {d.get('ItemCount', 0)} items; read/write ok" if ok else \
                f"{table}: the probe item written was not read back"
            return CheckResult(f"table {name}", ok, detail, _ms(t0))
        except Exception as e:  # noqa: BLE001 - a check reports, never raises
            return CheckResult(f"table {name}", False, f"{table}: {type(e).__name__}: {e}", _ms(t0))

    def _versioning(self, bucket: str) -> str:
        with aws_errors(f"bucket {bucket}"):
            return str(self.clients("s3").get_bucket_versioning(Bucket=bucket).get("Status", "Disabled"))

    def _exists(self, table: str) -> bool:
        try:
            self.clients("dynamodb").describe_table(TableName=table)
            return True
        except self.clients("dynamodb").exceptions.ResourceNotFoundException:
            return False


def _scan(ddb: Any, table: str, keys: list[str] | None = None) -> list[dict[str, Any]]:
    kw: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    if keys:
        kw["ProjectionExpression"] = ", ".join(f"#k{i}" for i in range(len(keys)))
        kw["ExpressionAttributeNames"] = {f"#k{i}": k for i, k in enumerate(keys)}
    out = []
    for page in ddb.get_paginator("scan").paginate(**kw):
        out += page.get("Items", [])
    return out


def _probe_value(kind: str, tag: int) -> dict[str, Any]:
    text = f"{PROBE}{tag:010x}"
    return {"S": text} if kind == "S" else {"N": f"-{tag}"} if kind == "N" else {"B": text.encode()}


def _epoch(v: Any) -> float:
    return v.timestamp() if isinstance(v, datetime) else float(v)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
