"""AWS storage: the DynamoDB jobs table and the S3 file store of the original design.

Table: partition key `company#client#job` (e.g. `7central#st_marys#job_…`), GSIs
`StatusDateIndex` (status, created_at), `ClientProjectIndex` (client_name,
created_at) and `ProcessedVersionIndex` (processed_version, created_at).
`GET /status/{job_id}` only knows the job id, so each job also owns a small
pointer item `jobid#{job_id}` → its key; job and pointer are written in one
transaction with `attribute_not_exists`, which is also what makes ids unique
across processes. Pointer items carry none of the GSI keys, so they never
appear in an index.

Files: `s3://{bucket}/{client}/{project}/{job_id}/{name}`.

`AwsSideCopy` reads a backup restored beside the live data: the jobs from a side table (a restore of
the jobs table's backup, pointer items included) and the files as the bucket's object versions
current at the backup's instant (the bucket is versioned).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sda.errors import FileMissing, JobExists, JobNotFound, StatusConflict, StorageUnavailable
from sda.jobs import iso
from sda.storage.base import Check, check_file_name, job_prefix

PK = "company#client#job"
POINTER_PREFIX = "jobid#"
PK_CACHE_SIZE = 10_000  # job ids whose key an instance remembers
INDEXES = {
    "StatusDateIndex": "status",
    "ClientProjectIndex": "client_name",
    "ProcessedVersionIndex": "processed_version",
}


def to_dynamo(value: Any) -> Any:
    """floats → Decimal (DynamoDB has no float type)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


def _item(job: dict[str, Any]) -> dict[str, Any]:
    item = to_dynamo(dict(job))
    item[PK] = job["company_client_job"]
    version = (job.get("processed_by") or {}).get("version")
    if version is not None:
        item["processed_version"] = str(version)
    else:
        item.pop("processed_version", None)
    return item


def _job(item: dict[str, Any]) -> dict[str, Any]:
    job = from_dynamo(item)
    job.pop(PK, None)
    job.pop("processed_version", None)
    return job


def _unavailable(what: str, exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"{what}: {exc}")


_loader: Any = None  # botocore's model loader, shared by every instance of the process
_loader_lock = threading.Lock()


def _clients(session: Any | None) -> tuple[Any, Any, Any]:
    """(dynamodb client, dynamodb resource, s3 client) from `session`, or from a new boto3 session
    over the process's one botocore loader: a new loader parses botocore's JSON models again (a warm
    Lambda, and every side copy of a repair, reuses the first)."""
    global _loader
    if session is None:
        import boto3  # the local mode never pays for boto3's import
        import botocore.loaders
        import botocore.session

        with _loader_lock:
            if _loader is None:
                _loader = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _loader)
        session = boto3.session.Session(botocore_session=core)
        with _loader_lock:  # each boto3 session appends its data directory to the loader's paths
            _loader.search_paths[:] = list(dict.fromkeys(_loader.search_paths))
    return session.client("dynamodb"), session.resource("dynamodb"), session.client("s3")


