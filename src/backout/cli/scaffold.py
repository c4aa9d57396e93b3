"""`backout init`: a new service that deploys and drills green as generated.

A `Scaffold` is a set of files (relative path → text) written into a directory that must not hold any
of them yet. `new_service` makes the default one: a manifest, an HTTP function (a health route, a route
that stores an item and enqueues it, a route that reads it), a queue consumer with partial batch
failures (powertools' BatchProcessor, as a Lambda handler would), a dead-letter queue, and a pytest
test of both handlers written to AWS's event shapes. Another source of a service (e.g. a SAM template)
produces the same shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from backout.errors import UsageError

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Scaffold:
    """A service's files before they are written: the manifest first, then code, tests and the rest."""

    name: str
    files: dict[str, str] = field(default_factory=dict)

    def write(self, root: Path) -> list[Path]:
        """Write every file under `root`; refuses (nothing written) when any of them exists already."""
        existing = [rel for rel in self.files if (root / rel).exists()]
        if existing:
            raise UsageError(f"{root}: {', '.join(sorted(existing))} already exist(s); "
                             "backout init never overwrites: pick an empty directory")
        out = []
        for rel, text in self.files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            out.append(p)
        return out


def new_service(name: str) -> Scaffold:
    """The default scaffold of a service called `name` (its Python package: `name` with `-` → `_`)."""
    if not NAME.match(name):
        raise UsageError(f"--name {name!r}: a service name starts with a letter and has only letters, digits, "
                         "'-' and '_'")
    pkg = name.replace("-", "_").lower()
    subs = {"{name}": name, "{pkg}": pkg}

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    return Scaffold(name, {
        "backout.toml": fill(MANIFEST),
        f"src/{pkg}/__init__.py": fill('"""{name}: an HTTP API that stores items and a queue consumer that '
                                       'processes them."""\n'),
        f"src/{pkg}/store.py": fill(STORE),
        f"src/{pkg}/api.py": fill(API),
        f"src/{pkg}/consumer.py": fill(CONSUMER),
        "tests/test_handlers.py": fill(TEST),
        ".gitignore": ".backout/\n__pycache__/\n",
    })


MANIFEST = '''# {name}: deployed and protected by backout. Every key: docs/manifest.md in backout's repository.
# Step by step: docs/guide.md.

[service]
name = "{name}"
source = "src"        # the code root: on every function's sys.path
packages = ["{pkg}"]  # what a release copies from it

[functions.api]
handler = "{pkg}.api.handler"
timeout = "10s"
memory = 256
events = [
  { http = "GET /health" },
  { http = "POST /items" },
  { http = "GET /items/{item_id}" },
]

[functions.consumer]
handler = "{pkg}.consumer.handler"
timeout = "30s"
memory = 256
events = [{ queue = "items", batch_size = 10, retry_after = "1s" }]

[queues.items]
visibility_timeout = "30s"
max_receive_count = 3
dead_letter_queue = "items-dlq"

[queues.items-dlq]
retention = "14d"

[[smoke]]
http = "GET /health"

[strategies.Canary10Percent30Seconds]
steps = [{ weight = 10, hold = "30s" }, { weight = 100 }]

[environments.staging]
gateway_port = 8700
control_port = 8701
strategy = "Canary10Percent30Seconds"
error_rate_threshold = 10.0
min_invocations = 10
alarm_window = "30s"

[environments.prod]
gateway_port = 8710
control_port = 8711
strategy = "Canary10Percent5Minutes"
error_rate_threshold = 5.0
require_approval = true
'''

STORE = '''"""Where the items live: one SQLite file in the data directory (locally, backout backs the directory up
before every deployment and restores it on request). On AWS this module would speak DynamoDB."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any


def _db() -> sqlite3.Connection:
    root = Path(os.environ.get("DATA_DIR") or os.environ.get("BACKOUT_DATA_DIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(root / "items.db", timeout=30)
    con.execute("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, text TEXT NOT NULL, status TEXT NOT NULL,"
                " updated_at REAL NOT NULL)")
    return con


def put(item_id: str, text: str, status: str = "queued") -> None:
    with _db() as con:
        con.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", (item_id, text, status, time.time()))


def get(item_id: str) -> dict[str, Any] | None:
    with _db() as con:
        row = con.execute("SELECT id, text, status FROM items WHERE id = ?", (item_id,)).fetchone()
    return None if row is None else {"id": row[0], "text": row[1], "status": row[2]}


def mark(item_id: str, status: str) -> bool:
    with _db() as con:
        cur = con.execute("UPDATE items SET status = ?, updated_at = ? WHERE id = ?", (status, time.time(), item_id))
    return cur.rowcount == 1
'''

