"""FakePlatform: every `Platform` method (and `Capacity`) in memory, with a deterministic clock.

Not a mock: it keeps real state and applies the same rules as the platforms it stands in for, so
the control plane's unit tests exercise the code paths a real deployment takes, in milliseconds.

- Releases: each function has its own version counter (by default the i-th function starts at
  `1 + 10 * i`, so `worker` is at 11 while `api` is at 1) and a function whose code and
  configuration (handler, timeout, memory, environment) did not change keeps its version, as
  Lambda's `publish_version` does; each release reports its functions' configuration. Code that
  assumes one number for every function, or that a version number is the release id, fails here.
- Routing: the live alias per function, validated as the local platform validates it; invocations
  through the alias are split by weight deterministically (smooth weighted round robin: 10 % is
  exactly every tenth invocation).
- Invoke: a programmable handler per (function, version) — `healthy`, `raising`, `slow`,
  `status`, `hook_answer` — or the fake service's own behaviour (`Call.default`), plus the drill
  faults a release's `BACKOUT_FAULT` asks for. Every invocation records CloudWatch's Lambda metrics;
  every request through the gateway (`request`, or the real HTTP `endpoint()`) records API Gateway's.
- Metrics: batched queries, epoch-aligned buckets over [start, end), at most `MAX_QUERIES` per
  call; `metrics_calls` and `metric_queries` count them.
- Queues with event source mappings (`pump()` delivers, retries after `retry_after`, moves a
  message to its DLQ on the receive after `max_receive_count` failures and records
  `Backout/DeadLetterArrivals` for the queue and for the version that received it last), redrive
  tasks, data tables with backups, side restores and a full restore, an API throttle, the
  processing switch, warm instances.
- Failure injection: `fail_next(method, exc)` makes one platform call raise before it applies
  anything (a `Killed` exception stands for the process dying at that instant).

The store stamps its records with the wall clock, so `FakeClock()` starts at the wall clock's
current second and then moves only when a test advances it.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from backout.control.notify import Notification, Notifier
from backout.control.probes import is_probe
from backout.control.store import Store
from backout.errors import UsageError
from backout.manifest import Manifest, load_manifest
from backout.platforms.base import (
    DLQ_ARRIVALS,
    LIVE_ALIAS,
    MAX_QUERIES,
    NS_API,
    NS_BACKOUT,
    NS_LAMBDA,
    NS_SQS,
    AliasWeights,
    Backup,
    CheckResult,
    Datapoint,
    FunctionConfig,
    InvokeResult,
    MetricQuery,
    QueueAttributes,
    QueueMessage,
    RedriveTask,
    Release,
    Throttle,
    configuration_of,
)
from backout.platforms.local.metrics import MetricStore


class Killed(BaseException):  # noqa: N818 - it is what happened, not an error to handle
    """The process died at this instant: not an `Exception`, so no `except Exception` in the code
    under test can turn it into a rollback (a SIGKILL gives the code no chance either)."""


# --- the clock -------------------------------------------------------------------------------------
class FakeClock:
    """Time that moves only when a test says so. Pass `clock.now` (or the clock itself) as the
    Deployer's `clock`; the FakePlatform stamps every metric with it."""

    def __init__(self, start: float | None = None) -> None:
        self._now = float(int(time.time())) if start is None else float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go back")
        with self._lock:
            self._now += seconds
            return self._now


# --- handlers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A handler's answer with the duration the invocation is reported to have taken."""

    payload: Any
    duration_ms: float = 5.0


@dataclass(frozen=True)
class Call:
    """One invocation as a handler sees it."""

    function: str
    version: str
    event: Any
    platform: FakePlatform

    @property
    def is_test(self) -> bool:
        """backout's own probe (marked, or `{"test": true}`): drill faults and `raising(...)` let it pass."""
        return is_probe(self.event)

    @property
    def is_http(self) -> bool:
        return isinstance(self.event, dict) and "httpMethod" in self.event

    @property
    def is_queue(self) -> bool:
        recs = self.event.get("Records") if isinstance(self.event, dict) else None
        return isinstance(recs, list) and any(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in recs)

    def default(self) -> Any:
        """What the fake service does: answer HTTP, process jobs, list and repair jobs."""
        return self.platform._service(self)


Handler = Callable[[Call], Any]  # returns a payload or a Reply; raising is the function's error


class FunctionError(Exception):
    """What a handler raises to fail an invocation with a given Lambda error type."""

    def __init__(self, message: str, error_type: str = "RuntimeError") -> None:
        super().__init__(message)
        self.error_type = error_type


def healthy(ms: float = 5.0) -> Handler:
    """The service's normal behaviour, reported as taking `ms`."""
    return lambda c: Reply(c.default(), ms)


def slow(ms: float) -> Handler:
    """Healthy, but every invocation takes `ms` (the latency judge's subject)."""
    return healthy(ms)


def raising(message: str = "injected failure", test_events: bool = False, ms: float = 5.0) -> Handler:
    """Every invocation fails; backout's `{"test": true}` probe passes unless `test_events`."""

    def handler(c: Call) -> Any:
        if c.is_test and not test_events:
            return Reply(c.default(), ms)
        raise FunctionError(message)

    return handler


def failing(p: float, message: str = "background failure") -> Handler:
    """A fraction `p` of the invocations fails, evenly (every 1/p-th); backout's probes pass."""
    acc = [0.0]

    def handler(c: Call) -> Any:
        acc[0] += p
        if acc[0] >= 1.0 - 1e-9 and not c.is_test:
            acc[0] -= 1.0
            raise FunctionError(message)
        return c.default()

    return handler


def corrupting(c: Call) -> Any:
    """A worker version that answers fine and finishes its jobs with garbage (data corruption)."""
    out = c.default()
    if c.is_queue and not c.is_test:  # backout's own probe carries no job
        for rec in c.event["Records"]:
            c.platform.tables["jobs"][json.loads(rec["body"])["job"]]["status"] = "garbage"
    return out


def status(code: int, body: Any = None, probes: bool = True) -> Handler:
    """HTTP requests answer `code` (the function itself succeeds); other events behave normally, and so
    do backout's own probes unless `probes`."""

    def handler(c: Call) -> Any:
        if not c.is_http or (c.is_test and not probes):
            return Reply(c.default())
        return Reply({"statusCode": code, "headers": {"Content-Type": "application/json"},
                      "body": json.dumps(body if body is not None else {"status": code})})

    return handler


