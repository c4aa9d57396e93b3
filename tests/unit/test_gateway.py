"""The gateway, served by a real uvicorn on 127.0.0.1, with an in-process `invoke` over real handlers."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn

from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms.base import NS_API, InvokeResult, MetricQuery, Throttle
from backout.platforms.local import gateway as gateway_mod
from backout.platforms.local.gateway import Gateway, Route, routes_from_manifest
from backout.platforms.local.metrics import MetricStore

VERSION = 3
MAX_BODY = 64 * 1024


# --- the "functions": plain handlers as a service would write them ----------------------
def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json", "X-Handler": "echo"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": json.dumps(event),
    }


def upload(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Returns the body it got, as binary, with the request's content type."""
    raw = base64.b64decode(event["body"]) if event["isBase64Encoded"] else (event["body"] or "").encode()
    return {
        "statusCode": 201,
        "headers": {"Content-Type": event["headers"].get("content-type", "application/octet-stream")},
        "body": base64.b64encode(raw).decode(),
        "isBase64Encoded": True,
    }


def boom(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise RuntimeError("drawing could not be parsed")


def malformed(event: dict[str, Any], context: Any) -> Any:
    return {"statusCode": 200, "body": {"not": "a string"}}


def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(0.3)
    return {"statusCode": 200, "body": "done"}


def special(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": "special"}


HANDLERS: dict[str, Callable[[dict[str, Any], Any], Any]] = {
    "echo": echo,
    "upload": upload,
    "boom": boom,
    "malformed": malformed,
    "slow": slow,
    "special": special,
}

ROUTES = [
    Route("echo", "GET", "/items/{id}"),
    Route("echo", "POST", "/items/{id}"),
    Route("special", "GET", "/items/special"),
    Route("echo", "GET", "/health"),
    Route("upload", "POST", "/upload"),
    Route("boom", "GET", "/boom"),
    Route("malformed", "GET", "/malformed"),
    Route("slow", "GET", "/slow"),
    Route("echo", "ANY", "/files/{proxy+}"),
    Route("busy", "GET", "/busy"),
    Route("broken", "GET", "/broken"),
]


def invoke(function: str, event: dict[str, Any]) -> InvokeResult:
    """What the live alias does, minus the worker process: run the handler, shape the result."""
    rid = str(uuid.uuid4())
    if function == "busy":
        return InvokeResult(function, VERSION, rid, None, throttled=True)
    if function == "broken":
        raise ConnectionError("worker died")
    try:
        return InvokeResult(function, VERSION, rid, HANDLERS[function](event, None))
    except Exception as e:
        payload = {"errorType": type(e).__name__, "errorMessage": str(e), "stackTrace": []}
        return InvokeResult(function, VERSION, rid, payload, error="Unhandled")


async def invoke_async(function: str, event: dict[str, Any]) -> InvokeResult:
    """The same on the gateway's event loop (as the local platform's `invoke_alias_async`)."""
    assert threading.current_thread() is CALLS["loop_thread"]
    CALLS["async"] += 1
    if function == "slow":
        await asyncio.sleep(0.3)
        return InvokeResult(function, VERSION, str(uuid.uuid4()), {"statusCode": 200, "body": "done"})
    return invoke(function, event)


CALLS: dict[str, Any] = {"async": 0, "loop_thread": None}


# --- a real server --------------------------------------------------------------------------
class Served:
    def __init__(self, gateway: Gateway, url: str) -> None:
        self.gateway = gateway
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=10)
        self.mode = "thread"


@pytest.fixture(params=["thread", "async"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """Every test runs twice: with a blocking `invoke` (thread pool) and with an `invoke_async`."""
    metrics = MetricStore()
    extra = {"invoke_async": invoke_async} if request.param == "async" else {}
    gw = Gateway(ROUTES, invoke, metrics, "sda", "staging", MAX_BODY, Throttle(1000, 1000), **extra)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(gw.app, loop="uvloop", http="httptools", log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    CALLS["loop_thread"], CALLS["async"] = thread, 0
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    s = Served(gw, f"http://127.0.0.1:{sock.getsockname()[1]}")
    s.mode = request.param
    yield s
    s.client.close()
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _event(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- tests ------------------------------------------------------------------------------------
def test_path_query_and_headers_reach_the_handler_as_a_proxy_event(served: Served) -> None:
    r = served.client.get(
        "/items/a%20b%2Fc?x=1&x=2&y=z%26w&empty=", headers={"X-Test": "v1", "User-Agent": "pytest-agent"}
    )
    ev = _event(r)
    assert ev["resource"] == "/items/{id}"
    assert ev["httpMethod"] == "GET"
    assert ev["pathParameters"] == {"id": "a b/c"}  # decoded, an encoded slash stays inside the segment
    assert ev["queryStringParameters"] == {"x": "2", "y": "z&w", "empty": ""}
    assert ev["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": ["z&w"], "empty": [""]}
    assert ev["headers"]["x-test"] == "v1"
    assert ev["multiValueHeaders"]["x-test"] == ["v1"]
    assert ev["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert ev["stageVariables"] is None
    assert ev["body"] is None and ev["isBase64Encoded"] is False
    ctx = ev["requestContext"]
    assert ctx["resourcePath"] == "/items/{id}" and ctx["httpMethod"] == "GET" and ctx["stage"] == "staging"
    assert ctx["path"].startswith("/staging/items/")
    assert ctx["identity"] == {**ctx["identity"], "sourceIp": "127.0.0.1", "userAgent": "pytest-agent"}
    assert abs(ctx["requestTimeEpoch"] / 1000 - time.time()) < 30
    assert ctx["accountId"] and ctx["apiId"] and ctx["protocol"] == "HTTP/1.1"
    # the response: headers and multi-value headers of the result, request id and answering version
    assert r.headers["x-amzn-requestid"] == ctx["requestId"]
    assert r.headers["x-backout-version"] == str(VERSION)
    assert r.headers["x-handler"] == "echo"
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert r.headers["content-type"] == "application/json"


def test_routing_prefers_literals_and_supports_greedy_paths(served: Served) -> None:
    assert served.client.get("/items/special").text == "special"
    assert _event(served.client.get("/items/other"))["pathParameters"] == {"id": "other"}
    ev = _event(served.client.delete("/files/a/b%20c/d.txt"))  # ANY method, greedy {proxy+}
    assert ev["resource"] == "/files/{proxy+}"
    assert ev["pathParameters"] == {"proxy": "a/b c/d.txt"}
    assert ev["httpMethod"] == "DELETE"
    assert _event(served.client.get("/health/"))["resource"] == "/health"  # a trailing slash is the same path


def test_text_bodies_arrive_as_strings(served: Served) -> None:
    ev = _event(served.client.post("/items/1", json={"drawing": "plan.pdf", "n": 1}))
    assert ev["isBase64Encoded"] is False
    assert json.loads(ev["body"]) == {"drawing": "plan.pdf", "n": 1}
    ev = _event(served.client.post("/items/1", data={"a": "b c"}))
    assert (ev["body"], ev["isBase64Encoded"]) == ("a=b+c", False)
    ev = _event(served.client.post("/items/1", content="héllo", headers={"Content-Type": "text/plain"}))
    assert (ev["body"], ev["isBase64Encoded"]) == ("héllo", False)


def test_binary_and_multipart_bodies_round_trip_as_base64(served: Served) -> None:
    blob = bytes(range(256)) * 200  # 51,200 bytes, every byte value
    r = served.client.post("/upload", content=blob, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201
    assert r.content == blob
    assert r.headers["content-type"] == "application/pdf"

    files = {"file": ("plan.pdf", blob[:5000], "application/pdf")}
    req = served.client.build_request("POST", "/items/1", files=files)
    sent = req.read()
    ev = _event(served.client.send(req))
    assert ev["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    assert ev["isBase64Encoded"] is True
    assert base64.b64decode(ev["body"]) == sent
    r = served.client.post("/upload", files=files)
    assert blob[:5000] in r.content


def test_unknown_paths_are_404_and_other_methods_405(served: Served) -> None:
    for path in ("/nope", "/items", "/items/1/extra", "/files", "/"):
        r = served.client.get(path)
        assert (r.status_code, r.json()) == (404, {"message": "Not Found"}), path
        assert r.headers["x-amzn-requestid"]
        assert r.headers["x-backout-version"] == "0"
    r = served.client.post("/health")
    assert (r.status_code, r.json()) == (405, {"message": "Method Not Allowed"})
    assert r.headers["allow"] == "GET"
    assert served.client.delete("/items/1").headers["allow"] == "GET, POST"


def test_bodies_over_max_body_are_413(served: Served) -> None:
    r = served.client.post("/upload", content=b"x" * (4 * MAX_BODY), headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()) == (413, {"message": "Request Entity Too Large"})

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(16):
            yield b"y" * 8192

    r = served.client.post("/upload", content=chunks(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    r = served.client.post("/upload", content=b"z" * MAX_BODY, headers={"Content-Type": "text/plain"})
    assert r.status_code == 201 and len(r.content) == MAX_BODY  # exactly the limit passes
    assert served.client.get("/health").status_code == 200  # the server is fine afterwards


def test_function_failures_are_502(served: Served) -> None:
    for path, version in (("/boom", str(VERSION)), ("/malformed", str(VERSION)), ("/broken", "0")):
        r = served.client.get(path)
        assert (r.status_code, r.json()) == (502, {"message": "Internal server error"}), path
        assert r.headers["x-backout-version"] == version, path
        assert r.headers["x-amzn-requestid"]


def test_a_throttled_function_is_429(served: Served) -> None:
    r = served.client.get("/busy")
    assert (r.status_code, r.json()) == (429, {"message": "Too Many Requests"})
    assert r.headers["retry-after"] == "1"
    assert r.headers["x-backout-version"] == "0"


def test_rate_zero_blocks_every_request_until_the_throttle_is_restored(served: Served) -> None:
    gw = served.gateway
    gw.set_throttle(0, 0)
    assert gw.throttle == Throttle(0, 0)
    for path in ("/health", "/nope", "/items/1"):
        r = served.client.get(path)
        assert (r.status_code, r.json()) == (429, {"message": "Too Many Requests"})
        assert r.headers["retry-after"] == "30"
        assert r.headers["x-amzn-requestid"]
    gw.set_throttle(100, 50)
    assert gw.throttle == Throttle(100, 50)
    assert served.client.get("/health").status_code == 200
    with pytest.raises(UsageError):
        gw.set_throttle(-1, 10)


def test_token_bucket_limits_a_burst(served: Served) -> None:
    served.gateway.set_throttle(5, 5)
    t0 = time.monotonic()
    codes = [served.client.get("/health") for _ in range(20)]
    elapsed = time.monotonic() - t0
    passed = sum(r.status_code == 200 for r in codes)
    limited = [r for r in codes if r.status_code == 429]
    # 5 banked tokens, plus the 5/s refill over however long the burst took on this machine
    assert 5 <= passed <= 5 + math.ceil(5 * elapsed) + 1, (passed, elapsed)
    assert limited or elapsed > 2.5, (passed, elapsed)
    assert len(limited) == 20 - passed
    assert all(r.headers["retry-after"] == "1" for r in limited)
    time.sleep(0.5)  # refills about 2 tokens
    assert served.client.get("/health").status_code == 200


def test_invocations_run_off_the_event_loop(served: Served) -> None:
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.get(served.url + "/slow", timeout=10).status_code, range(8)))
    elapsed = time.monotonic() - t0
    assert codes == [200] * 8
    assert elapsed < 8 * 0.3 * 0.6, elapsed  # serially it would take 2.4 s
    if served.mode == "async":  # awaited on the loop itself (invoke_async asserts the thread)
        assert CALLS["async"] == 8


def test_every_response_is_counted_with_its_executed_version(served: Served) -> None:
    c = served.client
    t0 = time.time() - 1
    for _ in range(3):
        assert c.get("/health").status_code == 200
    assert c.get("/boom").status_code == 502
    assert c.get("/nope").status_code == 404
    assert c.post("/health").status_code == 405
    metrics = served.gateway.metrics
    base = {"ApiName": "sda", "Stage": "staging"}

    def total(metric: str, dims: dict[str, str], stat: str = "Sum") -> float:
        q = MetricQuery.of(NS_API, metric, dims, t0, time.time() + 2, 60, stat)
        return sum(d.value for d in metrics.query(q))

    deadline = time.monotonic() + 5  # the last response's metrics are recorded just after it is sent
    while total("Count", base) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    v3 = {**base, "ExecutedVersion": str(VERSION)}
    v0 = {**base, "ExecutedVersion": "0"}
    assert total("Count", base) == 6
    assert total("Count", v3) == 4 and total("Count", v0) == 2
    assert total("4XXError", base) == 2 and total("4XXError", v0) == 2 and total("4XXError", v3) == 0
    assert total("5XXError", base) == 1 and total("5XXError", v3) == 1
    assert total("Latency", base, "SampleCount") == 6
    assert 0 < total("Latency", v3, "Maximum") < 10_000


def test_a_gateway_living_through_many_versions_keeps_the_metric_state_of_the_last_answering_few() -> None:
    """Series keys and latency histograms per version are dropped beyond the `KEEP_VERSIONS` that answered
    last (a supervisor lives through thousands of deployments); every response is still counted. The
    stable version, first seen long before 20 canaries that each answered and left, keeps its histogram."""
    metrics = MetricStore()
    gw = Gateway(ROUTES, invoke, metrics, "sda", "staging", MAX_BODY, Throttle(1000, 1000))
    t0 = time.time() - 1
    gw._record(200, "stable", 5.0)
    for v in range(1, 21):
        for status in (200, 502):
            gw._record(status, str(v), 5.0)
        gw._record(200, "stable", 5.0)
    keep = gateway_mod.KEEP_VERSIONS
    assert list(gw._keys) == [str(v) for v in range(22 - keep, 21)] + ["stable"]
    exposed = {s.labels["version"] for fam in gw.registry.collect() for s in fam.samples}
    assert exposed == {str(v) for v in range(22 - keep, 21)} | {"stable"}
    (stable,) = [s for fam in gw.registry.collect() for s in fam.samples
                 if s.name.endswith("_count") and s.labels["version"] == "stable"]
    assert stable.value == 21, "the stable version's histogram was never reset"
    q = MetricQuery.of(NS_API, "Count", {"ApiName": "sda", "Stage": "staging"}, t0, time.time() + 2, 60, "Sum")
    assert sum(d.value for d in metrics.query(q)) == 61


def test_routes_from_manifest(tmp_path) -> None:
    (tmp_path / "backout.toml").write_text(
        """
[service]
name = "svc"
[functions.api]
handler = "svc.api.handler"
events = [{ http = "POST /process-drawing" }, { http = "GET /status/{job_id}" }, { queue = "q" }]
[functions.files]
handler = "svc.files.handler"
events = [{ http = "ANY /files/{proxy+}" }]
[queues.q]
[environments.staging]
gateway_port = 0
control_port = 0
"""
    )
    routes = routes_from_manifest(load_manifest(tmp_path / "backout.toml"))
    assert routes == [
        Route("api", "POST", "/process-drawing"),
        Route("api", "GET", "/status/{job_id}"),
        Route("files", "ANY", "/files/{proxy+}"),
    ]
    Gateway(routes, invoke, MetricStore(), "svc", "staging", 10, Throttle(1, 1))  # compiles
    with pytest.raises(UsageError, match="greedy"):
        Gateway([Route("f", "GET", "/{p+}/x")], invoke, MetricStore(), "svc", "staging", 10, Throttle(1, 1))
