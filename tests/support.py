"""Test support: run a real backout environment (supervisor process, real ports) for a test."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED_DRAWINGS = ROOT.parent / "shared" / "drawings"
SDA_SOURCE = ROOT / "src"


def cli_in_process(manifest: Path, *args: str) -> tuple[int, str, str]:
    """`backout --manifest MANIFEST ARGS` in this process, in the current environment and directory
    (`run_cli`): its exit code, stdout and stderr."""
    r = run_cli(["--manifest", str(manifest), *args], dict(os.environ), Path.cwd())
    return r.returncode, r.stdout, r.stderr


_CLI_LOCK = threading.Lock()


def run_cli(args: list[str], environ: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`backout ARGS` in this process, as `python -m backout.cli.main ARGS` would run in `environ` and
    `cwd`: its exit code, stdout and stderr. The same code as the console script, without a Python start
    (≈ 0.8 s of CPU a call, hundreds of calls a suite). The process-wide state a command reads or sets —
    the environment, argv, the working directory, the consoles' width, the CLI's global options — is set
    for the call and put back; one call at a time."""
    import contextlib
    import io
    import traceback

    from backout.cli import render
    from backout.cli.context import SETTINGS
    from backout.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    with _CLI_LOCK:
        saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
        widths = [(c, c._width) for c in (render.console, render.err_console)]  # noqa: SLF001
        settings = (SETTINGS.manifest_path, SETTINGS.env, SETTINGS._manifest)  # noqa: SLF001 - the global options
        try:
            for k in set(os.environ) - set(environ):
                del os.environ[k]
            os.environ.update(environ)
            os.chdir(cwd)
            sys.argv = ["backout", *args]
            columns = environ.get("COLUMNS", "")
            for c, _ in widths:
                c.width = int(columns) if columns.isdigit() else None  # type: ignore[assignment]
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    run()
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                    if isinstance(e.code, str):
                        err.write(e.code + "\n")
                except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit 1
                    err.write(traceback.format_exc())
                    code = 1
        finally:
            SETTINGS.manifest_path, SETTINGS.env, SETTINGS._manifest = settings  # noqa: SLF001
            for c, w in widths:
                c.width = w  # type: ignore[assignment]
            os.chdir(saved_cwd)
            sys.argv = saved_argv
            for k in set(os.environ) - set(saved_env):
                del os.environ[k]
            os.environ.update(saved_env)
    return subprocess.CompletedProcess(["backout", *args], code, out.getvalue(), err.getvalue())


def sda_manifest(state_dir: Path, extra: str = "", env_extra: str = "", functions_env: str = "") -> str:
    """The SDA's real manifest, with free ports, a private state dir and absolute paths."""
    text = (ROOT / "backout.toml").read_text()
    # Four API instances at most, not sixteen: two cores cannot run more at once, and the deployer warms a
    # new version to the recent peak concurrency — on a loaded test machine that peak is the cap, so every
    # step would start (and every rollback stop) a dozen processes that only compete for the same cores.
    assert "reserved_concurrency = 16" in text
    text = text.replace("reserved_concurrency = 16", "reserved_concurrency = 4", 1)
    text = text.replace('source = "src"', f'source = "{SDA_SOURCE}"')
    text = text.replace(
        'pytest = "tests/integration/test_e2e.py::test_health_check"',
        f'pytest = "{ROOT}/tests/integration/test_e2e.py::test_health_check"',
    )
    for env in ("staging", "prod"):
        port_block = {
            "staging": "gateway_port = 8300\ncontrol_port = 8301",
            "prod": "gateway_port = 8400\ncontrol_port = 8401",
        }[env]
        text = text.replace(
            port_block,
            f'gateway_port = 0\ncontrol_port = 0\nstate_dir = "{state_dir / env}"\n{env_extra}',
        )
    return text + "\n" + extra


class RunningEnv:
    """A supervisor started with `backout up --detach`, stopped (and if need be killed) at the end."""

    def __init__(self, manifest_path: Path, env: str = "staging") -> None:
        self.manifest_path = manifest_path
        self.env = env
        self.proc_env = dict(os.environ, BACKOUT_MANIFEST=str(manifest_path), BACKOUT_ENV=env, COLUMNS="200")
        r = self.cli("up", "--detach", timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        self.reload()

    def reload(self) -> None:
        from backout.manifest import load_manifest

        self.manifest = load_manifest(self.manifest_path)
        self.state_dir = self.manifest.state_dir(self.env)
        ep = json.loads((self.state_dir / "endpoints.json").read_text())
        self.pid = int(ep["pid"])
        self.gateway_url = ep["gateway_url"]
        self.control_url = ep["control_url"]
        self.token = (self.state_dir / "token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.control_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def cli(self, *args: str, timeout: float = 120, check: bool = False,
            process: bool = False) -> subprocess.CompletedProcess[str]:
        """`backout ARGS` against this environment: in this process (`run_cli`) from the main thread, a
        `python -m backout.cli.main` process with `process=True` or from another thread (where `timeout`
        applies; in-process the suite's per-test timeout is the bound)."""
        if not process and threading.current_thread() is threading.main_thread():
            r = run_cli(list(args), self.proc_env, ROOT)
        else:
            r = subprocess.run(
                [sys.executable, "-m", "backout.cli.main", *args],
                env=self.proc_env,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=ROOT,
            )
        if check:
            assert r.returncode == 0, f"backout {' '.join(args)} → {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def cli_json(self, *args: str, timeout: float = 120) -> Any:
        r = self.cli(*args, "--json", timeout=timeout, check=True)
        return json.loads(r.stdout)

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        r.raise_for_status()
        return r.json()

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def restart(self) -> None:
        r = self.cli("up", "--detach", timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        self.reload()

    def stop(self) -> None:
        try:
            self.cli("down", timeout=90)
        finally:
            # the supervisor leads its own process group (start_new_session): no worker outlives the test
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Receiver:
    """A real HTTP endpoint for apprise's `json://` notifications; keeps every JSON body it got."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"raw": body.decode("utf-8", "replace")}
                outer.received.append({"path": self.path, "at": time.time(), **doc})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def about(self, deployment_id: str) -> list[dict[str, Any]]:
        return [m for m in list(self.received) if deployment_id in m.get("title", "") + m.get("message", "")]

    def wait(self, *needles: str) -> dict[str, Any]:
        """The first notification whose title and message contain every needle."""

        def found() -> dict[str, Any] | None:
            return next(
                (m for m in list(self.received)
                 if all(n in m.get("title", "") + "\n" + m.get("message", "") for n in needles)),
                None,
            )

        return wait_for(found, timeout=20, what=f"a notification with {needles}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
