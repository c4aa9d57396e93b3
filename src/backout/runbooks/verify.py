"""`backout verify`: "Validation After Rollback" of the procedure, as one command.

API health (GET /health through the gateway → 200 and healthy; a warning when the service has no health
route), each function invocable (every version its live alias routes to answers its probe, an event of
its own kind: what the procedure's `aws lambda invoke --payload '{"test": true}'` means for a handler
that expects API Gateway or SQS events), database connectivity (a read/write probe), queue status
(visible, in flight, age of oldest, DLQ depth), all alarms OK, and every live alias at the expected
version.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from backout import outbound
from backout.control import states as st
from backout.control.alarms import ALARM, AlarmSet, default_rules
from backout.control.hooks import probe_check
from backout.control.probes import probe_for
from backout.control.store import ControlStore
from backout.control.traffic import Traffic
from backout.manifest import Manifest
from backout.platforms.base import NS_SQS, MetricQuery, Platform
from backout.runbooks.context import RunbookContext

CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    ok: bool
    detail: str
    latency_ms: float = 0.0
    warning: bool = False  # passed, but something was not checked that should be (e.g. no health route)


@dataclass(frozen=True)
class VerifyReport:
    checks: list[Check]
    at: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": self.at, "checks": [asdict(c) for c in self.checks]}

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.warning]

    def summary(self) -> str:
        if self.ok:
            warned = "; ".join(f"warning: {c.name}: {c.detail}" for c in self.warnings)
            return f"verify passed ({len(self.checks)} checks)" + (f"; {warned}" if warned else "")
        return "verify FAILED: " + "; ".join(f"{c.name}: {c.detail}" for c in self.failures)


def expected_versions(store: ControlStore, env: str) -> tuple[str, dict[str, str]] | None:
    """The release every live alias should serve (its label and each function's version), from the
    last finished deployment; None while one runs or before any."""
    if store.active_deployment(env) is not None:
        return None
    last = next(iter(store.deployments(env, limit=1)), None)
    if last is None:
        return None
    if last.status == st.SUCCEEDED:
        return last.target, dict(last.target_versions)
    return last.stable, dict(last.stable_versions)


def verify(ctx: RunbookContext) -> VerifyReport:
    """The procedure's "Validation After Rollback": API health, every live version answers, the
    database, the queues, no alarm firing, every alias where the last deployment left it."""
    checks: list[Check] = []
    checks.extend(_timed("api", lambda: _api(ctx.manifest, ctx.platform)))
    checks.extend(_timed("functions", lambda: _functions(ctx.manifest, ctx.env, ctx.platform)))
    checks.extend(_timed("database", lambda: _database(ctx.platform)))
    checks.extend(_timed("queues", lambda: _queues(ctx.manifest, ctx.env, ctx.platform)))
    checks.extend(_timed("alarms", lambda: _alarms(ctx.manifest, ctx.env, ctx.platform, ctx.store, ctx.live_alarms())))
    checks.extend(_timed("aliases", lambda: _aliases(ctx.traffic, ctx.store, ctx.env)))
    return VerifyReport(checks, time.time())


def _timed(group: str, fn: Any) -> list[Check]:
    """Run one group of checks with a deadline: an unreachable dependency is a failure, not a hang."""
    ex = ThreadPoolExecutor(max_workers=1)
    fut = ex.submit(fn)
    try:
        return fut.result(timeout=CHECK_TIMEOUT * 3)
    except FutureTimeout:
        return [Check(group, group, False, f"no answer within {CHECK_TIMEOUT * 3:.0f} s")]
    except Exception as e:  # noqa: BLE001 - every failure is a reported check
        return [Check(group, group, False, f"{type(e).__name__}: {e}")]
    finally:
        ex.shutdown(wait=False)


def _health_route(manifest: Manifest) -> str | None:
    for name, f in manifest.functions.items():
        for h in f.http_events:
            if h.method == "GET" and h.path == "/health":
                return name
    return None


def _api(manifest: Manifest, platform: Platform) -> list[Check]:
    fn = _health_route(manifest)
    if fn is None:
        return [Check("api", "API health", True, "no health route: the API's health is not checked "
                      "(add `{ http = \"GET /health\" }` to a function's events)", warning=True)]
    t0 = time.perf_counter()
    throttle = platform.get_throttle()
    if throttle.rate == 0:
        # The API is blocked (emergency stop): check the function behind it directly, so that
        # `resume` can verify before it lets clients back in.
        r = platform.invoke(fn, None, _proxy_event("GET", "/health"))
        ms = (time.perf_counter() - t0) * 1000
        if not r.ok:
            return [Check("api", "API health", False, f"API blocked; {fn} /health failed: {r.payload}", ms)]
        status, body = _proxy_result(r.payload)
        ok = status == 200 and body.get("status") == "healthy"
        return [Check("api", "API health", ok, f"API blocked (throttle 0); {fn} GET /health → {status} {body}", ms)]
    url = platform.endpoint()
    try:
        resp = outbound.get(f"{url}/health", timeout=CHECK_TIMEOUT)
        ms = (time.perf_counter() - t0) * 1000
        body = _json(resp.text)
        ok = resp.status_code == 200 and body.get("status") == "healthy"
        return [Check("api", "API health", ok, f"GET /health → {resp.status_code} {resp.text[:200]}", ms)]
    except httpx.HTTPError as e:
        return [Check("api", "API health", False, f"GET {url}/health failed: {e}")]


def _functions(manifest: Manifest, env: str, platform: Platform) -> list[Check]:
    """Every version a live alias routes to answers its probe (the pre-traffic check's, `control/probes.py`);
    a throttled probe is retried for a while: busy, not broken."""
    out = []
    for fn in platform.functions():
        probe = probe_for(manifest, fn, env)
        for v in platform.get_weights(fn).versions:
            t0 = time.perf_counter()
            c = probe_check(platform, probe, v, time.monotonic() + CHECK_TIMEOUT)
            ms = (time.perf_counter() - t0) * 1000
            detail = c["detail"] if c["ok"] and c["invoked"] else f"v{v}: {c['detail']}"
            out.append(Check("functions", f"{fn} v{v}", c["ok"], detail, ms))
    return out


def _database(platform: Platform) -> list[Check]:
    return [Check("database", c.name, c.ok, c.detail, c.latency_ms) for c in platform.describe()]


def _queues(manifest: Manifest, env: str, platform: Platform) -> list[Check]:
    limits = manifest.environment(env).queue_age_limits
    dlqs = {q.dead_letter_queue for q in manifest.queues.values() if q.dead_letter_queue}
    names = platform.queues()
    ages = queue_ages(platform, names)
    out = []
    for q in names:
        t0 = time.perf_counter()
        s = platform.queue_attributes(q)
        ms = (time.perf_counter() - t0) * 1000
        age = ages.get(q, 0.0)
        detail = f"{s.visible} visible, {s.in_flight} in flight, oldest {age:.0f} s"
        ok = True
        if q in dlqs:
            depth = s.visible + s.in_flight
            detail += f", DLQ depth {depth}"
            consumers = [n for n, f in manifest.functions.items() if any(e.queue == q for e in f.queue_events)]
            if depth and consumers:
                detail += f" (being handled by {', '.join(consumers)})"
            elif depth:
                ok = False
                detail += " (messages in the DLQ: inspect, fix, then `backout queue redrive`)"
        if q in limits and age > limits[q]:
            if platform.get_processing():
                ok = False
                detail += f" (oldest message older than the {limits[q]:g} s limit)"
            else:  # the backlog a pause builds on purpose must not keep `resume` from ending the pause
                detail += f" (older than the {limits[q]:g} s limit: processing is paused; drains on resume)"
        out.append(Check("queues", f"queue {q}", ok, detail, ms))
    return out


def queue_ages(platform: Platform, queues: list[str], now: float | None = None) -> dict[str, float]:
    """Each queue's ApproximateAgeOfOldestMessage, its newest datapoint of the last 10 s (SQS has no
    such attribute: it is a metric), all queues in one call."""
    now = time.time() if now is None else now
    qs = [MetricQuery.of(NS_SQS, "ApproximateAgeOfOldestMessage", {"QueueName": q}, int(now) - 10, int(now) + 1, 1,
                         "Maximum") for q in queues]
    series = platform.metrics(qs) if qs else []
    return {q: (pts[-1].value if pts else 0.0) for q, pts in zip(queues, series, strict=True)}


def _alarms(
    manifest: Manifest, env: str, platform: Platform, store: ControlStore, live_alarms: dict[str, Any] | None
) -> list[Check]:
    active = store.active_deployment(env)
    if active is not None and live_alarms:
        evals = list(live_alarms.values())
    else:
        live = {fn: platform.get_weights(fn).stable for fn in platform.functions()}
        # the window starts at the last deployment's end: what the rolled-back version did is its incident's
        # evidence, not a fault of the version now live
        since = time.time() - manifest.environment(env).alarm_window
        last = next(iter(store.deployments(env, limit=1)), None)
        if last is not None and last.finished_at is not None:
            since = max(since, (last.rollback_completed_at or last.finished_at) + settle_seconds(manifest))
        # a queue's age is judged now, by the queues check: a backlog a pause built and that has drained
        # since must not fail verify for a whole alarm window after `resume`
        rules = [r for r in default_rules(manifest, env, live, since) if r.kind != "queue_age"]
        evals = [c.evaluation for c in AlarmSet(rules).evaluate(platform)]
    firing = [e for e in evals if e.state == ALARM]
    if not platform.get_processing():  # paused on purpose: queues age, that is not a fault of the version
        firing = [e for e in firing if not e.alarm.startswith("queue-age:")]
    if firing:
        return [Check("alarms", f"alarm {e.alarm}", False, e.detail) for e in firing]
    return [Check("alarms", "all alarms", True, f"{len(evals)} alarm(s), none in ALARM")]


def settle_seconds(manifest: Manifest) -> float:
    """How long after a rollback a message the old version failed can still reach a DLQ: SQS moves it on
    the receive after its last failure, one retry delay later."""
    delays = [
        e.retry_after if e.retry_after is not None else manifest.queues[e.queue].visibility_timeout
        for f in manifest.functions.values()
        for e in f.queue_events
        if manifest.queues[e.queue].dead_letter_queue
    ]
    return max(delays, default=0.0) + 3.0 if delays else 0.0


def _aliases(traffic: Traffic, store: ControlStore, env: str) -> list[Check]:
    active = store.active_deployment(env)
    expected = expected_versions(store, env)
    platform = traffic.platform
    weights = {fn: platform.get_weights(fn) for fn in platform.functions()}
    if active is None and expected is None:
        # no deployment has finished yet: every alias should serve one release, the same one
        live = traffic.live_release()
        expected = None if live is None else (live.label(), dict(live.versions))
    out = []
    for fn, w in weights.items():
        desc = ", ".join(f"v{v} {p:g}%" for v, p in w.versions.items())
        if active is not None:
            out.append(Check("aliases", f"{fn}:live", True, f"{desc} (deployment {active.id} in progress)"))
        elif expected is None or fn not in expected[1]:
            out.append(Check("aliases", f"{fn}:live", False, f"{desc}; no deployment in progress, so one release "
                             "at 100% is expected"))
        else:
            label, want = expected
            ok = w.versions == {want[fn]: 100.0}
            out.append(Check("aliases", f"{fn}:live", ok, f"{desc}; expected v{want[fn]} 100% ({label})"))
    return out


def _proxy_event(method: str, path: str) -> dict[str, Any]:
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"User-Agent": "backout-verify"},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": method,
            "path": path,
            "stage": "verify",
            "requestId": f"verify-{time.time_ns()}",
            "identity": {"sourceIp": "127.0.0.1"},
        },
    }


def _proxy_result(payload: Any) -> tuple[int, dict[str, Any]]:
    if not isinstance(payload, dict):
        return 0, {}
    body = payload.get("body") or ""
    if payload.get("isBase64Encoded"):
        body = base64.b64decode(body).decode(errors="replace")
    return int(payload.get("statusCode", 0)), _json(body)


def _json(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except (ValueError, TypeError):
        return {}
    return v if isinstance(v, dict) else {}
