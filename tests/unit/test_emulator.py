"""The opt-in DynamoDB/S3 emulator (moto's server): its tables and buckets are created, its state
survives a restart through its journal (a torn last entry is dropped), and `restore` brings back
the state of a backup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from backout.manifest import load_manifest
from backout.platforms.local.platform import LocalPlatform

MANIFEST = """
[service]
name = "svc"
source = "code"

[functions.api]
handler = "app.handler"

[emulator]
services = ["dynamodb", "s3"]
tables = { items = "id" }
buckets = ["files"]

[environments.test]
gateway_port = 0
control_port = 0
"""


def clients(endpoints: dict[str, str]) -> tuple[Any, Any]:
    kw = {"region_name": "us-east-1", "aws_access_key_id": "any", "aws_secret_access_key": "any"}
    return (boto3.client("dynamodb", endpoint_url=endpoints["dynamodb"], **kw),
            boto3.client("s3", endpoint_url=endpoints["s3"], **kw))


def ids(ddb: Any) -> set[str]:
    return {i["id"]["S"] for i in ddb.scan(TableName="items")["Items"]}


def test_state_survives_a_restart_and_restore_brings_back_a_backup(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "app.py").write_text("def handler(event, context):\n    return {}\n")
    (tmp_path / "backout.toml").write_text(MANIFEST)
    manifest = load_manifest(tmp_path / "backout.toml")

    platform = LocalPlatform(manifest, "test")
    try:
        endpoints = platform.bind_aws("http://127.0.0.1:9")
        assert set(endpoints) == {"sqs", "dynamodb", "s3"} and endpoints["dynamodb"] == endpoints["s3"]
        assert platform.runtime.aws_env["AWS_ENDPOINT_URL_DYNAMODB"] == endpoints["dynamodb"]
        ddb, s3 = clients(endpoints)
        assert ids(ddb) == set() and [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["files"]
        ddb.put_item(TableName="items", Item={"id": {"S": "a"}})
        s3.put_object(Bucket="files", Key="k", Body=b"v1")
        backup = platform.backup("before")
        ddb.put_item(TableName="items", Item={"id": {"S": "b"}})
        ddb.delete_item(TableName="items", Key={"id": {"S": "a"}})
        s3.put_object(Bucket="files", Key="k", Body=b"v2")
    finally:
        platform.close()
    journal = platform.data_dir / "aws-emulator" / "journal.jsonl"
    with journal.open("a") as f:
        f.write('{"headers": {"X-Amz-Target": "DynamoDB_20120810.PutItem", "TORN')  # cut short by a crash

    again = LocalPlatform(manifest, "test")
    try:
        ddb, s3 = clients(again.bind_aws("http://127.0.0.1:9"))
        assert ids(ddb) == {"b"}  # replayed from the journal
        assert s3.get_object(Bucket="files", Key="k")["Body"].read() == b"v2"
        assert "TORN" not in journal.read_text()  # the torn entry was dropped

        again.restore(backup.id)
        assert ids(ddb) == {"a"}
        assert s3.get_object(Bucket="files", Key="k")["Body"].read() == b"v1"
    finally:
        again.close()
