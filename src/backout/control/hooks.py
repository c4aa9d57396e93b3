"""Pre-traffic and post-traffic hooks: the checks a new version must pass before and after it
takes traffic. A failure or a timeout rolls the deployment back, and the hook's output is kept
as evidence in the deployment's events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from backout.control.alarms import dlq_scopes
from backout.control.smoke import run_smoke
from backout.manifest import HookSpec, Manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT, NS_LAMBDA, MetricQuery, Platform

TEST_EVENT = {"test": True}


@dataclass(frozen=True)
class HookContext:
    manifest: Manifest
    env: str
    platform: Platform
    deployment_id: str
    stable: dict[str, str]  # function → its stable version
    target: dict[str, str]  # function → its new version
    since: float  # when the new version started taking traffic (post) or the deployment began (pre)
    release: int = 0  # the new release's id

    @property
    def gateway_url(self) -> str:
        return self.platform.endpoint()


@dataclass
class HookResult:
    name: str
    phase: str
    ok: bool
    output: str
    seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)


def run_hooks(phase: str, hooks: list[HookSpec], ctx: HookContext) -> list[HookResult]:
    """Run hooks in order, stopping at the first failure (its evidence is what matters)."""
    results = []
    for h in hooks:
        r = run_hook(phase, h, ctx)
        results.append(r)
        if not r.ok:
            break
    return results


def run_hook(phase: str, hook: HookSpec, ctx: HookContext) -> HookResult:
    t0 = time.monotonic()
    try:
        if hook.builtin == "checks":
            checks = _pre_checks(ctx, hook.timeout) if phase == "pre_traffic" else _post_checks(ctx)
            ok = all(c["ok"] for c in checks)
            out = "; ".join(f"{'ok' if c['ok'] else 'FAILED'} {c['name']}: {c['detail']}" for c in checks)
            return HookResult(hook.name, phase, ok, out, time.monotonic() - t0, checks)
        if hook.builtin == "smoke":
            res = run_smoke(ctx.manifest, ctx.env, ctx.gateway_url, timeout=hook.timeout)
            checks = [{"name": r.name, "ok": r.ok, "detail": r.detail} for r in res]
            ok = all(r.ok for r in res)
            out = (
                "; ".join(f"{'ok' if r.ok else 'FAILED'} {r.name}: {r.detail}" for r in res)
                or "no smoke tests"
            )
            return HookResult(hook.name, phase, ok, out, time.monotonic() - t0, checks)
        if hook.function is not None:
            ok, out = _function_hook(hook, ctx)
        elif hook.command is not None:
            ok, out = _command_hook(hook, ctx)
        else:
            ok, out = _http_hook(hook, ctx)
    except Exception as e:  # noqa: BLE001 - any hook crash is a hook failure, with its evidence
        ok, out = False, f"{type(e).__name__}: {e}"
    return HookResult(hook.name, phase, ok, out, time.monotonic() - t0)


def _pre_checks(ctx: HookContext, timeout: float) -> list[dict[str, Any]]:
    """Each new version is active and answers a test invocation; table, store and queues reachable.

    A throttled test invocation is retried until `timeout`: under load the function's reserved
    concurrency may be taken by the stable version's work, which says nothing about the new one."""
    checks = []
    deadline = time.monotonic() + timeout
    for fn in ctx.platform.functions():
        v = ctx.target[fn]
        r = _invoke(ctx, fn, TEST_EVENT, deadline)
        detail = f"v{v} answered in {r.duration_ms:.0f} ms" if r.ok else _error_text(r.payload, r)
        checks.append({"name": f"invoke {fn} v{v}", "ok": r.ok, "detail": detail})
    for c in ctx.platform.describe():
        checks.append({"name": c.name, "ok": c.ok, "detail": c.detail})
    for q in ctx.platform.queues():
        try:
            a = ctx.platform.queue_attributes(q)
            checks.append({"name": f"queue {q}", "ok": True, "detail": f"{a.visible} visible, {a.in_flight} in flight"})
        except Exception as e:  # noqa: BLE001 - an unreachable queue is a failed check, with its evidence
            checks.append({"name": f"queue {q}", "ok": False, "detail": f"{type(e).__name__}: {e}"})
    return checks


