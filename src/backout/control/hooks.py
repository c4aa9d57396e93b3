"""Pre-traffic and post-traffic hooks: the checks a new version must pass before and after it
takes traffic. A failure or a timeout rolls the deployment back, and the hook's output is kept
as evidence in the deployment's events.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from backout import outbound
from backout.control.alarms import dlq_scopes
from backout.control.analysis import default_judges
from backout.control.probes import Probe, probe_for
from backout.control.smoke import run_smoke
from backout.manifest import HookSpec, Manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT, NS_LAMBDA, MetricQuery, Platform


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
    # post-traffic: when the new version took all the traffic for good, so that no judge compared what came
    # after (-inf: no step ever split the traffic, nothing was compared); None: unknown, or not at 100 %
    alone_since: float | None = None

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


def run_hooks(
    phase: str, hooks: list[HookSpec], ctx: HookContext, on_result: Callable[[HookResult], bool] | None = None
) -> list[HookResult]:
    """Run hooks in order, stopping at the first failure (its evidence is what matters). `on_result` hears
    of each result as it comes (an operator sees a hook pass while the next one runs) and answers whether
    to go on: a deployment rolled back meanwhile has no use for its remaining hooks."""
    results = []
    for h in hooks:
        r = run_hook(phase, h, ctx)
        results.append(r)
        go_on = on_result(r) if on_result is not None else True
        if not r.ok or not go_on:
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
    """Each new version answers a probe of its own kind (`control/probes.py`); table, store and queues
    reachable. A function backout has no probe for is not invoked, and the check says so.

    A throttled probe is retried until `timeout`: under load the function's reserved concurrency may
    be taken by the stable version's work, which says nothing about the new one."""
    checks = []
    deadline = time.monotonic() + timeout
    for fn in ctx.platform.functions():
        checks.append(probe_check(ctx.platform, probe_for(ctx.manifest, fn, ctx.env), ctx.target[fn], deadline))
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
    traffic, from one batched metrics call of 1 s periods.

    With `confirm_with_judge` the rule is the alarms' (`analysis.verdict`): what the judges compared is
    theirs, so a background error rate fails this check only above `error_rate_ceiling` and DLQ arrivals
    are shown without failing it; what no judge could compare is held to the thresholds, as the alarm
    acting alone would be — the error rate since the new version took all the traffic (`alone_since`)
    with at least `min_invocations`, and everything (DLQ arrivals too) when no judge watches the
    function, the stable version served none of its requests, or no step ever split the traffic."""
    spec = ctx.manifest.environment(ctx.env)
    limits = ctx.manifest.duration_p99_limits(ctx.env)  # seconds
    confirm = bool(spec.confirm_with_judge)
    threshold = float(spec.error_rate_threshold)
    now = time.time()
    start, end = int(ctx.since), int(now) + 1
    fns = ctx.platform.functions()
    dlqs = sorted({q.dead_letter_queue for q in ctx.manifest.queues.values() if q.dead_letter_queue is not None})
    scopes = [(q, name, dims) for q in dlqs for name, dims in dlq_scopes(ctx.manifest, q, ctx.target)]
    judges = default_judges(ctx.manifest, ctx.env, ctx.target, ctx.stable, ctx.since) if confirm else []
    queries: dict[tuple[str, ...], MetricQuery] = {}
    for fn in fns:
        dims = {"FunctionName": fn, "ExecutedVersion": ctx.target[fn]}
        for metric, stat in (("Invocations", "Sum"), ("Errors", "Sum"), ("Duration", "Average")):
            queries[(fn, metric)] = MetricQuery.of(NS_LAMBDA, metric, dims, start, end, 1, stat)
        if confirm:
            stable = {"FunctionName": fn, "ExecutedVersion": ctx.stable.get(fn, ctx.target[fn])}
            queries[(fn, "stable")] = MetricQuery.of(NS_LAMBDA, "Invocations", stable, start, end, 1, "Sum")
    for _, name, dims in scopes:
        queries[("dlq", name)] = MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, dims, start, end, 1, "Sum")
    series = dict(zip(queries, ctx.platform.metrics(list(queries.values())), strict=True))
    alone_from = ctx.alone_since if ctx.alone_since is None or math.isinf(ctx.alone_since) \
        else math.ceil(ctx.alone_since)  # the whole seconds after it

    def total(key: tuple[str, ...], alone: bool = False) -> float:
        """The series' sum since `since` (`alone`: over the seconds since `alone_since` only)."""
        if not alone:
            return sum(p.value for p in series[key])
        return 0.0 if alone_from is None else sum(p.value for p in series[key] if p.timestamp >= alone_from)

    def uncompared(alarm: str, fn_list: list[str]) -> str | None:
        """Why no judge compared what `alarm` watches on `fn_list` (None: they did, at least before 100 %)."""
        if not any(alarm in j.confirms for j in judges):
            return "no judge watches it"
        if ctx.alone_since is not None and math.isinf(ctx.alone_since):
            return "no step split the traffic"
        if not any(total((fn, "stable")) for fn in fn_list):
            return "the stable version served no request"
        return None

    def rate(err: float, inv: float, limit: float) -> tuple[bool, str]:
        r = 100.0 * err / inv
        return r <= limit, f"{r:.1f} % ({err:.0f}/{inv:.0f}) vs {limit:g} %"

    def alone(err: float, inv: float, why: str) -> tuple[bool, str]:
        """The threshold on what no judge compared, as the error-rate alarm acting alone sees it."""
        if inv < spec.min_invocations:
            return True, f"{why}: {inv:.0f} invocations, fewer than {spec.min_invocations} to hold to {threshold:g} %"
        ok, text = rate(err, inv, threshold)
        return ok, f"{text} ({why})"

    checks = []
    for fn in fns:
        inv, err = total((fn, "Invocations")), total((fn, "Errors"))
        name = f"{fn} error rate"
        why = uncompared(f"error-rate:{fn}", [fn]) if confirm and inv else None
        if not inv:
            checks.append({"name": name, "ok": True, "detail": "no invocations yet"})
        elif not confirm:
            ok, detail = rate(err, inv, threshold)
            checks.append({"name": name, "ok": ok, "detail": detail})
        elif why is not None:
            ok, detail = alone(err, inv, f"no stable traffic to compare with: {why}")
            checks.append({"name": name, "ok": ok, "detail": detail})
        else:
            ok, detail = rate(err, inv, float(spec.error_rate_ceiling))
            detail += " (the ceiling: confirm_with_judge)"
            inv_alone = total((fn, "Invocations"), alone=True)
            if inv_alone:
                ok_alone, text = alone(total((fn, "Errors"), alone=True), inv_alone,
                                       "at 100 %, no stable traffic to compare with")
                ok, detail = ok and ok_alone, f"{detail}; since the new version took all the traffic: {text}"
            checks.append({"name": name, "ok": ok, "detail": detail})
        limit = limits.get(fn)
        durations = series[(fn, "Duration")]
        n = sum(p.sample_count for p in durations)
        if n and limit is not None:
            avg = sum(p.value * p.sample_count for p in durations) / n  # the Duration metric is in ms
            checks.append(
                {
                    "name": f"{fn} average duration",
                    "ok": avg <= limit * 1000.0,
                    "detail": f"{avg:.0f} ms vs limit {limit * 1000.0:g} ms",
                }
            )
    for q, name, _ in scopes:
        arrivals = total(("dlq", name))
        detail = f"{arrivals:.0f} arrival(s) since r{ctx.release} took traffic"
        ok = arrivals == 0
        if confirm and arrivals:
            sources = {n for n, qs in ctx.manifest.queues.items() if qs.dead_letter_queue == q}
            consumers = [fn for fn in fns if fn in ctx.manifest.functions
                         and any(e.queue in sources for e in ctx.manifest.functions[fn].queue_events)]
            why = uncompared(name, consumers)
            if why is None:
                ok, detail = True, f"{detail} (confirm_with_judge: left to the judges)"
            else:
                detail = f"{detail} (no stable traffic to compare with: {why})"
        checks.append({"name": f"DLQ {q}", "ok": ok, "detail": detail})
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
        r = outbound.request(method, url, timeout=hook.timeout)
    except httpx.HTTPError as e:
        return False, f"{method} {url} failed: {e}"
    return 200 <= r.status_code < 300, f"{method} {url} → {r.status_code}: {r.text[:300]}"


