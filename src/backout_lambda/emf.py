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
# The directives never change: serialised once, so an invocation pays only for its own values.
_DIRECTIVES = {g: json.dumps(g.directive(), separators=(",", ":")) for g in (FUNCTION, API, DLQ)}


def line(
    timestamp_ms: int, groups: Sequence[Group], dimensions: Mapping[str, str], values: Mapping[str, float]
) -> str:
    """The EMF document of `groups` as one compact log line, every dimension value and metric value
    at the top level (no newline inside, whatever the values: non-ASCII is escaped)."""
    members = json.dumps({**dimensions, **values}, separators=(",", ":"))
    directives = ",".join(_DIRECTIVES[g] for g in groups)
    return f'{{"_aws":{{"Timestamp":{int(timestamp_ms)},"CloudWatchMetrics":[{directives}]}},{members[1:]}'


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
