"""The platform protocols: everything the control plane, the runbooks and the server do to a running service.

Small protocols grouped by concern, each method the twin of one real AWS call (ARCHITECTURE.md has
the table; `docs/platforms.md` names every method with its AWS call and its local twin), so one
deployer drives both the embedded `local` platform and `aws`. Nothing above `platforms/` imports a
platform's internals: it gets a `Platform` from `backout.platforms.open_platform`.

A *release* is backout's id for one publish of the whole service; each function has its own
version number in it (Lambda numbers versions per function). Routing, invoking and metrics speak
function versions (strings, as Lambda does); deployments speak releases.

A capability a platform lacks is declared by not implementing its protocol (`Capacity`,
`Hosted`, `PrometheusExport`), never faked: callers check with `isinstance`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# Metric namespaces and names shared by platforms and the control plane (CloudWatch's where they exist).
NS_LAMBDA = "AWS/Lambda"  # Invocations, Errors, Throttles, Duration, ConcurrentExecutions
NS_API = "AWS/ApiGateway"  # Count, 4XXError, 5XXError, Latency
NS_SQS = "AWS/SQS"  # NumberOfMessagesSent/Received/Deleted, ApproximateNumberOfMessages{Visible,NotVisible},
#                     ApproximateAgeOfOldestMessage
NS_BACKOUT = "Backout"  # DeadLetterArrivals {QueueName} and {QueueName, ExecutedVersion}: messages moved into a
#                         DLQ (draining does not hide them), also per version that received each one last
# The state of an existing CloudWatch alarm the manifest names (`aws.alarms`), as a metric the control
# plane evaluates like any other: AlarmState {AlarmName} = 1 in ALARM, 0 OK, no datapoint otherwise.
# Only a platform that reads alarms (aws: describe_alarms) answers it.
NS_ALARM_STATE = "Backout/AlarmState"

LAMBDA_METRICS = ("Invocations", "Errors", "Throttles", "Duration", "ConcurrentExecutions")
API_METRICS = ("Count", "4XXError", "5XXError", "Latency")
SQS_METRICS = (
    "NumberOfMessagesSent",
    "NumberOfMessagesReceived",
    "NumberOfMessagesDeleted",
    "ApproximateNumberOfMessagesVisible",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateAgeOfOldestMessage",
)
DLQ_ARRIVALS = "DeadLetterArrivals"
STATISTICS = ("SampleCount", "Sum", "Average", "Minimum", "Maximum", "p50", "p90", "p99")
MAX_QUERIES = 500  # GetMetricData's limit of queries per call

# Dimension sets recorded for every Lambda datapoint:
#   {FunctionName}, {FunctionName, ExecutedVersion}, {FunctionName, Resource="<fn>:live"}
# for every gateway response: {ApiName, Stage} and {ApiName, Stage, ExecutedVersion}
# (ExecutedVersion "0" when no function answered: 404, 405, 413, 429).
LIVE_ALIAS = "live"


def legal_period(period: int) -> bool:
    """CloudWatch accepts 1, 5, 10, 30 s (high resolution) or any multiple of 60 s."""
    return period in (1, 5, 10, 30) or (period >= 60 and period % 60 == 0)


def period_at_least(seconds: float) -> int:
    """The smallest legal period that is ≥ `seconds`."""
    for p in (1, 5, 10, 30):
        if seconds <= p:
            return p
    return int(-(-seconds // 60) * 60)


# --- releases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionConfig:
    """What a function version holds besides its code, as a Lambda version does: invoking a version
    uses its own configuration, so rolling back to it restores it. Reserved concurrency is not here
    (per function, as on Lambda), nor the variables the platform itself injects (endpoints, state dirs)."""

    handler: str
    timeout: float  # seconds
    memory: int  # MB
    environment: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> FunctionConfig:
        return FunctionConfig(str(d["handler"]), float(d["timeout"]), int(d["memory"]),
                              {str(k): str(v) for k, v in (d.get("environment") or {}).items()})


def configuration_of(manifest: Any, env: str) -> dict[str, FunctionConfig]:
    """Every function's configuration as `backout.toml` states it now: the function's table, with the
    environment's own `environment` over the function's (what `publish` puts in a new release)."""
    extra = manifest.environment(env).environment
    return {fn: FunctionConfig(f.handler, float(f.timeout), int(f.memory), {**f.environment, **extra})
            for fn, f in manifest.functions.items()}


@dataclass(frozen=True)
class Release:
    """One publish of the whole service: backout's `id`, each function's own version number, and the
    configuration each of those versions holds (empty where a platform does not report it)."""

    id: int
    versions: dict[str, str]  # function → its version on the platform
    digest: str
    created_at: float
    description: str = ""
    environment: dict[str, str] = field(default_factory=dict)  # extra variables (drills, --set-env)
    configuration: dict[str, FunctionConfig] = field(default_factory=dict)

    def version(self, fn: str) -> str:
        try:
            return self.versions[fn]
        except KeyError:
            raise KeyError(f"release {self.id} has no function {fn!r}") from None

    def label(self, fn: str | None = None) -> str:
        """`r7`, or `r7 (worker v12)` when a function's version number differs from the release id."""
        if fn is None:
            differ = {f: v for f, v in self.versions.items() if v != str(self.id)}
            if not differ:
                return f"r{self.id}"
            return f"r{self.id} (" + ", ".join(f"{f} v{v}" for f, v in sorted(differ.items())) + ")"
        v = self.versions.get(fn)
        return f"r{self.id}" if v in (None, str(self.id)) else f"r{self.id} ({fn} v{v})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Releases(Protocol):
    def functions(self) -> list[str]:
        """The functions a deployment moves (Lambda: the stack's functions with a live alias)."""

    def publish(
        self,
        source: Path,
        environment: dict[str, str] | None = None,
        description: str = "",
        configuration: dict[str, FunctionConfig] | None = None,
    ) -> Release:
        """Package `source` and publish every function's code and configuration (update_function_code →
        update_function_configuration → publish_version); unchanged content → the existing release.
        `configuration`: the functions' configuration as the deploying operator's `backout.toml` has it
        (functions left out: the platform's manifest's)."""

    def republish(self, release_id: int, environment: dict[str, str], description: str = "") -> Release:
        """The same code and configuration as `release_id` with extra environment
        (update_function_configuration + publish_version): how drills inject faults without a code change."""

    def releases(self) -> list[Release]:
        """Every release, oldest first (list_versions_by_function)."""


