"""SQS: attributes, sends, and DLQ redrives.

A redrive is `start_message_move_task` (asynchronous; `list_message_move_tasks` reports it). Where
the API is missing — an emulator without it (moto answers NotImplemented) or a region without it —
the fallback moves the messages itself: receive from the DLQ, send to the source queue, delete from
the DLQ, one batch of up to 10 at a time (at-least-once: a crash between send and delete leaves a
duplicate, never a loss). Such a task finishes before `start_redrive` returns and is remembered by
this process only, which `redrive_status` says in the task's `failure` field is not the case.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

from botocore.exceptions import ClientError

from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.aws.config import Clients, Resources, aws_errors, queue_name
from backout.platforms.base import QueueAttributes, QueueMessage, RedriveTask

log = logging.getLogger(__name__)

_MISSING_API = {"InternalFailure", "InternalError", "500", "UnsupportedOperation", "NotImplemented",
                "InvalidAction", "UnknownOperationException"}


class AwsQueues:
    def __init__(self, manifest: Manifest, clients: Clients, resources: Callable[[], Resources]) -> None:
        self.manifest = manifest
        self.clients = clients
        self.resources = resources
        self._fallback_tasks: dict[str, list[RedriveTask]] = {}
        self._lock = threading.Lock()

    def queues(self) -> list[str]:
        return [q for q in self.manifest.queues if q in self.resources().queues]

    def _url(self, queue: str) -> str:
        urls = self.resources().queues
        if queue not in urls:
            raise UsageError(f"no queue named {queue!r} (known: {', '.join(urls)})")
        return urls[queue]

    def _arn(self, queue: str) -> str:
        with aws_errors(f"queue {queue}"):
            a = self.clients("sqs").get_queue_attributes(QueueUrl=self._url(queue), AttributeNames=["QueueArn"])
        return str(a["Attributes"]["QueueArn"])

    def queue_attributes(self, queue: str) -> QueueAttributes:
        url = self._url(queue)
        with aws_errors(f"queue {queue} ({url})"):
            a = self.clients("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        dlq, max_receive = None, None
        if a.get("RedrivePolicy"):
            policy = json.loads(a["RedrivePolicy"])
            real = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
            by_real = {queue_name(u): q for q, u in self.resources().queues.items()}
            dlq, max_receive = by_real.get(real, real), int(policy["maxReceiveCount"])
        return QueueAttributes(queue, int(a.get("ApproximateNumberOfMessages", 0)),
                               int(a.get("ApproximateNumberOfMessagesNotVisible", 0)),
                               int(a.get("ApproximateNumberOfMessagesDelayed", 0)), dlq, max_receive)

    def send_message(self, queue: str, body: str, attributes: dict[str, str] | None = None) -> str:
        kw = {"MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}} \
            if attributes else {}
        with aws_errors(f"queue {queue}"):
            return str(self.clients("sqs").send_message(QueueUrl=self._url(queue), MessageBody=body, **kw)["MessageId"])

    def peek_messages(self, queue: str, limit: int = 10) -> list[QueueMessage]:
        """receive_message with VisibilityTimeout=0: the messages stay visible, but SQS counts the receive
        (a message peeked `maxReceiveCount` times moves to the DLQ on its next failure — said in the CLI help)."""
        sqs, url = self.clients("sqs"), self._url(queue)
        out: dict[str, QueueMessage] = {}
        with aws_errors(f"queue {queue}"):
            while len(out) < limit:  # a long poll asks every SQS server; stop at the first receive with nothing new
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, limit - len(out)),
                                          WaitTimeSeconds=1, VisibilityTimeout=0, AttributeNames=["All"],
                                          MessageAttributeNames=["All"]).get("Messages", [])
                fresh = [m for m in got if m["MessageId"] not in out]
                for m in fresh:
                    a, tags = m.get("Attributes", {}), m.get("MessageAttributes", {})
                    out[m["MessageId"]] = QueueMessage(
                        id=m["MessageId"], body=m["Body"],
                        attributes={k: str(v.get("StringValue", "")) for k, v in tags.items()},
                        sent_at=float(a.get("SentTimestamp", 0)) / 1000.0, visible=True,
                        receive_count=int(a.get("ApproximateReceiveCount", 0)))
                if not fresh:
                    break
        return sorted(out.values(), key=lambda m: m.sent_at)[:limit]

    def purge_queue(self, queue: str) -> int:
        """purge_queue; SQS does not say how many it deleted, so the count is the attributes' estimate just
        before (SQS allows one purge per queue every 60 s)."""
        before = self.queue_attributes(queue)
        with aws_errors(f"queue {queue}"):
            self.clients("sqs").purge_queue(QueueUrl=self._url(queue))
        return before.visible + before.in_flight + before.delayed

    def delete_tagged(self, queue: str, attribute: str, value: str) -> int:
        """A receive loop: delete the messages tagged `attribute = value` and make the others visible again at
        once (change_message_visibility 0), until a receive returns nothing new."""
        sqs, url = self.clients("sqs"), self._url(queue)
        deleted, seen = 0, set()
        with aws_errors(f"queue {queue}"):
            while True:
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                          VisibilityTimeout=30, MessageAttributeNames=[attribute]).get("Messages", [])
                fresh = [m for m in got if m["MessageId"] not in seen]
                for m in got:
                    seen.add(m["MessageId"])
                    tag = m.get("MessageAttributes", {}).get(attribute, {}).get("StringValue")
                    if tag == value:
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                        deleted += 1
                    else:
                        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"],
                                                      VisibilityTimeout=0)
                if not fresh:
                    return deleted

    def _source_of(self, dlq: str) -> str:
        sources = [n for n, q in self.manifest.queues.items() if q.dead_letter_queue == dlq]
        if dlq not in self.manifest.queues:
            raise UsageError(f"no queue named {dlq!r}")
        if not sources:
            raise UsageError(f"{dlq!r} is not the dead-letter queue of any queue")
        return sources[0]

    def start_redrive(self, dlq: str) -> RedriveTask:
        source = self._source_of(dlq)
        src_arn, dst_arn = self._arn(dlq), self._arn(source)
        started = time.time()
        try:
            r = self.clients("sqs").start_message_move_task(SourceArn=src_arn, DestinationArn=dst_arn)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code", "") not in _MISSING_API:
                raise
            log.warning("start_message_move_task unavailable (%s): moving %s's messages by receive/send/delete",
                        e.response["Error"].get("Code"), dlq)
            return self._move_by_hand(dlq, source, started)
        return RedriveTask(str(r["TaskHandle"]), dlq, source, "RUNNING", 0, None, started)

    def _move_by_hand(self, dlq: str, source: str, started: float) -> RedriveTask:
        """The fallback: receive → send → delete until the DLQ answers empty."""
        sqs = self.clients("sqs")
        src, dst = self._url(dlq), self._url(source)
        moved, failure = 0, ""
        try:
            while True:
                msgs = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                           MessageAttributeNames=["All"]).get("Messages", [])
                if not msgs:
                    break
                for m in msgs:
                    kw = {"MessageAttributes": m["MessageAttributes"]} if m.get("MessageAttributes") else {}
                    sqs.send_message(QueueUrl=dst, MessageBody=m["Body"], **kw)
                    sqs.delete_message(QueueUrl=src, ReceiptHandle=m["ReceiptHandle"])
                    moved += 1
            status = "COMPLETED"
        except ClientError as e:
            status, failure = "FAILED", f"{e.response['Error'].get('Code')}: {e}"
        task = RedriveTask(uuid.uuid4().hex, dlq, source, status, moved, moved, started,
                           failure or "moved by receive/send/delete (no message move task API)")
        with self._lock:
            self._fallback_tasks.setdefault(dlq, []).insert(0, task)
        return task

    def redrive_status(self, dlq: str) -> list[RedriveTask]:
        source = self._source_of(dlq)
        try:
            r = self.clients("sqs").list_message_move_tasks(SourceArn=self._arn(dlq), MaxResults=10)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code", "") not in _MISSING_API:
                raise
            with self._lock:
                return list(self._fallback_tasks.get(dlq, []))
        out = []
        for t in r.get("Results", []):
            out.append(RedriveTask(str(t.get("TaskHandle", "")), dlq, source, str(t.get("Status", "")),
                                   int(t.get("ApproximateNumberOfMessagesMoved", 0)),
                                   t.get("ApproximateNumberOfMessagesToMove"),
                                   float(t.get("StartedTimestamp", 0)) / 1000.0, str(t.get("FailureReason", ""))))
        return out
