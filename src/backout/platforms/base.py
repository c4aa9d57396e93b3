"""The Platform protocol: everything the control plane and the runbooks do to a running service.

Each operation maps 1:1 to a real AWS call (see ARCHITECTURE.md), so one
deployer drives both the embedded `local` platform and `aws`. The control
plane imports only this module, never a platform's internals.

Versions are service-wide: `publish` makes one immutable copy of the whole
service's code, and every function gets that version number (like a SAM
deployment publishing every function at once).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Metric namespaces and names shared by platforms and the control plane (CloudWatch's where they exist).
NS_LAMBDA = "AWS/Lambda"  # Invocations, Errors, Throttles, Duration, ConcurrentExecutions
NS_API = "AWS/ApiGateway"  # Count, 4XXError, 5XXError, Latency
NS_SQS = "AWS/SQS"  # NumberOfMessagesSent/Received/Deleted, ApproximateNumberOfMessages{Visible,NotVisible},
#                     ApproximateAgeOfOldestMessage
NS_BACKOUT = (
    "Backout"  # DeadLetterArrivals {QueueName}: messages moved into a DLQ (draining does not hide them)
)

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

# Dimension sets recorded for every Lambda datapoint:
#   {FunctionName}, {FunctionName, ExecutedVersion}, {FunctionName, Resource="<fn>:live"}
# for every gateway response: {ApiName, Stage} and {ApiName, Stage, ExecutedVersion}
# (ExecutedVersion "0" when no function answered: 404, 405, 413, 429).
LIVE_ALIAS = "live"


@dataclass(frozen=True)
class AliasWeights:
    """The live alias: `canary_weight` percent of invocations go to `canary`, the rest to `stable`."""

    function: str
    stable: int
    canary: int | None = None
    canary_weight: float = 0.0

    def pick(self, rnd: random.Random | None = None) -> int:
        """The version one invocation goes to, chosen by weight as Lambda does."""
        if self.canary is None or self.canary_weight <= 0:
            return self.stable
        r = (rnd or random).random() * 100.0
        return self.canary if r < self.canary_weight else self.stable

    @property
    def versions(self) -> dict[int, float]:
        if self.canary is None or self.canary_weight <= 0:
            return {self.stable: 100.0}
        if self.canary_weight >= 100:
            return {self.canary: 100.0}
        return {self.stable: 100.0 - self.canary_weight, self.canary: self.canary_weight}


@dataclass(frozen=True)
class MetricQuery:
    """CloudWatch GetMetricStatistics: one metric, exact dimensions, [start, end) in epoch seconds."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    start: float
    end: float
    period: int = 60
    statistic: str = "Sum"

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
        return MetricQuery(
            namespace, metric, tuple(sorted(dimensions.items())), start, end, period, statistic
        )


@dataclass(frozen=True)
class Datapoint:
    timestamp: float  # start of the period, epoch seconds
    value: float
    sample_count: float


@dataclass(frozen=True)
class InvokeResult:
    """One invocation. `error` is Lambda's X-Amz-Function-Error ("Unhandled") or None; on error
    `payload` is Lambda's shape {errorType, errorMessage, stackTrace}."""

    function: str
    version: int
    request_id: str
    payload: Any
    error: str | None = None
    duration_ms: float = 0.0
    throttled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.throttled


@dataclass(frozen=True)
class QueueStats:
    name: str
    visible: int
    in_flight: int
    delayed: int
    age_of_oldest: float  # seconds, 0 when empty
    sent: int  # counters since the queue was created
    received: int
    deleted: int
    moved_to_dlq: int  # messages this queue moved to its DLQ
    dlq_arrivals: int  # messages moved into this queue (when it is a DLQ)
    dead_letter_queue: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Throttle:
    rate: float  # requests per second; 0 blocks every request with 429
    burst: int


@dataclass(frozen=True)
class VersionInfo:
    version: int
    digest: str
    created_at: float
    description: str = ""
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SnapshotInfo:
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


@dataclass(frozen=True)
class HealthReport:
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@runtime_checkable
class Platform(Protocol):
    """Where the service runs. Small on purpose: each method is one AWS call or its local twin."""

    def functions(self) -> list[str]: ...

    def publish(self, source: Path, environment: dict[str, str] | None = None, description: str = "") -> int:
        """Immutable copy of the service's code (plus env overrides) → version; same content → same version."""

    def republish(self, version: int, environment: dict[str, str], description: str = "") -> int:
        """The same code as `version` with extra environment (how drills inject faults)."""

    def versions(self) -> list[VersionInfo]: ...

    def get_weights(self, fn: str) -> AliasWeights: ...

    def set_weights(self, fn: str, stable: int, canary: int | None = None, pct: float = 0.0) -> None:
        """Applies to the next invocation; never drops one in flight."""

    def warm(self, fn: str, version: int, count: int = 1) -> None:
        """Start `count` workers of `version` and return once they answer (provisioned concurrency on AWS):
        the new version is warmed before it takes traffic, rollback targets stay warm."""

    def is_warm(self, fn: str, version: int) -> bool: ...

    def retire(self, fn: str, version: int) -> None:
        """Let `version`'s idle workers go (after the rollback window); in-flight work finishes."""

    def invoke(self, fn: str, version: int | None, event: dict[str, Any]) -> InvokeResult:
        """`version=None` invokes through the live alias."""

    def metrics(self, query: MetricQuery) -> list[Datapoint]: ...

    def set_throttle(self, rate: float, burst: int) -> None: ...

    def get_throttle(self) -> Throttle: ...

    def set_processing(self, enabled: bool) -> None:
        """Event source mappings on/off; paused messages wait, none is dead-lettered for the pause."""

    def get_processing(self) -> bool: ...

    def queues(self) -> list[str]: ...

    def queue_stats(self, queue: str) -> QueueStats: ...

    def send_message(self, queue: str, body: str) -> str:
        """SQS SendMessage: returns the message id once the message is durable."""

    def redrive(self, dlq: str) -> int:
        """Move every message of a DLQ back to its source queue; returns how many moved."""

    def snapshot(self, label: str = "") -> SnapshotInfo: ...

    def snapshots(self) -> list[SnapshotInfo]: ...

    def restore(self, snapshot_id: str) -> None: ...

    def snapshot_location(self, snapshot_id: str) -> str:
        """Where the service's own repair code can read a snapshot (a directory locally, a backup ARN on AWS)."""

    def health(self) -> HealthReport: ...