# --- routing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AliasWeights:
    """The live alias: `canary_weight` percent of invocations go to `canary`, the rest to `stable`."""

    function: str
    stable: str
    canary: str | None = None
    canary_weight: float = 0.0

    def pick(self, rnd: random.Random | None = None) -> str:
        """The version one invocation goes to, chosen by weight as Lambda does."""
        if self.canary is None or self.canary_weight <= 0:
            return self.stable
        r = (rnd or random).random() * 100.0
        return self.canary if r < self.canary_weight else self.stable

    @property
    def versions(self) -> dict[str, float]:
        if self.canary is None or self.canary_weight <= 0:
            return {self.stable: 100.0}
        if self.canary_weight >= 100:
            return {self.canary: 100.0}
        return {self.stable: 100.0 - self.canary_weight, self.canary: self.canary_weight}


@runtime_checkable
class ParallelRouting(Protocol):
    """Optional: every alias changed at once (aws: one update_alias per function on a thread pool), so a
    rollback of N functions takes one round trip, not N. Without it callers loop over `set_weights`."""

    def set_weights_many(self, changes: Sequence[AliasWeights]) -> None:
        """`set_weights` for each change, concurrently; raises after all were tried when any failed."""


@runtime_checkable
class Routing(Protocol):
    def get_weights(self, fn: str) -> AliasWeights:
        """get_alias(live)."""

    def set_weights(self, fn: str, stable: str, canary: str | None = None, pct: float = 0.0) -> None:
        """update_alias(FunctionVersion=stable, RoutingConfig={canary: pct/100}); applies to the next
        invocation and never drops one in flight."""


# --- invoke ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InvokeResult:
    """One invocation. `error` is Lambda's X-Amz-Function-Error ("Unhandled") or None; on error
    `payload` is Lambda's shape {errorType, errorMessage, stackTrace}."""

    function: str
    version: str
    request_id: str
    payload: Any
    error: str | None = None
    duration_ms: float = 0.0
    throttled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.throttled


@runtime_checkable
class Invoke(Protocol):
    def invoke(self, fn: str, version: str | None, event: dict[str, Any]) -> InvokeResult:
        """invoke(Qualifier=version); `version=None` invokes through the live alias."""


# --- metrics --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricQuery:
    """One metric, exact dimensions, [start, end) in epoch seconds, one statistic, one legal period.

    A period CloudWatch would refuse is refused here too, so a query that runs locally runs on AWS."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    start: float
    end: float
    period: int = 60
    statistic: str = "Sum"

    def __post_init__(self) -> None:
        if not legal_period(self.period):
            raise ValueError(f"metric period {self.period} s: CloudWatch accepts 1, 5, 10, 30 or a multiple of 60")

    @staticmethod
    def of(
        namespace: str,
        metric: str,
        dimensions: dict[str, str],
        start: float,
        end: float,
        period: int = 60,
        statistic: str = "Sum",
    ) -> MetricQuery:
        dims = tuple(sorted((k, str(v)) for k, v in dimensions.items()))
        return MetricQuery(namespace, metric, dims, start, end, period, statistic)


@dataclass(frozen=True)
class Datapoint:
    timestamp: float  # start of the period, epoch seconds
    value: float
    sample_count: float


@runtime_checkable
class Metrics(Protocol):
    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        """GetMetricData: every query of one evaluation in one call (≤ MAX_QUERIES), one series each,
        oldest datapoint first; periods are epoch-aligned as CloudWatch's."""


