"""The control API (FastAPI), used by the CLI and by dashboards: one app, a router per topic.

Every route but `/healthz` and the web dashboard (`/ui`, signed in with the same token through a form and a
session cookie: `server.dashboard`) needs the environment's bearer token (`state_dir/token`, mode 0600).
Errors map once, here: UsageError → 400 (the CLI prints the line and exits 2), OperationFailed →
409 (exit 1), each as `{"error": "..."}`.
"""

from __future__ import annotations

import hmac
import threading

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from backout.errors import OperationFailed, UsageError
from backout.server import dashboard
from backout.server.controller import Controller
from backout.server.routers import deployments, platform, runbooks, telemetry


def build_app(controller: Controller, token: str) -> FastAPI:
    """The app; `app.state.stopping` (a threading.Event) ends the dashboard's open streams when set."""
    app = FastAPI(title="backout control API", version="1", docs_url=None, redoc_url=None)
    app.state.stopping = threading.Event()
    expected = f"Bearer {token}".encode()

    def auth(request: Request) -> None:
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (see the env's state dir)")

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(OperationFailed)
    async def _failed(_: Request, exc: OperationFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        """Liveness only (no token): used by `up --detach` to know the server answers."""
        return {"ok": True, "env": controller.env}

    guarded = [Depends(auth)]
    for module in (platform, telemetry, deployments, runbooks):
        app.include_router(module.router(controller), dependencies=guarded)
    app.include_router(dashboard.router(controller, token, app.state.stopping))
    app.mount(f"{dashboard.ROOT}/static", dashboard.static_files(), name="dashboard-static")
    return app