def hook_answer(answer: str) -> Handler:
    """A CodeDeploy-style lifecycle hook function answering "Succeeded" or "Failed"."""
    return lambda c: Reply({"status": answer, "deployment": (c.event or {}).get("DeploymentId")})


# --- records -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    function: str
    version: str
    event: Any
    ok: bool
    ts: float
    via_alias: bool


@dataclass
class _FunctionVersion:
    version: str
    digest: str  # of code and configuration: publishing the same again keeps the version
    code: str  # digest of the code alone (republish shares it)
    environment: dict[str, str]
    config: FunctionConfig | None = None


@dataclass
class _Message:
    id: str
    body: str
    sent_at: float
    visible_at: float
    receive_count: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    receiver: str | None = None  # the version that received it last


@dataclass
class _Queue:
    name: str
    dead_letter_queue: str | None
    max_receive_count: int | None
    visibility_timeout: float
    messages: list[_Message] = field(default_factory=list)
    redrives: list[RedriveTask] = field(default_factory=list)


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    path: str
    function: str


# --- the platform --------------------------------------------------------------------------------------
class FakePlatform:
    """The Platform protocols (and Capacity) in memory, for one environment of one service."""

    # The local platform's promise (one snapshot per metrics call, an invocation's samples together) holds
    # here too, but is off by default so that the judges decide on closed seconds, as the tests expect;
    # a test sets it to let the errors judges read the second still filling.
    consistent_metrics = False

    def __init__(
        self,
        manifest: Manifest,
        env: str = "staging",
        clock: FakeClock | None = None,
        first_versions: dict[str, int] | None = None,
        tables: Sequence[str] = ("jobs",),
    ) -> None:
        self.manifest = manifest
        self.env = env
        self.spec = manifest.environment(env)
        self.clock = clock or FakeClock()
        self._lock = threading.RLock()
        names = list(manifest.functions)
        starts = first_versions or {}
        self._next = {fn: starts.get(fn, 1 + 10 * i) for i, fn in enumerate(names)}
        self._versions: dict[str, dict[str, _FunctionVersion]] = {fn: {} for fn in names}
        self._releases: list[Release] = []
        self._aliases: dict[str, AliasWeights] = {}
        self._acc: dict[str, float] = {}  # weighted round robin state per alias
        self._fault_acc: dict[tuple[str, str], float] = {}
        self.handlers: dict[tuple[str, str | None], Handler] = {}
        self.init_errors: dict[tuple[str, str], str] = {}
        self.throttle_next: dict[str, int] = {}  # function → how many coming invocations are throttled
        self.warm: dict[tuple[str, str], int] = {}
        self.invocations: list[Invocation] = []
        self.calls: list[str] = []  # every mutating platform call, in order ("set_weights worker 12 13 50")
        self._fail: dict[str, list[BaseException]] = {}
        # the local platform's own metric store (in memory): the fake stamps samples with its clock
        self._metric_store = MetricStore()
        self.metrics_calls = 0
        self.metric_queries = 0
        self._ts_override: float | None = None
        self._throttle = Throttle(self.spec.throttle_rate, self.spec.throttle_burst)
        self._processing = True
        self._queues = {
            n: _Queue(n, q.dead_letter_queue, q.max_receive_count, q.visibility_timeout)
            for n, q in manifest.queues.items()
        }
        self.tables: dict[str, dict[str, Any]] = {t: {} for t in tables}
        self.broken_tables: dict[str, str] = {}
        self._backups: dict[str, tuple[Backup, dict[str, dict[str, Any]]]] = {}
        self.side: dict[str, dict[str, dict[str, Any]]] = {}
        self._routes = [
            _Route(h.method, re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(h.path)) + "$"), h.path, fn)
            for fn, f in manifest.functions.items()
            for h in f.http_events
        ]
        self._server: http.server.ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        # bootstrap: the manifest's source is release 1; functions outside deployments get one version too
        first = self.publish(manifest.source_dir, description="initial version")
        for fn in names:
            if fn not in first.versions:
                self._versions[fn][str(self._next[fn])] = _FunctionVersion(str(self._next[fn]), "", "", {})
                self._next[fn] += 1
            self._aliases[fn] = AliasWeights(fn, first.versions.get(fn) or next(iter(self._versions[fn])))

    # --- test controls ---------------------------------------------------------------------------
    def handle(self, fn: str, handler: Handler, version: str | None = None) -> None:
        """Program `fn`'s behaviour: one version's, or (version None) every version's without its own."""
        self._known(fn)
        self.handlers[(fn, version)] = handler

    def fail_next(self, method: str, exc: BaseException | None = None, times: int = 1) -> None:
        """The next `times` calls of `method` raise `exc` (default RuntimeError) before applying anything."""
        self._fail.setdefault(method, []).extend([exc or RuntimeError(f"{method} failed (injected)")] * times)

    def break_table(self, table: str, error: str = "ResourceNotFoundException: table not found") -> None:
        self.broken_tables[table] = error

    @contextmanager
    def at(self, ts: float) -> Iterator[None]:
        """Record every metric inside the block at `ts` instead of the clock's now."""
        with self._lock:
            old, self._ts_override = self._ts_override, ts
        try:
            yield
        finally:
            with self._lock:
                self._ts_override = old

    def traffic(self, fn: str, n: int, at: float | None = None, event: Any = None) -> list[InvokeResult]:
        """`n` invocations of `fn` through its live alias: GET requests through the gateway for an
        HTTP function (recording API metrics too), direct alias invocations otherwise."""
        routes = [r for r in self._routes if r.function == fn]
        get = next((r for r in routes if r.method == "GET" and "{" in r.path), None) or next(
            (r for r in routes if r.method == "GET"), None)
        out: list[InvokeResult] = []
        with self.at(self.clock.now() if at is None else at):
            for i in range(n):
                if get is not None and event is None:
                    path = re.sub(r"\{[^}]+\}", f"t{i}", get.path)
                    _, _, res = self.request("GET", path)
                    if res is not None:
                        out.append(res)
                else:
                    out.append(self.invoke(fn, None, event if event is not None else {"traffic": i}))
        return out

    def record(self, namespace: str, metric: str, dimensions: dict[str, str], value: float,
               ts: float | None = None) -> None:
        """One datapoint sample (what PutMetricData / an EMF line would add)."""
        with self._lock:
            t = ts if ts is not None else (self._ts_override if self._ts_override is not None else self.clock.now())
            self._metric_store.record(namespace, metric, dimensions, value, ts=t)

    def release_of(self, versions: dict[str, str]) -> Release | None:
        return next((r for r in self._releases if r.versions == versions), None)

    def live_versions(self) -> dict[str, dict[str, float]]:
        """Every deployed function's alias as {version: percent}."""
        return {fn: self.get_weights(fn).versions for fn in self.functions()}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _maybe_fail(self, method: str) -> None:
        with self._lock:
            pending = self._fail.get(method)
            exc = pending.pop(0) if pending else None
        if exc is not None:
            raise exc

    def _known(self, fn: str) -> None:
        if fn not in self.manifest.functions:
            raise UsageError(f"no function named {fn!r} (known: {', '.join(self.manifest.functions)})")

    def _version(self, fn: str, version: str) -> _FunctionVersion:
        self._known(fn)
        v = self._versions[fn].get(str(version))
        if v is None:
            raise UsageError(f"{fn}: unknown version {version!r} (published: {', '.join(self._versions[fn])})")
        return v

    def _now(self) -> float:
        return self._ts_override if self._ts_override is not None else self.clock.now()

    # --- releases ----------------------------------------------------------------------------------
    def functions(self) -> list[str]:
        return [n for n, f in self.manifest.functions.items() if f.deploy]

    def publish(self, source: Path, environment: dict[str, str] | None = None, description: str = "",
                configuration: dict[str, FunctionConfig] | None = None) -> Release:
        """Each function's code is its handler's module file under `source`; its configuration
        `configuration`'s or the manifest's, with `environment` over its variables. Unchanged → same version."""
        self._maybe_fail("publish")
        source = Path(source)
        if not source.is_dir():
            raise UsageError(f"source {source} is not a directory")
        code = {}
        for fn in self.functions():
            module = self.manifest.functions[fn].handler.rsplit(".", 1)[0]
            f = source / (module.replace(".", "/") + ".py")
            code[fn] = hashlib.sha256(f.read_bytes() if f.exists() else b"").hexdigest()
        config = {**configuration_of(self.manifest, self.env), **(configuration or {})}
        return self._publish(code, dict(environment or {}), description, config)

    def republish(self, release_id: int, environment: dict[str, str], description: str = "") -> Release:
        self._maybe_fail("republish")
        base = self._release(release_id)
        code = {fn: self._versions[fn][v].code for fn, v in base.versions.items()}
        return self._publish(code, {**base.environment, **environment}, description, base.configuration)

    def _publish(self, code: dict[str, str], environment: dict[str, str], description: str,
                 config: dict[str, FunctionConfig]) -> Release:
        with self._lock:
            versions: dict[str, str] = {}
            for fn, c in code.items():
                cfg = config[fn]
                env = {**cfg.environment, **environment}
                blob = json.dumps([c, env, cfg.handler, cfg.timeout, cfg.memory], sort_keys=True)
                digest = hashlib.sha256(blob.encode()).hexdigest()
                latest = next(reversed(self._versions[fn].values()), None)
                if latest is not None and latest.digest == digest:
                    versions[fn] = latest.version
                    continue
                v = str(self._next[fn])
                self._next[fn] += 1
                self._versions[fn][v] = _FunctionVersion(v, digest, c, env, cfg)
                versions[fn] = v
            same = self.release_of(versions)
            if same is not None:
                return same
            digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
            configs = {fn: self._versions[fn][v].config or config[fn] for fn, v in versions.items()}
            r = Release(len(self._releases) + 1, versions, digest, self.clock.now(), description, environment,
                        configs)
            self._releases.append(r)
            self.calls.append(f"publish r{r.id}")
            return r

    def releases(self) -> list[Release]:
        with self._lock:
            return list(self._releases)

    def _release(self, release_id: int) -> Release:
        for r in self._releases:
            if r.id == release_id:
                return r
        raise UsageError(f"unknown release {release_id}")

    # --- routing -------------------------------------------------------------------------------------
    def get_weights(self, fn: str) -> AliasWeights:
        self._known(fn)
        with self._lock:
            return self._aliases[fn]

    def set_weights(self, fn: str, stable: str, canary: str | None = None, pct: float = 0.0) -> None:
        self._known(fn)
        self._version(fn, stable)
        if canary is not None:
            self._version(fn, canary)
        pct = float(pct)
        if not 0.0 <= pct <= 100.0:
            raise UsageError(f"{fn}: canary weight must be between 0 and 100 percent, not {pct:g}")
        if canary is None and pct > 0:
            raise UsageError(f"{fn}: a canary weight of {pct:g}% needs a canary version")
        self._maybe_fail("set_weights")
        w = AliasWeights(fn, str(stable)) if canary is None or canary == stable else AliasWeights(
            fn, str(stable), str(canary), pct)
        with self._lock:
            self._aliases[fn] = w
            self.calls.append(f"set_weights {fn} {stable} {canary} {pct:g}")

    def _pick(self, fn: str) -> str:
        """Smooth weighted round robin: exactly `canary_weight` percent of invocations, spread evenly."""
        w = self._aliases[fn]
        if w.canary is None or w.canary_weight <= 0:
            return w.stable
        acc = self._acc.get(fn, 0.0) + w.canary_weight
        if acc >= 100.0:
            self._acc[fn] = acc - 100.0
            return w.canary
        self._acc[fn] = acc
        return w.stable

    # --- invoke --------------------------------------------------------------------------------------
    def invoke(self, fn: str, version: str | None, event: dict[str, Any]) -> InvokeResult:
        self._maybe_fail("invoke")
        self._known(fn)
        with self._lock:
            via_alias = version is None
            v = self._pick(fn) if via_alias else self._version(fn, str(version)).version
            ts = self._now()
        rid = uuid.uuid4().hex
        spec = self.manifest.functions[fn]
        with self._lock:
            busy = self.throttle_next.get(fn, 0)
            if busy:
                self.throttle_next[fn] = busy - 1
        if spec.reserved_concurrency == 0 or busy:
            self._record_lambda(fn, v, via_alias, ts, throttled=True)
            return InvokeResult(fn, v, rid, {"errorType": "TooManyRequestsException",
                                             "errorMessage": "Rate Exceeded."}, None, 0.0, throttled=True)
        call = Call(fn, v, event, self)
        error: str | None = None
        try:
            extra_ms = self._faults(call)
            handler = self.handlers.get((fn, v)) or self.handlers.get((fn, None)) or healthy()
            out = handler(call)
            reply = out if isinstance(out, Reply) else Reply(out)
            payload, duration = reply.payload, reply.duration_ms + extra_ms
        except FunctionError as e:
            error, duration = "Unhandled", 5.0
            payload = {"errorType": e.error_type, "errorMessage": str(e), "stackTrace": []}
        except Exception as e:  # noqa: BLE001 - a handler's bug is the function's error, as on Lambda
            error, duration = "Unhandled", 5.0
            payload = {"errorType": type(e).__name__, "errorMessage": str(e), "stackTrace": []}
        self._record_lambda(fn, v, via_alias, ts, error=error is not None, duration=duration)
        with self._lock:
            self.invocations.append(Invocation(fn, v, event, error is None, ts, via_alias))
        return InvokeResult(fn, v, rid, payload, error, duration)

    def _faults(self, call: Call) -> float:
        """BACKOUT_FAULT of the version's environment, as the local worker applies it (deterministic:
        `errors=0.5` fails exactly every second invocation). Returns the latency it adds, in ms."""
        spec = self._versions[call.function][call.version].environment.get("BACKOUT_FAULT", "")
        if not spec or call.is_test:
            return 0.0
        extra = 0.0
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, _, value = part.partition("=")
            if key == "latency":
                v = value.strip().lower()
                extra += float(v[:-2]) if v.endswith("ms") else float(v.rstrip("s")) * 1000.0
            elif key == "crash":
                raise FunctionError("Runtime exited with error: exit status 1", "Runtime.ExitError")
            elif key == "dlq" and call.is_queue:
                raise FunctionError("injected fault: queue message rejected (BACKOUT_FAULT=dlq)")
            elif key == "errors":
                k = (call.function, call.version)
                acc = self._fault_acc.get(k, 0.0) + (float(value) if value else 1.0)
                self._fault_acc[k] = acc - 1.0 if acc >= 1.0 - 1e-9 else acc
                if acc >= 1.0 - 1e-9:
                    raise FunctionError("injected fault")
        return extra

    def _record_lambda(self, fn: str, v: str, via_alias: bool, ts: float, *, throttled: bool = False,
                       error: bool = False, duration: float = 0.0) -> None:
        dimsets = [{"FunctionName": fn}, {"FunctionName": fn, "ExecutedVersion": v}]
        if via_alias:
            dimsets.append({"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}"})
            dimsets.append({"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}", "ExecutedVersion": v})
        values = [("Throttles", 1.0)] if throttled else [
            ("Invocations", 1.0), ("Errors", float(error)), ("Duration", duration)]
        values.append(("ConcurrentExecutions", 1.0))
        with self._lock:  # one invocation's samples together (consistent_metrics)
            for dims in dimsets:
                for metric, value in values:
                    self.record(NS_LAMBDA, metric, dims, value, ts)

    # --- the gateway ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, Any, InvokeResult | None]:
        """One request through the API stage: (status, body, the invocation if a function answered).
        Records Count/4XXError/5XXError/Latency under {ApiName, Stage} and {…, ExecutedVersion}."""
        method = method.upper()
        if self._throttle.rate == 0:
            return self._respond(429, {"message": "Too Many Requests"}, None)
        for r in self._routes:
            m = r.pattern.match(path.split("?", 1)[0])
            if m is None or r.method not in (method, "ANY"):
                continue
            params = dict(zip(re.findall(r"\{([^}]+)\}", r.path), m.groups(), strict=True))
            res = self.invoke(r.function, None, _proxy_event(method, path, r.path, params, body))
            if res.throttled:
                return self._respond(429, {"message": "Too Many Requests"}, None)
            if not res.ok:
                return self._respond(502, {"message": "Internal server error"}, res)
            p = res.payload if isinstance(res.payload, dict) else {}
            code = int(p.get("statusCode", 200))
            raw = p.get("body")
            try:
                parsed = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                parsed = raw
            return self._respond(code, parsed, res)
        known = [r for r in self._routes if r.pattern.match(path.split("?", 1)[0])]
        return self._respond(405 if known else 404, {"message": "Not Found" if not known else "Method Not Allowed"},
                             None)

    def _respond(self, code: int, body: Any, res: InvokeResult | None) -> tuple[int, Any, InvokeResult | None]:
        dims = {"ApiName": self.manifest.service.name, "Stage": self.env}
        version = res.version if res is not None else "0"
        for d in (dims, {**dims, "ExecutedVersion": version}):
            self.record(NS_API, "Count", d, 1.0)
            self.record(NS_API, "4XXError", d, float(400 <= code < 500))
            self.record(NS_API, "5XXError", d, float(code >= 500))
            self.record(NS_API, "Latency", d, res.duration_ms if res is not None else 1.0)
        return code, body, res

    # --- metrics ---------------------------------------------------------------------------------------
    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        self._maybe_fail("metrics")
        if len(queries) > MAX_QUERIES:
            raise UsageError(f"{len(queries)} metric queries in one call: GetMetricData takes at most {MAX_QUERIES}")
        for q in queries:  # CloudWatch's ValidationError: a dimension value is 1 to 1024 characters
            if any(not v for _, v in q.dimensions):
                raise ValueError(f"{q.metric}: an empty dimension value in {dict(q.dimensions)}")
        with self._lock:
            self.metrics_calls += 1
            self.metric_queries += len(queries)
            return [self._query(q) for q in queries]

    def _query(self, q: MetricQuery) -> list[Datapoint]:
        """GetMetricStatistics over [start, end), epoch-aligned periods (the local metric store's)."""
        return self._metric_store.query(q)

    # --- ingress -----------------------------------------------------------------------------------------
    def endpoint(self) -> str:
        """A real HTTP listener on 127.0.0.1 (started on first use) in front of `request`."""
        with self._lock:
            if self._server is None:
                fake = self

                class _H(http.server.BaseHTTPRequestHandler):
                    def _serve(self) -> None:
                        n = int(self.headers.get("content-length") or 0)
                        body = self.rfile.read(n).decode() if n else None
                        code, out, _ = fake.request(self.command, self.path, body)
                        data = json.dumps(out).encode()
                        self.send_response(code)
                        self.send_header("content-type", "application/json")
                        self.send_header("content-length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)

                    do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

                    def log_message(self, *args: Any) -> None:
                        pass

                self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _H)
                self._server.daemon_threads = True
                self._server_thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                                       daemon=True, name="fake-gateway")
                self._server_thread.start()
            return f"http://127.0.0.1:{self._server.server_address[1]}"

    def get_throttle(self) -> Throttle:
        """The stage throttle: rate 0 answers every request 429; any other rate admits them all (the
        fake keeps no token bucket)."""
        return self._throttle

    def set_throttle(self, rate: float, burst: int) -> None:
        if rate < 0 or burst < 0:
            raise UsageError("throttle rate and burst must be ≥ 0")
        self._maybe_fail("set_throttle")
        with self._lock:
            self._throttle = Throttle(float(rate), int(burst))
            self.calls.append(f"set_throttle {rate:g} {burst}")

    # --- processing ------------------------------------------------------------------------------------
    def get_processing(self) -> bool:
        return self._processing

    def set_processing(self, enabled: bool) -> None:
        self._maybe_fail("set_processing")
        with self._lock:
            self._processing = bool(enabled)
            self.calls.append(f"set_processing {bool(enabled)}")

    # --- queues ----------------------------------------------------------------------------------------
    def queues(self) -> list[str]:
        return list(self._queues)

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            raise UsageError(f"no queue named {name!r} (known: {', '.join(self._queues)})")
        return q

    def queue_attributes(self, queue: str) -> QueueAttributes:
        self._maybe_fail("queue_attributes")
        with self._lock:
            q = self._queue(queue)
            now = self.clock.now()
            visible = sum(1 for m in q.messages if m.visible_at <= now)
            return QueueAttributes(queue, visible, len(q.messages) - visible, 0, q.dead_letter_queue,
                                   q.max_receive_count if q.dead_letter_queue else None)

    def send_message(self, queue: str, body: str, attributes: dict[str, str] | None = None) -> str:
        self._maybe_fail("send_message")
        with self._lock:
            q = self._queue(queue)
            m = _Message(uuid.uuid4().hex, body, self.clock.now(), self.clock.now(), attributes=dict(attributes or {}))
            q.messages.append(m)
        self.record(NS_SQS, "NumberOfMessagesSent", {"QueueName": queue}, 1.0)
        return m.id

    def peek_messages(self, queue: str, limit: int = 10) -> list[QueueMessage]:
        with self._lock:
            now = self.clock.now()
            return [QueueMessage(m.id, m.body, dict(m.attributes), m.sent_at, m.visible_at <= now, m.receive_count)
                    for m in self._queue(queue).messages[:limit]]

    def purge_queue(self, queue: str) -> int:
        with self._lock:
            q = self._queue(queue)
            n, q.messages = len(q.messages), []
        return n

    def delete_tagged(self, queue: str, attribute: str, value: str) -> int:
        with self._lock:
            q = self._queue(queue)
            keep = [m for m in q.messages if m.attributes.get(attribute) != value]
            n, q.messages = len(q.messages) - len(keep), keep
        return n

    def pump(self, rounds: int = 1) -> int:
        """The event source mappings: while processing is on, deliver each consumed queue's visible
        messages (one batch per mapping per round) to its function's live alias. A failed message is
        visible again after `retry_after` (else the visibility timeout); one received
        `max_receive_count` times is moved to the DLQ when it would be received again. Returns the
        number of messages delivered."""
        delivered = 0
        for _ in range(rounds):
            for fn, f in self.manifest.functions.items():
                for ev in f.queue_events:
                    delivered += self._deliver(fn, ev.queue, ev.batch_size, ev.retry_after)
            self.sample_queues()
        return delivered

    def _deliver(self, fn: str, queue: str, batch_size: int, retry_after: float | None) -> int:
        if not self._processing:
            return 0
        with self._lock:
            q = self._queue(queue)
            now = self.clock.now()
            batch: list[_Message] = []
            for m in list(q.messages):
                if m.visible_at > now:
                    continue
                if q.dead_letter_queue and q.max_receive_count and m.receive_count >= q.max_receive_count:
                    q.messages.remove(m)
                    self._queues[q.dead_letter_queue].messages.append(
                        _Message(m.id, m.body, now, now, attributes=m.attributes))
                    self.record(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": q.dead_letter_queue}, 1.0)
                    if m.receiver is not None:
                        self.record(NS_BACKOUT, DLQ_ARRIVALS,
                                    {"QueueName": q.dead_letter_queue, "ExecutedVersion": m.receiver}, 1.0)
                    self.record(NS_BACKOUT, "MovedToDLQ", {"QueueName": queue}, 1.0)
                    continue
                if len(batch) < batch_size:
                    m.receive_count += 1
                    m.visible_at = now + q.visibility_timeout
                    batch.append(m)
        if not batch:
            return 0
        self.record(NS_SQS, "NumberOfMessagesReceived", {"QueueName": queue}, float(len(batch)))
        event = {"Records": [{"messageId": m.id, "body": m.body, "eventSource": "aws:sqs",
                              "eventSourceARN": f"arn:aws:sqs:local:000000000000:{queue}",
                              "attributes": {"ApproximateReceiveCount": str(m.receive_count)},
                              "messageAttributes": {k: {"stringValue": v, "dataType": "String"}
                                                    for k, v in m.attributes.items()}} for m in batch]}
        r = self.invoke(fn, None, event)
        with self._lock:
            for m in batch:  # the alias picked the version for the batch: it received the messages
                m.receiver = r.version
        if not r.ok:
            failed = {m.id for m in batch}
        elif isinstance(r.payload, dict):
            failed = {x.get("itemIdentifier") for x in r.payload.get("batchItemFailures", [])}
        else:
            failed = set()
        with self._lock:
            delay = retry_after if retry_after is not None else q.visibility_timeout
            for m in batch:
                if m.id in failed:
                    m.visible_at = self.clock.now() + delay
                elif m in q.messages:
                    q.messages.remove(m)
        deleted = len(batch) - len(failed)
        if deleted:
            self.record(NS_SQS, "NumberOfMessagesDeleted", {"QueueName": queue}, float(deleted))
        return len(batch)

    def sample_queues(self) -> None:
        """SQS's gauges at the clock's now (CloudWatch samples them once a minute; here on demand)."""
        now = self.clock.now()
        for name, q in self._queues.items():
            dims = {"QueueName": name}
            visible = [m for m in q.messages if m.visible_at <= now]
            self.record(NS_SQS, "ApproximateNumberOfMessagesVisible", dims, float(len(visible)), now)
            self.record(NS_SQS, "ApproximateNumberOfMessagesNotVisible", dims,
                        float(len(q.messages) - len(visible)), now)
            self.record(NS_SQS, "ApproximateAgeOfOldestMessage", dims,
                        max((now - m.sent_at for m in q.messages), default=0.0), now)

    def messages(self, queue: str) -> list[str]:
        """The bodies waiting in `queue` (beyond the protocol: for assertions)."""
        with self._lock:
            return [m.body for m in self._queue(queue).messages]

    def start_redrive(self, dlq: str) -> RedriveTask:
        self._maybe_fail("start_redrive")
        with self._lock:
            d = self._queue(dlq)
            sources = [q.name for q in self._queues.values() if q.dead_letter_queue == dlq]
            if not sources:
                raise UsageError(f"{dlq!r} is not the dead-letter queue of any queue")
            now = self.clock.now()
            moved = len(d.messages)
            self._queues[sources[0]].messages.extend(_Message(m.id, m.body, m.sent_at, now) for m in d.messages)
            d.messages.clear()
            task = RedriveTask(uuid.uuid4().hex, dlq, sources[0], "COMPLETED", moved, moved, now)
            d.redrives.insert(0, task)
            self.calls.append(f"start_redrive {dlq}")
            return task

    def redrive_status(self, dlq: str) -> list[RedriveTask]:
        with self._lock:
            return list(self._queue(dlq).redrives)

    # --- data ------------------------------------------------------------------------------------------
    def backup(self, label: str = "") -> Backup:
        self._maybe_fail("backup")
        with self._lock:
            bid = f"backup-{len(self._backups) + 1:04d}"
            b = Backup(bid, self.clock.now(), label, {"tables": {t: len(rows) for t, rows in self.tables.items()}})
            self._backups[bid] = (b, copy.deepcopy(self.tables))
            self.calls.append(f"backup {bid}")
            return b

    def backups(self) -> list[Backup]:
        with self._lock:
            return sorted((b for b, _ in self._backups.values()), key=lambda b: (b.created_at, b.id))

    def _backup_data(self, backup_id: str) -> dict[str, dict[str, Any]]:
        got = self._backups.get(backup_id)
        if got is None:
            raise UsageError(f"no backup {backup_id!r}")
        return got[1]

    def restore_to_side(self, backup_id: str) -> str:
        self._maybe_fail("restore_to_side")
        with self._lock:
            location = f"side/{backup_id}"
            self.side[location] = copy.deepcopy(self._backup_data(backup_id))
            return location

    def restore(self, backup_id: str) -> None:
        self._maybe_fail("restore")
        with self._lock:
            self.tables = copy.deepcopy(self._backup_data(backup_id))
            self.broken_tables.clear()
            self.calls.append(f"restore {backup_id}")

    def describe(self) -> list[CheckResult]:
        self._maybe_fail("describe")
        out = []
        for t in self.tables:
            err = self.broken_tables.get(t)
            out.append(CheckResult(f"table {t}", err is None, err or f"ACTIVE, {len(self.tables[t])} item(s)", 0.1))
        return out

    # --- capacity (optional protocol) -----------------------------------------------------------------------
    def prewarm(self, fn: str, version: str, count: int = 1) -> None:
        self._version(fn, version)
        self._maybe_fail("prewarm")
        err = self.init_errors.get((fn, str(version)))
        if err is not None:
            raise RuntimeError(f"Runtime.ImportModuleError: {err}")
        with self._lock:
            key = (fn, str(version))
            self.warm[key] = max(self.warm.get(key, 0), count)

    def is_warm(self, fn: str, version: str) -> bool:
        return self.warm.get((fn, str(version)), 0) > 0

    def retire(self, fn: str, version: str) -> None:
        with self._lock:
            self.warm.pop((fn, str(version)), None)

    # --- the fake service ------------------------------------------------------------------------------------
    def _service(self, c: Call) -> Any:
        """The behaviour of a healthy service: HTTP answers (GET /health → healthy), a queue consumer
        that marks each `{"job": id}` done (recording which version processed it), a repair function
        speaking the repair runbook's protocol, and `{"ok": true}` for anything else."""
        if c.is_http:
            path = c.event.get("path", "")
            body = {"status": "healthy", "version": c.version} if path.startswith("/health") else {"ok": True}
            return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
        if c.is_queue:
            for rec in c.event["Records"]:
                try:
                    msg = json.loads(rec["body"])
                except ValueError:
                    continue
                if isinstance(msg, dict) and "job" in msg:
                    with self._lock:
                        self.tables.setdefault("jobs", {})[str(msg["job"])] = {
                            "status": "done", "processed_by": {"function": c.function, "version": c.version}}
            return {"batchItemFailures": []}
        if isinstance(c.event, dict) and "DeploymentId" in c.event:  # a lifecycle hook function
            return {"status": "Succeeded"}
        if isinstance(c.event, dict) and "repair" in c.event:
            return self._repair(c.event)
        return {"ok": True, "function": c.function, "version": c.version}

    def _repair(self, event: dict[str, Any]) -> dict[str, Any]:
        jobs = self.tables.setdefault("jobs", {})
        kind = event["repair"]
        if kind == "affected":
            versions = event.get("versions") or {}
            hit = sorted(j for j, row in jobs.items()
                         if versions.get(row.get("processed_by", {}).get("function")) == row["processed_by"]["version"])
            return {"jobs": hit}
        if kind == "restore_jobs":
            side = self.side[event["snapshot"]].get("jobs", {})
            restored, reset, requeued = [], [], []
            with self._lock:
                for j in event["job_ids"]:
                    if j in side:
                        jobs[j] = copy.deepcopy(side[j])
                        restored.append(j)
                    else:
                        jobs[j] = {"status": "queued"}
                        reset.append(j)
            if event.get("requeue"):
                queue = next((e.queue for f in self.manifest.functions.values() for e in f.queue_events), None)
                for j in event["job_ids"]:
                    if queue is not None:
                        self.send_message(queue, json.dumps({"job": j}))
                        requeued.append(j)
            return {"restored": restored, "reset": reset, "requeued": requeued}
        if kind == "diff":
            side = self.side[event["snapshot"]].get("jobs", {})
            return {"only_current": len(set(jobs) - set(side)), "only_snapshot": len(set(side) - set(jobs))}
        raise FunctionError(f"unknown repair request {kind!r}", "ValueError")


def _proxy_event(method: str, path: str, resource: str, params: dict[str, str], body: str | None) -> dict[str, Any]:
    return {
        "resource": resource,
        "path": path.split("?", 1)[0],
        "httpMethod": method,
        "headers": {},
        "pathParameters": params or None,
        "queryStringParameters": None,
        "body": body,
        "isBase64Encoded": False,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "stage": "fake",
                           "requestId": uuid.uuid4().hex},
    }


