"""Where an AWS environment's resources are, and the boto3 clients that reach them.

Resources come from the environment's `[aws]` table: either `stack = "NAME"`, whose CloudFormation
outputs name them (the contract below, which the SAM template emits), or explicit names. They are
resolved once, on first use, so `backout stack status` works on a stack whose outputs are incomplete.

Stack outputs (CamelName = the backout name split on `_` and `-`, each part capitalised, joined):
  BackoutApiId, BackoutApiStage, BackoutApiUrl      the REST API, its stage, the stage's invoke URL
  BackoutFunction<CamelName>                        Lambda function name of `[functions.<name>]`
  BackoutQueue<CamelName>                           queue URL of `[queues.<name>]`
  BackoutTable<CamelName>, BackoutBucket<CamelName> DynamoDB tables and S3 buckets (backed up, probed);
                                                    backout calls them by the snake_case of CamelName
  BackoutEnvironment                                the environment the functions were deployed for
  BackoutStateTable                                 the shared control-state table (optional; `state_table`)

Every AWS error a user can cause (a missing stack, function, queue or credentials) becomes one
`UsageError` line through `aws_errors`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from backout.errors import UsageError
from backout.manifest import AwsSpec, Manifest

OUT_API_ID = "BackoutApiId"
OUT_API_STAGE = "BackoutApiStage"
OUT_API_URL = "BackoutApiUrl"
OUT_ENVIRONMENT = "BackoutEnvironment"
OUT_FUNCTION = "BackoutFunction"
OUT_QUEUE = "BackoutQueue"
OUT_TABLE = "BackoutTable"
OUT_BUCKET = "BackoutBucket"
OUT_STATE_TABLE = "BackoutStateTable"
INVOKE_TIMEOUT = 900.0  # seconds: the longest a Lambda function may run

# error codes that mean "that resource does not exist / that name is wrong": the user's to fix
_NOT_FOUND = {
    "ResourceNotFoundException", "NotFoundException", "NoSuchBucket", "NoSuchKey", "ValidationError",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "TableNotFoundException",
    "BackupNotFoundException", "InvalidParameterValueException", "AccessDeniedException",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException",
}


def camel_name(name: str) -> str:
    """`dlq_processor` → `DlqProcessor`, `processing-dlq` → `ProcessingDlq`."""
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[_-]", name) if p)


def snake_name(camel: str) -> str:
    """`Jobs` → `jobs`, `ProcessedFiles` → `processed_files` (how a table or bucket output is named)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def function_name(name_or_arn: str) -> str:
    """The bare function name of a name or ARN (metric dimensions carry the name)."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn.split(":")[6]
    return name_or_arn


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """AWS errors a user can fix → one UsageError line naming `what`; everything else propagates."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        yield
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in _NOT_FOUND or code.endswith("NotFound") or code.endswith("NotFoundException"):
            msg = e.response.get("Error", {}).get("Message", "") or code
            raise UsageError(f"{what}: {msg} ({code})") from None
        raise
    except (NoCredentialsError, PartialCredentialsError):
        raise UsageError(f"{what}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)") from None
    except NoRegionError:
        raise UsageError(f"{what}: no AWS region (set aws.region in the manifest)") from None
    except EndpointConnectionError as e:
        raise UsageError(f"{what}: cannot reach AWS at {e.kwargs.get('endpoint_url', '?')}") from None


_loader: Any = None  # botocore's model loader, shared by every platform of the process
_loader_lock = threading.Lock()


def _session(region: str) -> Any:
    """A boto3 session of its own (credentials, region) over the process's one botocore loader: a new
    loader parses botocore's JSON models again, a fraction of a second per session."""
    global _loader
    import boto3
    import botocore.loaders
    import botocore.session

    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _loader)
    session = boto3.session.Session(botocore_session=core, region_name=region)
    with _loader_lock:  # each boto3 session appends its data directory to the loader's paths
        _loader.search_paths[:] = list(dict.fromkeys(_loader.search_paths))
    return session


