"""Real event shapes for invoking the handlers directly (tests, local tools, smoke checks).

API Gateway REST v1 proxy events with real multipart bodies, SQS events, and
a Lambda-like context whose remaining time runs down like the real one.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROUTES = {  # path pattern → resource template, for `resource`/`pathParameters`
    "status": "/status/{job_id}",
    "download": "/download/{job_id}/{file_type}",
}


def multipart(
    fields: dict[str, str] | None = None, files: dict[str, tuple[str, bytes, str]] | None = None
) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request; files are (filename, bytes, content type)."""
    from urllib3 import encode_multipart_formdata

    parts: list[tuple[str, Any]] = list((fields or {}).items())
    parts += [(name, spec) for name, spec in (files or {}).items()]
    return encode_multipart_formdata(parts)


def _resource(path: str) -> tuple[str, dict[str, str] | None]:
    segments = path.strip("/").split("/")
    if len(segments) == 2 and segments[0] == "status":
        return ROUTES["status"], {"job_id": segments[1]}
    if len(segments) == 3 and segments[0] == "download":
        return ROUTES["download"], {"job_id": segments[1], "file_type": segments[2]}
    return path, None


def api_event(
    method: str,
    path: str,
    *,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    base64_body: bool | None = None,
    query: dict[str, str] | None = None,
    stage: str = "prod",
) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event; bytes bodies are base64-encoded as the gateway does."""
    headers = {"Host": "localhost", "User-Agent": "sda-events", **(headers or {})}
    if isinstance(body, bytes) and base64_body is not False:
        raw: str | None = base64.b64encode(body).decode()
        encoded = True
    else:
        raw = body.decode("utf-8") if isinstance(body, bytes) else body
        encoded = bool(base64_body)
    resource, params = _resource(path)
    request_id = str(uuid.uuid4())
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method.upper(),
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method.upper(),
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": request_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("User-Agent")},
        },
        "body": raw,
        "isBase64Encoded": encoded,
    }


def upload_event(
    drawing: bytes | None,
    *,
    client_name: str | None = "Test Client",
    project_name: str | None = "Test Project",
    filename: str = "drawing.pdf",
    context: tuple[str, bytes, str] | None = None,
    context_text: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`POST /process-drawing` as a browser or curl would send it."""
    fields = {}
    if client_name is not None:
        fields["client_name"] = client_name
    if project_name is not None:
        fields["project_name"] = project_name
    if context_text is not None:
        fields["context_text"] = context_text
    files = {}
    if drawing is not None:
        files["drawing_file"] = (filename, drawing, "application/pdf")
    if context is not None:
        files["context_file"] = context
    body, content_type = multipart(fields, files)
    return api_event("POST", "/process-drawing", body=body, headers={"Content-Type": content_type, **(headers or {})})


def sqs_event(
    bodies: list[str],
    *,
    receive_count: int = 1,
    queue: str = "processing",
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    now_ms = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": str(uuid.uuid4()),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": str(receive_count),
                    "SentTimestamp": now_ms,
                    "ApproximateFirstReceiveTimestamp": now_ms,
                    **(attributes or {}),
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:000000000000:{queue}",
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as `context`; remaining time counts down from `timeout_s`."""

    function_name: str = "sda"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    timeout_s: float = 30.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _start: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._start)) * 1000))


def response_body(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def response_json(response: dict[str, Any]) -> Any:
    return json.loads(response_body(response))


def response_header(response: dict[str, Any], name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower() and values:
            return values[0]
    return None

