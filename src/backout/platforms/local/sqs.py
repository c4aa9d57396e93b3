"""An SQS-compatible endpoint over the local platform's SQLite queues, so unmodified boto3 code runs.

The JSON protocol current SDKs and the AWS CLI speak: `POST /` with `X-Amz-Target:
AmazonSQS.<Action>` and an `application/x-amz-json-1.0` body. The query protocol (form-encoded
`Action=…`, XML answers) is not served; such a request gets one clear error. Signatures are not
checked: any access key is accepted, and the endpoint listens on 127.0.0.1 only.

Every action works on the `QueueStore` that the event source mappings poll and `backout queue
stats` counts: a message sent here is the message the consumer function receives.

Errors have SQS's JSON shape — status 400, body `{"__type": "com.amazonaws.sqs#<Shape>",
"message": …}` and the `x-amzn-query-error: <legacy code>;Sender` header — so botocore raises the
modelled exception (`client.exceptions.QueueDoesNotExist`) with the legacy `Error.Code`
(`AWS.SimpleQueueService.NonExistentQueue`), exactly as against AWS:

| case | shape | legacy code (`Error.Code`) |
|---|---|---|
| queue URL or name not served | QueueDoesNotExist | AWS.SimpleQueueService.NonExistentQueue |
| a parameter out of range, body over 256 KiB | InvalidParameterValue | InvalidParameterValue |
| a required parameter missing | MissingParameter | MissingParameter |
| body with characters SQS refuses | InvalidMessageContents | InvalidMessageContents |
| more than 10 entries in a batch | TooManyEntriesInBatchRequest | AWS.SimpleQueueService.(shape) |
| a batch without entries | EmptyBatchRequest | AWS.SimpleQueueService.(shape) |
| two batch entries with one id | BatchEntryIdsNotDistinct | AWS.SimpleQueueService.(shape) |
| batch entry id not `[A-Za-z0-9_-]{1,80}` | InvalidBatchEntryId | AWS.SimpleQueueService.InvalidBatchEntryId |
| batch over 256 KiB in total | BatchRequestTooLong | AWS.SimpleQueueService.BatchRequestTooLong |
| malformed receipt handle | ReceiptHandleIsInvalid | ReceiptHandleIsInvalid |
| visibility change of a message not in flight | MessageNotInflight | AWS.SimpleQueueService.MessageNotInflight |
| unknown attribute name | InvalidAttributeName | InvalidAttributeName |
| move task of an unknown queue | ResourceNotFoundException | ResourceNotFoundException |
| an action not served (CreateQueue of a new queue…) | UnsupportedOperation | AWS.SimpleQueueService.(shape) |

Long polls (`WaitTimeSeconds` 1–20) never hold a thread or the event loop while they wait: each
attempt is one short store call, and the wait between attempts is an `asyncio` wait that a send
through this process (`QueueStore.watch`) ends at once. A store call runs on the event loop when it
needs no wait and in a worker thread when it does (`SqsEndpoint._store`): the hop to a thread was
most of a request's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backout.errors import UsageError
from backout.platforms.base import RedriveTask
from backout.platforms.local.mappings import ACCOUNT_ID, SENDER_ID
from backout.platforms.local.queues import ATTR_SOURCE_QUEUE, MAX_MESSAGE_BYTES, Message, QueueStore, WouldBlock

T = TypeVar("T")

REGION = "us-east-1"  # the local platform's region: ARNs, AWS_REGION, the emulator's backends
CONTENT_TYPE = "application/x-amz-json-1.0"
MAX_BATCH = 10
MAX_WAIT = 20
MAX_VISIBILITY = 43200
MAX_DELAY = 900
POLL_INTERVAL = 0.05  # long-poll attempts (sends by other processes); a send in this process wakes at once
CHECKPOINT_EVERY = 200  # store calls made on the event loop between two WAL checkpoints (in a thread)
_ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# Characters SQS accepts in a body: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF
_BAD_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_QUEUE_ATTRS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "QueueArn",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
)
_MESSAGE_ATTRS = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "DeadLetterQueueSourceArn",
)
# (legacy query-protocol code) of each error shape; None: the shape's name is the code
_LEGACY = {
    "QueueDoesNotExist": "AWS.SimpleQueueService.NonExistentQueue",
    "TooManyEntriesInBatchRequest": "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "EmptyBatchRequest": "AWS.SimpleQueueService.EmptyBatchRequest",
    "BatchEntryIdsNotDistinct": "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "InvalidBatchEntryId": "AWS.SimpleQueueService.InvalidBatchEntryId",
    "BatchRequestTooLong": "AWS.SimpleQueueService.BatchRequestTooLong",
    "MessageNotInflight": "AWS.SimpleQueueService.MessageNotInflight",
    "UnsupportedOperation": "AWS.SimpleQueueService.UnsupportedOperation",
}


class SqsError(Exception):
    """One SQS error response: the shape name (botocore's exception class) and its message."""

    def __init__(self, shape: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.shape, self.message, self.status = shape, message, status

    @property
    def code(self) -> str:
        return _LEGACY.get(self.shape, self.shape)

    def response(self) -> Response:
        body = json.dumps({"__type": f"com.amazonaws.sqs#{self.shape}", "message": self.message})
        headers = {"x-amzn-query-error": f"{self.code};Sender", "x-amzn-RequestId": str(uuid.uuid4())}
        return Response(body, self.status, headers=headers, media_type=CONTENT_TYPE)


class MoveTasks(Protocol):
    """Where message move tasks run and are kept (the local platform: shared with `backout queue redrive`)."""

    def start_redrive(self, dlq: str, to: str | None = None) -> RedriveTask: ...

    def redrive_status(self, dlq: str) -> list[RedriveTask]: ...


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def md5_of_attributes(attrs: dict[str, dict[str, Any]]) -> str:
    """SQS's MD5OfMessageAttributes: name, type and value of each attribute, sorted by name,
    length-prefixed (4 bytes big-endian), the value after a transport byte (1 string, 2 binary)."""
    h = hashlib.md5()
    for name in sorted(attrs):
        a = attrs[name]
        dtype = a["DataType"]
        for part in (name, dtype):
            raw = part.encode()
            h.update(struct.pack(">I", len(raw)) + raw)
        if "BinaryValue" in a:
            raw = a["BinaryValue"] if isinstance(a["BinaryValue"], bytes) else a["BinaryValue"].encode()
            h.update(b"\x02" + struct.pack(">I", len(raw)) + raw)
        else:
            raw = a["StringValue"].encode()
            h.update(b"\x01" + struct.pack(">I", len(raw)) + raw)
    return h.hexdigest()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _int(params: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = params.get(key, default)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SqsError("InvalidParameterValue", f"Value {value!r} for parameter {key} is invalid. "
                       f"Reason: must be between {low} and {high}.")
    return value


def _required(params: dict[str, Any], key: str) -> Any:
    if params.get(key) in (None, ""):
        raise SqsError("MissingParameter", f"The request must contain the parameter {key}.")
    return params[key]


class SqsEndpoint:
    """The SQS JSON API of one platform's queues; `app` is the ASGI app the supervisor serves.
    Without `tasks` (a bare store) the message move task actions answer UnsupportedOperation."""

    def __init__(
        self, store: QueueStore, queues: Iterable[str], tasks: MoveTasks | None = None, base_url: str = ""
    ) -> None:
        self.store = store
        self.queues = set(queues)
        self.tasks = tasks
        self.base_url = base_url.rstrip("/")
        self._inline = 0  # store calls made on the event loop (`_store`)
        self._checkpoint: asyncio.Future[None] | None = None
        self._actions: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            name: getattr(self, "_" + re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower())
            for name in (
                "GetQueueUrl", "ListQueues", "CreateQueue", "SendMessage", "SendMessageBatch", "ReceiveMessage",
                "DeleteMessage", "DeleteMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch",
                "GetQueueAttributes", "PurgeQueue", "StartMessageMoveTask", "ListMessageMoveTasks",
            )
        }
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def queue_url(self, name: str) -> str:
        return f"{self.base_url}/{ACCOUNT_ID}/{name}"

    # --- dispatch -----------------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        try:
            if not target.startswith("AmazonSQS."):
                raise SqsError("InvalidAction", "only the SQS JSON protocol is served here (X-Amz-Target: "
                               "AmazonSQS.<Action>); the query protocol is not: use a current AWS SDK or CLI")
            action = self._actions.get(target.removeprefix("AmazonSQS."))
            if action is None:
                raise SqsError("UnsupportedOperation", f"{target} is not served by the local platform")
            try:
                params = json.loads(await request.body() or b"{}")
            except ValueError:
                raise SqsError("InvalidParameterValue", "the request body is not JSON") from None
            if not isinstance(params, dict):
                raise SqsError("InvalidParameterValue", "the request body must be a JSON object")
            result = await action(params)
        except SqsError as e:
            return e.response()
        except UsageError as e:  # the store's own validation
            return SqsError("InvalidParameterValue", str(e)).response()
        return Response(json.dumps(result), 200, headers={"x-amzn-RequestId": str(uuid.uuid4())},
                        media_type=CONTENT_TYPE)

    def _queue(self, params: dict[str, Any]) -> str:
        url = _required(params, "QueueUrl")
        name = str(url).rstrip("/").rsplit("/", 1)[-1]
        if name not in self.queues:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return name

    def _by_arn(self, arn: Any) -> str:
        name = str(arn or "").rsplit(":", 1)[-1]
        if not str(arn or "").startswith("arn:aws:sqs:") or name not in self.queues:
            raise SqsError("ResourceNotFoundException", f"The resource that you specified for the SourceArn "
                           f"parameter doesn't exist: {arn}")
        return name

    # --- queues -------------------------------------------------------------------------------------
    async def _get_queue_url(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _required(params, "QueueName")
        if name not in self.queues:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return {"QueueUrl": self.queue_url(name)}

    async def _list_queues(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("QueueNamePrefix") or ""
        limit = _int(params, "MaxResults", 1000, 1, 1000)
        start = int(params.get("NextToken") or 0)
        names = sorted(n for n in self.queues if n.startswith(prefix))
        page = names[start:start + limit]  # type: ignore[operator]
        out: dict[str, Any] = {"QueueUrls": [self.queue_url(n) for n in page]}
        if "MaxResults" in params and start + len(page) < len(names):
            out["NextToken"] = str(start + len(page))
        return out

    async def _create_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        """Idempotent for a queue the manifest declares; queues come from the manifest, never from code."""
        name = _required(params, "QueueName")
        if name not in self.queues:
            raise SqsError("UnsupportedOperation", f"queue {name!r} is not in the service's manifest: "
                           "declare it under [queues] in backout.toml")
        return {"QueueUrl": self.queue_url(name)}

    async def _get_queue_attributes(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        wanted = list(params.get("AttributeNames") or ["All"])
        for a in wanted:
            if a != "All" and a not in _QUEUE_ATTRS:
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {a}.")
        q, s = await self._store(lambda: (self.store.attributes(name), self.store.stats(name)))
        values = {
            "ApproximateNumberOfMessages": s.visible,
            "ApproximateNumberOfMessagesNotVisible": s.in_flight,
            "ApproximateNumberOfMessagesDelayed": s.delayed,
            "VisibilityTimeout": int(q["visibility_timeout"]),
            "MaximumMessageSize": MAX_MESSAGE_BYTES,
            "MessageRetentionPeriod": int(q["retention"]),
            "DelaySeconds": int(q["delay"]),
            "ReceiveMessageWaitTimeSeconds": 0,
            "QueueArn": queue_arn(name),
            "CreatedTimestamp": int(q["created_at"]),
            "LastModifiedTimestamp": int(q["created_at"]),
            "SqsManagedSseEnabled": "false",
        }
        if q["dead_letter_queue"]:
            values["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": queue_arn(q["dead_letter_queue"]), "maxReceiveCount": q["max_receive_count"]}
            )
        keys = _QUEUE_ATTRS if "All" in wanted else wanted
        return {"Attributes": {k: str(values[k]) for k in keys if k in values}}

    async def _purge_queue(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        await run_in_threadpool(self.store.purge, name)  # unbounded work: never on the loop
        return {}

    # --- sending ------------------------------------------------------------------------------------
    def _entry(self, params: dict[str, Any]) -> tuple[str, float | None, dict[str, str], dict[str, Any]]:
        """A validated (body, delay, stored attributes, answer) of one message to send."""
        body = _required(params, "MessageBody")
        if not isinstance(body, str):
            raise SqsError("InvalidParameterValue", "MessageBody must be a string")
        if _BAD_CHARS.search(body):
            raise SqsError("InvalidMessageContents", "Invalid binary character in the message body: "
                           "only #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF")
        delay = _int(params, "DelaySeconds", None, 0, MAX_DELAY)
        attrs = params.get("MessageAttributes") or {}
        stored: dict[str, str] = {}
        size = len(body.encode())
        for k, a in attrs.items():
            dtype = a.get("DataType", "") if isinstance(a, dict) else ""
            if not dtype.startswith(("String", "Number")) or not isinstance(a.get("StringValue"), str):
                raise SqsError("InvalidParameterValue", f"Message attribute {k!r}: only String and Number "
                               "attributes with a StringValue are kept by the local platform")
            if k == ATTR_SOURCE_QUEUE or k.startswith(("AWS.", "Amazon.")):
                raise SqsError("InvalidParameterValue", f"Message attribute name {k!r} is reserved")
            stored[k] = a["StringValue"]
            size += len(k.encode()) + len(dtype.encode()) + len(a["StringValue"].encode())
        if size > MAX_MESSAGE_BYTES:
            raise SqsError("InvalidParameterValue", "One or more parameters are invalid. Reason: Message must "
                           f"be shorter than {MAX_MESSAGE_BYTES} bytes.")
        answer: dict[str, Any] = {"MD5OfMessageBody": _md5(body)}
        if attrs:
            answer["MD5OfMessageAttributes"] = md5_of_attributes(attrs)
        return body, None if delay is None else float(delay), stored, answer

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        body, delay, stored, answer = self._entry(params)
        [mid] = await self._store(self.store.send_entries, name, [(body, delay, stored)])
        return {"MessageId": mid, **answer}

    def _batch(self, params: dict[str, Any], member: str) -> list[dict[str, Any]]:
        entries = params.get("Entries") or []
        if not entries:
            raise SqsError("EmptyBatchRequest", f"There should be at least one {member} in the request.")
        if len(entries) > MAX_BATCH:
            raise SqsError("TooManyEntriesInBatchRequest",
                           f"Maximum number of entries per request are {MAX_BATCH}. You have sent {len(entries)}.")
        seen: set[str] = set()
        for e in entries:
            eid = e.get("Id") if isinstance(e, dict) else None
            if not isinstance(eid, str) or not _ENTRY_ID.match(eid):
                raise SqsError("InvalidBatchEntryId", "A batch entry id can only contain alphanumeric characters, "
                               "hyphens and underscores. It can be at most 80 letters long.")
            if eid in seen:
                raise SqsError("BatchEntryIdsNotDistinct", f"Id {eid} repeated.")
            seen.add(eid)
        return entries

    async def _send_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        entries = self._batch(params, "SendMessageBatchRequestEntry")
        total = sum(len(str(e.get("MessageBody", "")).encode()) for e in entries)
        if total > MAX_MESSAGE_BYTES:
            raise SqsError("BatchRequestTooLong", f"Batch requests cannot be longer than {MAX_MESSAGE_BYTES} "
                           f"bytes. You have sent {total} bytes.")
        good: list[tuple[str, tuple[str, float | None, dict[str, str]], dict[str, Any]]] = []
        failed = []
        for e in entries:
            try:
                body, delay, stored, answer = self._entry(e)
                good.append((e["Id"], (body, delay, stored), answer))
            except SqsError as err:
                failed.append({"Id": e["Id"], "SenderFault": True, "Code": err.code, "Message": err.message})
        ids = await self._store(self.store.send_entries, name, [g[1] for g in good]) if good else []
        ok = [{"Id": eid, "MessageId": mid, **answer} for (eid, _, answer), mid in zip(good, ids, strict=True)]
        return {"Successful": ok, "Failed": failed}

    # --- receiving ----------------------------------------------------------------------------------
    async def _receive_message(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        n = _int(params, "MaxNumberOfMessages", 1, 1, MAX_BATCH)
        wait = _int(params, "WaitTimeSeconds", 0, 0, MAX_WAIT)
        vt = _int(params, "VisibilityTimeout", None, 0, MAX_VISIBILITY)
        system = set(params.get("MessageSystemAttributeNames") or []) | set(params.get("AttributeNames") or [])
        wanted_attrs = list(params.get("MessageAttributeNames") or [])
        timeout = None if vt is None else float(vt)
        msgs = await self._store(self.store.receive, name, n, timeout)
        if msgs or not wait:
            return {"Messages": [self._message(m, system, wanted_attrs) for m in msgs]}
        deadline = time.monotonic() + wait
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(woken.set)

        unwatch = self.store.watch(wake)
        try:
            while True:
                woken.clear()
                msgs = await self._store(self.store.receive, name, n, timeout)
                remaining = deadline - time.monotonic()
                if msgs or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(POLL_INTERVAL, remaining))
        finally:
            unwatch()
        return {"Messages": [self._message(m, system, wanted_attrs) for m in msgs]}

    def _message(self, m: Message, system: set[str], wanted: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"MessageId": m.id, "ReceiptHandle": m.receipt_handle, "MD5OfBody": _md5(m.body),
                               "Body": m.body}
        if system:
            every = {
                "ApproximateReceiveCount": str(m.receive_count),
                "SentTimestamp": str(int(m.sent_at * 1000)),
                "SenderId": SENDER_ID,
                "ApproximateFirstReceiveTimestamp": str(int((m.first_received_at or m.sent_at) * 1000)),
            }
            if ATTR_SOURCE_QUEUE in m.attributes:
                every["DeadLetterQueueSourceArn"] = queue_arn(m.attributes[ATTR_SOURCE_QUEUE])
            out["Attributes"] = {k: v for k, v in every.items() if "All" in system or k in system}
        user = {k: v for k, v in m.attributes.items() if k not in (ATTR_SOURCE_QUEUE, "LastError")}
        if wanted and user:
            picked = {
                k: {"StringValue": v, "DataType": "String"}
                for k, v in user.items()
                if any(w in ("All", ".*", k) or (w.endswith(".*") and k.startswith(w[:-1])) for w in wanted)
            }
            if picked:
                out["MessageAttributes"] = picked
                out["MD5OfMessageAttributes"] = md5_of_attributes(picked)
        return out

    # --- settling -----------------------------------------------------------------------------------
    async def _delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        handle = _required(params, "ReceiptHandle")
        await self._settle(lambda: self.store.delete(name, _handle(handle)))
        return {}

    async def _delete_message_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        entries = self._batch(params, "DeleteMessageBatchRequestEntry")
        return await self._each(entries, lambda e: self.store.delete(name, _handle(e.get("ReceiptHandle"))))

    async def _change_message_visibility(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        handle = _required(params, "ReceiptHandle")
        vt = _int(params, "VisibilityTimeout", None, 0, MAX_VISIBILITY)
        if vt is None:
            raise SqsError("MissingParameter", "The request must contain the parameter VisibilityTimeout.")
        if not await self._settle(lambda: self.store.change_visibility(name, _handle(handle), float(vt))):
            raise SqsError("MessageNotInflight", "The message referred to isn't in flight.")
        return {}

    async def _change_message_visibility_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        name = self._queue(params)
        entries = self._batch(params, "ChangeMessageVisibilityBatchRequestEntry")

        def change(e: dict[str, Any]) -> bool:
            vt = _int(e, "VisibilityTimeout", 0, 0, MAX_VISIBILITY)
            if not self.store.change_visibility(name, _handle(e.get("ReceiptHandle")), float(vt or 0)):
                raise SqsError("MessageNotInflight", "The message referred to isn't in flight.")
            return True

        return await self._each(entries, change)

    async def _settle(self, op: Callable[[], bool]) -> bool:
        return await self._store(op)

    async def _each(self, entries: list[dict[str, Any]], op: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        ok, failed = [], []
        for e in entries:  # one store call per entry: an entry that must wait does not run the others twice
            try:
                await self._store(op, e)
                ok.append({"Id": e["Id"]})
            except SqsError as err:
                failed.append({"Id": e["Id"], "SenderFault": True, "Code": err.code, "Message": err.message})
            except UsageError as err:
                failed.append({"Id": e["Id"], "SenderFault": True, "Code": "InvalidParameterValue",
                               "Message": str(err)})
        return {"Successful": ok, "Failed": failed}

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call on the event loop when it needs no wait, else in a worker thread.

        Why: the hop to a thread costs more CPU than most of these calls (a short SQLite transaction),
        and it was the largest part of a request's cost; but the loop must never wait for another
        writer's lock (a worker process sending, a poller receiving), so such a call (`WouldBlock`,
        nothing of it applied) goes to a thread. The loop's connection skips the WAL checkpoint (an
        fsync) on commit; every `CHECKPOINT_EVERY` calls one runs in a thread instead. Durability is
        unchanged: a send is answered after its commit, whichever thread made it."""
        try:
            out = self.store.now(fn, *args)
        except WouldBlock:
            return await run_in_threadpool(fn, *args)
        self._inline += 1
        if self._inline % CHECKPOINT_EVERY == 0 and (self._checkpoint is None or self._checkpoint.done()):
            self._checkpoint = asyncio.ensure_future(run_in_threadpool(self.store.checkpoint))
        return out

    # --- message move tasks (DLQ redrive) -------------------------------------------------------------
    def _tasks(self) -> MoveTasks:
        if self.tasks is None:
            raise SqsError("UnsupportedOperation", "message move tasks need the local platform")
        return self.tasks

    async def _start_message_move_task(self, params: dict[str, Any]) -> dict[str, Any]:
        tasks = self._tasks()
        dlq = self._by_arn(_required(params, "SourceArn"))
        to = self._by_arn(params["DestinationArn"]) if params.get("DestinationArn") else None
        task = await run_in_threadpool(tasks.start_redrive, dlq, to)
        if task.status == "FAILED":
            raise SqsError("InvalidParameterValue", task.failure or "the move task failed")
        return {"TaskHandle": task.id}

    async def _list_message_move_tasks(self, params: dict[str, Any]) -> dict[str, Any]:
        tasks = self._tasks()
        dlq = self._by_arn(_required(params, "SourceArn"))
        limit = _int(params, "MaxResults", 1, 1, 10)
        found = (await run_in_threadpool(tasks.redrive_status, dlq))[:limit]
        return {"Results": [_task(t) for t in found]}


def _task(t: RedriveTask) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Status": t.status,
        "SourceArn": queue_arn(t.source),
        "DestinationArn": queue_arn(t.destination),
        "ApproximateNumberOfMessagesMoved": t.moved,
        "StartedTimestamp": int(t.started_at * 1000),
    }
    if t.status == "RUNNING":
        out["TaskHandle"] = t.id
    if t.to_move is not None:
        out["ApproximateNumberOfMessagesToMove"] = t.to_move
    if t.failure:
        out["FailureReason"] = t.failure
    return out


def _handle(handle: Any) -> str:
    if not isinstance(handle, str) or ":" not in handle:
        raise SqsError("ReceiptHandleIsInvalid", f'The input receipt handle "{handle}" is not a valid receipt handle.')
    return handle