# --- a notifier that remembers -------------------------------------------------------------------------------
class RecordingNotifier(Notifier):
    """A Notifier without targets that keeps every notification for assertions."""

    def __init__(self) -> None:
        super().__init__([])
        self.sent: list[Notification] = []

    def notify(self, n: Notification) -> int:
        self.sent.append(n)
        return 0

    def kinds(self) -> list[str]:
        return [n.kind for n in self.sent]


# --- a store that dies ------------------------------------------------------------------------------------------
_WRITERS = ("create_deployment", "transition", "update", "add_event", "record_alarm_evaluation", "open_incident",
            "record_snapshot", "set_switch", "record_drill", "close_incident", "add_incident_note")


def _describe_write(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """`transition InProgress step 0`, `update rollback_completed_at`, `add_event step_reached` …"""

    def arg(i: int, key: str) -> Any:
        return args[i] if len(args) > i else kwargs.get(key)

    if name == "transition":
        step = kwargs.get("current_step")
        return f"transition {arg(1, 'status')}" + ("" if step is None else f" step {step}")
    if name == "update":
        return "update " + ",".join(sorted(kwargs))
    if name == "add_event":
        return f"add_event {arg(0, 'kind')}"
    if name == "set_switch":
        return f"set_switch {arg(1, 'key')}"
    if name == "record_alarm_evaluation":
        return f"record_alarm_evaluation {arg(1, 'alarm')} {arg(2, 'state')}"
    return name


class CrashingStore(Store):
    """A Store that raises `Killed` right after the first committed write described as `crash_at`
    (see `_describe_write`): the process dies with that write durable and nothing after it done —
    the platform call that should follow never happens. `ops` lists every write, in order."""

    def __init__(self, path: str | Path, crash_at: str | None = None) -> None:
        self.crash_at = crash_at
        self.ops: list[str] = []
        self.crashed = False
        super().__init__(path)

    def _written(self, op: str) -> None:
        self.ops.append(op)
        if not self.crashed and op == self.crash_at:
            self.crashed = True
            raise Killed(f"killed after store write {op!r}")


def _crashing(name: str) -> Callable[..., Any]:
    def method(self: CrashingStore, *args: Any, **kwargs: Any) -> Any:
        result = getattr(Store, name)(self, *args, **kwargs)
        self._written(_describe_write(name, args, kwargs))
        return result

    method.__name__ = name
    return method


for _name in _WRITERS:
    setattr(CrashingStore, _name, _crashing(_name))


# --- the test service's manifest and source ---------------------------------------------------------------------------
MANIFEST = """
[service]
name = "svc"
source = "src"
repair_function = "repair"

[functions.api]
handler = "api.handler"
events = [{{ http = "GET /health" }}, {{ http = "GET /items/{{id}}" }}, {{ http = "POST /items" }}]

[functions.worker]
handler = "worker.handler"
timeout = "5s"
events = [{{ queue = "jobs", batch_size = 1, retry_after = "1s" }}]

[functions.repair]
handler = "repair.handler"

[functions.checker]
handler = "checker.handler"
deploy = false

[queues.jobs]
visibility_timeout = "5s"
max_receive_count = 2
dead_letter_queue = "jobs-dlq"
{jobs}

[queues.jobs-dlq]

[hooks]
pre_traffic = [{pre}]
post_traffic = [{post}]

[strategies.Fast]
steps = [{{ weight = 50, hold = "0s" }}, {{ weight = 100 }}]

[strategies.Hold]
steps = [{{ weight = 50, hold = "5s" }}, {{ weight = 100 }}]

[environments.staging]
gateway_port = 0
control_port = 0
strategy = "Fast"
error_rate_threshold = 10.0
min_invocations = 20
api_5xx_threshold = 3
api_5xx_period = "10s"
alarm_window = "10s"
deadline_margin = "5s"
rollback_window = "60s"
latency_judge = {judge}
{staging}

[environments.prod]
gateway_port = 0
control_port = 0
strategy = "Fast"
require_approval = true
min_invocations = 20
alarm_window = "10s"
deadline_margin = "5s"
latency_judge = false
"""

SOURCE = {
    "api.py": "def handler(event, context):\n    return {'statusCode': 200}\n",
    "worker.py": "def handler(event, context):\n    return {'batchItemFailures': []}\n",
    "repair.py": "def handler(event, context):\n    return {}\n",
    "checker.py": "def handler(event, context):\n    return {'status': 'Succeeded'}\n",
}


def write_manifest(
    root: Path,
    staging: str = "",
    pre: str = '{ builtin = "checks" }',
    post: str = '{ builtin = "checks" }',
    judge: bool = False,
    jobs: str = "",
) -> Manifest:
    """The test service in `root`: `backout.toml` (an HTTP function `api`, a queue consumer `worker`
    with a DLQ, a `repair` function, a hook function `checker` outside deployments) and `src/`."""
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name, text in SOURCE.items():
        (src / name).write_text(text)
    path = root / "backout.toml"
    path.write_text(MANIFEST.format(pre=pre, post=post, judge=str(judge).lower(), staging=staging, jobs=jobs))
    return load_manifest(path)


def new_source(root: Path, name: str, changed: Sequence[str], tag: str = "2") -> Path:
    """A copy of the service's source in `root/name` where only the functions in `changed` differ."""
    src = root / name
    src.mkdir(parents=True, exist_ok=True)
    for file, text in SOURCE.items():
        extra = f"# change {tag}\n" if file.removesuffix(".py") in changed else ""
        (src / file).write_text(text + extra)
    return src


# --- one control plane over a FakePlatform ----------------------------------------------------------------------------
class World:
    """A manifest in a tmp dir, a FakeClock, a FakePlatform, a Store, a RecordingNotifier and a Deployer
    driven by the clock: everything a control-plane unit test needs, with helpers to wait for the
    deployment runner (a real thread) and to restart the "process"."""

    def __init__(self, root: Path, env: str = "staging", store: Callable[[Path], Store] = Store,
                 **manifest: Any) -> None:
        from backout.control.deployer import Deployer

        self.root = root
        self.env = env
        self.manifest = write_manifest(root, **manifest)
        self.clock = FakeClock()
        self.fake = FakePlatform(self.manifest, env, clock=self.clock)
        self.store_path = root / "state" / "control.db"
        self.store = store(self.store_path)
        self.notifier = RecordingNotifier()
        self.deployer = Deployer(self.manifest, env, self.fake, self.store, self.notifier, clock=self.clock.now)
        self._tags = itertools.count(2)

    def restart(self, store: Store | None = None) -> Any:
        """A new process on the same state: a new Store object on the same file and a new Deployer
        (the old one is closed, its runner threads told to go). Returns the new Deployer."""
        from backout.control.deployer import Deployer

        self.deployer.close()
        self.store = store or Store(self.store_path)
        self.deployer = Deployer(self.manifest, self.env, self.fake, self.store, self.notifier, clock=self.clock.now)
        return self.deployer

    @property
    def ctx(self) -> Any:
        """The RunbookContext over this world (the running deployment's alarms as `live_alarms`)."""
        from backout.runbooks.context import RunbookContext

        def live_alarms() -> dict[str, Any]:
            active = self.store.active_deployment(self.env)
            lv = self.deployer.live.get(active.id) if active else None
            return dict(lv.alarms) if lv else {}

        return RunbookContext(self.manifest, self.env, self.fake, self.store, self.deployer, self.notifier,
                              live_alarms=live_alarms)

    def release(self, *changed: str, environment: dict[str, str] | None = None) -> Release:
        """Publish a new release in which only the `changed` functions' code differs from the last."""
        tag = str(next(self._tags))
        return self.fake.publish(new_source(self.root, f"src-{tag}", changed or ("api", "worker"), tag), environment)

    def deploy(self, release: Release, *steps: tuple[float, float]) -> Any:
        """Start deploying `release` with custom steps (weight, hold) — default 50 % held 5 s, then 100 %."""
        from backout.control.strategies import Step, Strategy

        strategy = Strategy("T", tuple(Step(w, h) for w, h in (steps or ((50, 5.0), (100, 0.0)))))
        return self.deployer.create(release=release.id, strategy_obj=strategy, created_by="tester")

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = predicate()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.025)

    def wait_step(self, deployment_id: str, step: int) -> Any:
        """Until the runner holds at `step` with its weights applied (its step_reached event written)."""
        def reached() -> Any:
            d = self.store.get(deployment_id)
            if d.current_step != step or not d.active:
                return None
            evs = [e for e in self.store.events(deployment_id=deployment_id) if e.kind == "step_reached"]
            return d if any(e.data.get("step") == step for e in evs) else None

        return self.wait(reached, what=f"{deployment_id} at step {step + 1}")

    def nudge(self, deployment_id: str) -> None:
        """Wake the runner now instead of at its next evaluation interval."""
        lv = self.deployer.live.get(deployment_id)
        if lv is not None:
            lv.wake.set()

    def finish(self, deployment_id: str, timeout: float = 10.0) -> Any:
        """Wait for the runner to end (its incident opened, its notifications sent); the final record."""
        t = self.deployer._threads.get(deployment_id)
        if t is not None:
            t.join(timeout)
            assert not t.is_alive(), f"runner of {deployment_id} still running"
        return self.store.get(deployment_id)

    def event(self, deployment_id: str, kind: str) -> Any:
        evs = [e for e in self.store.events(deployment_id=deployment_id) if e.kind == kind]
        assert evs, f"no {kind} event for {deployment_id}"
        return evs[-1]

    def kinds(self, deployment_id: str) -> list[str]:
        return [e.kind for e in self.store.events(deployment_id=deployment_id)]

    def live(self, release: Release) -> dict[str, dict[str, float]]:
        """What every alias looks like with all of `release`'s traffic on it."""
        return {fn: {v: 100.0} for fn, v in release.versions.items()}

    def close(self) -> None:
        self.deployer.close()
        self.fake.close()


