"""Probes: the events backout itself sends a function (the pre-traffic check, `verify`), each of the
function's own kind, so that a handler written to AWS's event shapes alone answers them.

| function | probe |
|---|---|
| declares `test_event` (inline or a JSON file) | that event as given (HTTP or SQS shaped: marked) |
| serves HTTP routes | an API Gateway REST proxy event (format 1.0): GET on the health route, else its first GET |
| consumes a queue | an SQS batch of one marked message; rejecting it through `batchItemFailures` is correct |
| neither | not invoked (the check says so) |

The health route is `GET /health`, else the first GET without path parameters.

Every probe is marked — the header `X-Backout-Probe` or the SQS message attribute `backout-probe` — so
that the platform can keep it out of the service's traffic figures and a drill's injected faults spare
it (the drill proves the alarms, not the probe). `{"test": true}`, the procedure's `aws lambda invoke`
payload, still counts as a probe for an operator's `backout invoke`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from backout.manifest import HttpEvent, Manifest

PROBE_HEADER = "X-Backout-Probe"
PROBE_ATTRIBUTE = "backout-probe"
PROBE_BODY = {"backout_probe": True}
USER_AGENT = "backout-probe"
ACCOUNT_ID = "000000000000"


@dataclass(frozen=True)
class Probe:
    """What backout sends one function, and how the answer is judged."""

    function: str
    kind: str  # "http", "queue", "declared" or "none"
    event: dict[str, Any] | None
    sent: str  # "GET /health (API Gateway proxy event)": what a failure says was sent

    def judge(self, ok: bool, payload: Any) -> tuple[bool, str]:
        """(passed, why): an invocation error fails; so does an HTTP answer of 5xx or not a proxy response.
        A queue consumer may reject the marked message through `batchItemFailures`."""
        if not ok:
            return False, "the invocation failed"
        if self.kind == "http" or (self.kind == "declared" and _is_http(self.event)):
            status = payload.get("statusCode") if isinstance(payload, dict) else None
            if isinstance(status, str) and status.isdigit():
                status = int(status)
            if not isinstance(status, int):
                return False, f"the answer is not an API Gateway proxy response: {str(payload)[:200]}"
            if status >= 500:
                return False, f"answered {status}"
            return True, f"answered {status}"
        if self.kind == "queue":
            failures = payload.get("batchItemFailures") if isinstance(payload, dict) else None
            return True, "rejected the marked message" if failures else "accepted the marked message"
        return True, "answered"

    def how_to_declare(self) -> str:
        return (f"sent {self.sent}; to send {self.function} another event, declare it in the manifest: "
                f"[functions.{self.function}] test_event = {{ … }} (or test_event = \"events/{self.function}.json\")")


def health_route(manifest: Manifest) -> tuple[str, HttpEvent] | None:
    """(function, route) of the service's health route: `GET /health`, else the first GET without path
    parameters; None when the API has neither."""
    gets = [(fn, h) for fn, f in manifest.functions.items() for h in f.http_events if h.method in ("GET", "ANY")]
    for fn, h in gets:
        if h.path == "/health":
            return fn, h
    return next(((fn, h) for fn, h in gets if "{" not in h.path), None)


def probe_for(manifest: Manifest, fn: str, stage: str = "probe") -> Probe:
    """The probe of one function (see the module's table)."""
    spec = manifest.functions[fn]
    declared = manifest.test_event(fn)
    if declared is not None:
        return Probe(fn, "declared", mark(declared), "the manifest's test_event")
    if spec.http_events:
        route = _route_of(manifest, fn)
        if route is not None:
            path = re.sub(r"\{([^}+]+)\+?\}", "probe", route.path)
            return Probe(fn, "http", proxy_event("GET", path, route.path, stage),
                         f"GET {path} (an API Gateway REST proxy event)")
        return Probe(fn, "none", None, "nothing: its routes take no GET and it declares no test_event")
    if spec.queue_events:
        q = spec.queue_events[0].queue
        return Probe(fn, "queue", sqs_event(q), f"an SQS batch of one message from {q} "
                     f"(body {json.dumps(PROBE_BODY)}, attribute {PROBE_ATTRIBUTE})")
    return Probe(fn, "none", None, "nothing: no HTTP or queue event and no test_event")


def _route_of(manifest: Manifest, fn: str) -> HttpEvent | None:
    hr = health_route(manifest)
    if hr is not None and hr[0] == fn:
        return hr[1]
    gets = [h for h in manifest.functions[fn].http_events if h.method in ("GET", "ANY")]
    return next((h for h in gets if "{" not in h.path), gets[0] if gets else None)


def proxy_event(method: str, path: str, resource: str, stage: str) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0) as API Gateway sends it, marked as a probe."""
    now = time.time()
    rid = str(uuid.uuid4())
    headers = {"Accept": "*/*", "Host": "localhost", "User-Agent": USER_AGENT, PROBE_HEADER: "true",
               "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Port": "443", "X-Forwarded-Proto": "https"}
    params = {name: "probe" for name in re.findall(r"\{([^}+]+)\+?\}", resource)}
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": hashlib.sha1(resource.encode()).hexdigest()[:6],
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": rid,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{stage}{path}",
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "localhost",
            "requestTimeEpoch": int(now * 1000),
            "requestId": rid,
            "identity": {"sourceIp": "127.0.0.1", "userAgent": USER_AGENT, "accountId": None, "caller": None,
                         "user": None, "userArn": None, "accessKey": None, "cognitoIdentityPoolId": None,
                         "cognitoIdentityId": None, "cognitoAuthenticationType": None,
                         "cognitoAuthenticationProvider": None, "principalOrgId": None},
            "domainName": "localhost",
            "apiId": "backoutprb",
        },
        "body": None,
        "isBase64Encoded": False,
    }


def sqs_event(queue: str, region: str = "local") -> dict[str, Any]:
    """An SQS event of one marked message, as Lambda's event source mapping delivers it."""
    body = json.dumps(PROBE_BODY)
    now = int(time.time() * 1000)
    return {"Records": [{
        "messageId": str(uuid.uuid4()),
        "receiptHandle": f"backout-probe-{uuid.uuid4().hex}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(now), "SenderId": ACCOUNT_ID,
                       "ApproximateFirstReceiveTimestamp": str(now)},
        "messageAttributes": {PROBE_ATTRIBUTE: _attribute("true")},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{queue}",
        "awsRegion": region,
    }]}


