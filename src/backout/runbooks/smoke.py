"""The procedure's smoke tests as a runbook: the service's own tests against the live API
(`control/smoke.py` runs them; the post-traffic hook uses the same runner)."""

from __future__ import annotations

from backout.control.smoke import SmokeResult
from backout.control.smoke import run_smoke as _run
from backout.runbooks.context import RunbookContext

__all__ = ["SmokeResult", "run_smoke"]


def run_smoke(ctx: RunbookContext, timeout: float = 120.0) -> list[SmokeResult]:
    return _run(ctx.manifest, ctx.env, ctx.gateway_url, timeout=timeout)
