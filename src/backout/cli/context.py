"""What every command needs: the manifest, the environment, and a client for its supervisor."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from backout.errors import OperationFailed, UsageError
from backout.manifest import Manifest, load_manifest

EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env", "-e", help="environment (default: $BACKOUT_ENV, else staging — never prod by default)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass
class Settings:
    manifest_path: Path = Path("backout.toml")
    _manifest: Manifest | None = field(default=None, repr=False)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = load_manifest(self.manifest_path)
        return self._manifest


SETTINGS = Settings()


def env_name(env: str | None) -> str:
    name = env or os.environ.get("BACKOUT_ENV") or "staging"
    SETTINGS.manifest.environment(name)
    return name


class Client:
    """Talks to the running supervisor of one environment through its control API."""

    def __init__(self, env: str | None) -> None:
        from backout.server.process import read_endpoints, read_token

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
        self._http = httpx.Client(
            base_url=str(ep["control_url"]),
            headers={"Authorization": f"Bearer {read_token(self.state_dir)}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
        )

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        try:
            r = self._http.request(
                method, path, json=body, params={k: v for k, v in params.items() if v is not None}
            )
        except httpx.HTTPError as e:
            raise UsageError(
                f"cannot reach the {self.env} supervisor at {self._http.base_url}: {e}"
            ) from None
        if r.status_code == 400:
            raise UsageError(r.json().get("error", r.text))
        if r.status_code == 409:
            raise OperationFailed(r.json().get("error", r.text))
        if r.status_code == 422:
            raise UsageError(f"invalid request: {r.json().get('detail')}")
        if r.status_code >= 300:
            raise OperationFailed(f"{method} {path} → {r.status_code}: {r.text[:300]}")
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text
