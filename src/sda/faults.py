"""Fault injection for drills: a release can be made faulty on purpose through its environment.

backout proves its automatic rollback by deploying a bad version to staging;
publishing the same code with `SDA_FAULTS` set is how a version becomes bad
in a controlled, observable way. Comma-separated, off unless set:

    api_error_rate=P      P % of API invocations raise (function error → gateway 5xx)
    api_latency_ms=N      every API invocation sleeps N ms first
    worker_error_rate=P   P % of worker invocations raise a transient error (retries → DLQ)
    worker_latency_ms=N   the worker sleeps N ms in drawing_analysis
    worker_hang           the worker sleeps past its timeout in drawing_analysis (→ timeout)
    worker_crash          the worker process exits hard in drawing_analysis (like an OOM kill)
    corrupt_results       drawing_analysis drops every other door (wrong results, no error)
"""

from __future__ import annotations

import os
import random

from sda.errors import TransientError


def active() -> dict[str, str]:
    out = {}
    for item in os.environ.get("SDA_FAULTS", "").split(","):
        item = item.strip()
        if item:
            name, _, value = item.partition("=")
            out[name.strip()] = value.strip()
    return out


def enabled(name: str) -> bool:
    return name in active()


def number(name: str, default: float = 0.0) -> float:
    value = active().get(name)
    if value is None:
        return default
    try:
        return float(value) if value else default
    except ValueError:
        return default


def roll(name: str) -> bool:
    """True with the configured percentage (e.g. `api_error_rate=25`)."""
    rate = number(name, 100.0 if name in active() else 0.0)
    return rate > 0 and random.random() * 100.0 < rate


class InjectedFault(TransientError):
    """A failure injected by SDA_FAULTS (never raised unless configured)."""