# --- the control API over a FakePlatform ------------------------------------------------------------------------------
class ControlPlane:
    """A FakePlatform on a FakeClock, a Controller driven by that clock, the control API's app and a TestClient
    over it: what every control-API unit test builds. `client` options (`follow_redirects`, …) pass through
    to the TestClient, which is not entered (enter it, `with plane.client`, for one event loop and the lifespan).
    """

    def __init__(self, root: Path, env: str = "staging", token: str = "s3cret", manifest: Manifest | None = None,
                 state_dir: Path | None = None, **client: Any) -> None:
        from fastapi.testclient import TestClient  # here, as World's Deployer: FastAPI only where it is used

        from backout.server.app import build_app
        from backout.server.controller import Controller

        self.root = root
        self.env = env
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"}
        self.manifest = write_manifest(root) if manifest is None else manifest
        self.fake = FakePlatform(self.manifest, env, clock=FakeClock())
        state = root / "state" / env if state_dir is None else state_dir
        self.controller = Controller(self.manifest, env, self.fake, state)
        self.controller.deployer.clock = self.fake.clock.now
        self.app = build_app(self.controller, token)
        self.client = TestClient(self.app, **client)

    def close(self) -> None:
        """The client first (no request in flight), then the controller's runners, then the platform they drive."""
        self.client.close()
        self.controller.close()
        self.fake.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
