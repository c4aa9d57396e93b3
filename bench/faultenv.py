"""A local environment to inject faults into: `backout up --detach` in a private directory, SIGKILL of
the supervisor or of one worker process, restart, and read-only looks at the store and the platform.

The crash schedules (bench/crash_deployments.py, bench/crash_jobs.py) and the soak (bench/soak.py)
share it; so do their short versions in `make test`. Reads go through the control API (with the
environment's token) or, for the figures that must be exact at any instant, straight from the SQLite
files in read-only mode, never through a second writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.deploy import manifest_text

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("Succeeded", "RolledBack", "Stopped", "Failed")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """The first truthy value of predicate(), polled; RuntimeError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    """A port nothing listens on now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultEnv:
    """One environment of the SDA's manifest (staging), with `manifest_extra` appended and
    `replace` applied to the manifest text (each old string must be present)."""

    def __init__(self, root: Path, env: str = "staging", env_extra: str = "", manifest_extra: str = "",
                 replace: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.env = env
        text = manifest_text(root / "state")
        block = f'state_dir = "{root / "state" / env}"'
        # fixed free ports: a restarted supervisor answers where the clients already send
        ports = f"gateway_port = {free_port()}\ncontrol_port = {free_port()}"
        text = text.replace(f"gateway_port = 0\ncontrol_port = 0\n{block}", f"{ports}\n{block}\n{env_extra}")
        for old, new in (replace or {}).items():
            if old not in text:
                raise ValueError(f"backout.toml no longer contains {old!r}: update the bench")
            text = text.replace(old, new)
        self.manifest = root / "backout.toml"
        self.manifest.write_text(text + "\n" + manifest_extra)
        self.state = root / "state" / env
        self.proc_env = dict(os.environ, BACKOUT_MANIFEST=str(self.manifest), BACKOUT_ENV=env, COLUMNS="200")
        self.http: httpx.Client | None = None
        self.slow_starts = 0  # starts that took longer than `up --detach` waits (then tried again)
        self.start()

    # -- lifecycle -----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "backout.cli.main", *args], env=self.proc_env,
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and r.returncode != 0:
            raise RuntimeError(f"backout {' '.join(args)} → {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def start(self) -> None:
        for attempt in range(3):  # `up --detach` waits 60 s: a heavily loaded machine can take longer
            r = self.cli("up", "--detach", check=False, timeout=600)
            if r.returncode == 0:
                break
            if "did not start within" not in r.stdout + r.stderr or attempt == 2:
                raise RuntimeError(f"backout up --detach → {r.returncode}: {r.stdout}{r.stderr}")
            self.slow_starts += 1
        ep = json.loads((self.state / "endpoints.json").read_text())
        self.pid = int(ep["pid"])
        self.gateway_url = str(ep["gateway_url"])
        self.control_url = str(ep["control_url"])
        token = (self.state / "token").read_text().strip()
        if self.http is not None:
            self.http.close()
        self.http = httpx.Client(base_url=self.control_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60)

    def kill_supervisor(self) -> None:
        """SIGKILL the supervisor (no cleanup of any kind) and wait until it is gone."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(self.pid) or psutil.Process(self.pid).status() == "zombie",
                 timeout=30, what="the supervisor to die", interval=0.02)

    def restart(self) -> None:
        self.start()

    def close(self) -> None:
        try:
            self.cli("down", timeout=120)
        except (RuntimeError, subprocess.SubprocessError):
            pass
        finally:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.http is not None:
                self.http.close()

    # -- the processes -------------------------------------------------------------------------------

    def worker_pids(self, function: str | None = None) -> list[int]:
        """Live worker processes (of `function`, or all): the supervisor's children."""
        pids = []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for c in children:
            try:
                name = c.environ().get("AWS_LAMBDA_FUNCTION_NAME")
                if name and (function is None or name == function) and c.status() != psutil.STATUS_ZOMBIE:
                    pids.append(c.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return pids

    def processes(self) -> dict[str, psutil.Process]:
        """The supervisor and every worker, keyed `supervisor` / `<function>:<pid>`."""
        out: dict[str, psutil.Process] = {}
        try:
            sup = psutil.Process(self.pid)
            out["supervisor"] = sup
            children = sup.children()
        except psutil.NoSuchProcess:
            return out
        for c in children:
            try:
                name = c.environ().get("AWS_LAMBDA_FUNCTION_NAME") or c.name()
                out[f"{name}:{c.pid}"] = c
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    # -- the control plane ---------------------------------------------------------------------------

    def api(self, method: str, path: str, **kw: Any) -> Any:
        assert self.http is not None
        r = self.http.request(method, path, **kw)
        r.raise_for_status()
        return r.json()

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        return self.api("GET", f"/deployments/{deployment_id}")

    def weights(self) -> dict[str, dict[str, float]]:
        """Each function's live alias, as the platform routes it now."""
        return {fn: f["weights"] for fn, f in self.api("GET", "/status")["functions"].items()}

    def wait_terminal(self, deployment_id: str, timeout: float = 180) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            v = self.deployment(deployment_id)
            d = v["deployment"]
            if d["status"] in TERMINAL and (d["status"] != "RolledBack" or d["rollback_completed_at"]):
                return v
            return None

        return wait_for(done, timeout=timeout, what=f"{deployment_id} to finish", interval=0.3)

    def store_rows(self, sql: str, args: tuple[Any, ...] = (), db: str = "control.db") -> list[dict[str, Any]]:
        """Rows of one of the state dir's SQLite files, opened read-only."""
        path = self.state / db
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args)]
        finally:
            con.close()

    def wal_bytes(self) -> dict[str, int]:
        """Size of every SQLite write-ahead log: the state dir's own and its data dir's (not the releases,
        whose temporary directories come and go while a release is published: a walk could meet one gone)."""
        out: dict[str, int] = {}
        for d in (self.state, self.state / "data"):
            for p in d.glob("*-wal"):
                with contextlib.suppress(FileNotFoundError):
                    out[str(p.relative_to(self.state))] = p.stat().st_size
        return out
