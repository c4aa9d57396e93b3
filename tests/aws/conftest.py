"""The AWS platform against moto in server mode: one moto server on 127.0.0.1 (a free port) in a
process of its own for the whole session, and resources with names unique to each test.

moto runs no function code without Docker, so functions are created from small zip files and
invoked with moto's stub (it answers with the event it was given); invocation metrics are produced
in the handler wrapper's EMF shape and sent with `put_metric_data` (`emf.py`).

The server starts as soon as this file is imported and then loads the backends the tests use
(seconds of CPU: CloudFormation's alone imports nearly every moto backend), in its own process, so
that work overlaps the collection and the first tests. Under pytest-xdist, where the other worker
keeps both cores busy anyway, it starts when a test first needs it and CloudFormation loads on
first use."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer.main

if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
    pytest.skip("moto[server] is in the test extra", allow_module_level=True)  # the server imports it, not we

REGION = "us-east-1"
START_TIMEOUT = 120.0  # generous: a loaded machine takes seconds to import moto
XDIST = "PYTEST_XDIST_WORKER" in os.environ
# the backends the server loads at start, in the order the tests first call them
SERVICES = ("lambda", "cloudwatch", "iam", "sqs", "dynamodb", "s3", "apigateway") + (
    () if XDIST else ("cloudformation",))


class MotoServer:
    """`moto_process.py` started now; `url` waits for its port. Closing its stdin stops it."""

    def __init__(self, services: tuple[str, ...]) -> None:
        script = Path(__file__).with_name("moto_process.py")
        # its log (moto prints a traceback for every action it lacks, which the tests call on purpose)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, str(script), *services], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
            line = self.proc.stdout.readline().strip() if ready else ""
            if not line.isdigit():
                self.log.seek(0)
                raise RuntimeError(f"the moto server did not start in {START_TIMEOUT:.0f} s (exit code "
                                   f"{self.proc.poll()}): {self.log.read()[-2000:].decode(errors='replace')}")
            self._url = f"http://127.0.0.1:{line}"
        return self._url

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_server: MotoServer | None = None


def moto_server() -> MotoServer:
    global _server
    if _server is None:
        _server = MotoServer(SERVICES)
    return _server


if not XDIST:
    moto_server()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials for the session; no profile, no endpoint of the operator's."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                            "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION})
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def moto_url(aws_env: None) -> str:
    import httpx

    url = moto_server().url
    # moto's Lambda stub without Docker: an invocation answers with its event
    httpx.post(f"{url}/moto-api/config", json={"lambda": {"use_docker": False}}).raise_for_status()
    return url


@functools.cache
def client(url: str, service: str) -> Any:
    """One client per server and service (boto3 clients are thread-safe, and slow to make)."""
    import boto3

    return boto3.client(service, region_name=REGION, endpoint_url=url)


def zip_of(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", text)
    return buf.getvalue()


class EndpointSession:
    """boto3's default session with its clients reaching one moto server: what the SDA's storage
    takes as its `session` (on Lambda it makes its own)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, service: str) -> Any:
        return client(self.url, service)

    def resource(self, service: str) -> Any:
        import boto3

        return boto3.resource(service, region_name=REGION, endpoint_url=self.url)


@dataclass
class Stack:
    """One test's service on moto: functions (each with a `live` alias once published), a REST API
    with a stage, a processing queue with its DLQ and the worker's event source mapping, the SDA's
    jobs table and a versioned files bucket — every name carrying the test's tag."""

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

    @property
    def repair(self) -> str:
        """The service's repair function (created by `create(repair=True)`)."""
        return f"repair_{self.tag}"

    def create(self, functions: int = 0, repair: bool = False) -> Stack:
        iam, lam, sqs = client(self.url, "iam"), client(self.url, "lambda"), client(self.url, "sqs")
        role = iam.create_role(RoleName=f"role-{self.tag}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        names = [self.api, self.worker] + [f"fn{i}_{self.tag}" for i in range(functions)]
        names += [self.repair] if repair else []
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
        self.table, self.bucket = f"jobs-{self.tag}", f"files-{self.tag}"
        self.storage.create_resources()  # the SDA's own table (key, indexes) and bucket
        client(self.url, "s3").put_bucket_versioning(Bucket=self.bucket,
                                                      VersioningConfiguration={"Status": "Enabled"})
        return self

    @functools.cached_property
    def storage(self) -> Any:
        """The SDA's storage over this stack's table and bucket (what its functions write through)."""
        from sda.storage.aws import AwsStorage

        return AwsStorage(self.table, self.bucket, EndpointSession(self.url))

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
        repair = f'repair_function = "{self.repair}"' if self.repair in self.functions else ""
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
{repair}

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


_get_command = typer.main.get_command


@functools.cache
def _click_command(app: Any) -> Any:
    return _get_command(app)


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, manifest: Path,
        *args: str) -> tuple[int, str, str]:
    """`backout --manifest M ARGS…` in this process through the console entry point (its exit codes).
    typer builds its click command anew at every call (once per process outside tests): here once
    per session. The root logger's handlers are put back after: `up` installs one on the stderr of
    this run."""
    from backout.cli import main

    monkeypatch.setattr(typer.main, "get_command", _click_command)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", ["backout", "--manifest", str(manifest), *args])
    try:
        main.run()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err
