"""One HTTP client for the requests backout itself makes (verify, smoke tests, HTTP hooks, drills).

`httpx.get` builds a client per call, and with it a TLS context that loads the CA bundle: ≈ 0.6 MB
of native memory and milliseconds of CPU, in the supervisor, for each probe of every deployment.
One shared client (thread-safe, created on first use) pays that once and keeps connections alive.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

_lock = threading.Lock()
_client: httpx.Client | None = None


def client() -> httpx.Client:
    global _client
    with _lock:
        if _client is None or _client.is_closed:
            _client = httpx.Client(timeout=30.0)
        return _client


def request(method: str, url: str, **kw: Any) -> httpx.Response:
    """`httpx.request` on the shared client (the same arguments: `timeout`, `headers`, …)."""
    return client().request(method, url, **kw)


def get(url: str, **kw: Any) -> httpx.Response:
    return request("GET", url, **kw)