def _post_checks(ctx: HookContext) -> list[dict[str, Any]]:
    """After 100 %: the new versions' error rate and average duration, and no DLQ arrivals the new
    versions received last (as the DLQ alarm counts them) — every figure since the new release took
    traffic, from one batched metrics call of 1 s periods."""
    spec = ctx.manifest.environment(ctx.env)
    now = time.time()
    start, end = int(ctx.since), int(now) + 1
    fns = ctx.platform.functions()
    dlqs = sorted({q.dead_letter_queue for q in ctx.manifest.queues.values() if q.dead_letter_queue is not None})
    scopes = [(q, dims) for q in dlqs for _, dims in dlq_scopes(ctx.manifest, q, ctx.target)]
    queries: list[MetricQuery] = []
    for fn in fns:
        dims = {"FunctionName": fn, "ExecutedVersion": ctx.target[fn]}
        queries += [MetricQuery.of(NS_LAMBDA, "Invocations", dims, start, end, 1, "Sum"),
                    MetricQuery.of(NS_LAMBDA, "Errors", dims, start, end, 1, "Sum"),
                    MetricQuery.of(NS_LAMBDA, "Duration", dims, start, end, 1, "Average")]
    queries += [MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, dims, start, end, 1, "Sum") for _, dims in scopes]
    series = ctx.platform.metrics(queries)
    checks = []
    for i, fn in enumerate(fns):
        inv = sum(p.value for p in series[3 * i])
        err = sum(p.value for p in series[3 * i + 1])
        durations = series[3 * i + 2]
        if inv:
            rate = 100.0 * err / inv
            ok = rate <= spec.error_rate_threshold
            checks.append(
                {
                    "name": f"{fn} error rate",
                    "ok": ok,
                    "detail": f"{rate:.1f} % ({err:.0f}/{inv:.0f}) vs {spec.error_rate_threshold:g} %",
                }
            )
        else:
            checks.append({"name": f"{fn} error rate", "ok": True, "detail": "no invocations yet"})
        limit = spec.duration_p99_limits.get(fn)
        n = sum(p.sample_count for p in durations)
        if n and limit is not None:
            avg = sum(p.value * p.sample_count for p in durations) / n
            checks.append(
                {
                    "name": f"{fn} average duration",
                    "ok": avg <= limit,
                    "detail": f"{avg:.0f} ms vs limit {limit:g} ms",
                }
            )
    for k, (q, _) in enumerate(scopes):
        arrivals = sum(p.value for p in series[3 * len(fns) + k])
        checks.append(
            {
                "name": f"DLQ {q}",
                "ok": arrivals == 0,
                "detail": f"{arrivals:.0f} arrival(s) since r{ctx.release} took traffic",
            }
        )
    return checks


def _function_hook(hook: HookSpec, ctx: HookContext) -> tuple[bool, str]:
    """A CodeDeploy-style hook function: gets the deployment ids, answers Succeeded or Failed."""
    assert hook.function is not None
    event = {
        "DeploymentId": ctx.deployment_id,
        "LifecycleEventHookExecutionId": f"{ctx.deployment_id}-{hook.function}",
        "backout": {"env": ctx.env, "target_release": ctx.release, "target_versions": dict(ctx.target),
                    "gateway_url": ctx.gateway_url},
    }
    r = _invoke(ctx, hook.function, event, time.monotonic() + hook.timeout)
    if not r.ok:
        return False, _error_text(r.payload, r)
    status = r.payload.get("status") if isinstance(r.payload, dict) else r.payload
    return status == "Succeeded", f"{hook.function} returned {r.payload!r}"


def _command_hook(hook: HookSpec, ctx: HookContext) -> tuple[bool, str]:
    assert hook.command is not None
    env = dict(
        os.environ,
        PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        API_BASE_URL=ctx.gateway_url,
        ENVIRONMENT=ctx.env,
        BACKOUT_ENV=ctx.env,
        BACKOUT_DEPLOYMENT_ID=ctx.deployment_id,
        BACKOUT_TARGET_RELEASE=str(ctx.release),
        BACKOUT_TARGET_VERSIONS=json.dumps(ctx.target),
    )
    try:
        r = subprocess.run(
            hook.command,
            shell=True,
            cwd=ctx.manifest.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=hook.timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = ((e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "").encode()).decode(
            errors="replace"
        )
        return False, f"timed out after {hook.timeout:g} s; output: {out[-1000:]}"
    out = (r.stdout + r.stderr).strip()[-2000:]
    return r.returncode == 0, f"exit {r.returncode}: {out}"


def _http_hook(hook: HookSpec, ctx: HookContext) -> tuple[bool, str]:
    assert hook.http is not None
    method, _, target = hook.http.partition(" ")
    if not target:
        method, target = "GET", hook.http
    url = target if target.startswith("http") else f"{ctx.gateway_url.rstrip('/')}{target}"
    try:
        r = httpx.request(method, url, timeout=hook.timeout)
    except httpx.HTTPError as e:
        return False, f"{method} {url} failed: {e}"
    return 200 <= r.status_code < 300, f"{method} {url} → {r.status_code}: {r.text[:300]}"


def _invoke(ctx: HookContext, fn: str, event: Any, deadline: float) -> Any:
    """Invoke the new version of `fn`; while throttled (busy, not broken) retry until `deadline`."""
    version = ctx.target.get(fn)  # a hook function outside the deployment runs on its live alias
    r = ctx.platform.invoke(fn, version, event)
    while r.throttled and time.monotonic() < deadline:
        time.sleep(0.1)
        r = ctx.platform.invoke(fn, version, event)
    return r


def _error_text(payload: Any, r: Any) -> str:
    if getattr(r, "throttled", False):
        return "throttled"
    if isinstance(payload, dict):
        return f"{payload.get('errorType', 'Error')}: {payload.get('errorMessage', '')}"[:500]
    return str(payload)[:500]
