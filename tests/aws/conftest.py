"""The AWS platform against moto in server mode: one `ThreadedMotoServer` on 127.0.0.1 (a free port)
for the whole session, and resources with names unique to each test.

moto runs no function code without Docker, so functions are created from small zip files and
invoked with moto's stub (it answers with the event it was given); invocation metrics are produced
in the handler wrapper's EMF shape and sent with `put_metric_data` (`emf.py`)."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    import httpx
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                            "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION})
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(k, None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto's Lambda stub without Docker: an invocation answers with its event
    httpx.post(f"{url}/moto-api/config", json={"lambda": {"use_docker": False}}).raise_for_status()
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def client(url: str, service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION, endpoint_url=url)


def zip_of(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", text)
    return buf.getvalue()


@dataclass
class Stack:
    """One test's service on moto: functions (each with a `live` alias once published), a REST API
    with a stage, a processing queue with its DLQ and the worker's event source mapping, a jobs
    table and a versioned files bucket — every name carrying the test's tag."""

    url: str
    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    functions: dict[str, str] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    api_id: str = ""
    table: str = ""
    bucket: str = ""
    mapping: str = ""

    @property
    def api(self) -> str:
        return f"api_{self.tag}"

    @property
    def worker(self) -> str:
        return f"worker_{self.tag}"

    def create(self, functions: int = 0) -> Stack:
        iam, lam, sqs = client(self.url, "iam"), client(self.url, "lambda"), client(self.url, "sqs")
        role = iam.create_role(RoleName=f"role-{self.tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        names = [self.api, self.worker] + [f"fn{i}_{self.tag}" for i in range(functions)]
        for fn in names:
            real = f"sda-{fn.replace('_', '-')}"
            lam.create_function(FunctionName=real, Runtime="python3.11", Role=role, Handler="handler.handler",
                                Code={"ZipFile": zip_of("def handler(e, c):\n    return e\n")}, Timeout=30)
            self.functions[fn] = real
        dlq = sqs.create_queue(QueueName=f"dlq-{self.tag}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})
        q = sqs.create_queue(QueueName=f"processing-{self.tag}", Attributes={"RedrivePolicy": policy})["QueueUrl"]
        self.queues = {"processing": q, "processing-dlq": dlq}
        apig = client(self.url, "apigateway")
        self.api_id = apig.create_rest_api(name=f"sda-{self.tag}")["id"]
        root = apig.get_resources(restApiId=self.api_id)["items"][0]["id"]
        apig.put_method(restApiId=self.api_id, resourceId=root, httpMethod="GET", authorizationType="NONE")
        apig.put_integration(restApiId=self.api_id, resourceId=root, httpMethod="GET", type="MOCK")
        apig.create_deployment(restApiId=self.api_id, stageName="staging")
        self.table = f"jobs-{self.tag}"
        client(self.url, "dynamodb").create_table(
            TableName=self.table, KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        self.bucket = f"files-{self.tag}"
        s3 = client(self.url, "s3")
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        return self

    def map_worker(self) -> None:
        """The worker's event source mapping on its live alias (once the alias exists)."""
        lam, sqs = client(self.url, "lambda"), client(self.url, "sqs")
        arn = sqs.get_queue_attributes(QueueUrl=self.queues["processing"],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.mapping = lam.create_event_source_mapping(EventSourceArn=arn, BatchSize=1,
                                                       FunctionName=f"{self.functions[self.worker]}:live")["UUID"]

    def source(self, name: str, marker: str) -> Path:
        """A service source tree whose code differs by `marker`."""
        src = self.root / name
        (src / "svc").mkdir(parents=True, exist_ok=True)
        (src / "svc" / "__init__.py").write_text(f"MARKER = {marker!r}\n")
        (src / "svc" / "handler.py").write_text("def handler(event, context):\n    return event\n")
        return src

    def manifest_text(self, env: str = "staging", extra_env: str = "", aws_extra: str = "", api_url: str = "",
                      hooks: str = "pre_traffic = []\npost_traffic = []") -> str:
        fns = "".join(
            f'[functions.{fn}]\nhandler = "svc.handler.handler"\nmemory = 256\n'
            # moto runs no function code without Docker: an invocation answers with its own payload, so
            # the HTTP function declares a test event of no HTTP shape (judged only on the invocation's error)
            + ('events = [{ http = "GET /health" }]\ntest_event = { moto = "echoes its payload" }\n'
               if fn == self.api else "")
            + ('events = [{ queue = "processing" }]\n' if fn == self.worker else "")
            + "\n"
            for fn in self.functions)
        names = ", ".join(f'{fn} = "{real}"' for fn, real in self.functions.items())
        queues = ", ".join(f'"{q}" = "{u}"' for q, u in self.queues.items())
        return f"""
[service]
name = "sda-{self.tag}"
source = "src"
packages = ["svc"]

{fns}
[queues.processing]
max_receive_count = 3
dead_letter_queue = "processing-dlq"

[queues.processing-dlq]

[hooks]
{hooks}

[environments.{env}]
control_port = 0
platform = "aws"
min_invocations = 5
error_rate_threshold = 10
latency_judge = false
{extra_env}

[environments.{env}.aws]
region = "{REGION}"
endpoint_url = "{self.url}"
evaluation_interval = "0.5s"
functions = {{ {names} }}
api_id = "{self.api_id}"
stage = "staging"
{f'api_url = "{api_url}"' if api_url else ""}
queues = {{ {queues} }}
tables = {{ jobs = "{self.table}" }}
buckets = {{ files = "{self.bucket}" }}
{aws_extra}
"""

    def write_manifest(self, **kw: Any) -> Path:
        self.source("src", "r1")
        path = self.root / "backout.toml"
        path.write_text(self.manifest_text(**kw))
        return path


@pytest.fixture
def stack(moto_url: str, tmp_path: Path) -> Stack:
    return Stack(moto_url, tmp_path).create()


@pytest.fixture
def names(moto_url: str, tmp_path: Path) -> Stack:
    """A Stack's names only, nothing created: for configurations that must fail before using any."""
    s = Stack(moto_url, tmp_path)
    s.functions = {s.api: f"sda-api-{s.tag}", s.worker: f"sda-worker-{s.tag}"}
    s.queues = {"processing": f"{moto_url}/123456789012/processing-{s.tag}",
                "processing-dlq": f"{moto_url}/123456789012/dlq-{s.tag}"}
    s.api_id, s.table, s.bucket = "abc123", f"jobs-{s.tag}", f"files-{s.tag}"
    return s
