"""The metric reader: the control plane's queries answered with ONE batched `get_metric_data`.

The control plane asks in CloudWatch's own terms (`backout.platforms.base`): per-version Lambda
and API metrics with an `ExecutedVersion` dimension, `Backout/DeadLetterArrivals` per queue, the
standard SQS and Lambda metrics otherwise. On AWS:

- `AWS/Lambda` Invocations, Errors, Duration … {FunctionName, ExecutedVersion} → `Backout`, the same
  metric and dimensions (the handler wrapper's high-resolution EMF); when that series is empty →
  `AWS/Lambda` {FunctionName: real name, Resource: name:live, ExecutedVersion}, per minute;
- `AWS/ApiGateway` Count, 4XXError, 5XXError {ApiName, Stage, ExecutedVersion} → `Backout`, the same
  dimensions; no fallback (API Gateway's own metrics have no version dimension);
- `Backout` DeadLetterArrivals {QueueName} → as asked, plus the queue's real name when it differs
  (summed: the wrapper names the DLQ by `BACKOUT_DLQ_NAME`, whichever the template set);
- `Backout/AlarmState` AlarmState {AlarmName} → `describe_alarms`: 1 in ALARM, 0 OK, nothing else;
- anything else (`AWS/SQS`, `AWS/Lambda` without a version …) → the standard namespace with the
  real names (FunctionName, Resource, QueueName, ApiName, Stage), per minute.

Standard AWS metrics exist only per minute, so their queries go out with a period of at least 60 s
(starts floored to the minute); their datapoints cover a whole minute each. A fallback taken is
recorded in `fallbacks` (series → last time) and logged once per series.

Every query goes in the same call, fallbacks included (a second call only for more than
`MAX_QUERIES`): a non-Sum statistic also asks its SampleCount (the alarms' `min_samples` guard
needs it); a Sum series carries sample_count = its value, exact for the wrapper's count metrics
(1 per event). GetMetricData has one time range per call: the union of the queries' ranges, each
series cut back to its own range here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.aws.config import Clients, Resources, aws_errors, function_name, queue_name
from backout.platforms.base import (
    DLQ_ARRIVALS,
    LIVE_ALIAS,
    MAX_QUERIES,
    NS_ALARM_STATE,
    NS_API,
    NS_BACKOUT,
    NS_LAMBDA,
    Datapoint,
    MetricQuery,
)

log = logging.getLogger(__name__)

SUMS = ("Sum", "SampleCount")


@dataclass(frozen=True)
class _Ask:
    """One CloudWatch series to ask: (namespace, metric, dimensions, period, statistic)."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    period: int
    statistic: str


@dataclass
class _Plan:
    """How one control-plane query is answered: the primary series (summed when several), and the
    fallback series used when the primary ones hold no datapoint."""

    query: MetricQuery
    primary: list[_Ask] = field(default_factory=list)
    fallback: list[_Ask] = field(default_factory=list)
    alarm: str | None = None  # an AlarmState query: answered by describe_alarms


def _minute(period: int) -> int:
    return max(60, int(math.ceil(period / 60) * 60))


