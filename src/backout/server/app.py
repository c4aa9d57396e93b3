"""The control API (FastAPI), used by the CLI and by dashboards: one app, a router per topic.

Every route but `/healthz` and the web dashboard (`/ui`, signed in with the same token through a form and a
session cookie: `server.dashboard`) needs the environment's bearer token (`state_dir/token`, mode 0600),
compared in constant time; that includes `/openapi.json` (the API's description is no one else's
business), and there are no `/docs` pages. Errors map once, here: UsageError → 400 (the CLI prints
the line and exits 2), OperationFailed → 409 (exit 1), a non-finite number (NaN, Infinity, a 1e999
that overflows) in a JSON body or a query string → 422, each as `{"error": "..."}`: JSON has no
such numbers, and no rate, weight or window of the control plane can be infinite.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from backout.errors import OperationFailed, UsageError
from backout.server import dashboard
from backout.server.controller import Controller
from backout.server.routers import deployments, platform, runbooks, telemetry


class NotFinite(ValueError):
    """A number that JSON cannot hold and the control plane cannot use."""


def _reject_constant(name: str) -> Any:
    raise NotFinite(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotFinite(f"{text} is not a finite number")
    return value


async def finite_numbers(request: Request) -> None:
    """422 for NaN/Infinity/1e999 in the query string or a JSON body (runs after the token check)."""
    for key, value in request.query_params.multi_items():
        try:
            number = float(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise NotFinite(f"query parameter {key}={value!r} must be a finite number")
    body = await request.body()  # cached by Starlette: the route reads the same bytes again
    if body and "json" in request.headers.get("content-type", "json"):
        try:
            json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
        except NotFinite as e:
            raise NotFinite(f"request body: {e}") from None
        except ValueError:
            pass  # not JSON at all: the route's own validation answers that (422)


class TokenFirst:
    """The token before anything else (a plain ASGI middleware, so streams pass untouched): FastAPI reads
    and validates a body before a route's dependencies run, so without this a malformed body would get
    its 400/422 — and show that the route exists — from someone without the token. `/healthz` is
    liveness only; the dashboard (`/ui`) signs in with a form and a session cookie of its own."""

    def __init__(self, app: Any, expected: bytes) -> None:
        self.app, self.expected = app, expected

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path != "/healthz" and not path.startswith(dashboard.ROOT):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                answer = JSONResponse({"detail": "missing or wrong bearer token (see the env's state dir)"},
                                      status_code=401)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(controller: Controller, token: str) -> FastAPI:
    """The app; `app.state.stopping` (a threading.Event) ends the dashboard's open streams when set."""
    app = FastAPI(title="backout control API", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stopping = threading.Event()
    expected = f"Bearer {token}".encode()

    def auth(request: Request) -> None:
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (see the env's state dir)")

    app.add_middleware(TokenFirst, expected=expected)

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(OperationFailed)
    async def _failed(_: Request, exc: OperationFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(NotFinite)
    async def _not_finite(_: Request, exc: NotFinite) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        """Liveness only (no token): used by `up --detach` to know the server answers."""
        return {"ok": True, "env": controller.env}

    guarded = [Depends(auth), Depends(finite_numbers)]
    for module in (platform, telemetry, deployments, runbooks):
        app.include_router(module.router(controller), dependencies=guarded)
    app.include_router(dashboard.router(controller, token, app.state.stopping))
    app.mount(f"{dashboard.ROOT}/static", dashboard.static_files(), name="dashboard-static")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(auth)])
    def openapi() -> dict[str, Any]:
        """The API's description, for the token's holder only (clients, fuzzers)."""
        return app.openapi()

    return app
