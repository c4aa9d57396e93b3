"""One invocation's metrics as a CloudWatch Embedded Metric Format (EMF) document, and back.

EMF is a JSON object on one log line: `_aws.Timestamp` (epoch milliseconds) and
`_aws.CloudWatchMetrics`, a list of *directives*, each a `Namespace`, `Dimensions` (a list of
dimension sets, each a list of names of top-level members) and `Metrics` (`Name`, `Unit`,
`StorageResolution`); the dimension values and the metric values are top-level members. CloudWatch
Logs turns each metric of a directive into one datapoint per dimension set.

powertools' `Metrics`/`EphemeralMetrics` write one directive per document, so every metric of a
document shares the same dimension sets. The contract needs three groups with different dimension
sets (function, API stage, dead-letter queue) in one line per invocation, so the document is
written here; `metric_data` is the other half, what CloudWatch Logs extracts from it (tests and
emulators feed it to `put_metric_data`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NAMESPACE = "Backout"
HIGH_RESOLUTION = 1  # StorageResolution: 1-second datapoints

# The contract's metrics: (name, unit) per group.
FUNCTION_METRICS = (("Invocations", "Count"), ("Errors", "Count"), ("Duration", "Milliseconds"))
API_METRICS = (("Count", "Count"), ("4XXError", "Count"), ("5XXError", "Count"))
DLQ_METRICS = (("DeadLetterArrivals", "Count"),)

# Dimension sets per group: with ExecutedVersion (per version) and without (the whole alias).
FUNCTION_DIMENSIONS = (("FunctionName", "ExecutedVersion"), ("FunctionName",))
API_DIMENSIONS = (("ApiName", "Stage", "ExecutedVersion"), ("ApiName", "Stage"))
DLQ_DIMENSIONS = (("QueueName", "ExecutedVersion"), ("QueueName",))


@dataclass(frozen=True)
class Group:
    """Metrics that share dimension sets: one directive of the document."""

    dimension_sets: tuple[tuple[str, ...], ...]
    metrics: tuple[tuple[str, str], ...]  # (name, unit)

    def directive(self) -> dict[str, Any]:
        return {
            "Namespace": NAMESPACE,
            "Dimensions": [list(s) for s in self.dimension_sets],
            "Metrics": [{"Name": n, "Unit": u, "StorageResolution": HIGH_RESOLUTION} for n, u in self.metrics],
        }


FUNCTION = Group(FUNCTION_DIMENSIONS, FUNCTION_METRICS)
API = Group(API_DIMENSIONS, API_METRICS)
DLQ = Group(DLQ_DIMENSIONS, DLQ_METRICS)
# The directives never change and a process's dimension values hardly ever do: both are serialised
# once, so an invocation pays for its timestamp and its values only.
_DIRECTIVES = {g: json.dumps(g.directive(), separators=(",", ":")) for g in (FUNCTION, API, DLQ)}


@functools.lru_cache(maxsize=16)
def _head(groups: tuple[Group, ...]) -> str:
    return '{"_aws":{"CloudWatchMetrics":[' + ",".join(_DIRECTIVES[g] for g in groups) + '],"Timestamp":'


@functools.lru_cache(maxsize=256)
def _members(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))[1:-1]  # JSON-escaped whatever the values


def line(
    timestamp_ms: int, groups: Sequence[Group], dimensions: Mapping[str, str], values: Mapping[str, int | float]
) -> str:
    """The EMF document of `groups` as one compact log line, every dimension value and metric value
    at the top level (no newline inside, whatever the values: strings are JSON-escaped as ASCII)."""
    numbers = _NUMBERS(values)[1:-1]  # C-encoded; a NaN or infinity raises ValueError (CloudWatch refuses them)
    return f"{_head(tuple(groups))}{int(timestamp_ms)}}},{_members(tuple(dimensions.items()))},{numbers}}}"


_NUMBERS = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def metric_data(doc: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What CloudWatch Logs extracts from an EMF document: per namespace, `put_metric_data` entries
    (one per metric value and dimension set, with the document's timestamp, unit and resolution).

    Raises ValueError for a document that is not EMF (no `_aws.CloudWatchMetrics`, a dimension or a
    metric value that is missing), as CloudWatch would reject it."""
    import datetime as dt

    aws = doc.get("_aws")
    if not isinstance(aws, Mapping) or not isinstance(aws.get("CloudWatchMetrics"), list):
        raise ValueError("not an EMF document: no _aws.CloudWatchMetrics")
    when = dt.datetime.fromtimestamp(int(aws["Timestamp"]) / 1000.0, dt.UTC)
    out: dict[str, list[dict[str, Any]]] = {}
    for directive in aws["CloudWatchMetrics"]:
        entries = out.setdefault(directive["Namespace"], [])
        for metric in directive["Metrics"]:
            name = metric["Name"]
            if name not in doc:
                raise ValueError(f"EMF metric {name!r} has no value in the document")
            raw = doc[name]
            for dims in directive["Dimensions"]:
                missing = [d for d in dims if d not in doc]
                if missing:
                    raise ValueError(f"EMF dimension(s) {missing} of {name!r} have no value in the document")
                for value in raw if isinstance(raw, list) else [raw]:
                    entries.append({
                        "MetricName": name,
                        "Dimensions": [{"Name": d, "Value": str(doc[d])} for d in dims],
                        "Timestamp": when,
                        "Value": float(value),
                        "Unit": metric.get("Unit", "None"),
                        "StorageResolution": int(metric.get("StorageResolution", 60)),
                    })
    return out