class AwsStorage:
    mode = "aws"

    def __init__(self, table_name: str, bucket: str, session: Any | None = None) -> None:
        self.table_name = table_name
        self.bucket = bucket
        self._ddb, resource, self._s3 = _clients(session)
        self._table = resource.Table(table_name)
        # job id → its key: a job's key never changes; bounded, so a warm instance does not grow with every job
        self._pk_cache: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _errors() -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    # -- provisioning (tests, the aws platform's bootstrap) --------------------------------------

    def create_resources(self) -> None:
        """Create the table (with its GSIs) and the bucket if they do not exist."""
        attrs = [
            {"AttributeName": PK, "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "S"},
        ]
        attrs += [{"AttributeName": a, "AttributeType": "S"} for a in INDEXES.values()]
        gsis = [
            {
                "IndexName": name,
                "KeySchema": [
                    {"AttributeName": attr, "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for name, attr in INDEXES.items()
        ]
        existing = self._ddb.list_tables().get("TableNames", [])
        if self.table_name not in existing:
            self._ddb.create_table(
                TableName=self.table_name,
                KeySchema=[{"AttributeName": PK, "KeyType": "HASH"}],
                AttributeDefinitions=attrs,
                GlobalSecondaryIndexes=gsis,
                BillingMode="PAY_PER_REQUEST",
            )
            self._ddb.get_waiter("table_exists").wait(TableName=self.table_name)
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except self._errors():
            self._s3.create_bucket(Bucket=self.bucket)

    # -- table ---------------------------------------------------------------------------------

    def create_job(self, job: dict[str, Any]) -> None:
        from boto3.dynamodb.types import TypeSerializer

        ser = TypeSerializer()
        item = {k: ser.serialize(v) for k, v in _item(job).items()}
        pointer = {PK: {"S": POINTER_PREFIX + job["job_id"]}, "target": {"S": job["company_client_job"]}}
        cond = {"ConditionExpression": "attribute_not_exists(#pk)", "ExpressionAttributeNames": {"#pk": PK}}
        try:
            self._ddb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table_name, "Item": pointer, **cond}},
                    {"Put": {"TableName": self.table_name, "Item": item, **cond}},
                ]
            )
        except self._errors() as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            reasons = getattr(exc, "response", {}).get("CancellationReasons", [])
            if code == "TransactionCanceledException" and any(
                r.get("Code") == "ConditionalCheckFailed" for r in reasons
            ):
                raise JobExists(job["job_id"]) from exc
            raise _unavailable("DynamoDB create_job", exc) from exc
        self._remember(job["job_id"], job["company_client_job"])

    def _pk(self, job_id: str) -> str | None:
        if job_id in self._pk_cache:
            self._pk_cache.move_to_end(job_id)
            return self._pk_cache[job_id]
        try:
            resp = self._table.get_item(Key={PK: POINTER_PREFIX + job_id}, ConsistentRead=True)
        except self._errors() as exc:
            raise _unavailable("DynamoDB get_item", exc) from exc
        target = resp.get("Item", {}).get("target")
        if target:
            self._remember(job_id, target)
        return target

    def _remember(self, job_id: str, pk: str) -> None:
        self._pk_cache[job_id] = pk
        self._pk_cache.move_to_end(job_id)
        while len(self._pk_cache) > PK_CACHE_SIZE:
            self._pk_cache.popitem(last=False)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        pk = self._pk(job_id)
        if pk is None:
            return None
        try:
            resp = self._table.get_item(Key={PK: pk}, ConsistentRead=True)
        except self._errors() as exc:
            raise _unavailable("DynamoDB get_item", exc) from exc
        return _job(resp["Item"]) if "Item" in resp else None

    def update_job(
        self, job_id: str, changes: dict[str, Any], *, only_if_status: Iterable[str] | None = None
    ) -> dict[str, Any]:
        pk = self._pk(job_id)
        if pk is None:
            raise JobNotFound(job_id)
        changes = dict(changes)
        changes["updated_at"] = changes.get("updated_at") or iso()
        changes.pop("company_client_job", None)
        changes.pop("job_id", None)
        names = {"#pk": PK}
        values: dict[str, Any] = {}
        sets = []
        removes = []
        for i, (key, value) in enumerate(changes.items()):
            names[f"#f{i}"] = key
            sets.append(f"#f{i} = :v{i}")
            values[f":v{i}"] = to_dynamo(value)
        if "processed_by" in changes:
            version = (changes["processed_by"] or {}).get("version")
            names["#pv"] = "processed_version"
            if version is None:
                removes.append("#pv")
            else:
                sets.append("#pv = :pv")
                values[":pv"] = str(version)
        expr = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        condition = "attribute_exists(#pk)"
        if only_if_status is not None:
            allowed = sorted(set(only_if_status))
            names["#st"] = "status"
            for j, status in enumerate(allowed):
                values[f":s{j}"] = status
            condition += " AND #st IN (" + ", ".join(f":s{j}" for j in range(len(allowed))) + ")"
        try:
            resp = self._table.update_item(
                Key={PK: pk},
                UpdateExpression=expr,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except self._errors() as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                current = self.get_job(job_id)
                if current is None:
                    raise JobNotFound(job_id) from exc
                raise StatusConflict(f"{job_id} is {current.get('status')}") from exc
            raise _unavailable("DynamoDB update_item", exc) from exc
        return _job(resp["Attributes"])

    def put_job(self, job: dict[str, Any]) -> None:
        try:
            self._table.put_item(Item=_item(job))
            self._table.put_item(Item={PK: POINTER_PREFIX + job["job_id"], "target": job["company_client_job"]})
        except self._errors() as exc:
            raise _unavailable("DynamoDB put_item", exc) from exc
        self._remember(job["job_id"], job["company_client_job"])

    def _query(self, index: str, key: str, value: str, limit: int, newest_first: bool) -> list[dict[str, Any]]:
        from boto3.dynamodb.conditions import Key

        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": Key(key).eq(value),
            "ScanIndexForward": not newest_first,
        }
        try:
            while len(out) < limit:
                resp = self._table.query(**kwargs)
                out.extend(_job(i) for i in resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    break
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        except self._errors() as exc:
            raise _unavailable(f"DynamoDB query {index}", exc) from exc
        return out[:limit]

    def list_jobs(
        self, *, status: str | None = None, client_name: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        if status is not None:
            jobs = self._query("StatusDateIndex", "status", status, 10**9 if client_name else limit, True)
            jobs = [j for j in jobs if client_name is None or j.get("client_name") == client_name]
            return jobs[:limit]
        if client_name is not None:
            return self._query("ClientProjectIndex", "client_name", client_name, limit, True)
        from boto3.dynamodb.conditions import Attr

        jobs: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"FilterExpression": Attr("status").exists()}
        try:
            while True:
                resp = self._table.scan(**kwargs)
                jobs.extend(_job(i) for i in resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    break
                kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        except self._errors() as exc:
            raise _unavailable("DynamoDB scan", exc) from exc
        jobs.sort(key=lambda j: (j.get("created_at", ""), j["job_id"]), reverse=True)
        return jobs[:limit]

    def jobs_processed_by(self, version: str | int) -> list[dict[str, Any]]:
        return self._query("ProcessedVersionIndex", "processed_version", str(version), 10**9, False)

    # -- files ---------------------------------------------------------------------------------

    def _key(self, job: dict[str, Any], name: str) -> str:
        return f"{job_prefix(job)}/{check_file_name(name)}"

    def put_file(self, job: dict[str, Any], name: str, data: bytes, content_type: str | None = None) -> str:
        key = self._key(job, name)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except self._errors() as exc:
            raise _unavailable(f"S3 put {key}", exc) from exc
        return key

    def get_file(self, job: dict[str, Any], name: str) -> bytes:
        key = self._key(job, name)
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self._errors() as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileMissing(f"s3://{self.bucket}/{key} does not exist") from exc
            raise _unavailable(f"S3 get {key}", exc) from exc

    def has_file(self, job: dict[str, Any], name: str) -> bool:
        key = self._key(job, name)
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except self._errors() as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise _unavailable(f"S3 head {key}", exc) from exc

    # -- health --------------------------------------------------------------------------------

    def check(self) -> list[Check]:
        out = []
        t0 = time.perf_counter()
        try:
            table = self._ddb.describe_table(TableName=self.table_name)["Table"]
            ok = table.get("TableStatus") == "ACTIVE"
            detail = f"{self.table_name} {table.get('TableStatus')}"
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            ok, detail = False, f"{self.table_name}: {exc}"
        out.append(Check("table", ok, detail, (time.perf_counter() - t0) * 1000))
        t0 = time.perf_counter()
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            ok, detail = True, f"s3://{self.bucket}"
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"s3://{self.bucket}: {exc}"
        out.append(Check("storage", ok, detail, (time.perf_counter() - t0) * 1000))
        return out


class AwsSideCopy:
    """A side table restored from a backup of the jobs table, and the files bucket as of the backup.

    S3 keeps `LastModified` to the second; a version counts as part of the copy when its second is
    not after `as_of` (the platform's backup returns only once the second it was taken in is over,
    so a version written after the backup always carries a later second)."""

    def __init__(self, side_table: str, bucket: str, as_of: float, session: Any | None = None) -> None:
        self.as_of = float(as_of)
        self.bucket = bucket
        self._jobs = AwsStorage(side_table, bucket, session)  # read through its get_job / list_jobs only
        self._s3 = self._jobs._s3

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get_job(job_id)

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._jobs.list_jobs(limit=10**9)

    def job_files(self, job: dict[str, Any]) -> dict[str, bytes]:
        prefix = job_prefix(job) + "/"
        # key → (second, is latest, -position, version id or None for a delete marker): the newest
        # version at `as_of`. Within one second the latest of all wins, then the order S3 lists each
        # kind in (newest first)
        chosen: dict[str, tuple[float, bool, int, str | None]] = {}
        listed = {"Versions": 0, "DeleteMarkers": 0}
        try:
            for page in self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
                for kind in listed:
                    for v in page.get(kind, []):
                        listed[kind] = n = listed[kind] + 1
                        t = _epoch(v["LastModified"])
                        cand = (t, bool(v.get("IsLatest")), -n, v["VersionId"] if kind == "Versions" else None)
                        if t <= self.as_of and (v["Key"] not in chosen or cand[:3] > chosen[v["Key"]][:3]):
                            chosen[v["Key"]] = cand
            out = {}
            for key, (_, _, _, version) in sorted(chosen.items()):
                if version is not None:
                    body = self._s3.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"].read()
                    out[key[len(prefix):]] = body
            return out
        except AwsStorage._errors() as exc:
            raise _unavailable(f"S3 versions of s3://{self.bucket}/{prefix}", exc) from exc


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)
