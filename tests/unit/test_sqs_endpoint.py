"""The SQS-compatible endpoint: boto3 (and the AWS CLI once) against the local platform's endpoint app,
served by uvicorn on a real 127.0.0.1 socket, over the platform's real SQLite queues."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from backout.manifest import load_manifest
from backout.platforms.local.platform import LocalPlatform
from backout.platforms.local.sqs import md5_of_attributes
from served import serve

APP = '''
import os


def handler(event, context):
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k.endswith("_QUEUE_URL")}
'''

MANIFEST = """
[service]
name = "svc"
source = "code"

[functions.api]
handler = "app.handler"
environment = { OUTBOX_QUEUE_URL = "https://sqs.example/123/elsewhere" }
events = [{ http = "GET /env" }]

[queues.jobs]
visibility_timeout = "30s"
max_receive_count = 2
dead_letter_queue = "jobs-dlq"

[queues.jobs-dlq]

[queues.outbox]

[environments.test]
gateway_port = 0
control_port = 0
"""


class Env:
    def __init__(self, platform: LocalPlatform, url: str) -> None:
        self.platform = platform
        self.url = url
        self.sqs = boto3.client(
            "sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="any", aws_secret_access_key="any"
        )
        self.jobs = f"{url}/000000000000/jobs"
        self.dlq = f"{url}/000000000000/jobs-dlq"

    def raw(self, action: str, body: Any, content_type: str = "application/x-amz-json-1.0") -> httpx.Response:
        headers = {"Content-Type": content_type}
        if action:
            headers["X-Amz-Target"] = f"AmazonSQS.{action}"
        return httpx.post(self.url + "/", headers=headers, content=json.dumps(body) if action else body)

    def drain(self) -> None:
        for q in ("jobs", "jobs-dlq", "outbox"):
            self.platform.queue_store.purge(q)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("sqs")
    (root / "code").mkdir()
    (root / "code" / "app.py").write_text(APP)
    (root / "backout.toml").write_text(MANIFEST)
    platform = LocalPlatform(load_manifest(root / "backout.toml"), "test")
    try:
        with serve(platform.sqs_app()) as url:
            platform.bind_aws(url)
            yield Env(platform, url)
    finally:
        platform.close()


@pytest.fixture
def e(env: Env) -> Env:
    env.drain()
    return env


def error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = exc.value.response["Error"]
    return err["QueryErrorCode"], err["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_send_receive_delete_with_correct_md5s_and_the_queue_store_agrees(e: Env) -> None:
    attrs = {"kind": {"DataType": "String", "StringValue": "drawing"}, "n": {"DataType": "Number", "StringValue": "7"}}
    sent = e.sqs.send_message(QueueUrl=e.jobs, MessageBody="héllo", MessageAttributes=attrs)
    assert sent["MD5OfMessageBody"] == hashlib.md5("héllo".encode()).hexdigest()
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(attrs)
    assert e.platform.queue_stats("jobs").visible == 1

    [m] = e.sqs.receive_message(QueueUrl=e.jobs, MessageAttributeNames=["kind"],
                                MessageSystemAttributeNames=["All"])["Messages"]
    assert (m["MessageId"], m["Body"], m["MD5OfBody"]) == (sent["MessageId"], "héllo", sent["MD5OfMessageBody"])
    assert m["MessageAttributes"] == {"kind": {"StringValue": "drawing", "DataType": "String"}}
    assert m["MD5OfMessageAttributes"] == md5_of_attributes(m["MessageAttributes"])
    assert m["Attributes"]["ApproximateReceiveCount"] == "1" and m["Attributes"]["SenderId"] == "000000000000"
    s = e.platform.queue_stats("jobs")
    assert (s.visible, s.in_flight) == (0, 1)

    e.sqs.delete_message(QueueUrl=e.jobs, ReceiptHandle=m["ReceiptHandle"])
    e.sqs.delete_message(QueueUrl=e.jobs, ReceiptHandle=m["ReceiptHandle"])  # again: SQS accepts a settled handle
    s = e.platform.queue_stats("jobs")
    assert (s.visible, s.in_flight, s.deleted >= 1) == (0, 0, True)
    assert e.sqs.receive_message(QueueUrl=e.jobs).get("Messages", []) == []


def test_queue_urls_listing_and_attributes_agree_with_queue_stats(e: Env) -> None:
    assert e.sqs.get_queue_url(QueueName="jobs")["QueueUrl"] == e.jobs
    assert e.sqs.list_queues()["QueueUrls"] == [e.jobs, e.dlq, f"{e.url}/000000000000/outbox"]
    assert e.sqs.list_queues(QueueNamePrefix="jobs")["QueueUrls"] == [e.jobs, e.dlq]
    e.sqs.send_message_batch(QueueUrl=e.jobs, Entries=[{"Id": f"m{i}", "MessageBody": str(i)} for i in range(5)])
    e.sqs.send_message(QueueUrl=e.jobs, MessageBody="later", DelaySeconds=600)
    e.sqs.receive_message(QueueUrl=e.jobs, MaxNumberOfMessages=2)
    a = e.sqs.get_queue_attributes(QueueUrl=e.jobs, AttributeNames=["All"])["Attributes"]
    s = e.platform.queue_stats("jobs")
    assert (int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"]),
            int(a["ApproximateNumberOfMessagesDelayed"])) == (s.visible, s.in_flight, s.delayed) == (3, 2, 1)
    assert json.loads(a["RedrivePolicy"]) == {
        "deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:jobs-dlq", "maxReceiveCount": 2}
    assert (a["VisibilityTimeout"], a["QueueArn"]) == ("30", "arn:aws:sqs:us-east-1:000000000000:jobs")
    one = e.sqs.get_queue_attributes(QueueUrl=e.jobs, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert one == {"ApproximateNumberOfMessages": "3"}
    e.sqs.purge_queue(QueueUrl=e.jobs)
    assert e.platform.queue_attributes("jobs").visible == 0


def test_batches_and_their_limits(e: Env) -> None:
    ok = e.sqs.send_message_batch(QueueUrl=e.jobs, Entries=[
        *({"Id": f"e{i}", "MessageBody": f"b{i}"} for i in range(9)),
        {"Id": "bad", "MessageBody": "nul \x00 char"},
    ])
    assert sorted(s["Id"] for s in ok["Successful"]) == sorted(f"e{i}" for i in range(9))
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in ok["Failed"]] == [("bad", "InvalidMessageContents", True)]
    assert all(s["MD5OfMessageBody"] == hashlib.md5(f"b{s['Id'][1:]}".encode()).hexdigest() for s in ok["Successful"])
    assert e.platform.queue_stats("jobs").visible == 9

    cases = [
        ([{"Id": str(i), "MessageBody": "x"} for i in range(11)], "TooManyEntriesInBatchRequest",
         "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
        ([], "EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest"),
        ([{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}], "BatchEntryIdsNotDistinct",
         "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
        ([{"Id": "no spaces", "MessageBody": "x"}], "InvalidBatchEntryId",
         "AWS.SimpleQueueService.InvalidBatchEntryId"),
        ([{"Id": f"{i}", "MessageBody": "x" * 30_000} for i in range(10)], "BatchRequestTooLong",
         "AWS.SimpleQueueService.BatchRequestTooLong"),
    ]
    for entries, shape, code in cases:
        with pytest.raises(getattr(e.sqs.exceptions, shape)) as exc:
            e.sqs.send_message_batch(QueueUrl=e.jobs, Entries=entries)
        assert error(exc) == (shape, code, 400)

    msgs = e.sqs.receive_message(QueueUrl=e.jobs, MaxNumberOfMessages=10)["Messages"]
    assert len(msgs) == 9
    entries = [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
    out = e.sqs.delete_message_batch(QueueUrl=e.jobs, Entries=[*entries, {"Id": "junk", "ReceiptHandle": "junk"}])
    assert len(out["Successful"]) == 9 and [(f["Id"], f["Code"]) for f in out["Failed"]] == [
        ("junk", "ReceiptHandleIsInvalid")]
    assert e.platform.queue_stats("jobs").in_flight == 0


def test_long_poll_waits_for_a_send_without_blocking_other_requests(e: Env) -> None:
    results: dict[int, list[dict[str, Any]]] = {}

    def poll(i: int) -> None:
        client = boto3.client("sqs", endpoint_url=e.url, region_name="us-east-1", aws_access_key_id="k",
                              aws_secret_access_key="k")
        results[i] = client.receive_message(QueueUrl=e.jobs, WaitTimeSeconds=20).get("Messages", [])

    pollers = [threading.Thread(target=poll, args=(i,)) for i in range(3)]
    for t in pollers:
        t.start()
    # while three polls wait, other requests are answered (and the polls are still waiting: nothing was sent)
    for _ in range(5):
        assert e.sqs.get_queue_attributes(QueueUrl=e.jobs)["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert all(t.is_alive() for t in pollers) and not results
    e.sqs.send_message_batch(QueueUrl=e.jobs, Entries=[{"Id": f"w{i}", "MessageBody": f"wake {i}"} for i in range(3)])
    for t in pollers:
        t.join(30)
    assert sorted(m["Body"] for ms in results.values() for m in ms) == ["wake 0", "wake 1", "wake 2"]
    assert e.sqs.receive_message(QueueUrl=e.jobs).get("Messages", []) == []


def test_visibility_timeout_and_changing_it(e: Env) -> None:
    e.sqs.send_message(QueueUrl=e.jobs, MessageBody="v")
    [m] = e.sqs.receive_message(QueueUrl=e.jobs, VisibilityTimeout=300)["Messages"]
    assert e.sqs.receive_message(QueueUrl=e.jobs).get("Messages", []) == []  # invisible for 300 s
    e.sqs.change_message_visibility(QueueUrl=e.jobs, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    [again] = e.sqs.receive_message(QueueUrl=e.jobs, MessageSystemAttributeNames=["ApproximateReceiveCount"],
                                    VisibilityTimeout=0)["Messages"]
    assert again["MessageId"] == m["MessageId"] and again["Attributes"] == {"ApproximateReceiveCount": "2"}
    e.sqs.change_message_visibility(QueueUrl=e.jobs, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=60)
    assert e.platform.queue_stats("jobs").in_flight == 1
    e.sqs.delete_message(QueueUrl=e.jobs, ReceiptHandle=again["ReceiptHandle"])
    with pytest.raises(e.sqs.exceptions.MessageNotInflight) as exc:
        e.sqs.change_message_visibility(QueueUrl=e.jobs, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=5)
    assert error(exc) == ("MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight", 400)
    with pytest.raises(e.sqs.exceptions.ReceiptHandleIsInvalid) as exc:
        e.sqs.change_message_visibility(QueueUrl=e.jobs, ReceiptHandle="nonsense", VisibilityTimeout=5)
    assert error(exc) == ("ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid", 400)


def test_redrive_to_the_dlq_after_max_receive_count_and_a_move_task_back(e: Env) -> None:
    mid = e.sqs.send_message(QueueUrl=e.jobs, MessageBody="poison")["MessageId"]
    for _ in range(2):  # maxReceiveCount = 2: two receives, each one "failing" (visibility 0)
        [m] = e.sqs.receive_message(QueueUrl=e.jobs, VisibilityTimeout=0)["Messages"]
        assert m["MessageId"] == mid
    assert e.sqs.receive_message(QueueUrl=e.jobs).get("Messages", []) == []  # the third receive moved it
    assert e.platform.queue_stats("jobs").moved_to_dlq >= 1
    [dead] = e.sqs.receive_message(QueueUrl=e.dlq, VisibilityTimeout=0, MessageSystemAttributeNames=["All"])["Messages"]
    assert dead["MessageId"] == mid and dead["Body"] == "poison"
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == "arn:aws:sqs:us-east-1:000000000000:jobs"

    dlq_arn = "arn:aws:sqs:us-east-1:000000000000:jobs-dlq"
    handle = e.sqs.start_message_move_task(SourceArn=dlq_arn)["TaskHandle"]
    [task] = e.sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
    assert (task["Status"], task["ApproximateNumberOfMessagesMoved"], task["DestinationArn"]) == (
        "COMPLETED", 1, "arn:aws:sqs:us-east-1:000000000000:jobs")
    assert e.platform.redrive_status("jobs-dlq")[0].id == handle  # the same tasks `backout queue redrive` keeps
    [back] = e.sqs.receive_message(QueueUrl=e.jobs, MessageSystemAttributeNames=["All"])["Messages"]
    assert back["MessageId"] == mid and back["Attributes"]["ApproximateReceiveCount"] == "1"
    assert e.platform.queue_stats("jobs-dlq").visible == 0

    with pytest.raises(e.sqs.exceptions.ResourceNotFoundException):
        e.sqs.start_message_move_task(SourceArn="arn:aws:sqs:us-east-1:000000000000:nope")
    with pytest.raises(ClientError) as exc:  # outbox is nobody's DLQ
        e.sqs.start_message_move_task(SourceArn="arn:aws:sqs:us-east-1:000000000000:outbox")
    assert error(exc)[1] == "InvalidParameterValue"


def test_every_error_has_sqs_json_shape(e: Env) -> None:
    with pytest.raises(e.sqs.exceptions.QueueDoesNotExist) as exc:
        e.sqs.get_queue_url(QueueName="missing")
    assert error(exc) == ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", 400)
    with pytest.raises(e.sqs.exceptions.QueueDoesNotExist):
        e.sqs.send_message(QueueUrl=f"{e.url}/000000000000/missing", MessageBody="x")
    for kwargs in ({"WaitTimeSeconds": 21}, {"MaxNumberOfMessages": 11}, {"VisibilityTimeout": 43201}):
        with pytest.raises(ClientError) as exc:
            e.sqs.receive_message(QueueUrl=e.jobs, **kwargs)
        assert error(exc) == ("InvalidParameterValue", "InvalidParameterValue", 400)
    with pytest.raises(ClientError) as exc:
        e.sqs.send_message(QueueUrl=e.jobs, MessageBody="x" * (256 * 1024 + 1))
    assert error(exc)[1] == "InvalidParameterValue" and "262144" in str(exc.value)
    with pytest.raises(e.sqs.exceptions.InvalidMessageContents):
        e.sqs.send_message(QueueUrl=e.jobs, MessageBody="\x01")
    with pytest.raises(e.sqs.exceptions.InvalidAttributeName):
        e.sqs.get_queue_attributes(QueueUrl=e.jobs, AttributeNames=["Colour"])
    with pytest.raises(e.sqs.exceptions.UnsupportedOperation):
        e.sqs.create_queue(QueueName="made-up-by-code")
    assert e.sqs.create_queue(QueueName="jobs")["QueueUrl"] == e.jobs  # a manifest queue: idempotent

    r = e.raw("SendMessage", {"QueueUrl": e.jobs})  # what boto3 would refuse before sending
    assert r.status_code == 400 and r.json()["__type"] == "com.amazonaws.sqs#MissingParameter"
    assert r.headers["x-amzn-query-error"] == "MissingParameter;Sender"
    r = e.raw("DeleteQueue", {"QueueUrl": e.jobs})
    assert r.json()["__type"] == "com.amazonaws.sqs#UnsupportedOperation"
    assert r.headers["x-amzn-query-error"] == "AWS.SimpleQueueService.UnsupportedOperation;Sender"
    r = e.raw("", "Action=SendMessage&MessageBody=x", "application/x-www-form-urlencoded")
    assert r.status_code == 400 and "query protocol is not" in r.json()["message"]
    assert e.platform.queue_stats("jobs").visible == 0  # nothing refused was enqueued


def test_the_aws_cli_sends_through_the_endpoint(e: Env) -> None:
    aws = shutil.which("aws", path=os.path.dirname(os.path.realpath(__import__("sys").executable)))
    if aws is None:
        pytest.skip("the AWS CLI (`awscli`, in the test extra) is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any", "AWS_DEFAULT_REGION": "us-east-1"}
    r = subprocess.run([aws, "sqs", "send-message", "--endpoint-url", e.url, "--queue-url", e.jobs,
                        "--message-body", "from the cli", "--output", "json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["MD5OfMessageBody"] == hashlib.md5(b"from the cli").hexdigest()
    [m] = e.platform.queue_store.receive("jobs")
    assert m.body == "from the cli"


def test_every_function_gets_the_aws_wiring_and_may_override_it(e: Env) -> None:
    e.platform.bootstrap()
    got = e.platform.invoke("api", "1", {"direct": True}).payload
    assert got["AWS_ENDPOINT_URL_SQS"] == e.url
    assert (got["AWS_REGION"], got["AWS_DEFAULT_REGION"]) == ("us-east-1", "us-east-1")
    assert got["AWS_ACCESS_KEY_ID"] and got["AWS_SECRET_ACCESS_KEY"]
    assert got["JOBS_QUEUE_URL"] == e.jobs and got["JOBS_DLQ_QUEUE_URL"] == e.dlq
    assert got["OUTBOX_QUEUE_URL"] == "https://sqs.example/123/elsewhere"  # the function's own value wins
    assert "AWS_PROFILE" not in got and "AWS_SESSION_TOKEN" not in got


def test_a_send_that_must_wait_for_another_writer_waits_in_a_thread_not_on_the_event_loop(e: Env) -> None:
    """Store calls run on the event loop only while nothing else holds the write lock: with the lock
    held by another connection (a worker process, a poller), a SendMessage waits in a thread and is
    answered after the lock is released, while the endpoint keeps answering other requests."""
    import sqlite3

    other = sqlite3.connect(e.platform.queue_store.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    sent: dict[str, Any] = {}
    t = threading.Thread(target=lambda: sent.update(e.sqs.send_message(QueueUrl=e.jobs, MessageBody="later")))
    t.start()
    try:
        t.join(0.5)
        assert t.is_alive() and not sent, "it waits for the lock"
        assert e.sqs.get_queue_url(QueueName="jobs")["QueueUrl"] == e.jobs, "the loop still answers"
        assert e.sqs.get_queue_attributes(QueueUrl=e.jobs, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"]["ApproximateNumberOfMessages"] == "0", "reads do not wait (WAL)"
    finally:
        other.execute("COMMIT")
        other.close()
    t.join(60)
    assert sent["MD5OfMessageBody"] == hashlib.md5(b"later").hexdigest()
    [m] = e.sqs.receive_message(QueueUrl=e.jobs)["Messages"]
    assert m["Body"] == "later"
