"""Load and validate `backout.toml`, the manifest that describes a service.

A bad manifest is a user error: `load_manifest` raises `ManifestError` whose
message is one line naming the file, the key path and the problem.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from backout.errors import UsageError

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_LONGEST = 3650 * 86400.0  # ten years: longer than any hold, timeout or retention means a mistake
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ManifestError(UsageError):
    """The manifest is missing or invalid (exit code 2)."""


def parse_duration(value: str | int | float) -> float:
    """Seconds from `90`, `"30s"`, `"5m"`, `"250ms"`, `"1h"`, `"4d"`."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        try:
            seconds = float(value)
        except OverflowError:  # an int of 400 digits
            seconds = math.inf
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m, 250ms)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    # TOML has nan and inf, and 400 digits overflow a float: an endless hold or timeout is a typo
    if not math.isfinite(seconds) or seconds > _LONGEST:
        raise ValueError(f"{value!r} is not a finite duration (at most {_LONGEST / 86400:.0f} days)")
    return seconds


def _milliseconds_or_duration(value: str | int | float) -> float:
    """Seconds from `"3s"`, `"750ms"` …, or from a plain number of milliseconds (what a field documented
    in ms always took, kept for the manifests that give one)."""
    return parse_duration(value) if isinstance(value, str) else parse_duration(value) / 1000.0


# Every duration is held in seconds. `Duration` takes `"30s"`, `"5m"`, `"250ms"` or a plain number of
# seconds; `DurationMs` is for fields documented in milliseconds: a plain number there stays milliseconds.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(
    ge=0, description='a duration ("30s", "5m", "250ms"; a plain number is seconds), held in seconds')]
DurationMs = Annotated[float, BeforeValidator(_milliseconds_or_duration), Field(
    ge=0, description='a duration ("3s", "750ms"; a plain number is milliseconds), held in seconds')]
