"""The baseline: a Lambda handler served directly by uvicorn through a minimal ASGI adapter.

`python -m bench.direct CODE_DIR MODULE.FUNCTION` imports the handler into the uvicorn process itself
(no gateway, no worker process, no routing, throttling or metrics), serves it on a free port of
127.0.0.1 with the same uvicorn settings the supervisor's gateway uses (uvloop, httptools, no access
log), and prints the port on stdout once it listens. This is what the gateway's overhead is measured
against.
"""

from __future__ import annotations

import base64
import importlib
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Context:
    function_name = "direct"
    function_version = "1"
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:direct:1"
    memory_limit_in_mb = 128

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def adapter(handler: Callable[[dict[str, Any], Any], Any]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app that turns each request into a minimal proxy event and calls `handler` in-process."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        event = {
            "httpMethod": scope["method"],
            "path": scope["path"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "queryStringParameters": None,
            "body": body.decode("utf-8", "replace") if body else None,
            "isBase64Encoded": False,
        }
        result = handler(event, _Context())
        out = result.get("body") or ""
        data = base64.b64decode(out) if result.get("isBase64Encoded") else out.encode()
        headers = [(k.lower().encode(), str(v).encode()) for k, v in (result.get("headers") or {}).items()]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": int(result.get("statusCode", 200)), "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return app


def main(argv: list[str]) -> None:
    code_dir, spec = argv
    sys.path.insert(0, code_dir)
    module, _, name = spec.rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(
        adapter(handler),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