class Clients:
    """One boto3 session per platform; clients are thread-safe and made once each (rollbacks call
    update_alias from a thread pool, hence the connection pool as large as the pool)."""

    def __init__(self, spec: AwsSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._session: Any = None

    def __call__(self, service: str) -> Any:
        return self._client(service, service, read_timeout=60, attempts=3)

    def resource(self, service: str) -> Any:
        """boto3's resource layer over this platform's session (the shared control state's table)."""
        with self._lock:
            from botocore.config import Config

            if self._session is None:
                self._session = _session(self.spec.region)
            cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=64,
                         connect_timeout=5, read_timeout=60)
            return self._session.resource(service, endpoint_url=self.spec.endpoint_url, config=cfg)

    def invoker(self) -> Any:
        """The Lambda client for synchronous invocations: it waits as long as a function may run and
        never retries, since an invocation is not idempotent (a repair cut off by a read timeout and
        retried would run twice, on AWS's side both to the end)."""
        return self._client("lambda:invoke", "lambda", read_timeout=INVOKE_TIMEOUT, attempts=1)

    def _client(self, key: str, service: str, read_timeout: float, attempts: int) -> Any:
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                from botocore.config import Config

                if self._session is None:
                    self._session = _session(self.spec.region)
                cfg = Config(retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=64,
                             connect_timeout=5, read_timeout=read_timeout)
                c = self._session.client(service, endpoint_url=self.spec.endpoint_url, config=cfg)
                self._clients[key] = c
            return c


@dataclass(frozen=True)
class Resources:
    """The names backout drives, keyed by the manifest's names."""

    functions: dict[str, str]  # backout function → Lambda function name (or ARN)
    queues: dict[str, str]  # manifest queue → queue URL
    tables: dict[str, str] = field(default_factory=dict)
    buckets: dict[str, str] = field(default_factory=dict)
    api_id: str | None = None
    stage: str | None = None
    api_url: str = ""
    environment: str = ""
    stack: str | None = None
    state_table: str | None = None  # the shared control state (DynamoDB), when there is one


def resolve(manifest: Manifest, env: str, spec: AwsSpec, clients: Clients) -> Resources:
    """Read the stack's outputs, or take the explicit names; a name missing → UsageError."""
    where = f"environments.{env}.aws"
    deployable = [f for f, s in manifest.functions.items() if s.deploy]
    http = any(f.http_events for f in manifest.functions.values())
    if spec.stack is None:
        queues = {q: _queue_url(clients, v, f"{where}.queues.{q}") for q, v in spec.queues.items()}
        api_url = spec.api_url or (_api_url(spec, spec.api_id, spec.stage) if spec.api_id and spec.stage else "")
        return Resources(dict(spec.functions), queues, dict(spec.tables), dict(spec.buckets),
                         spec.api_id, spec.stage, api_url, env, None, spec.state_table)
    with aws_errors(f"{where}.stack: CloudFormation stack {spec.stack!r} in {spec.region}"):
        stack = clients("cloudformation").describe_stacks(StackName=spec.stack)["Stacks"][0]
    out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    wanted = [OUT_FUNCTION + camel_name(f) for f in deployable]
    wanted += [OUT_QUEUE + camel_name(q) for q in manifest.queues]
    if http:
        wanted += [OUT_API_ID, OUT_API_STAGE]
    missing = [k for k in wanted if k not in out]
    if missing:
        raise UsageError(f"{where}.stack: stack {spec.stack!r} ({stack.get('StackStatus')}) has no output "
                         f"{', '.join(missing)} (see docs/aws.md for the outputs backout reads)")
    tables = {snake_name(k[len(OUT_TABLE):]): v for k, v in out.items()
              if k.startswith(OUT_TABLE) and k != OUT_TABLE}
    buckets = {snake_name(k[len(OUT_BUCKET):]): v for k, v in out.items()
               if k.startswith(OUT_BUCKET) and k != OUT_BUCKET}
    api_id, stage = out.get(OUT_API_ID), out.get(OUT_API_STAGE)
    api_url = out.get(OUT_API_URL) or (_api_url(spec, api_id, stage) if api_id and stage else "")
    return Resources(
        functions={f: out[OUT_FUNCTION + camel_name(f)] for f in deployable},
        queues={q: out[OUT_QUEUE + camel_name(q)] for q in manifest.queues},
        tables=tables, buckets=buckets, api_id=api_id, stage=stage, api_url=api_url.rstrip("/"),
        environment=out.get(OUT_ENVIRONMENT, env), stack=spec.stack,
        state_table=spec.state_table or out.get(OUT_STATE_TABLE),
    )


def _api_url(spec: AwsSpec, api_id: str, stage: str) -> str:
    if spec.endpoint_url:  # an emulator serves stages under its own address
        return f"{spec.endpoint_url.rstrip('/')}/restapis/{api_id}/{stage}/_user_request_"
    return f"https://{api_id}.execute-api.{spec.region}.amazonaws.com/{stage}"


def _queue_url(clients: Clients, value: str, where: str) -> str:
    """A queue URL as given, or the URL of a queue given by name (get_queue_url)."""
    if value.startswith(("https://", "http://")):
        return value
    with aws_errors(f"{where}: queue {value!r}"):
        return str(clients("sqs").get_queue_url(QueueName=value)["QueueUrl"])