CONFIRMING_ENVIRONMENTS = ("prod", "production")  # where confirm_with_judge defaults to true


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServiceSpec(_Model):
    """`[service]`: what the service is called and where its code lives."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
                      description="the service's name (letters, digits, `-`, `_`): the API's name in metrics")
    source: str = Field(default=".", description="the code root, relative to the manifest: put first on every "
                        "function's `sys.path`; `backout deploy` publishes it")
    packages: list[str] = Field(default_factory=list, description="top-level entries of `source` a release copies "
                                "(default: all of it, minus `__pycache__` and `.git`)")
    repair_function: str | None = Field(
        default=None, description="the service's function that lists and repairs jobs (data-repair runbook)"
    )


class HttpEvent(_Model):
    """`{ http = "GET /items/{id}" }`: a route of the API whose requests invoke the function as API
    Gateway REST proxy events (payload format 1.0)."""

    http: str = Field(description="`METHOD /path`, with `{param}` segments and a final `{name+}` greedy one; "
                      "METHOD is GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY")
    method: str = Field(default="", description="set from `http`; not written in the manifest")
    path: str = Field(default="", description="set from `http`; not written in the manifest")

    @model_validator(mode="after")
    def _split(self) -> HttpEvent:
        parts = self.http.split()
        if len(parts) != 2 or parts[0].upper() not in HTTP_METHODS or not parts[1].startswith("/"):
            raise ValueError(f"http event {self.http!r} must look like 'POST /path/{{param}}'")
        self.method, self.path = parts[0].upper(), parts[1]
        return self


class QueueEvent(_Model):
    """`{ queue = "jobs" }`: an event source mapping that invokes the function with SQS batches."""

    queue: str = Field(description="a queue of `[queues]`")
    batch_size: int = Field(default=10, ge=1, le=10000, description="at most this many records per invocation")
    enabled: bool = Field(default=True, description="false: the mapping exists but polls nothing")
    retry_after: Duration | None = Field(
        default=None, description="seconds before a failed message is visible again (default: the queue's)"
    )

    @field_validator("retry_after", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return None if v is None else parse_duration(v)  # type: ignore[arg-type]


class FunctionSpec(_Model):
    """`[functions.NAME]`: one Lambda-style handler with its configuration and events."""

    handler: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$",
                         description="`module.function` under `source`, called as `handler(event, context)`")
    timeout: Duration = Field(default=30.0, description="an invocation running longer fails (duration: "
                              "`30s`, `5m`, `250ms` or seconds)")
    memory: int = Field(default=128, ge=64, le=10240, description="MB, as Lambda's MemorySize")
    reserved_concurrency: int | None = Field(
        default=None, ge=0, description="at most this many invocations at once; more are throttled "
        "(default: unlimited on AWS, 4 workers per queue mapping locally)")
    environment: dict[str, str] = Field(default_factory=dict, description="environment variables of every "
                                        "version (the environment's own `environment` and `--set-env` add to it)")
    events: list[HttpEvent | QueueEvent] = Field(default_factory=list, description="what invokes it: "
                                                 "`{ http = … }` routes and `{ queue = … }` mappings")
    deploy: bool = Field(default=True, description="false: not part of deployments (e.g. a hook function "
                         "that must keep running the same code)")
    test_event: dict[str, Any] | str | None = Field(
        default=None, description="the event the pre-traffic check and `verify` send this function: an inline "
        "table, or a JSON file relative to the manifest (default: an API Gateway request to the health route "
        "for an HTTP function, an SQS batch of one marked message for a queue consumer, none otherwise)")
    duration_p99_limit: DurationMs | None = Field(
        default=None,
        description='p99 duration limit of a new version ("3s", "750ms"; a plain number is ms), held in '
        "seconds; an environment's duration_p99_limits overrides it",
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]

    @property
    def http_events(self) -> list[HttpEvent]:
        return [e for e in self.events if isinstance(e, HttpEvent)]

    @property
    def queue_events(self) -> list[QueueEvent]:
        return [e for e in self.events if isinstance(e, QueueEvent)]


class QueueSpec(_Model):
    """`[queues.NAME]`: an SQS standard queue."""

    visibility_timeout: Duration = Field(default=30.0, description="a received message is hidden this long; "
                                         "not deleted by then, it is received again. Not shorter than the "
                                         "timeout of a function it feeds (AWS refuses that mapping too)")
    max_receive_count: int | None = Field(default=None, ge=1, description="receives before a message moves to "
                                          "`dead_letter_queue` (required with one)")
    dead_letter_queue: str | None = Field(default=None, description="the queue failed messages move to")
    retention: Duration = Field(default=4 * 86400.0, description="messages older than this are dropped")
    delay: Duration = Field(default=0.0, description="a new message becomes visible after this")
    drill: bool = Field(default=False, description="drills may send tagged synthetic messages here (the "
                        "consumer must accept or reject them cleanly); they are removed after the drill")

    @field_validator("visibility_timeout", "retention", "delay", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]


class EmulatorSpec(_Model):
    """Opt-in, local platform only: DynamoDB and S3 served by moto in the supervisor, for services
    written against AWS alone; `tables` (name → string partition key) and `buckets` created at start."""

    services: list[Literal["dynamodb", "s3"]] = Field(min_length=1, description="the AWS services to serve "
                                                      "(each function gets `AWS_ENDPOINT_URL_<SERVICE>`)")
    tables: dict[str, str] = Field(default_factory=dict, description="DynamoDB table name → its string "
                                   "partition key, created at start")
    buckets: list[str] = Field(default_factory=list, description="S3 buckets created at start")

    @model_validator(mode="after")
    def _served(self) -> EmulatorSpec:
        for kind, service in ((self.tables, "dynamodb"), (self.buckets, "s3")):
            if kind and service not in self.services:
                raise ValueError(f"tables and buckets need their service in services (add {service!r})")
        return self


class StepSpec(_Model):
    """One step of a custom strategy."""

    weight: float = Field(ge=0, le=100, description="percent of invocations on the new version")
    hold: Duration = Field(default=0.0, description="how long to watch at this weight before the next step")

    @field_validator("hold", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]


class StrategySpec(_Model):
    """`[strategies.NAME]`: custom deployment steps (a name shadows the built-in of the same name:
    `Canary10Percent5Minutes`, `Linear10PercentEvery1Minute`, `AllAtOnce`, … as SAM names them)."""

    steps: list[StepSpec] = Field(min_length=1, description="in order; the last should be `{ weight = 100 }`")


class NotifySpec(_Model):
    """One notification target."""

    url: str = Field(description="an apprise URL (`slack://…`, `mailto://…`, `json://host/path`, …); ${VAR} is "
                     "that environment variable's value, filled in only when sending, so a secret stays out of "
                     "backout.toml, logs, the store and output")
    min_severity: Literal["info", "warning", "critical"] = Field(
        default="info", description="notifications below this are not sent here")


class ContactSpec(_Model):
    """Who to reach in an incident, for one role (`on_call`, `aws_support`, `management_escalation` …)."""

    name: str = Field(min_length=1, description="a person or a team")
    channel: str = Field(default="", description="how to reach them: a Slack channel, a phone, an e-mail, a link")

    def line(self, role: str) -> str:
        """`on call: Dana Lee (#incidents)`"""
        return f"{role.replace('_', ' ')}: {self.name}" + (f" ({self.channel})" if self.channel else "")


class SmokeSpec(_Model):
    """`[[smoke]]`: a smoke test (`backout smoke`, the `smoke` hook); exactly one of `pytest` or `http`."""

    pytest: str | None = Field(default=None, description="a pytest node id run from the manifest's directory "
                               "with API_BASE_URL and ENVIRONMENT set")
    http: str | None = Field(default=None, description="'GET /health' checked through the gateway")
    expect_status: int = Field(default=200, description="the status the `http` check expects")

    @model_validator(mode="after")
    def _one(self) -> SmokeSpec:
        if (self.pytest is None) == (self.http is None):
            raise ValueError("a smoke test has exactly one of 'pytest' or 'http'")
        return self


class HookSpec(_Model):
    """A pre- or post-traffic check. Exactly one kind: a built-in check set, a function of the
    service (returns "Succeeded"/"Failed" like a CodeDeploy hook), a shell command, an HTTP GET."""

    builtin: Literal["checks", "smoke"] | None = Field(
        default=None, description="`checks`: before traffic, every new version answers an event of its own "
        "kind and the data and queues are reachable; after, the new versions' error rate, duration and DLQ "
        "arrivals. `smoke`: the `[[smoke]]` tests")
    function: str | None = Field(default=None, description="a function of the service, invoked with the "
                                 "deployment's ids; answers `{\"status\": \"Succeeded\"}` or `Failed`")
    command: str | None = Field(default=None, description="a shell command run from the manifest's directory "
                                "(API_BASE_URL, BACKOUT_DEPLOYMENT_ID, BACKOUT_TARGET_VERSIONS set); exit 0 passes")
    http: str | None = Field(default=None, description="'GET /path' through the gateway, or a full URL")
    timeout: Duration = Field(default=60.0, description="the hook fails when it takes longer")
    name: str = Field(default="", description="shown in events and reports (default: `kind:value`)")

    @field_validator("timeout", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _one(self) -> HookSpec:
        kinds = [k for k in ("builtin", "function", "command", "http") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a hook has exactly one of 'builtin', 'function', 'command' or 'http'")
        if not self.name:
            self.name = f"{kinds[0]}:{getattr(self, kinds[0])}"
        return self


def _default_pre() -> list[HookSpec]:
    return [HookSpec(builtin="checks")]


def _default_post() -> list[HookSpec]:
    return [HookSpec(builtin="checks"), HookSpec(builtin="smoke")]


class HooksSpec(_Model):
    """`[hooks]`: the checks run before any traffic reaches a new version and after it takes 100 %."""

    pre_traffic: list[HookSpec] = Field(default_factory=_default_pre,
                                        description="default: `[{ builtin = \"checks\" }]`")
    post_traffic: list[HookSpec] = Field(default_factory=_default_post,
                                         description="default: `[{ builtin = \"checks\" }, { builtin = \"smoke\" }]`")


class AwsSpec(_Model):
    """`[environments.X.aws]`: where an AWS environment's resources are. Either `stack` (names read from
    the CloudFormation stack's outputs, see docs/aws.md) or explicit names: `functions` (every
    deployable function), `api_id` + `stage` when a function has HTTP events, `queues` (every
    manifest queue), `tables` and `buckets` (the data `backup`/`describe` cover)."""

    region: str = Field(min_length=1, description="the AWS region of the environment's resources")
    endpoint_url: str | None = Field(default=None, description="an AWS emulator's URL (tests, moto)")
    stack: str | None = Field(default=None, description="a CloudFormation stack whose outputs name the resources "
                              "(docs/aws.md lists the output names)")
    functions: dict[str, str] = Field(default_factory=dict, description="backout function → Lambda name/ARN")
    api_id: str | None = Field(default=None, description="the REST API's id (with `stage`; without `stack`)")
    stage: str | None = Field(default=None, description="the API stage whose throttle an emergency stop sets")
    api_url: str | None = Field(default=None, description="the stage's invoke URL (default: derived)")
    queues: dict[str, str] = Field(default_factory=dict, description="manifest queue → SQS queue URL")
    tables: dict[str, str] = Field(default_factory=dict, description="name → DynamoDB table name")
    buckets: dict[str, str] = Field(default_factory=dict, description="name → S3 bucket name")
    alarms: list[str] = Field(default_factory=list, description="existing CloudWatch alarms: ALARM → rollback")
    artifacts_bucket: str | None = Field(default=None, description="S3 bucket for packages over 50 MB")
    architecture: Literal["x86_64", "arm64"] = Field(default="x86_64", description="the functions' "
                                                     "architecture: which Linux wheels publish packages")
    python_version: str = Field(default="3.11", pattern=r"^3\.\d+$", description="the functions' Python runtime: "
                                "which wheels publish packages")
    evaluation_interval: Duration = Field(default=5.0, gt=0, description="seconds between metric reads")
    provisioned_concurrency: bool = Field(
        default=False, description="pre-warm new versions with provisioned concurrency (minutes; costs money)"
    )
    # shared control state (docs/aws.md): a DynamoDB table every machine reads, and the driver's lease
    state_table: str | None = Field(default=None, description="DynamoDB table of the shared control state "
                                    "(default: the stack's BackoutStateTable output; none: local SQLite)")
    lease_renew: Duration = Field(default=10.0, gt=0, description="seconds between the driver's lease renewals")
    lease_expiry: Duration = Field(default=60.0, gt=0, description="seconds after the last renewal when "
                                   "another machine may take the deployment over")

    @field_validator("evaluation_interval", "lease_renew", "lease_expiry", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _where(self) -> AwsSpec:
        if self.lease_renew * 2 > self.lease_expiry:
            raise ValueError(f"lease_renew ({self.lease_renew:g} s) must be at most half of lease_expiry "
                             f"({self.lease_expiry:g} s): one missed renewal must not lose the lease")
        explicit = [k for k in ("functions", "api_id", "stage", "queues", "tables", "buckets") if getattr(self, k)]
        if self.stack is not None and explicit:
            raise ValueError(f"give either stack or explicit names, not both (also set: {', '.join(explicit)})")
        if self.stack is None and not self.functions:
            raise ValueError("give stack = \"NAME\" (names from its outputs) or functions = {name = \"lambda\"}")
        if (self.api_id is None) != (self.stage is None):
            raise ValueError("api_id and stage go together")
        return self


# --- alarms on any metric -----------------------------------------------------------------------
# `[environments.NAME.alarms.ALARM]`: per environment, as every threshold of the manifest, since what is an
# alarming value differs between staging's trickle and prod's traffic.
ALARM_COMPARISONS = ("GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold",
                     "LessThanOrEqualToThreshold")
ALARM_PLACEHOLDERS = ("{version}", "{function}", "{alias}")
RESERVED_ALARM_NAMES = ("api-5xx", "api-5xx-ceiling")  # the procedure's own rules without a `:`


def _period(value: str | int | float) -> float:
    """A CloudWatch period: 1, 5, 10, 30 s or a multiple of 60 s (a high-resolution alarm or a standard one)."""
    s = parse_duration(value)
    if not (s in (1, 5, 10, 30) or (s >= 60 and s % 60 == 0)):
        raise ValueError(f"{value!r}: CloudWatch periods are 1s, 5s, 10s, 30s or a multiple of 60s")
    return s


class AlarmSpec(_Model):
    """`[environments.NAME.alarms.ALARM]`: an alarm on any metric the platform has, next to the procedure's own
    (CloudWatch's alarm fields, as SAM's `DeploymentPreference.Alarms` or an Argo `AnalysisTemplate` take them).
    In ALARM during a deployment → rollback, named `ALARM` (`ALARM:FUNCTION` when it is one per function)."""

    namespace: str = Field(min_length=1, description="the metric's namespace (`AWS/SQS`, `AWS/Lambda`, `SDA`, …)")
    metric: str = Field(min_length=1, description="the metric's name")
    dimensions: dict[str, str] = Field(default_factory=dict, description="exact dimensions; in a value "
                                       "`{version}` is the new version of the function (the alarm watches only "
                                       "it), `{function}` its name, `{alias}` the live alias's name")
    function: str | None = Field(default=None, description="the function `{version}` and `{function}` stand for "
                                 "(default with a placeholder: one alarm per deployed function)")
    statistic: str = Field(default="Sum", pattern=r"^(Sum|Average|Maximum|Minimum|SampleCount|p\d{1,2}(\.\d+)?)$",
                           description="Sum, Average, Maximum, Minimum, SampleCount or a percentile pNN")
    threshold: float = Field(description="the value compared with the statistic")
    comparison: Literal[ALARM_COMPARISONS] = Field(  # type: ignore[valid-type]
        default="GreaterThanThreshold", description="how the statistic is compared with the threshold")
    period: Annotated[float, BeforeValidator(_period)] = Field(
        default=60.0, description="1s, 5s, 10s, 30s or a multiple of 60s (CloudWatch's periods)")
    evaluation_periods: int = Field(default=1, ge=1, description="how many recent periods are evaluated")
    datapoints_to_alarm: int | None = Field(default=None, ge=1, description="breaching periods among them that "
                                            "alarm (default: all of them)")
    treat_missing_data: Literal["missing", "ignore", "breaching", "notBreaching"] = Field(
        default="missing", description="a period without data: `missing` (decide on the others; none at all is "
        "INSUFFICIENT_DATA), `ignore` (keep the previous state), `breaching`, `notBreaching`")
    min_samples: int = Field(default=0, ge=0, description="a period with fewer samples counts as missing")

    @model_validator(mode="after")
    def _periods(self) -> AlarmSpec:
        if self.datapoints_to_alarm is not None and self.datapoints_to_alarm > self.evaluation_periods:
            raise ValueError(f"datapoints_to_alarm ({self.datapoints_to_alarm}) exceeds evaluation_periods "
                             f"({self.evaluation_periods})")
        return self

    @property
    def per_function(self) -> bool:
        """Whether the dimensions name a function's version or name (then the alarm is scoped to it)."""
        return any(p in v for v in self.dimensions.values() for p in ("{version}", "{function}"))