class MetricReader:
    def __init__(self, manifest: Manifest, env: str, clients: Clients, resources: Callable[[], Resources]) -> None:
        self.manifest = manifest
        self.env = env
        self.clients = clients
        self.resources = resources
        self.fallbacks: dict[str, float] = {}
        self.missing_alarms: set[str] = set()
        self._api_name: str | None = None
        self._lock = threading.Lock()

    # --- the mapping -------------------------------------------------------------------------------
    def plan(self, q: MetricQuery) -> _Plan:
        dims = dict(q.dimensions)
        p = _Plan(q)
        if q.namespace == NS_ALARM_STATE:
            p.alarm = dims.get("AlarmName", "")
            return p
        if q.namespace in (NS_LAMBDA, NS_API) and "ExecutedVersion" in dims:
            p.primary.append(_Ask(NS_BACKOUT, q.metric, q.dimensions, q.period, q.statistic))
            if q.namespace == NS_LAMBDA and "FunctionName" in dims:
                real = self._function(dims["FunctionName"])
                std = {"FunctionName": real, "Resource": f"{real}:{LIVE_ALIAS}",
                       "ExecutedVersion": dims["ExecutedVersion"]}
                p.fallback.append(_Ask(NS_LAMBDA, q.metric, _dims(std), _minute(q.period), q.statistic))
            return p
        if q.namespace == NS_BACKOUT:
            p.primary.append(_Ask(NS_BACKOUT, q.metric, q.dimensions, q.period, q.statistic))
            if q.metric == DLQ_ARRIVALS and "QueueName" in dims and q.statistic in SUMS:
                real = self._queue(dims["QueueName"])
                if real != dims["QueueName"]:
                    p.primary.append(_Ask(NS_BACKOUT, q.metric, _dims({**dims, "QueueName": real}),
                                          q.period, q.statistic))
            return p
        p.primary.append(_Ask(q.namespace, q.metric, _dims(self._standard(dims)), _minute(q.period), q.statistic))
        return p

    def _standard(self, dims: dict[str, str]) -> dict[str, str]:
        out = dict(dims)
        if "FunctionName" in out:
            out["FunctionName"] = self._function(out["FunctionName"])
        if "Resource" in out:
            fn, _, qual = out["Resource"].partition(":")
            out["Resource"] = f"{self._function(fn)}:{qual}" if qual else self._function(fn)
        if "QueueName" in out:
            out["QueueName"] = self._queue(out["QueueName"])
        if "ApiName" in out and out["ApiName"] == self.manifest.service.name:
            out["ApiName"] = self._rest_api_name()
            if "Stage" in out and out["Stage"] == self.env and self.resources().stage:
                out["Stage"] = str(self.resources().stage)
        return out

    def _function(self, fn: str) -> str:
        return function_name(self.resources().functions.get(fn, fn))

    def _queue(self, q: str) -> str:
        url = self.resources().queues.get(q)
        return queue_name(url) if url else q

    def _rest_api_name(self) -> str:
        if self._api_name is None:
            api_id = self.resources().api_id
            name = self.manifest.service.name
            if api_id:
                with aws_errors(f"REST API {api_id}"):
                    name = str(self.clients("apigateway").get_rest_api(restApiId=api_id)["name"])
            self._api_name = name
        return self._api_name

    # --- the call --------------------------------------------------------------------------------
    def read(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        plans = [self.plan(q) for q in queries]
        asks: dict[tuple[_Ask, float, float], str] = {}  # (series, start, end) → query id
        for p in plans:
            for a in p.primary + p.fallback:
                self._ids(asks, a, p.query)
        values = self._get(asks)
        states = self._alarm_states(sorted({p.alarm for p in plans if p.alarm is not None}))
        out: list[list[Datapoint]] = []
        for p in plans:
            if p.alarm is not None:
                out.append(_state_point(p.query, states.get(p.alarm)))
                continue
            series = self._series(p.primary, p.query, asks, values)
            if not series and p.fallback:
                series = self._series(p.fallback, p.query, asks, values)
                if series:
                    self._record_fallback(p)
            out.append(series)
        return out

    def _ids(self, asks: dict[tuple[_Ask, float, float], str], a: _Ask, q: MetricQuery) -> None:
        start, end = _range(a, q)
        for stat in ([a.statistic] if a.statistic in SUMS else [a.statistic, "SampleCount"]):
            key = (_Ask(a.namespace, a.metric, a.dimensions, a.period, stat), start, end)
            asks.setdefault(key, f"m{len(asks)}")

    def _get(self, asks: dict[tuple[_Ask, float, float], str]) -> dict[str, dict[float, float]]:
        """One get_metric_data per MAX_QUERIES asks (paginated), every series by timestamp."""
        values: dict[str, dict[float, float]] = {}
        items = list(asks.items())
        cw = self.clients("cloudwatch")
        for i in range(0, len(items), MAX_QUERIES):
            chunk = items[i : i + MAX_QUERIES]
            start = min(k[1] for k, _ in chunk)
            end = max(k[2] for k, _ in chunk)
            mdq = [{"Id": qid, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": a.namespace, "MetricName": a.metric,
                           "Dimensions": [{"Name": n, "Value": v} for n, v in a.dimensions]},
                "Period": a.period, "Stat": a.statistic}} for (a, _, _), qid in chunk]
            kw: dict[str, Any] = {"MetricDataQueries": mdq, "StartTime": _dt(start), "EndTime": _dt(end),
                                  "ScanBy": "TimestampAscending"}
            with aws_errors("CloudWatch GetMetricData"):
                while True:
                    r = cw.get_metric_data(**kw)
                    for res in r.get("MetricDataResults", []):
                        got = values.setdefault(res["Id"], {})
                        for t, v in zip(res.get("Timestamps", []), res.get("Values", []), strict=False):
                            got[_epoch(t)] = float(v)
                    if not r.get("NextToken"):
                        break
                    kw["NextToken"] = r["NextToken"]
        return values

    def _series(self, group: list[_Ask], q: MetricQuery, asks: dict[tuple[_Ask, float, float], str],
                values: dict[str, dict[float, float]]) -> list[Datapoint]:
        """The datapoints of `q` from its asks (summed by timestamp over several), cut to its range."""
        merged: dict[float, tuple[float, float]] = {}
        for a in group:
            start, end = _range(a, q)
            main = values.get(asks[(a, start, end)], {})
            counts = main if a.statistic in SUMS else values.get(
                asks[(_Ask(a.namespace, a.metric, a.dimensions, a.period, "SampleCount"), start, end)], {})
            for t, v in main.items():
                if not start <= t < end:
                    continue
                n = counts.get(t, v)
                if t in merged:  # only Sum/SampleCount series are ever merged
                    merged[t] = (merged[t][0] + v, merged[t][1] + n)
                else:
                    merged[t] = (v, n)
        return [Datapoint(t, v, n) for t, (v, n) in sorted(merged.items())]

    def _record_fallback(self, p: _Plan) -> None:
        key = f"{p.query.namespace} {p.query.metric} {dict(p.query.dimensions)}"
        with self._lock:
            first = key not in self.fallbacks
            self.fallbacks[key] = time.time()
        if first:
            log.warning("no high-resolution %s series for %s: read the standard per-minute metric instead",
                        p.query.metric, dict(p.query.dimensions))

    # --- existing CloudWatch alarms -----------------------------------------------------------------
    def _alarm_states(self, names: list[str], warn: bool = True) -> dict[str, str]:
        """describe_alarms, up to 100 names a call (metric and composite alarms)."""
        states: dict[str, str] = {}
        cw = self.clients("cloudwatch")
        for i in range(0, len(names), 100):
            with aws_errors("CloudWatch DescribeAlarms"):
                r = cw.describe_alarms(AlarmNames=names[i : i + 100], AlarmTypes=["MetricAlarm", "CompositeAlarm"])
            for a in r.get("MetricAlarms", []) + r.get("CompositeAlarms", []):
                states[a["AlarmName"]] = a["StateValue"]
        missing = set(names) - set(states)
        if warn and missing - self.missing_alarms:
            log.warning("CloudWatch alarm(s) %s not found", ", ".join(sorted(missing)))
        self.missing_alarms = missing
        return states

    def check_alarms(self, names: list[str], where: str) -> None:
        """Every alarm the manifest names exists: a misspelt one would never fire."""
        self._alarm_states(names, warn=False)
        if self.missing_alarms:
            raise UsageError(f"{where}.alarms: no CloudWatch alarm named {', '.join(sorted(self.missing_alarms))}")


def _dims(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in d.items()))


def _range(a: _Ask, q: MetricQuery) -> tuple[float, float]:
    """The query's range, widened to whole periods of the series asked (CloudWatch aligns them)."""
    start = math.floor(q.start / a.period) * a.period
    end = math.ceil(q.end / a.period) * a.period if a.period != q.period else q.end
    return float(start), float(end)


def _state_point(q: MetricQuery, state: str | None) -> list[Datapoint]:
    """The alarm's state now, as one datapoint in the period holding the query's last second."""
    if state not in ("ALARM", "OK"):
        return []
    t = max(q.start, math.floor((math.ceil(q.end) - 1) / q.period) * q.period)
    return [Datapoint(float(t), 1.0 if state == "ALARM" else 0.0, 1.0)]


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _epoch(v: Any) -> float:
    return v.timestamp() if isinstance(v, datetime) else float(v)