def probe_check(platform: Platform, probe: Probe, version: str, deadline: float) -> dict[str, Any]:
    """One function version against its probe: `{name, ok, detail}`; a failure says what was sent and how
    to declare the event the function expects. `verify` runs the same check on the live versions."""
    name = f"invoke {probe.function} v{version}"
    if probe.event is None:
        return {"name": name, "ok": True, "detail": f"not invoked: {probe.sent.removeprefix('nothing: ')}",
                "invoked": False}
    r = _retry_throttled(platform, probe.function, version, probe.event, deadline)
    ok, why = probe.judge(r.ok, r.payload)
    if ok:
        return {"name": name, "ok": True, "detail": f"v{version} {why} in {r.duration_ms:.0f} ms", "invoked": True}
    err = _error_text(r.payload, r) if not r.ok else why
    return {"name": name, "ok": False, "detail": f"{err} — {probe.how_to_declare()}", "invoked": True}


def _invoke(ctx: HookContext, fn: str, event: Any, deadline: float) -> Any:
    """Invoke the new version of `fn` (a hook function outside the deployment runs on its live alias)."""
    return _retry_throttled(ctx.platform, fn, ctx.target.get(fn), event, deadline)


def _retry_throttled(platform: Platform, fn: str, version: str | None, event: Any, deadline: float) -> Any:
    """Invoke; while throttled (busy, not broken) retry until `deadline`."""
    r = platform.invoke(fn, version, event)
    while r.throttled and time.monotonic() < deadline:
        time.sleep(0.1)
        r = platform.invoke(fn, version, event)
    return r


def _error_text(payload: Any, r: Any) -> str:
    if getattr(r, "throttled", False):
        return "throttled"
    if isinstance(payload, dict):
        return f"{payload.get('errorType', 'Error')}: {payload.get('errorMessage', '')}"[:500]
    return str(payload)[:500]