class EnvironmentSpec(_Model):
    """`[environments.NAME]`: where and how one environment runs (`staging`, `prod`, …)."""

    gateway_port: int | None = Field(default=None, ge=0, le=65535, description="the service's public HTTP port "
                                     "(0: any free port); local platform only, and required there")
    control_port: int = Field(ge=0, le=65535, description="the control API's port, used by the CLI (0: any free)")
    aws_port: int = Field(default=0, ge=0, le=65535, description="the SQS-compatible endpoint (127.0.0.1; 0: free)")
    state_dir: str | None = Field(default=None, description="releases, queues, data, metrics and logs, relative "
                                  "to the manifest (default: `.backout/<env>`)")
    host: str = Field(default="127.0.0.1", description="the address the gateway listens on")
    control_host: str = Field(default="127.0.0.1", description="the address the control API listens on "
                              "(loopback unless set: it can stop and roll back the service)")
    platform: Literal["local", "aws"] = Field(default="local", description="where the service runs")
    aws: AwsSpec | None = Field(default=None, description="`platform = \"aws\"`: region, stack or names (docs/aws.md)")
    max_body: int = Field(default=10 * 1024 * 1024, ge=1, description="gateway body limit, bytes (API "
                          "Gateway's payload quota); the gateway stops reading past it and answers 413")
    body_timeout: Duration = Field(default=30.0, gt=0, description="how long the gateway waits for the next part "
                                   "of a request body before it answers 408 and closes the connection")
    throttle_rate: float = Field(default=10000.0, ge=0, description="the API stage's requests per second")
    throttle_burst: int = Field(default=5000, ge=0, description="the API stage's burst")
    strategy: str = Field(default="Canary10Percent5Minutes", description="the default strategy of `backout deploy`")
    require_approval: bool = Field(default=False, description="a deployment waits for `backout approve`")
    error_rate_threshold: float = Field(default=10.0, ge=0, le=100, description="percent of the new version's "
                                        "invocations that may fail before it is rolled back")
    min_invocations: int = Field(default=20, ge=1, description="the error-rate alarm decides only over at least "
                                 "this many invocations of the new version (until then INSUFFICIENT_DATA)")
    require_traffic: bool = Field(default=False, description="a deployment whose alarms never had enough data "
                                  "is rolled back instead of succeeding with a warning")
    api_5xx_threshold: int = Field(default=5, ge=0, description="5xx answers of the new version within "
                                   "`api_5xx_period` that roll it back")
    api_5xx_period: Duration = Field(default=300.0, description="the window of `api_5xx_threshold`")
    backups_keep: int = Field(default=30, ge=0, description="backups kept: after each new one (`backout backup "
                              "create`, or the one before a deployment's traffic) the oldest beyond this many "
                              "are deleted (0: keep every one)")
    rollback_window: Duration = Field(default=900.0, description="the old version's instances are kept warm this "
                                      "long after a deployment, so a rollback is instant")
    duration_p99_limits: dict[str, DurationMs] = Field(
        default_factory=dict,
        description='function → p99 duration limit of the new version ("3s", "750ms"; a plain number is ms), '
        "held in seconds",
    )
    queue_age_limits: dict[str, Duration] = Field(
        default_factory=dict,
        description='queue → age-of-oldest-message limit ("5m"; a plain number is seconds), held in seconds',
    )
    deadline_margin: Duration = Field(default=120.0, description="a deployment still running this long after "
                                      "its strategy's total hold time is rolled back")
    alarm_window: Duration = Field(default=60.0, description="the window the alarms and judges look at")
    # canary analysis (docs/canary-analysis.md): sequential judges decide; thresholds are guardrails
    error_judge: bool = Field(default=True, description="sequential test: does the canary fail more often than "
                              "the stable version (Lambda errors per function, the API's other 5xx)")
    latency_judge: bool = Field(default=True, description="sequential test: is the canary's slowest request of "
                                "each second slower than the stable version's")
    judge_alpha: float = Field(default=0.01, gt=0, lt=1, description="bound on the probability that the judges "
                               "roll back a canary no worse than the stable version, per deployment")
    judge_settle: Duration = Field(default=1.0, description="a second is judged once it ended this long ago "
                                   "(its counts no longer change)")
    latency_tolerance: float = Field(default=0.25, ge=0, description="a canary's request counts as slower when "
                                     "it is this much (fraction) slower than the stable version's")
    latency_min_delta: Duration = Field(default=0.025, description="…and at least this much slower (seconds)")
    confirm_with_judge: bool | None = Field(default=None, description="an alarm rolls back only once its judge "
                                            "agrees (ceilings excepted); default: true in prod and production")
    error_rate_ceiling: float = Field(default=50.0, gt=0, le=100, description="percent: a canary error or 5xx "
                                      "rate above it rolls back at once, confirmed or not")
    preflight_window: Duration = Field(default=900.0, description="how far back `deploy` measures the stable "
                                       "version's own rates to predict false alarms")
    notify: list[NotifySpec] = Field(
        default_factory=list, description='apprise URLs (`["slack://…", "json://…"]`) or tables {url, min_severity}'
    )
    contacts: dict[str, ContactSpec] = Field(
        default_factory=dict, description="role → contact for this environment, over the top-level [contacts]"
    )
    environment: dict[str, str] = Field(default_factory=dict, description="extra environment variables of every "
                                        "function in this environment")
    alarms: dict[str, AlarmSpec] = Field(default_factory=dict, description="name → an alarm on any metric "
                                         "(`[environments.NAME.alarms.NAME]`), beside the procedure's own")

    @field_validator("notify", mode="before")
    @classmethod
    def _urls(cls, v: object) -> object:
        return [{"url": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("api_5xx_period", "rollback_window", "deadline_margin", "alarm_window", "judge_settle",
                     "latency_min_delta", "preflight_window", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _platform(self) -> EnvironmentSpec:
        if self.platform == "aws" and self.aws is None:
            raise ValueError("platform = \"aws\" needs an \"aws\" table (region, and stack or explicit names)")
        if self.platform == "local":
            if self.aws is not None:
                raise ValueError("an \"aws\" table needs platform = \"aws\"")
            if self.gateway_port is None:
                raise ValueError("gateway_port: required on the local platform")
        return self


class Manifest(_Model):
    """`backout.toml`: one service, its functions, queues, environments, strategies, smoke tests and hooks."""

    service: ServiceSpec = Field(description="`[service]`")
    functions: dict[str, FunctionSpec] = Field(min_length=1, description="`[functions.NAME]`, at least one")
    queues: dict[str, QueueSpec] = Field(default_factory=dict, description="`[queues.NAME]`")
    environments: dict[str, EnvironmentSpec] = Field(min_length=1, description="`[environments.NAME]`, at least one")
    strategies: dict[str, StrategySpec] = Field(default_factory=dict, description="`[strategies.NAME]`")
    smoke: list[SmokeSpec] = Field(default_factory=list, description="`[[smoke]]` tests")
    hooks: HooksSpec = Field(default_factory=HooksSpec, description="`[hooks]`")
    emulator: EmulatorSpec | None = Field(default=None, description="`[emulator]`")
    contacts: dict[str, ContactSpec] = Field(
        default_factory=dict, description="role → who to reach in an incident (the procedure's emergency contacts)"
    )
    path: Path = Field(default=Path("backout.toml"), exclude=True, description="where the manifest was read from")

    @model_validator(mode="after")
    def _references(self) -> Manifest:
        for qname, q in self.queues.items():
            if q.dead_letter_queue is not None:
                if q.dead_letter_queue not in self.queues:
                    raise ValueError(
                        f"queues.{qname}.dead_letter_queue: no queue named {q.dead_letter_queue!r}"
                    )
                if q.max_receive_count is None:
                    raise ValueError(f"queues.{qname}.max_receive_count: required with a dead_letter_queue")
        if self.service.repair_function and self.service.repair_function not in self.functions:
            raise ValueError(f"service.repair_function: no function named {self.service.repair_function!r}")
        for ename, e in self.environments.items():
            if e.aws is not None:
                _check_aws(self, f"environments.{ename}.aws", e.aws)
            for fname in e.duration_p99_limits:
                if fname not in self.functions:
                    raise ValueError(f"environments.{ename}.duration_p99_limits: no function named {fname!r}")
            for qname in e.queue_age_limits:
                if qname not in self.queues:
                    raise ValueError(f"environments.{ename}.queue_age_limits: no queue named {qname!r}")
            for aname, a in e.alarms.items():
                _check_alarm(self, f"environments.{ename}.alarms.{aname}", aname, a)
        for ename, e in self.environments.items():
            judged = e.error_judge or e.latency_judge
            if e.confirm_with_judge is None:  # prod asks the judges; staging drills keep the immediate thresholds
                e.confirm_with_judge = judged and ename in CONFIRMING_ENVIRONMENTS
            elif e.confirm_with_judge and not judged:
                raise ValueError(f"environments.{ename}.confirm_with_judge: needs error_judge or latency_judge")
        for phase in ("pre_traffic", "post_traffic"):
            for i, h in enumerate(getattr(self.hooks, phase)):
                if h.function is not None and h.function not in self.functions:
                    raise ValueError(f"hooks.{phase}[{i}].function: no function named {h.function!r}")
        routes: dict[tuple[str, str], str] = {}
        for fname, f in self.functions.items():
            if isinstance(f.test_event, str) and not f.test_event.endswith(".json"):
                raise ValueError(f"functions.{fname}.test_event: a table, or the path of a .json file")
            for e in f.queue_events:
                if e.queue not in self.queues:
                    raise ValueError(f"functions.{fname}.events: no queue named {e.queue!r}")
                if f.timeout > self.queues[e.queue].visibility_timeout:  # AWS refuses this mapping too
                    raise ValueError(
                        f"functions.{fname}.timeout: {f.timeout:g} s is longer than queues.{e.queue}."
                        f"visibility_timeout ({self.queues[e.queue].visibility_timeout:g} s): a message would "
                        "be received again while it is still being processed"
                    )
            for h in f.http_events:
                key = (h.method, re.sub(r"\{[^}]+\}", "{}", h.path))
                if key in routes:
                    raise ValueError(
                        f"functions.{fname}.events: route {h.http!r} already served by {routes[key]}"
                    )
                routes[key] = fname
        return self

    @property
    def root(self) -> Path:
        return self.path.resolve().parent

    @property
    def source_dir(self) -> Path:
        return (self.root / self.service.source).resolve()

    def environment(self, name: str) -> EnvironmentSpec:
        if name not in self.environments:
            known = ", ".join(sorted(self.environments))
            raise UsageError(f"{self.path}: no environment named {name!r} (known: {known})")
        return self.environments[name]

    def contacts_for(self, env: str) -> dict[str, ContactSpec]:
        """The contacts of `env`: the top-level [contacts], each role overridden by the environment's."""
        return {**self.contacts, **self.environment(env).contacts}

    def contact_lines(self, env: str) -> list[str]:
        return [c.line(role) for role, c in self.contacts_for(env).items()]

    def duration_p99_limits(self, env: str) -> dict[str, float]:
        """function → p99 duration limit in seconds: the function's own, overridden by the environment's."""
        own = {n: f.duration_p99_limit for n, f in self.functions.items() if f.duration_p99_limit is not None}
        return {**own, **self.environment(env).duration_p99_limits}

    def test_event(self, fn: str) -> dict[str, Any] | None:
        """The function's declared test event (read from its file when it names one); None when undeclared."""
        ev = self.functions[fn].test_event
        if not isinstance(ev, str):
            return ev
        p = self.root / ev
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ManifestError(f"{self.path}: functions.{fn}.test_event: cannot read {p}: {e}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{self.path}: functions.{fn}.test_event: {p} holds no JSON object")
        return data

    def state_dir(self, env: str) -> Path:
        spec = self.environment(env)
        return (self.root / (spec.state_dir or f".backout/{env}")).resolve()


def _check_aws(m: Manifest, where: str, aws: AwsSpec) -> None:
    """Explicit AWS names must cover what backout drives: every deployable function, every queue, and
    the API when a function has HTTP events (a stack's outputs are checked when they are read)."""
    for fname in aws.functions:
        if fname not in m.functions:
            raise ValueError(f"{where}.functions: no function named {fname!r}")
    for qname in aws.queues:
        if qname not in m.queues:
            raise ValueError(f"{where}.queues: no queue named {qname!r}")
    if aws.stack is not None:
        return
    missing = [f for f, spec in m.functions.items() if spec.deploy and f not in aws.functions]
    if missing:
        raise ValueError(f"{where}.functions: no Lambda function named for {', '.join(missing)}")
    missing = [q for q in m.queues if q not in aws.queues]
    if missing:
        raise ValueError(f"{where}.queues: no queue URL named for {', '.join(missing)}")
    if aws.api_id is None and any(f.http_events for f in m.functions.values()):
        raise ValueError(f"{where}: api_id and stage are required (functions have HTTP events)")


def _check_alarm(m: Manifest, where: str, name: str, a: AlarmSpec) -> None:
    """An alarm's name cannot shadow one of the procedure's rules; its function exists; placeholders are known."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", name) or name in RESERVED_ALARM_NAMES:
        raise ValueError(f"{where}: name it with letters, digits, - and _, other than "
                         f"{' and '.join(RESERVED_ALARM_NAMES)}")
    if a.function is not None and a.function not in m.functions:
        raise ValueError(f"{where}.function: no function named {a.function!r}")
    for k, v in a.dimensions.items():
        unknown = set(re.findall(r"\{[^}]*\}", v)) - set(ALARM_PLACEHOLDERS)
        if unknown:
            raise ValueError(f"{where}.dimensions.{k}: unknown placeholder {sorted(unknown)[0]} "
                             f"(known: {', '.join(ALARM_PLACEHOLDERS)})")


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in {"HttpEvent", "QueueEvent"} or "[" in str(p):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def load_manifest(path: str | Path = "backout.toml") -> Manifest:
    """Parse and validate a manifest; every failure is one `ManifestError` line."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ManifestError(
            f"{p}: manifest not found (pass --manifest or run from the service's directory)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{p}: not valid TOML: {e}") from None
    except IsADirectoryError:
        raise ManifestError(f"{p}: is a directory; pass the manifest file (backout.toml) itself") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{p}: not a text file (binary content); a manifest is TOML") from None
    except OSError as e:
        raise ManifestError(f"{p}: cannot read the manifest: {e.strerror or e}") from None
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{p}: {_loc(err['loc'])}: {msg}") from None
    m.path = p.resolve()
    return m
