"""The local platform's HTTP gateway: API Gateway REST (v1, Lambda proxy) semantics on one port.

A raw ASGI callable rather than a framework app: it has a handful of fixed responsibilities (route,
throttle, limit the body, build the proxy event, map the result) and sits on the request path of
every load test, so it keeps per-request work to a minimum. The invocation goes through the live alias
into a worker process. Given an `invoke_async` (the local platform's), the gateway awaits it on its
own event loop: handing every request to a thread and back cost more CPU than the invocation. A
plain blocking `invoke` alone runs in a thread pool (at most `INVOKE_THREADS` at once), so the event
loop never waits on it.

Error mapping, as API Gateway does it (bodies are `{"message": ...}` JSON):

| case | status |
|---|---|
| no resource matches the path | 404 Not Found |
| the resource exists, not with this method | 405 Method Not Allowed (+ `Allow`) |
| body over `max_body` (by Content-Length, or counted while streaming) | 413 Request Entity Too Large |
| no part of the body for `body_timeout` (e.g. shorter than its Content-Length) | 408 Request Timeout |
| stage throttle (token bucket) | 429 Too Many Requests (+ `Retry-After`: 1 s, 30 s when rate is 0) |
| the function was throttled (reserved concurrency) | 429 Too Many Requests (+ `Retry-After: 1`) |
| handler error, Lambda timeout, invoke failure, malformed proxy result | 502 Internal server error |

The body is read chunk by chunk and counted: past `max_body` the gateway stops reading, answers 413
and the server closes the connection, so an oversized upload costs at most `max_body` of memory
however large it is (the default is API Gateway's own payload quota, 10 MB). A 413 or 408 answered
before the whole body arrived closes the connection (the rest of the body is never read).

A throttled function answers 429 rather than API Gateway's 502 on purpose: nothing ran, the client may
retry, and the function's own `Throttles` metric (not the API's 5XXError) is the signal for it.

Every response carries `X-Amzn-RequestId` and `X-Backout-Version` (the version that answered, "0" when
no function did), and records Count, 4XXError, 5XXError and Latency under {ApiName, Stage} and
{ApiName, Stage, ExecutedVersion}; a drill's synthetic request (header `X-Backout-Drill`) also under
{ApiName, Stage, Origin=drill}, so reports can tell it apart. Each response's latency also goes into a
Prometheus histogram (`backout_gateway_request_duration_seconds{version, code}`, code 2xx/3xx/4xx/5xx),
so p99 is computable in PromQL (`histogram_quantile`); its registry is the gateway's own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from prometheus_client import CollectorRegistry, Histogram

from backout.errors import UsageError
from backout.platforms.base import NS_API, InvokeResult, Throttle
from backout.platforms.local.metrics import MetricStore, SeriesKey

if TYPE_CHECKING:
    from backout.manifest import Manifest

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INVOKE_THREADS = 64
ACCOUNT_ID = "000000000000"
_TEXT_TYPES = frozenset(
    {"application/json", "application/x-www-form-urlencoded", "application/xml", "application/javascript"}
)
KEEP_VERSIONS = 8  # versions whose metric series keys and latency histograms the gateway keeps
_API_METRICS = ("Count", "4XXError", "5XXError", "Latency")  # the order _record fills them in
_RESULT_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})
_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DRILL_HEADER = b"x-backout-drill"  # runbooks.drill.DRILL_HEADER as ASGI spells header names


@dataclass(frozen=True)
class Route:
    """One `events = [{ http = "METHOD /path/{param}" }]` entry of a function."""

    function: str
    method: str  # GET, POST, … or ANY
    path: str  # template: literal segments, {param}, and a final {name+} greedy segment


def routes_from_manifest(manifest: Manifest) -> list[Route]:
    """Every HTTP event of every function, in manifest order."""
    return [Route(name, h.method, h.path) for name, f in manifest.functions.items() for h in f.http_events]


# --- routing -----------------------------------------------------------------------------
_LITERAL, _PARAM, _GREEDY = 0, 1, 2


def _parse_template(path: str) -> tuple[tuple[int, str], ...]:
    """`/download/{job_id}/{proxy+}` → ((LITERAL, "download"), (PARAM, "job_id"), (GREEDY, "proxy"))."""
    segs = [s for s in path.strip("/").split("/") if s] if path.strip("/") else []
    out: list[tuple[int, str]] = []
    for i, s in enumerate(segs):
        if s.startswith("{") and s.endswith("}"):
            name = s[1:-1]
            if name.endswith("+"):
                if i != len(segs) - 1:
                    raise UsageError(f"route {path!r}: a greedy {{{name}}} segment must be the last one")
                out.append((_GREEDY, name[:-1]))
            else:
                out.append((_PARAM, name))
        else:
            out.append((_LITERAL, s))
    return tuple(out)


class _Resource:
    """One path shape (parameter names aside) and the routes of each of its methods."""

    __slots__ = ("kinds", "literals", "methods", "allow")

    def __init__(self, segs: tuple[tuple[int, str], ...]) -> None:
        self.kinds = tuple(k for k, _ in segs)
        self.literals = tuple(v if k == _LITERAL else "" for k, v in segs)
        self.methods: dict[str, tuple[Route, tuple[str, ...]]] = {}  # method → route, its param names
        self.allow = ""

    def match(self, parts: list[str]) -> list[str] | None:
        """The raw values of the parameters when `parts` (decoded path segments) fit this shape."""
        kinds, n = self.kinds, len(self.kinds)
        greedy = n > 0 and kinds[-1] == _GREEDY
        if (len(parts) < n) if greedy else (len(parts) != n):
            return None
        values: list[str] = []
        for i, kind in enumerate(kinds):
            if kind == _LITERAL:
                if parts[i] != self.literals[i]:
                    return None
            elif kind == _PARAM:
                if not parts[i]:
                    return None
                values.append(parts[i])
            else:
                rest = parts[i:]
                if not all(rest):
                    return None
                values.append("/".join(rest))
        return values


class _Router:
    def __init__(self, routes: list[Route]) -> None:
        by_shape: dict[tuple[tuple[int, str], ...], _Resource] = {}
        for r in routes:
            segs = _parse_template(r.path)
            shape = tuple((k, v if k == _LITERAL else "") for k, v in segs)
            res = by_shape.setdefault(shape, _Resource(segs))
            method = r.method.upper()
            if method in res.methods:
                other = res.methods[method][0]
                raise UsageError(
                    f"route {method} {r.path} is served by both {other.function} and {r.function}"
                )
            res.methods[method] = (r, tuple(v for k, v in segs if k != _LITERAL))
        for res in by_shape.values():
            res.allow = ", ".join(sorted(res.methods))
        # most specific first, as API Gateway picks: literal, then {param}, then {greedy+}, by segment
        self.resources = sorted(by_shape.values(), key=lambda r: (r.kinds, -len(r.kinds)))
        self.exact = {  # fast path: shapes without parameters
            "/" + "/".join(r.literals): r for r in self.resources if all(k == _LITERAL for k in r.kinds)
        }

    def match(self, raw_path: str) -> tuple[_Resource, list[str]] | None:
        res = self.exact.get(raw_path.rstrip("/") or "/") if "%" not in raw_path else None
        if res is not None:
            return res, []
        trimmed = raw_path.strip("/")
        parts = [unquote(p) for p in trimmed.split("/")] if trimmed else []
        best: tuple[tuple[int, ...], _Resource, list[str]] | None = None
        for res in self.resources:
            values = res.match(parts)
            if values is not None:
                rank = res.kinds
                if best is None or rank < best[0]:
                    best = (rank, res, values)
        return (best[1], best[2]) if best is not None else None


# --- the stage throttle ------------------------------------------------------------------
class _TokenBucket:
    """Stage throttling as API Gateway does it: `rate` tokens a second, at most `burst` banked."""

    def __init__(self, throttle: Throttle) -> None:
        self._lock = threading.Lock()
        self.set(throttle)

    def set(self, throttle: Throttle) -> None:
        if not (math.isfinite(throttle.rate) and math.isfinite(throttle.burst)):
            raise UsageError(f"throttle rate and burst must be finite numbers (got rate {throttle.rate}, "
                             f"burst {throttle.burst})")
        if throttle.rate < 0 or throttle.burst < 0:
            raise UsageError(
                f"throttle rate and burst must be >= 0 (got rate {throttle.rate}, burst {throttle.burst})"
            )
        with self._lock:
            self.throttle = Throttle(float(throttle.rate), int(throttle.burst))
            self._capacity = float(max(1, throttle.burst))  # a positive rate always lets requests through
            self._tokens = self._capacity
            self._stamp = time.monotonic()

    def take(self) -> int:
        """0 when the request may pass, else the seconds a client should wait (Retry-After)."""
        rate = self.throttle.rate
        if rate <= 0:
            return 30  # the API is blocked (emergency stop): come back much later
        with self._lock:
            now = time.monotonic()
            tokens = min(self._capacity, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0
            self._tokens = tokens
            return max(1, math.ceil((1.0 - tokens) / rate))


class _Malformed(Exception):
    """The function's result is not a Lambda proxy response."""


