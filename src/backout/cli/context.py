"""What every command needs: the manifest, the environment, and a client for its supervisor."""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import typer

from backout.errors import OperationFailed, UsageError
from backout.manifest import Manifest, load_manifest

EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env", "-e", help="environment (default: $BACKOUT_ENV, else staging — never prod by default)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table (same as --output json)")]
OUTPUT_FORMATS = ("json", "yaml", "table")
# added to every command that takes --json (`render.with_output_option`), as aws and kubectl name it
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", metavar="json|yaml|table", help="print JSON, YAML or a table (default: table)"),
]


@dataclass
class Settings:
    manifest_path: Path = Path("backout.toml")
    env: str | None = None  # `backout --env prod status`: the global option, before the subcommand
    _manifest: Manifest | None = field(default=None, repr=False)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest(self.manifest_path)
        return self._manifest


SETTINGS = Settings()


def env_name(env: str | None) -> str:
    name = env or SETTINGS.env or os.environ.get("BACKOUT_ENV") or "staging"
    SETTINGS.manifest.environment(name)
    return name


class Client:
    """Talks to the running supervisor of one environment through its control API."""

    def __init__(self, env: str | None) -> None:
        from backout.server.endpoints import read_endpoints, read_token

        self.manifest = SETTINGS.manifest
        self.env = env_name(env)
        self.state_dir = self.manifest.state_dir(self.env)
        ep = read_endpoints(self.state_dir)
        if ep is None:
            raise UsageError(
                f"environment {self.env!r} is not running; start it with `backout up --env {self.env} --detach`"
            )
        self.endpoints = ep
        self.gateway_url = str(ep["gateway_url"])
        self.base_url = str(ep["control_url"])
        self.timeout = 120.0  # seconds per request; a drill waits longer and raises it
        self._headers = {"Authorization": f"Bearer {read_token(self.state_dir)}", "Accept": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One request to the control API. The standard library's client, not httpx: every CLI call pays
        its import (≈ 0.3 s of CPU), and this client needs only JSON over one kept-alive connection."""
        query = urlencode({k: _param(v) for k, v in params.items() if v is not None})
        target = f"{path}?{query}" if query else path
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers, **({"Content-Type": "application/json"} if data is not None else {}))
        for attempt in range(2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                status, ctype, raw = resp.status, resp.getheader("content-type", ""), resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self.close()
                # the server closed a kept-alive connection before reading the request: send it once more
                if reused and attempt == 0 and isinstance(e, (http.client.RemoteDisconnected, ConnectionError)):
                    continue
                # not the operator's mistake: the supervisor is down or wedged (exit 1, as a failed operation)
                raise OperationFailed(f"cannot reach the {self.env} supervisor at {self.base_url}: {e}") from None
        text = raw.decode("utf-8", "replace")
        if status in (400, 409, 422):
            try:
                detail = json.loads(text)
            except ValueError:
                detail = {}
            if status == 400:
                raise UsageError(detail.get("error", text))
            if status == 409:
                raise OperationFailed(detail.get("error", text))
            raise UsageError(f"invalid request: {detail.get('detail')}")
        if status >= 300:
            raise OperationFailed(f"{method} {path} → {status}: {text[:300]}")
        if ctype.startswith("application/json"):
            return json.loads(text)
        return text

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            u = urlsplit(self.base_url)
            self._conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=self.timeout)
        self._conn.timeout = self.timeout
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _param(v: Any) -> str:
    """Query values as the API reads them (`true`/`false` for booleans, as httpx sent them)."""
    return ("true" if v else "false") if isinstance(v, bool) else str(v)
