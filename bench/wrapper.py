"""The handler wrapper's cost per invocation (`backout_lambda.instrument`; target < 50 µs).

Each case calls a trivial handler `N` times bare and `N` times decorated, in one process, with the
environment the SAM template sets and stdout sent to a real file (as Lambda ships stdout to
CloudWatch Logs, the line is written and flushed every time). The figure is the median over
7 rounds of (decorated − bare) CPU time per call: the line's construction, the JSON, the write and
the flush. `python -m bench.wrapper` runs it alone.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.platform import Figure

BENCHMARKS = ("wrapper",)
TARGET_US = 50.0
ENVIRONMENT = {
    "BACKOUT_SERVICE": "security-assistant",
    "BACKOUT_ENV": "prod",
    "BACKOUT_FUNCTION": "worker",
    "AWS_LAMBDA_FUNCTION_NAME": "security-assistant-worker-prod",
    "AWS_LAMBDA_FUNCTION_VERSION": "12",
    "BACKOUT_MAX_RECEIVE_COUNT": "3",
    "BACKOUT_DLQ_NAME": "processing-dlq",
}


def _events() -> dict[str, tuple[dict[str, Any], Any]]:
    from sda.events import api_event, sqs_event

    batch = sqs_event([json.dumps({"job_id": f"job_{i}"}) for i in range(10)], receive_count=3)
    failed = {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
    return {
        "API request (200)": (api_event("GET", "/health"), {"statusCode": 200, "body": "{}"}),
        "SQS batch of 10, one final failure": (batch, failed),
        "direct invocation": ({"test": True}, {"status": "ok"}),
    }


def _per_call(fn: Callable[[Any, Any], Any], event: Any, n: int) -> float:
    """CPU seconds per call (user + system: the write counts): what the invocation pays, and far less
    disturbed than wall time by other processes on a shared machine."""
    t0 = time.process_time()
    for _ in range(n):
        fn(event, None)
    return (time.process_time() - t0) / n


def measure(n: int = 20_000, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Per case: the wrapper's added microseconds per invocation (median, min, max over rounds)."""
    from backout_lambda import instrument

    saved_env = {k: os.environ.get(k) for k in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    saved_stdout = sys.stdout
    out: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryFile("w+") as log:
            sys.stdout = log
            for case, (event, result) in _events().items():
                def bare(event: Any, context: Any, result: Any = result) -> Any:
                    return result

                wrapped = instrument(bare)
                added = []
                for _ in range(rounds):
                    base = _per_call(bare, event, n)
                    added.append((_per_call(wrapped, event, n) - base) * 1e6)
                out[case] = {"median_us": statistics.median(added), "min_us": min(added), "max_us": max(added)}
    finally:
        sys.stdout = saved_stdout
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def run(only: set[str] | None, quick: bool = False) -> list[Figure]:
    """The figures for `python -m bench`."""
    if only is not None and "wrapper" not in only:
        return []
    result = measure(n=2_000 if quick else 20_000, rounds=3 if quick else 7)
    figures = []
    for case, r in result.items():
        spread = f"min {r['min_us']:.1f}, max {r['max_us']:.1f}"
        print(f"wrapper, {case}: +{r['median_us']:.1f} µs per invocation ({spread})")
        figures.append(Figure(f"wrapper cost, {case}", round(r["median_us"], 1), "µs", f"< {TARGET_US:.0f} µs",
                              r["median_us"] < TARGET_US, {k: round(v, 1) for k, v in r.items()}))
    return figures


if __name__ == "__main__":
    run(None)
