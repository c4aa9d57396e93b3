"""The server process: one per environment, running the control API and the controller's loop,
and — for a hosted platform (local) — the platform itself: its gateway, queue pollers and warm
workers. A platform that runs by itself (aws) gets only the control API and the controller, so
every CLI command works the same against it. The platform comes from `open_platform`; nothing
here knows which one it is.

`backout up` runs it in the foreground; `backout up --detach` starts it as a
daemon and returns once its control API answers. A second supervisor for the
same state dir is refused (an flock on `supervisor.lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx
import uvicorn

from backout.errors import UsageError
from backout.manifest import Manifest
from backout.server import memory
from backout.server.endpoints import ENDPOINTS, LOCK, read_endpoints, read_token
from backout.statefiles import secure_state_dir

if TYPE_CHECKING:  # imported lazily at run time: `backout down` and friends need none of it
    from backout.platforms.base import Hosted
    from backout.server.controller import Controller

log = logging.getLogger("backout.supervisor")

@contextlib.contextmanager
def supervisor_lock(state_dir: Path, env: str) -> Iterator[IO[str]]:
    state_dir.mkdir(parents=True, exist_ok=True)
    f = (state_dir / LOCK).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        ep = read_endpoints(state_dir) or {}
        raise UsageError(
            f"environment {env!r} is already running (pid {ep.get('pid', '?')}, gateway {ep.get('gateway_url', '?')});"
            f" stop it with `backout down --env {env}`"
        ) from None
    try:
        yield f
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto says TCP, and without it Nagle + delayed ACK stall every keep-alive response for 40 ms.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror} (is another program using it?)"
        ) from None
    s.listen(2048)
    s.setblocking(False)
    return s


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor stops both servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Supervisor:
    """Runs one environment until asked to stop, then drains in-flight work."""

    def __init__(self, manifest: Manifest, env: str, publish: bool = False) -> None:
        self.manifest = manifest
        self.env = env
        self.publish = publish  # deploy the source tree once up, when it is newer than the live release
        self.spec = manifest.environment(env)
        self.state_dir = manifest.state_dir(env)
        self._stop = threading.Event()
        self._servers: list[_Server] = []
        self._stopping: list[threading.Event] = []  # the apps' `stopping`: ends the dashboard's open streams

    def request_stop(self, why: str = "shutdown requested") -> None:
        log.warning("stopping: %s", why)
        self._stop.set()
        for e in self._stopping:
            e.set()
        for s in self._servers:
            s.should_exit = True

    def run(self) -> None:
        from backout.platforms import open_platform
        from backout.platforms.base import AwsEndpoints, Hosted
        from backout.server.app import build_app
        from backout.server.controller import Controller

        memory.restore_environ()  # its workers and hooks run on the allocator the user has
        memory.limit_arenas()  # before the servers' and the platform's threads start (server/memory.py)
        secure_state_dir(self.state_dir)  # 0700, and files this process and its workers create 0600
        with supervisor_lock(self.state_dir, self.env):
            (self.state_dir / ENDPOINTS).unlink(missing_ok=True)
            token = read_token(self.state_dir)
            platform = open_platform(self.manifest, self.env, self.state_dir)
            hosted = isinstance(platform, Hosted)
            if hosted:
                assert self.spec.gateway_port is not None  # the manifest requires it on a hosted platform
                gw_sock = _bind(self.spec.host, self.spec.gateway_port)
                gw_url = f"http://{self.spec.host}:{gw_sock.getsockname()[1]}"
            ctl_sock = _bind(self.spec.control_host, self.spec.control_port)  # loopback unless configured
            ctl_url = f"http://{self.spec.control_host}:{ctl_sock.getsockname()[1]}"
            served = []  # (socket, ASGI app) of the platform's own servers, the gateway first
            aws: dict[str, object] = {}
            if hosted:
                platform.bind(gw_url)
                served.append((gw_sock, platform.gateway_app()))
                if isinstance(platform, AwsEndpoints):  # AWS APIs for unmodified service code: loopback only
                    aws_sock = _bind("127.0.0.1", self.spec.aws_port)
                    aws = platform.bind_aws(f"http://127.0.0.1:{aws_sock.getsockname()[1]}")
                    served.append((aws_sock, platform.sqs_app()))
                platform.bootstrap()
            else:  # it runs by itself: resolve its resources now, so a wrong name stops here with one line
                getattr(platform, "check", platform.functions)()
                gw_url = platform.endpoint()
            controller = Controller(self.manifest, self.env, platform, self.state_dir)
            controller.on_shutdown = lambda: self.request_stop("POST /shutdown (backout down)")
            app = build_app(controller, token)
            self._stopping.append(app.state.stopping)
            if hosted:
                _prewarm_live(platform)
                platform.start()
            controller.start()
            self._stale_release(controller)
            ticker = threading.Thread(
                target=self._tick, args=(platform if hosted else None, controller), name="tick", daemon=True
            )
            ticker.start()
            self._servers = [
                _Server(
                    uvicorn.Config(
                        a,
                        log_level="warning",
                        access_log=False,
                        loop="uvloop",
                        http="httptools",
                        timeout_keep_alive=30,
                        lifespan="off",
                    )
                )
                for _, a in served
            ]
            # kept-alive connections outlive a client's idle expiry (httpx: 5 s): the client lets go first, so
            # it never reuses a connection the server is closing (uvicorn's default is 5 s too: a race)
            self._servers.append(_Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                        loop="uvloop", timeout_keep_alive=30)))
            socks = [sock for sock, _ in served] + [ctl_sock]
            endpoints = {
                "pid": os.getpid(),
                "env": self.env,
                "gateway_url": gw_url,
                "control_url": ctl_url,
                "aws": aws,
                "started_at": time.time(),
            }
            tmp = self.state_dir / (ENDPOINTS + ".tmp")
            tmp.write_text(json.dumps(endpoints))
            tmp.replace(self.state_dir / ENDPOINTS)
            log.warning("backout %s up: gateway %s, control %s, aws %s", self.env, gw_url, ctl_url, aws or "-")
            try:
                # the loop the gateway's config names (uvloop): asyncio.run would ignore it
                with asyncio.Runner(loop_factory=self._servers[0].config.get_loop_factory()) as runner:
                    runner.run(self._serve(socks))
            finally:
                self._stop.set()
                (self.state_dir / ENDPOINTS).unlink(missing_ok=True)
                controller.close()
                if hosted:
                    platform.close()
                ticker.join(timeout=5)
                log.warning("backout %s down", self.env)

    def _stale_release(self, controller: Controller) -> None:
        """Say when the live release is older than the source tree; with `publish`, deploy the tree."""
        from backout.runbooks.status import stale_release

        stale = stale_release(self.manifest, controller.deployer.traffic.live_release())
        if stale is None:
            return
        if not self.publish:
            log.warning("%s", stale)
            return
        try:
            d = controller.deployer.create(description="backout up --publish", created_by="backout up --publish")
            log.warning("up --publish: deploying the source tree as %s (%s)", d.target, d.id)
        except UsageError as e:
            log.warning("up --publish: %s", e)

    async def _serve(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        await asyncio.gather(*(srv.serve(sockets=[sock]) for srv, sock in zip(self._servers, socks, strict=True)))

    def _tick(self, platform: Hosted | None, controller: Controller) -> None:
        """Once a second: a hosted platform samples and persists its metrics, then the control plane
        ticks; once a minute the process gives its freed heap back (`memory`)."""
        steps = [*([platform.tick] if platform is not None else []), controller.tick, memory.Trimmer().tick]
        if platform is not None:
            with contextlib.suppress(Exception):
                platform.tick()
        while not self._stop.wait(1.0 - (time.time() % 1.0)):
            for step in steps:
                try:
                    step()
                except Exception:
                    log.exception("periodic %s failed", getattr(step, "__name__", step))


def _prewarm_live(platform: object) -> None:
    """Every version a live alias routes to answers its first request warm (optional Capacity)."""
    from backout.platforms.base import Capacity, Routing

    if not isinstance(platform, Capacity) or not isinstance(platform, Routing):
        return

    def warm(fn: str, v: str) -> None:
        with contextlib.suppress(Exception):
            platform.prewarm(fn, v)

    # all at once: each start is a process importing its handler, so `up` waits for the slowest, not the sum
    pairs = [(fn, v) for fn in platform.functions() for v in platform.get_weights(fn).versions]  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=max(1, len(pairs)), thread_name_prefix="prewarm") as pool:
        list(pool.map(lambda p: warm(*p), pairs))


def start_detached(
    manifest_path: Path, env: str, state_dir: Path, timeout: float = 60.0, publish: bool = False,
    on_progress: Callable[[str], None] = lambda step: None,
) -> dict[str, object]:
    """Start `backout up` as a daemon; return its endpoints once the control API answers. `on_progress`
    hears each stage (the CLI's progress line)."""
    with supervisor_lock(state_dir, env):  # one supervisor per environment: say so before forking
        pass
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = (logs / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "backout.cli.main", "--manifest", str(manifest_path), "up", "--env", env,
         *(["--publish"] if publish else [])],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=memory.supervisor_environ(),
    )
    on_progress(f"supervisor started (pid {proc.pid}): loading the release, starting workers")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = (logs / "supervisor.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise UsageError(f"supervisor exited with code {proc.returncode}: {' '.join(tail)}")
        ep = read_endpoints(state_dir)
        if ep and ep.get("pid") == proc.pid:
            on_progress("waiting for the control API to answer")
            try:
                httpx.get(f"{ep['control_url']}/healthz", timeout=2)
                return ep
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise UsageError(f"supervisor did not start within {timeout:.0f} s (see {logs / 'supervisor.log'})")