@dataclass(slots=True)
class _Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str = "0"


def _error(status: int, message: str, *extra: tuple[bytes, bytes]) -> _Response:
    body = json.dumps({"message": message}).encode()
    return _Response(status, [(b"content-type", b"application/json"), *extra], body)


def _not_found() -> _Response:
    return _error(404, "Not Found")


def _too_large() -> _Response:
    return _error(413, "Request Entity Too Large", (b"connection", b"close"))


def _too_many(retry_after: int) -> _Response:
    return _error(429, "Too Many Requests", (b"retry-after", str(retry_after).encode()))


def _timed_out() -> _Response:
    return _error(408, "Request Timeout", (b"connection", b"close"))


def _bad_gateway(version: str = "0") -> _Response:
    r = _error(502, "Internal server error")
    r.version = version
    return r


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class _SlowBody(Exception):
    """The body did not arrive within the gateway's body timeout."""


class Gateway:
    """One API, one stage: routes requests to functions as Lambda proxy events."""

    def __init__(
        self,
        routes: list[Route],
        invoke: Callable[[str, dict[str, Any]], InvokeResult],
        metrics: MetricStore,
        api_name: str,
        stage: str,
        max_body: int,
        throttle: Throttle,
        invoke_async: Callable[[str, dict[str, Any]], Awaitable[InvokeResult]] | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self.routes = list(routes)
        self._router = _Router(self.routes)
        self._invoke = invoke
        self._invoke_async = invoke_async
        self.metrics = metrics
        self.api_name = api_name
        self.stage = stage
        self.max_body = int(max_body)
        self.body_timeout = float(body_timeout)
        self._bucket = _TokenBucket(throttle)
        self.api_id = hashlib.sha1(api_name.encode()).hexdigest()[:10]
        # Invocations block (a worker process answers), so they run here, at most INVOKE_THREADS at once.
        # A plain executor rather than anyio.to_thread + CapacityLimiter: same bound, ~20 % more req/s.
        self._pool = ThreadPoolExecutor(INVOKE_THREADS, thread_name_prefix="gateway-invoke")
        self._dims = {"ApiName": api_name, "Stage": stage}
        # ExecutedVersion → metric series, the least recently answering version first
        self._keys: OrderedDict[str, list[tuple[SeriesKey, ...]]] = OrderedDict()
        self.registry = CollectorRegistry(auto_describe=False)  # the platform's /metrics text serves it
        self._latency = Histogram("backout_gateway_request_duration_seconds",
                                  "Gateway request latency (request received → response sent)",
                                  ["version", "code"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self._observers: dict[tuple[str, int], Any] = {}  # (version, status // 100) → histogram child
        self._resource_ids = {r.path: hashlib.sha1(r.path.encode()).hexdigest()[:6] for r in self.routes}
        self._date: tuple[int, str] = (0, "")  # requestTime changes once a second

    # --- operator controls (any thread) -------------------------------------------------
    @property
    def throttle(self) -> Throttle:
        return self._bucket.throttle

    def set_throttle(self, rate: float, burst: int) -> None:
        """Takes effect for the next request; the bucket starts full."""
        self._bucket.set(Throttle(rate, burst))

    def close(self) -> None:
        """Let the invocation threads go once the server has stopped (in-flight ones finish)."""
        self._pool.shutdown(wait=False)

    # --- ASGI ---------------------------------------------------------------------------
    @property
    def app(self) -> Gateway:
        """The ASGI application (served by uvicorn): the gateway itself, so that uvicorn sees an
        ASGI 3 callable (an async `__call__`; a bound method would be taken for ASGI 2)."""
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        request_id = str(uuid.uuid4())
        try:
            resp = await self._handle(scope, receive, request_id)
        except _Disconnected:
            return
        except Exception:
            log.exception("gateway: request %s failed", request_id)
            resp = _bad_gateway()
        headers = resp.headers
        headers.append((b"content-length", str(len(resp.body)).encode()))
        headers.append((b"x-amzn-requestid", request_id.encode()))
        headers.append((b"x-backout-version", resp.version.encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": resp.body})
        drill = any(k == _DRILL_HEADER for k, _ in scope["headers"])
        self._record(resp.status, resp.version, (time.perf_counter() - t0) * 1000.0, drill)

    def _forget_old_versions(self) -> None:
        """Before a new version's first response: drop the series keys and histogram children of all
        but the `KEEP_VERSIONS` versions that answered last, so a gateway living through thousands of
        deployments holds a bounded set (an old version's children leave the Prometheus output). Least
        recently answering, not first seen: a stable version that outlives many rolled-back canaries
        keeps its histogram (a reset would read as a counter restart on every dashboard)."""
        for old in list(self._keys)[: max(0, len(self._keys) - KEEP_VERSIONS + 1)]:
            del self._keys[old]
            for v, cls in [k for k in self._observers if k[0] == old]:
                del self._observers[(v, cls)]
                self._latency.remove(v, f"{cls}xx")

    def _record(self, status: int, version: str, latency_ms: float, drill: bool = False) -> None:
        keys = self._keys.get(version)
        if keys is not None:
            self._keys.move_to_end(version)
        else:
            self._forget_old_versions()
            keys = self._keys[version] = [
                tuple(MetricStore.series_key(NS_API, m, dims) for m in _API_METRICS)
                for dims in (self._dims, {**self._dims, "ExecutedVersion": version})
            ]
        if drill:  # a drill's synthetic request also counts under Origin=drill, so reports can tell it apart
            keys = [*keys, tuple(MetricStore.series_key(NS_API, m, {**self._dims, "Origin": "drill"})
                                 for m in _API_METRICS)]
        child = self._observers.get((version, status // 100))
        if child is None:
            child = self._observers[(version, status // 100)] = self._latency.labels(version, f"{status // 100}xx")
        child.observe(latency_ms / 1000.0)
        e4 = 1.0 if 400 <= status < 500 else 0.0
        e5 = 1.0 if status >= 500 else 0.0
        samples = []
        for count, err4, err5, latency in keys:
            samples += (
                (count, 1.0, "Count"),
                (err4, e4, "Count"),
                (err5, e5, "Count"),
                (latency, latency_ms, "Milliseconds"),
            )
        self.metrics.record_many(samples)

    async def _handle(self, scope: Scope, receive: Receive, request_id: str) -> _Response:
        wait = self._bucket.take()
        if wait:
            return _too_many(wait)
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1") if raw else scope["path"]
        found = self._router.match(raw_path)
        if found is None:
            return _not_found()
        resource, values = found
        method = scope["method"]
        entry = resource.methods.get(method) or resource.methods.get("ANY")
        if entry is None:
            return _error(405, "Method Not Allowed", (b"allow", resource.allow.encode()))
        route, names = entry

        headers: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            name, value = k.decode("latin-1"), v.decode("latin-1")
            headers[name] = value
            multi.setdefault(name, []).append(value)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return _too_large()
        try:
            body = await self._read_body(receive)
        except _SlowBody:
            return _timed_out()
        if body is None:
            return _too_large()

        event = self._event(scope, route, method, names, values, headers, multi, body, request_id)
        try:
            if self._invoke_async is not None:
                result = await self._invoke_async(route.function, event)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._invoke, route.function, event
                )
        except Exception:
            log.exception("gateway: invoking %s failed", route.function)
            return _bad_gateway()
        if result.throttled:
            return _too_many(1)
        version = str(result.version)
        if result.error is not None:
            return _bad_gateway(version)
        try:
            status, out_headers, out_body = _proxy_response(result.payload)
        except _Malformed as e:
            log.warning("gateway: %s v%s returned a malformed proxy response: %s", route.function, version, e)
            return _bad_gateway(version)
        return _Response(status, out_headers, out_body, version)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_body (the rest is never buffered);
        _SlowBody when no part of it arrived for body_timeout (between two reads, as nginx's
        client_body_timeout: a slow client still gets through, a stalled one is answered)."""
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.body_timeout) as timer:  # a timer, no extra task per request
                while True:
                    msg = await receive()
                    timer.reschedule(loop.time() + self.body_timeout)
                    if msg["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = msg.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > self.max_body:
                            return None
                        chunks.append(chunk)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            raise _SlowBody from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _event(
        self,
        scope: Scope,
        route: Route,
        method: str,
        names: tuple[str, ...],
        values: list[str],
        headers: dict[str, str],
        multi: dict[str, list[str]],
        body: bytes,
        request_id: str,
    ) -> dict[str, Any]:
        """The Lambda proxy integration event (payload format 1.0)."""
        client = scope.get("client") or ("127.0.0.1", 0)
        server = scope.get("server") or ("127.0.0.1", 0)
        scheme = scope.get("scheme", "http")
        for name, value in (
            ("x-forwarded-for", client[0]),
            ("x-forwarded-proto", scheme),
            ("x-forwarded-port", str(server[1])),
        ):
            if name not in headers:
                headers[name] = value
                multi[name] = [value]
        qs = scope.get("query_string", b"")
        query: dict[str, str] | None = None
        mquery: dict[str, list[str]] | None = None
        if qs:
            pairs = parse_qsl(qs.decode("utf-8", "replace"), keep_blank_values=True)
            if pairs:
                query, mquery = {}, {}
                for k, v in pairs:
                    query[k] = v
                    mquery.setdefault(k, []).append(v)
        text, is_b64 = _event_body(body, headers.get("content-type", ""))
        now = time.time()
        sec = int(now)
        if self._date[0] != sec:
            self._date = (sec, formatdate(sec, usegmt=True))
        path = scope["path"]
        return {
            "resource": route.path,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": query,
            "multiValueQueryStringParameters": mquery,
            "pathParameters": dict(zip(names, values, strict=True)) or None,
            "stageVariables": None,
            "requestContext": {
                "resourceId": self._resource_ids[route.path],
                "resourcePath": route.path,
                "httpMethod": method,
                "extendedRequestId": request_id,
                "requestTime": self._date[1],
                "path": f"/{self.stage}{path}",
                "accountId": ACCOUNT_ID,
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "stage": self.stage,
                "domainPrefix": headers.get("host", "localhost").split(".")[0],
                "requestTimeEpoch": int(now * 1000),
                "requestId": request_id,
                "identity": {
                    "cognitoIdentityPoolId": None,
                    "accountId": None,
                    "cognitoIdentityId": None,
                    "caller": None,
                    "sourceIp": client[0],
                    "principalOrgId": None,
                    "accessKey": None,
                    "cognitoAuthenticationType": None,
                    "cognitoAuthenticationProvider": None,
                    "userArn": None,
                    "userAgent": headers.get("user-agent"),
                    "user": None,
                },
                "domainName": headers.get("host", "localhost"),
                "apiId": self.api_id,
            },
            "body": text,
            "isBase64Encoded": is_b64,
        }


def _is_text(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct.startswith("text/") or ct in _TEXT_TYPES or ct.endswith(("+json", "+xml"))


def _event_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """Text bodies as str; everything else (binary, multipart/form-data, no type) as base64."""
    if not body:
        return None, False
    if _is_text(content_type):
        charset = "utf-8"
        for param in content_type.split(";")[1:]:
            k, _, v = param.strip().partition("=")
            if k.lower() == "charset" and v:
                charset = v.strip('"')
        try:
            return body.decode(charset), False
        except (UnicodeDecodeError, LookupError):
            pass
    return base64.b64encode(body).decode("ascii"), True


def _header_value(name: str, v: object) -> bytes:
    if isinstance(v, bool):
        v = "true" if v else "false"
    if not isinstance(v, str | int | float):
        raise _Malformed(f"header {name!r} has a {type(v).__name__} value")
    s = str(v)
    if _BAD_VALUE.search(s):
        raise _Malformed(f"header {name!r} contains a line break")
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


def _proxy_response(payload: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A Lambda proxy result → (status, headers, body), or _Malformed as API Gateway would 502."""
    if not isinstance(payload, dict):
        raise _Malformed(f"the result is a {type(payload).__name__}, not an object")
    unknown = set(payload) - _RESULT_KEYS
    if unknown:
        raise _Malformed(f"unexpected keys {sorted(unknown)}")
    status = payload.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise _Malformed(f"statusCode {status!r} is not an HTTP status")
    single = payload.get("headers") or {}
    multi = payload.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise _Malformed("headers and multiValueHeaders must be objects")
    out: list[tuple[bytes, bytes]] = []
    seen: set[str] = set()
    for name, values in multi.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _Malformed(f"bad header name {name!r}")
        if not isinstance(values, list):
            raise _Malformed(f"multiValueHeaders[{name!r}] is not a list")
        low = name.lower()
        seen.add(low)
        if low not in _HOP_HEADERS:
            out.extend((low.encode(), _header_value(name, v)) for v in values)
    for name, value in single.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _Malformed(f"bad header name {name!r}")
        low = name.lower()
        if low not in seen and low not in _HOP_HEADERS:  # multiValueHeaders win, as in API Gateway
            seen.add(low)
            out.append((low.encode(), _header_value(name, value)))
    body = payload.get("body")
    b64 = payload.get("isBase64Encoded") or False
    if not isinstance(b64, bool):
        raise _Malformed("isBase64Encoded must be a boolean")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise _Malformed(f"body is a {type(body).__name__}, not a string")
    elif b64:
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _Malformed(f"body is not valid base64: {e}") from None
    else:
        data = body.encode("utf-8")
    if status in (204, 304):
        data = b""
    if data and "content-type" not in seen:
        out.append((b"content-type", b"application/json"))
    return status, out, data
