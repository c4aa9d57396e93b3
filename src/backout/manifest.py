"""Load and validate `backout.toml`, the manifest that describes a service.

A bad manifest is a user error: `load_manifest` raises `ManifestError` whose
message is one line naming the file, the key path and the problem.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backout.errors import UsageError

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ManifestError(UsageError):
    """The manifest is missing or invalid (exit code 2)."""


def parse_duration(value: str | int | float) -> float:
    """Seconds from `90`, `"30s"`, `"5m"`, `"250ms"`, `"1h"`, `"4d"`."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m, 250ms)")
    return float(m.group(1)) * _UNITS[m.group(2)]


Duration = Annotated[float, Field(ge=0)]
CONFIRMING_ENVIRONMENTS = ("prod", "production")  # where confirm_with_judge defaults to true


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServiceSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    source: str = "."
    packages: list[str] = Field(default_factory=list, description="top-level entries of source to publish")
    repair_function: str | None = Field(
        default=None, description="the service's function that lists and repairs jobs (data-repair runbook)"
    )


class HttpEvent(_Model):
    http: str
    method: str = ""
    path: str = ""

    @model_validator(mode="after")
    def _split(self) -> HttpEvent:
        parts = self.http.split()
        if len(parts) != 2 or parts[0].upper() not in HTTP_METHODS or not parts[1].startswith("/"):
            raise ValueError(f"http event {self.http!r} must look like 'POST /path/{{param}}'")
        self.method, self.path = parts[0].upper(), parts[1]
        return self


class QueueEvent(_Model):
    queue: str
    batch_size: int = Field(default=10, ge=1, le=10000)
    enabled: bool = True
    retry_after: Duration | None = Field(
        default=None, description="seconds before a failed message is visible again (default: the queue's)"
    )

    @field_validator("retry_after", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return None if v is None else parse_duration(v)  # type: ignore[arg-type]


class FunctionSpec(_Model):
    handler: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    timeout: Duration = 30.0
    memory: int = Field(default=128, ge=64, le=10240)
    reserved_concurrency: int | None = Field(default=None, ge=0)
    environment: dict[str, str] = Field(default_factory=dict)
    events: list[HttpEvent | QueueEvent] = Field(default_factory=list)
    deploy: bool = True

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
    visibility_timeout: Duration = 30.0
    max_receive_count: int | None = Field(default=None, ge=1)
    dead_letter_queue: str | None = None
    retention: Duration = 4 * 86400.0
    delay: Duration = 0.0

    @field_validator("visibility_timeout", "retention", "delay", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]


class StepSpec(_Model):
    weight: float = Field(ge=0, le=100)
    hold: Duration = 0.0

    @field_validator("hold", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]


class StrategySpec(_Model):
    steps: list[StepSpec] = Field(min_length=1)


class NotifySpec(_Model):
    url: str
    min_severity: Literal["info", "warning", "critical"] = "info"


class SmokeSpec(_Model):
    pytest: str | None = None
    http: str | None = Field(default=None, description="'GET /health' checked through the gateway")
    expect_status: int = 200

    @model_validator(mode="after")
    def _one(self) -> SmokeSpec:
        if (self.pytest is None) == (self.http is None):
            raise ValueError("a smoke test has exactly one of 'pytest' or 'http'")
        return self


class HookSpec(_Model):
    """A pre- or post-traffic check. Exactly one kind: a built-in check set, a function of the
    service (returns "Succeeded"/"Failed" like a CodeDeploy hook), a shell command, an HTTP GET."""

    builtin: Literal["checks", "smoke"] | None = None
    function: str | None = None
    command: str | None = None
    http: str | None = Field(default=None, description="'GET /path' through the gateway, or a full URL")
    timeout: Duration = 60.0
    name: str = ""

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
    pre_traffic: list[HookSpec] = Field(default_factory=_default_pre)
    post_traffic: list[HookSpec] = Field(default_factory=_default_post)


class EnvironmentSpec(_Model):
    gateway_port: int = Field(ge=0, le=65535)
    control_port: int = Field(ge=0, le=65535)
    state_dir: str | None = None
    host: str = "127.0.0.1"
    platform: Literal["local", "aws"] = "local"
    max_body: int = Field(default=110 * 1024 * 1024, ge=1, description="gateway body limit, bytes")
    throttle_rate: float = Field(default=10000.0, ge=0)
    throttle_burst: int = Field(default=5000, ge=0)
    strategy: str = "Canary10Percent5Minutes"
    require_approval: bool = False
    error_rate_threshold: float = Field(default=10.0, ge=0, le=100, description="percent")
    min_invocations: int = Field(default=20, ge=1)
    api_5xx_threshold: int = Field(default=5, ge=0)
    api_5xx_period: Duration = 300.0
    rollback_window: Duration = 900.0
    duration_p99_limits: dict[str, float] = Field(
        default_factory=dict, description="function → p99 duration limit of the new version, ms"
    )
    queue_age_limits: dict[str, float] = Field(
        default_factory=dict, description="queue → age-of-oldest-message limit, seconds"
    )
    deadline_margin: Duration = 120.0
    alarm_window: Duration = 60.0
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
    notify: list[NotifySpec] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict, description="extra function env vars")

    @field_validator("api_5xx_period", "rollback_window", "deadline_margin", "alarm_window", "judge_settle",
                     "latency_min_delta", "preflight_window", mode="before")
    @classmethod
    def _dur(cls, v: object) -> object:
        return parse_duration(v)  # type: ignore[arg-type]


class Manifest(_Model):
    service: ServiceSpec
    functions: dict[str, FunctionSpec] = Field(min_length=1)
    queues: dict[str, QueueSpec] = Field(default_factory=dict)
    environments: dict[str, EnvironmentSpec] = Field(min_length=1)
    strategies: dict[str, StrategySpec] = Field(default_factory=dict)
    smoke: list[SmokeSpec] = Field(default_factory=list)
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    path: Path = Field(default=Path("backout.toml"), exclude=True)

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
            for fname in e.duration_p99_limits:
                if fname not in self.functions:
                    raise ValueError(f"environments.{ename}.duration_p99_limits: no function named {fname!r}")
            for qname in e.queue_age_limits:
                if qname not in self.queues:
                    raise ValueError(f"environments.{ename}.queue_age_limits: no queue named {qname!r}")
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
            for e in f.queue_events:
                if e.queue not in self.queues:
                    raise ValueError(f"functions.{fname}.events: no queue named {e.queue!r}")
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

    def state_dir(self, env: str) -> Path:
        spec = self.environment(env)
        return (self.root / (spec.state_dir or f".backout/{env}")).resolve()


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
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{p}: {_loc(err['loc'])}: {msg}") from None
    m.path = p.resolve()
    return m
