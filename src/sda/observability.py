"""Powertools logger and EMF metrics, configured the same way in every function.

Metrics are printed to stdout as CloudWatch Embedded Metric Format; the
platform turns them into metrics (namespace `SecurityAssistant` unless
POWERTOOLS_METRICS_NAMESPACE says otherwise).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "SecurityAssistant"
# an invocation that only acknowledges a duplicate has nothing to publish; that is not worth a warning
warnings.filterwarnings("ignore", message="No application metrics to publish")

__all__ = ["MetricUnit", "bind_context", "make_logger", "make_metrics"]


def make_logger(default_service: str) -> Logger:
    return Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", default_service))


def make_metrics(default_service: str) -> Metrics:
    return Metrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", NAMESPACE),
        service=os.environ.get("POWERTOOLS_SERVICE_NAME", default_service),
    )


def bind_context(logger: Logger, context: Any, **extra: Any) -> None:
    """Lambda context fields on every log line, from whatever the runtime's context provides."""
    keys = {
        "function_name": getattr(context, "function_name", None),
        "function_version": getattr(context, "function_version", None) or os.environ.get("AWS_LAMBDA_FUNCTION_VERSION"),
        "function_request_id": getattr(context, "aws_request_id", None),
        **extra,
    }
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


def remaining_seconds(context: Any) -> float | None:
    """Time left before the runtime stops this invocation, when the context can tell."""
    fn = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(fn):
        return None
    try:
        return float(fn()) / 1000.0
    except Exception:  # noqa: BLE001 - an odd context only disables the timeout watchdog
        return None
