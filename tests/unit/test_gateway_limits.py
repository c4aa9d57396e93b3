"""The gateway against hostile clients, served by a real uvicorn on 127.0.0.1: an upload far over the
body limit is refused after at most the limit was read (memory stays bounded), a body shorter than
its Content-Length gets 408 after the body timeout instead of holding the connection, and a throttle
must be a finite number."""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from backout.errors import UsageError
from backout.manifest import EnvironmentSpec
from backout.platforms.base import InvokeResult, Throttle
from backout.platforms.local.gateway import Gateway, Route
from backout.platforms.local.metrics import MetricStore

MAX_BODY = EnvironmentSpec(control_port=0, gateway_port=0).max_body  # the default limit, as `backout up` uses it
BODY_TIMEOUT = 0.5
MB = 1024 * 1024


def invoke(function: str, event: dict[str, Any]) -> InvokeResult:
    size = len(event.get("body") or "")
    return InvokeResult(function, 1, str(uuid.uuid4()), {"statusCode": 200, "body": str(size)})


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Gateway]]:
    gw = Gateway([Route("up", "POST", "/upload")], invoke, MetricStore(), "sda", "staging", MAX_BODY,
                 Throttle(1000, 1000), body_timeout=BODY_TIMEOUT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(gw.app, http="httptools", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", gw
    server.should_exit = True
    thread.join(timeout=10)
    gw.close()
    sock.close()


def test_the_default_limit_is_api_gateways_payload_quota() -> None:
    assert MAX_BODY == 10 * MB


@pytest.fixture
def url(served: tuple[str, Gateway]) -> str:
    return served[0]


def test_a_101_mb_upload_streamed_without_length_is_413_and_never_buffered(served: tuple[str, Gateway]) -> None:
    url, gw = served
    gw.body_timeout = 30.0  # the default: a client stalled by a loaded machine is not the point here
    chunk = b"%" * MB
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:  # chunked transfer encoding: the gateway can only count
        for _ in range(101):
            sent["bytes"] += len(chunk)
            yield chunk

    me = psutil.Process()
    with httpx.Client(timeout=60) as client:
        client.post(f"{url}/upload", content=b"warm-up")  # imports and buffers of a first request
        before = me.memory_info().rss
        r = client.post(f"{url}/upload", content=body(), headers={"Content-Type": "application/pdf"})
        grown = me.memory_info().rss - before
    gw.body_timeout = BODY_TIMEOUT
    assert (r.status_code, r.json()) == (413, {"message": "Request Entity Too Large"})
    assert r.headers["connection"] == "close"  # the rest of the body is not read
    assert grown < 40 * MB, f"the gateway's process grew by {grown / MB:.0f} MB for a refused upload"
    assert sent["bytes"] < 101 * MB  # the client was stopped before it sent everything


def test_a_declared_length_over_the_limit_is_413_before_reading(url: str) -> None:
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {101 * MB}\r\n\r\n".encode())
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 ")


def _short_body(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"only ten b")
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_a_body_shorter_than_its_length_is_408_and_the_connection_closed(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    socks = [_short_body(port) for _ in range(50)]
    try:
        replies = [_read_until_closed(s) for s in socks]  # each recv would block forever without the timeout
    finally:
        for s in socks:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies), {r[:40] for r in replies}
    assert all(b'{"message": "Request Timeout"}' in r for r in replies)
    # the server is fine afterwards
    ok = httpx.post(f"{url}/upload", content=b"12345", headers={"Content-Type": "text/plain"}, timeout=10)
    assert ok.text == "5"


@pytest.mark.parametrize("rate", [math.nan, math.inf, float("1e999")])
def test_a_throttle_must_be_finite(rate: float) -> None:
    gw = Gateway([], invoke, MetricStore(), "sda", "staging", MAX_BODY, Throttle(10, 10))
    try:
        with pytest.raises(UsageError, match="finite"):
            gw.set_throttle(rate, 10)
        assert gw.throttle == Throttle(10.0, 10)
    finally:
        gw.close()
