"""The notes example is plain AWS code: its handlers, imported unchanged, run in-process against moto
(`mock_aws`) with the table and queues its template.yaml declares."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sda.events import LambdaContext, api_event, response_json

CODE = Path(__file__).resolve().parents[2] / "examples" / "notes" / "notes"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"notes_example_{name}", CODE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    for key in [k for k in __import__("os").environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        # what template.yaml creates
        boto3.client("dynamodb").create_table(
            TableName="notes", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        sqs = boto3.client("sqs")
        dlq = sqs.create_queue(QueueName="notes-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName="notes", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})})["QueueUrl"]
        monkeypatch.setenv("NOTES_TABLE", "notes")
        monkeypatch.setenv("NOTES_QUEUE_URL", url)
        yield {"sqs": sqs, "url": url, "api": load("api"), "worker": load("worker")}


def records(sqs: Any, url: str) -> dict[str, Any]:
    """The SQS event Lambda would build from what the queue holds."""
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])["Messages"]
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notes",
        "awsRegion": "us-east-1"} for m in msgs]}


def test_a_note_goes_through_the_queue_into_the_table(aws: dict[str, Any]) -> None:
    api, worker = aws["api"], aws["worker"]
    r = api.handler(api_event("POST", "/notes", body=json.dumps({"text": "three small words"})), LambdaContext())
    assert r["statusCode"] == 202
    note_id = response_json(r)["id"]
    assert api.handler(api_event("GET", f"/notes/{note_id}"), LambdaContext())["statusCode"] == 404  # not yet

    event = records(aws["sqs"], aws["url"])
    assert [json.loads(rec["body"])["id"] for rec in event["Records"]] == [note_id]
    assert worker.handler(event, LambdaContext()) == {"batchItemFailures": []}
    r = api.handler(api_event("GET", f"/notes/{note_id}"), LambdaContext())
    assert (r["statusCode"], response_json(r)) == (200, {"id": note_id, "text": "three small words", "words": 3})


def test_only_the_bad_message_of_a_batch_is_reported_as_failed(aws: dict[str, Any]) -> None:
    sqs, url = aws["sqs"], aws["url"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"id": "good", "text": "fine"}))
    bad = sqs.send_message(QueueUrl=url, MessageBody="not json")["MessageId"]
    out = aws["worker"].handler(records(sqs, url), LambdaContext())
    assert out == {"batchItemFailures": [{"itemIdentifier": bad}]}
    assert response_json(aws["api"].handler(api_event("GET", "/notes/good"), LambdaContext()))["words"] == 1


def test_bad_requests_are_refused_before_anything_is_queued(aws: dict[str, Any]) -> None:
    api = aws["api"]
    for body in (None, "{}", json.dumps({"text": ""}), json.dumps({"text": "x" * 10_001})):
        assert api.handler(api_event("POST", "/notes", body=body), LambdaContext())["statusCode"] == 400
    attrs = aws["sqs"].get_queue_attributes(QueueUrl=aws["url"], AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert api.handler(api_event("GET", "/health"), LambdaContext())["statusCode"] == 200
