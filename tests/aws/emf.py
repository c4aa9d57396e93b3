"""Invocation metrics in the handler wrapper's shape, without running a function.

`emf_document` builds one invocation's CloudWatch Embedded Metric Format line as the wrapper prints
it (namespace `Backout`, high resolution, the contract's dimension sets); `put_emf` does what
CloudWatch Logs does with such a line — it turns every metric of every dimension set into a
datapoint (here with `put_metric_data`), so a line the real wrapper printed works the same."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

NAMESPACE = "Backout"


def emf_document(function: str, version: str, error: bool, duration_ms: float = 12.0,
                 ts: float | None = None) -> dict[str, Any]:
    """One invocation of `function` `version`: Invocations 1, Errors 1/0, Duration."""
    ts = time.time() if ts is None else ts
    metrics = [{"Name": "Invocations", "Unit": "Count", "StorageResolution": 1},
               {"Name": "Errors", "Unit": "Count", "StorageResolution": 1},
               {"Name": "Duration", "Unit": "Milliseconds", "StorageResolution": 1}]
    return {
        "_aws": {"Timestamp": int(ts * 1000), "CloudWatchMetrics": [{
            "Namespace": NAMESPACE, "Dimensions": [["FunctionName", "ExecutedVersion"], ["FunctionName"]],
            "Metrics": metrics}]},
        "FunctionName": function, "ExecutedVersion": str(version),
        "Invocations": 1, "Errors": 1 if error else 0, "Duration": duration_ms,
    }


def put_emf(cloudwatch: Any, lines: list[str | dict[str, Any]]) -> int:
    """Every metric of every EMF line as CloudWatch Logs would extract it; returns the datapoints sent."""
    data: list[dict[str, Any]] = []
    for line in lines:
        doc = json.loads(line) if isinstance(line, str) else line
        meta = doc["_aws"]
        ts = datetime.fromtimestamp(meta["Timestamp"] / 1000, UTC)
        for directive in meta["CloudWatchMetrics"]:
            for dim_set in directive["Dimensions"]:
                dims = [{"Name": d, "Value": str(doc[d])} for d in dim_set]
                for m in directive["Metrics"]:
                    values = doc[m["Name"]] if isinstance(doc[m["Name"]], list) else [doc[m["Name"]]]
                    for v in values:
                        data.append({"MetricName": m["Name"], "Dimensions": dims, "Timestamp": ts,
                                     "Value": float(v), "Unit": m.get("Unit", "None"),
                                     "StorageResolution": int(m.get("StorageResolution", 60))})
                namespace = directive["Namespace"]
    for i in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[i : i + 1000])
    return len(data)