API = '''"""The HTTP function: API Gateway REST proxy events (payload format 1.0) in, proxy responses out.

GET /health answers the deployment's checks; POST /items stores an item and sends it to the `items`
queue with plain boto3 (the queue's URL comes from ITEMS_QUEUE_URL; locally backout also sets
AWS_ENDPOINT_URL_SQS, AWS_REGION and dummy credentials); GET /items/{item_id} reads one back.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from {pkg} import store

_sqs: Any = None


def enqueue(item_id: str) -> None:
    """Send the item to the consumer (a client per worker process, created on first use)."""
    global _sqs
    if _sqs is None:
        import boto3

        _sqs = boto3.client("sqs")
    _sqs.send_message(QueueUrl=os.environ["ITEMS_QUEUE_URL"], MessageBody=json.dumps({"item_id": item_id}))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    method, resource = event["httpMethod"], event["resource"]
    if (method, resource) == ("GET", "/health"):
        return _json(200, {"status": "healthy", "version": getattr(context, "function_version", "$LATEST")})
    if (method, resource) == ("POST", "/items"):
        try:
            text = str(json.loads(event.get("body") or "{}")["text"])
        except (ValueError, KeyError, TypeError):
            return _json(400, {"message": 'send a JSON body {"text": "..."}'})
        item_id = uuid.uuid4().hex
        store.put(item_id, text)
        enqueue(item_id)
        return _json(202, {"id": item_id, "status": "queued"})
    if (method, resource) == ("GET", "/items/{item_id}"):
        item = store.get(event["pathParameters"]["item_id"])
        return _json(200, item) if item else _json(404, {"message": "no such item"})
    return _json(404, {"message": "Not Found"})


def _json(status: int, body: Any) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
'''

CONSUMER = '''"""The queue consumer: SQS batches in, partial batch failures out (powertools' BatchProcessor).

A record that fails is reported in `batchItemFailures`: only it is retried, and after the queue's
max_receive_count it moves to the dead-letter queue. A message this service does not know is rejected
the same way — that is also how it answers backout's pre-traffic probe.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from {pkg} import store


def record_handler(record: SQSRecord) -> None:
    body = json.loads(record.body)
    if not isinstance(body, dict) or "item_id" not in body:
        raise ValueError(f"not an item message: {record.body[:100]}")
    if not store.mark(str(body["item_id"]), "processed"):
        raise LookupError(f"no item {body['item_id']}")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # one processor per invocation; a fully failed batch is reported like a partly failed one
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                         context=context))
'''

TEST = '''"""The handlers on their own, with events shaped as API Gateway and SQS send them (no backout needed):
`python -m pytest tests`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from {pkg} import api, consumer  # noqa: E402


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    sent: list[str] = []
    monkeypatch.setattr(api, "enqueue", sent.append)  # no queue here: remember what would be sent
    return sent


def request(method: str, resource: str, body: Any = None, **params: str) -> dict[str, Any]:
    path = resource
    for k, v in params.items():
        path = path.replace("{" + k + "}", v)
    return {"resource": resource, "path": path, "httpMethod": method, "headers": {"Content-Type": "application/json"},
            "queryStringParameters": None, "pathParameters": params or None, "isBase64Encoded": False,
            "body": None if body is None else json.dumps(body), "requestContext": {"requestId": "test"}}


def batch(*bodies: str) -> dict[str, Any]:
    return {"Records": [{"messageId": f"m{i}", "receiptHandle": f"r{i}", "body": b, "attributes": {},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:items", "awsRegion": "us-east-1"}
                        for i, b in enumerate(bodies)]}


def test_health() -> None:
    r = api.handler(request("GET", "/health"), None)
    assert r["statusCode"] == 200 and json.loads(r["body"])["status"] == "healthy"


def test_an_item_is_stored_queued_and_processed(data_dir: list[str]) -> None:
    r = api.handler(request("POST", "/items", {"text": "hello"}), None)
    assert r["statusCode"] == 202
    item_id = json.loads(r["body"])["id"]
    assert data_dir == [item_id]
    assert consumer.handler(batch(json.dumps({"item_id": item_id})), None) == {"batchItemFailures": []}
    got = api.handler(request("GET", "/items/{item_id}", item_id=item_id), None)
    assert json.loads(got["body"]) == {"id": item_id, "text": "hello", "status": "processed"}


def test_bad_input_is_a_400_and_an_unknown_message_a_batch_item_failure() -> None:
    assert api.handler(request("POST", "/items", {"nope": 1}), None)["statusCode"] == 400
    assert consumer.handler(batch('{"hello": 1}', "not json"), None) == {
        "batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}
'''