# --- ingress --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throttle:
    rate: float  # requests per second; 0 blocks every request with 429
    burst: int


@runtime_checkable
class Ingress(Protocol):
    def endpoint(self) -> str:
        """The service's public base URL (the API stage's invoke URL)."""

    def get_throttle(self) -> Throttle:
        """get_stage: the stage's default method throttling."""

    def set_throttle(self, rate: float, burst: int) -> None:
        """update_stage patch `/*/*/throttling/rateLimit` and `/*/*/throttling/burstLimit`."""


# --- processing -----------------------------------------------------------------------------------
@runtime_checkable
class Processing(Protocol):
    def get_processing(self) -> bool:
        """True when every event source mapping is enabled (list_event_source_mappings)."""

    def set_processing(self, enabled: bool) -> None:
        """update_event_source_mapping(Enabled=…) on every mapping; paused messages wait, none is
        dead-lettered for the pause."""


# --- queues ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueAttributes:
    """What SQS GetQueueAttributes answers (no lifetime counters: those are metrics)."""

    name: str
    visible: int  # ApproximateNumberOfMessages
    in_flight: int  # ApproximateNumberOfMessagesNotVisible
    delayed: int  # ApproximateNumberOfMessagesDelayed
    dead_letter_queue: str | None = None  # RedrivePolicy.deadLetterTargetArn
    max_receive_count: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueueMessage:
    """One message as it sits in a queue (`backout queue peek`): read, not received."""

    id: str
    body: str
    attributes: dict[str, str]  # MessageAttributes (string values), plus a DLQ's source and last error
    sent_at: float
    visible: bool  # False while a consumer holds it (in flight) or it is delayed
    receive_count: int
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RedriveTask:
    """A DLQ redrive (StartMessageMoveTask): asynchronous on AWS, so it has a status."""

    id: str
    source: str  # the DLQ
    destination: str  # the queue its messages go back to
    status: str  # RUNNING | COMPLETED | FAILED | CANCELLED
    moved: int
    to_move: int | None
    started_at: float
    failure: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Queues(Protocol):
    def queues(self) -> list[str]:
        """The service's queues by name (list_queues)."""

    def queue_attributes(self, queue: str) -> QueueAttributes:
        """get_queue_attributes."""

    def send_message(self, queue: str, body: str, attributes: dict[str, str] | None = None) -> str:
        """send_message (with string MessageAttributes): the message id once the message is durable."""

    def peek_messages(self, queue: str, limit: int = 10) -> list[QueueMessage]:
        """The oldest messages, read without consuming them (receive_message with VisibilityTimeout=0 on
        AWS, which does count a receive)."""

    def purge_queue(self, queue: str) -> int:
        """purge_queue: delete every message; how many were deleted (when the platform knows)."""

    def delete_tagged(self, queue: str, attribute: str, value: str) -> int:
        """Delete the messages whose MessageAttribute `attribute` is `value` (a drill's own); on AWS a
        receive loop that deletes those and releases the rest (change_message_visibility 0)."""

    def start_redrive(self, dlq: str) -> RedriveTask:
        """start_message_move_task: move the DLQ's messages back to their source queue."""

    def redrive_status(self, dlq: str) -> list[RedriveTask]:
        """list_message_move_tasks: the DLQ's redrives, newest first."""


# --- data -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backup:
    id: str
    created_at: float
    label: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    latency_ms: float = 0.0


@runtime_checkable
class Data(Protocol):
    def backup(self, label: str = "") -> Backup:
        """create_backup of every table + the object stores' current versions."""

    def backups(self) -> list[Backup]:
        """list_backups, oldest first."""

    def restore_to_side(self, backup_id: str) -> str:
        """restore_table_from_backup into a side table (never over live data); returns where the
        service's own repair code reads it: a directory locally, a JSON object (side tables,
        buckets, the backup's instant) on AWS. The repair runbook hands it over unchanged."""

    def restore(self, backup_id: str) -> None:
        """Put the backup's data back as the live data (the procedure's full restore; data written since is lost)."""

    def describe(self) -> list[CheckResult]:
        """describe_table of every table, plus a read/write probe: is the service's data usable?"""