def mark(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of a declared event with the probe marker where its shape has room for one (an HTTP
    request's headers, each SQS record's message attributes); any other event is sent as given."""
    ev = copy.deepcopy(event)
    if _is_http(ev):
        headers = ev.get("headers") if isinstance(ev.get("headers"), dict) else {}
        ev["headers"] = {**headers, PROBE_HEADER: "true"}
    elif isinstance(ev.get("Records"), list):
        for r in ev["Records"]:
            if isinstance(r, dict):
                attrs = r.get("messageAttributes") if isinstance(r.get("messageAttributes"), dict) else {}
                r["messageAttributes"] = {**attrs, PROBE_ATTRIBUTE: _attribute("true")}
    return ev


def is_probe(event: Any) -> bool:
    """True for backout's own probes: marked ones, and the procedure's `{"test": true}`."""
    if not isinstance(event, dict):
        return False
    if event.get("test") is True:
        return True
    headers = event.get("headers")
    if isinstance(headers, dict) and any(k.lower() == PROBE_HEADER.lower() for k in headers):
        return True
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and all(
        isinstance(r, dict) and PROBE_ATTRIBUTE in (r.get("messageAttributes") or {}) for r in records)


def _is_http(event: Any) -> bool:
    return isinstance(event, dict) and "httpMethod" in event


def _attribute(value: str) -> dict[str, Any]:
    return {"stringValue": value, "stringListValues": [], "binaryListValues": [], "dataType": "String"}