# --- optional capabilities ------------------------------------------------------------------------
@runtime_checkable
class Capacity(Protocol):
    """Pre-warming: the local platform starts workers; on AWS it is provisioned concurrency, used
    only when the manifest asks (it takes minutes and costs money)."""

    def prewarm(self, fn: str, version: str, count: int = 1) -> None:
        """Start `count` instances of `version` and return once they answer."""

    def is_warm(self, fn: str, version: str) -> bool: ...

    def retire(self, fn: str, version: str) -> None:
        """Let `version`'s idle instances go (after the rollback window); in-flight work finishes."""


@dataclass(frozen=True)
class StateTable:
    """Where an environment's control state is shared between machines (aws: a DynamoDB table)."""

    name: str
    table: Any  # boto3's DynamoDB Table resource
    functions: dict[str, str]  # backout function → the cloud's function name (what the guard moves)
    lease_renew: float  # seconds between the driver's lease renewals
    lease_expiry: float  # seconds after the last renewal when another process may take over


@runtime_checkable
class SharedState(Protocol):
    """Optional: a platform that can keep the control state where every machine sees it (aws, when
    the manifest or the stack names a state table); None → the state stays in the local state dir."""

    def state_table(self) -> StateTable | None: ...


@runtime_checkable
class ReleaseFiles(Protocol):
    """Optional: the files a release's code holds, for `backout releases --diff` (local: the release's
    directory; aws does not implement it, a diff then compares digests)."""

    def release_files(self, release_id: int) -> dict[str, str]:
        """Relative path → SHA-256 of every file of the release's code."""


@runtime_checkable
class Hosted(Protocol):
    """A platform that runs inside backout's own process (local): the server starts, ticks and
    serves it. AWS runs on its own and does not implement this."""

    def bootstrap(self) -> None:
        """First start: publish the manifest's source as release 1 and point every alias at it."""

    def bind(self, endpoint: str) -> None:
        """Tell the platform where its gateway listens."""

    def gateway_app(self) -> Any:
        """The ASGI app of the service's public HTTP API."""

    def start(self) -> None: ...

    def tick(self) -> None:
        """Once a second: sample gauges into the metric store and persist it."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class StackStatus:
    """describe_stacks of the stack an environment's resources come from."""

    name: str
    status: str  # CREATE_COMPLETE, UPDATE_IN_PROGRESS, UPDATE_ROLLBACK_COMPLETE, …
    reason: str
    last_updated: float | None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def updating(self) -> bool:
        """cancel_update_stack applies only now: a finished update cannot be cancelled."""
        return self.status == "UPDATE_IN_PROGRESS"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Stacks(Protocol):
    """Optional: the environment's infrastructure is a CloudFormation stack (aws with `stack = …`)."""

    def stack_status(self) -> StackStatus:
        """describe_stacks."""

    def cancel_stack_update(self) -> StackStatus:
        """cancel_update_stack, only while an update is in progress (UsageError otherwise)."""


@runtime_checkable
class AwsEndpoints(Protocol):
    """Local only: AWS APIs served next to the gateway, so a service's unmodified boto3 code runs
    against them (SQS always; DynamoDB and S3 when the manifest asks for the emulator)."""

    def sqs_app(self) -> Any:
        """The ASGI app of the SQS-compatible endpoint."""

    def bind_aws(self, sqs_url: str) -> dict[str, str]:
        """Tell the platform where its SQS endpoint listens (before `start`); starts the emulator if the
        manifest asks. Returns every AWS endpoint served, service → URL."""


@runtime_checkable
class PrometheusExport(Protocol):
    def metric_families(self) -> Iterable[Metric]:
        """The platform's own figures as prometheus_client families, collected at the call (objects,
        not text: the server adds its labels without parsing an exposition at every scrape)."""


def evaluation_interval(platform: object, default: float) -> float:
    """Seconds between alarm evaluations on `platform`: a platform whose metric reads are billed or
    rate-limited (aws: GetMetricData per metric) declares `evaluation_interval`; others use `default`."""
    return float(getattr(platform, "evaluation_interval", default))


def consistent_metrics(platform: object) -> bool:
    """Whether one `metrics` call answers from one snapshot in which the samples of one invocation
    (Invocations, Errors, Duration) appear together or not at all, the current second included. A
    platform that declares it lets the errors judges read the second still filling (local: one
    in-memory store under one lock); CloudWatch makes no such promise (EMF lines are ingested late and
    metric by metric), so there the judges wait for closed seconds."""
    return bool(getattr(platform, "consistent_metrics", False))


@runtime_checkable
class Platform(Releases, Routing, Invoke, Metrics, Ingress, Processing, Queues, Data, Protocol):
    """Where the service runs: the union of the concerns above."""
