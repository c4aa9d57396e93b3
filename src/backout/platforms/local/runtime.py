"""Run a function version's handler in warm worker processes, as Lambda does.

Each (function, version) has its own pool of worker processes (`worker.py`), each one importing
that release's code first on its sys.path, so two versions of the same module run side by side.
A worker handles one invocation at a time; idle ones are reused, new ones start on demand. Each
version runs with the configuration its release holds (handler, timeout, memory, environment), as
a Lambda version does, so routing back to an older version brings its configuration back too. The
parent enforces what Lambda enforces: the version's timeout (the worker is killed and
replaced), a worker that dies mid-invocation (Runtime.ExitError), and per-function concurrency
(TooManyRequestsException, returned at once). Every invocation records Lambda's metrics into a
sink, plus the CloudWatch EMF metrics the handler printed.

Two ways in, sharing the same pools, lock and counters: `invoke` blocks its thread (queue mappings,
the control API, hooks), `invoke_async` runs on an asyncio loop (the gateway) and talks to an idle
warm worker straight from the loop, with no hop to a thread and back; that hop cost the gateway more
CPU than the invocation itself. The parent's end of each worker's socket is non-blocking for both:
the sync path waits with poll(2), the async one with the loop's add_reader.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from backout.errors import OperationFailed, UsageError
from backout.manifest import FunctionSpec, Manifest
from backout.platforms.base import LIVE_ALIAS, NS_LAMBDA, FunctionConfig, InvokeResult
from backout.platforms.local.releases import Releases

log = logging.getLogger(__name__)

INIT_TIMEOUT = 60.0  # seconds a worker may take to import its handler
STOP_GRACE = 2.0  # seconds a worker gets to exit after its connection closes
_PROC_FS = os.path.isdir("/proc/self")  # Linux: a worker's state is readable there
THROTTLED = {"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."}
COLD_THREADS = 64  # threads for invoke_async's cold starts (a spawn blocks for the handler's import)
_WORKER_MODULE = "backout.platforms.local.worker"
OOM_EXIT = 197  # worker.OOM_EXIT (not imported: the worker module is for the child process)
# The directory that makes `backout` importable, for workers started from a checkout.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[3])


class MetricSink(Protocol):
    """Where Lambda's metrics go. A sink that also has MetricStore's `series_key` and `record_many`
    gets each invocation's samples in one call (one lock, no per-sample key building)."""

    def record(
        self, namespace: str, metric: str, dimensions: dict[str, str], value: float, unit: str, ts: float
    ) -> None: ...


class FunctionInitError(OperationFailed):
    """A version's handler cannot start (import error, bad BACKOUT_FAULT, …)."""

    def __init__(self, function: str, version: int, error: dict[str, Any]) -> None:
        self.function, self.version, self.error = function, version, error
        kind, message = error.get("errorType"), error.get("errorMessage")
        super().__init__(f"{function} v{version} failed to initialise: {kind}: {message}")


class RuntimeClosed(OperationFailed):
    """The runtime is shutting down and takes no new invocations."""


class _InitFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("errorMessage"))
        self.error = error


class _Worker:
    __slots__ = ("proc", "sock", "fd", "pool")

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, pool: _Pool) -> None:
        sock.setblocking(False)
        self.proc, self.sock, self.fd, self.pool = proc, sock, sock.fileno(), pool

    def alive(self) -> bool:
        """Not exited and not being torn down. `poll()` alone is not enough: a SIGKILLed worker with
        threads is a zombie that `waitpid` cannot reap until every thread has gone, and an
        invocation handed to it in that window would fail with "signal: killed"."""
        if self.proc.poll() is not None:
            return False
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2][1:2]
        except FileNotFoundError:
            return not _PROC_FS  # no /proc (not Linux): poll() is all there is
        except OSError:
            return True
        return state not in (b"Z", b"X")

    def signal_kill(self) -> None:
        """SIGKILL the worker and anything it started (it leads its own session); does not wait."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> int:
        self.signal_kill()
        rc = self.proc.wait()
        self.sock.close()
        return rc

    def stop(self) -> None:
        """Close the connection (the worker exits on EOF); kill it if it lingers."""
        self.sock.close()
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()


class _Pool:
    """The workers of one (function, version)."""

    def __init__(self, fn: str, version: int, config: FunctionConfig, code_dir: Path, log_path: Path) -> None:
        self.fn, self.version, self.config = fn, version, config
        # built at the first spawn, None again once retired: a copy of the supervisor's whole
        # environment per version, kept for every version ever deployed, was the runtime's share
        # of the soak's per-deployment growth
        self.env: dict[str, str] | None = None
        self.code_dir, self.log_path = code_dir, log_path
        self.idle: list[_Worker] = []
        self.live: set[_Worker] = set()  # idle + busy
        self.starting = 0
        self.target = 0  # workers kept warm (replaced when one dies)
        self.retired = False


class Runtime:
    """Warm worker processes for every function version that is invoked or warmed."""

    def __init__(
        self,
        manifest: Manifest,
        state_dir: Path,
        releases: Releases,
        sink: MetricSink,
        extra_env: dict[str, str] | None = None,
        max_concurrency: int = 16,
        function_env: dict[str, dict[str, str]] | None = None,
        default_config: dict[str, FunctionConfig] | None = None,
    ) -> None:
        self.manifest = manifest
        self.state_dir = Path(state_dir)
        self.releases = releases
        self.sink = sink
        self.extra_env = dict(extra_env or {})  # the platform's own variables: every version gets them
        # a version published before releases held configuration runs with this (default: the manifest's)
        self.default_config = dict(default_config or {})
        self.aws_env: dict[str, str] = {}  # AWS endpoints and queue URLs: under the function's own environment
        self.function_env = {fn: dict(env) for fn, env in (function_env or {}).items()}  # one function's own
        self.max_concurrency = max_concurrency
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._inflight = {fn: 0 for fn in manifest.functions}
        self._total_inflight = 0
        self._closing = False
        self._cold_pool = ThreadPoolExecutor(COLD_THREADS, thread_name_prefix="runtime-cold")
        # (fn, version, via_alias) → the series keys of each metric, when the sink takes them
        self._metric_keys: dict[tuple[str, int, bool], dict[str, list[Any]]] = {}
        self._record_many = getattr(sink, "record_many", None) if hasattr(sink, "series_key") else None

    # -- invoking ------------------------------------------------------------------------------

    def invoke(self, fn: str, version: int, event: Any, via_alias: bool = False) -> InvokeResult:
        """Run one event on `version` of `fn` and wait for the result (thread-safe)."""
        spec = self._spec(fn)
        pool = self._pool(fn, version)
        event_json = _event_json(fn, event)
        rid = str(uuid.uuid4())
        worker, concurrent = self._acquire(pool, spec, cold=True)
        if concurrent < 0:
            self._record(fn, version, via_alias, -concurrent, throttled=True)
            return InvokeResult(fn, version, rid, dict(THROTTLED), throttled=True)
        emf: list[dict[str, Any]] = []
        try:
            if worker is None:
                worker, init_error = self._start_for_invoke(pool)
            if worker is None:
                payload, error, duration = init_error, "Unhandled", 0.0
            else:
                payload, error, duration, emf = self._call(worker, rid, event_json, pool.config.timeout)
        finally:
            self._done(fn)
        self._record(fn, version, via_alias, concurrent, error=error is not None, duration=duration)
        if emf:
            self._record_emf(emf)
        return InvokeResult(fn, version, rid, payload, error=error, duration_ms=duration)

    async def invoke_async(self, fn: str, version: int, event: Any, via_alias: bool = False) -> InvokeResult:
        """`invoke` for an asyncio caller: on an idle warm worker, the request is written and the
        reply read from the running loop (same limits, timeout, errors and metrics as `invoke`).
        A cold start (no idle worker) runs `invoke` in a thread, since spawning one blocks."""
        spec = self._spec(fn)
        pool = self._pools.get((fn, version))
        if pool is None or not pool.idle:  # unknown or cold version: the thread does it all
            return await self._invoke_in_thread(fn, version, event, via_alias)
        event_json = _event_json(fn, event)
        rid = str(uuid.uuid4())
        worker, concurrent = self._acquire(pool, spec, cold=False)
        if concurrent < 0:
            self._record(fn, version, via_alias, -concurrent, throttled=True)
            return InvokeResult(fn, version, rid, dict(THROTTLED), throttled=True)
        if worker is None:  # the idle worker went to another caller meanwhile
            return await self._invoke_in_thread(fn, version, event, via_alias)
        loop = asyncio.get_running_loop()
        call = _AsyncCall(self, loop, worker, via_alias, concurrent, rid, event_json, pool.config.timeout)
        return await call.result

    async def _invoke_in_thread(self, fn: str, version: int, event: Any, via_alias: bool) -> InvokeResult:
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self._cold_pool, self.invoke, fn, version, event, via_alias)
        except RuntimeError:  # the pool was shut down by close()
            raise RuntimeClosed("the runtime is shutting down") from None
        return await job

    def _acquire(self, pool: _Pool, spec: FunctionSpec, cold: bool) -> tuple[_Worker | None, int]:
        """Count one invocation against the function's concurrency and take an idle worker.

        Returns (worker, concurrent executions including this one); (None, -concurrent) when
        throttled. No idle worker: with `cold`, a `pool.starting` slot is reserved for the caller to
        spawn one; without, (None, 0) and nothing is counted."""
        limit = spec.reserved_concurrency if spec.reserved_concurrency is not None else self.max_concurrency
        worker: _Worker | None = None
        dead: list[_Worker] = []
        fn = pool.fn
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is shutting down")
            concurrent = self._inflight[fn]
            if concurrent >= limit:
                return None, -concurrent
            while pool.idle:
                w = pool.idle.pop()
                if w.alive():
                    worker = w
                    break
                pool.live.discard(w)  # died while idle (e.g. OOM-killed): skip it
                dead.append(w)
            if worker is None and not cold:
                concurrent = 0
            else:
                concurrent += 1
                self._inflight[fn] = concurrent
                self._total_inflight += 1
                pool.retired = False
                if worker is None:
                    pool.starting += 1
        for w in dead:
            w.sock.close()
        return worker, concurrent

    def _done(self, fn: str) -> None:
        with self._lock:
            self._inflight[fn] -= 1
            self._total_inflight -= 1
            self._changed.notify_all()

    def _start_for_invoke(self, pool: _Pool) -> tuple[_Worker | None, dict[str, Any]]:
        """A cold start inside an invocation: the worker, or (None, the init error)."""
        try:
            w = self._spawn(pool)
        except _InitFailed as e:
            with self._lock:
                pool.starting -= 1
                self._changed.notify_all()
            return None, e.error
        with self._lock:
            pool.starting -= 1
            pool.live.add(w)
            self._changed.notify_all()
        return w, {}

    def _call(
        self, w: _Worker, rid: str, event_json: str, timeout: float
    ) -> tuple[Any, str | None, float, list[dict[str, Any]]]:
        """Send one request; (payload, error, duration_ms, emf docs). Always leaves `w` idle or gone."""
        deadline = time.monotonic() + timeout
        start = time.perf_counter()
        try:
            raw = None
            if _send_sync(w.fd, _request(rid, timeout, event_json), deadline):
                raw = _recv_sync(w.fd, deadline)
            if raw is None:
                w.kill()
                self._discard(w)
                return _timed_out(rid, timeout)
        except (EOFError, OSError):
            rc = self._reap(w)
            self._discard(w)
            return _exited(rid, rc, start)
        self._release(w)
        return _reply(raw)

    @staticmethod
    def _reap(w: _Worker) -> int:
        try:
            rc = w.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            rc = w.kill()
        w.sock.close()
        return rc

    # -- worker lifecycle ----------------------------------------------------------------------

    def _spawn(self, pool: _Pool) -> _Worker:
        """Start one worker and wait until it has imported the handler."""
        parent_sock, child_sock = socket.socketpair()
        base = pool.env
        if base is None:  # its first worker, or one after it was retired: built here, once
            base = pool.env = self._pool_env(pool)
        env = dict(base)
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = f"{time.strftime('%Y/%m/%d')}/[{pool.version}]{uuid.uuid4().hex}"
        try:
            pool.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(pool.log_path, "ab") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-P", "-m", _WORKER_MODULE, str(child_sock.fileno())],
                    pass_fds=(child_sock.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    env=env,
                    cwd=pool.code_dir,
                    start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, not each worker
                )
        except OSError as e:
            parent_sock.close()
            raise _InitFailed(_error("Runtime.StartError", str(e), trace=True)) from e
        finally:
            child_sock.close()
        w = _Worker(proc, parent_sock, pool)
        try:
            raw = _recv_sync(w.fd, time.monotonic() + INIT_TIMEOUT)
            if raw is None:
                w.kill()
                why = f"handler {pool.config.handler} did not initialise within {INIT_TIMEOUT:.0f}s"
                raise _InitFailed(_error("Runtime.InitTimeout", why, trace=True))
            msg = json.loads(raw)
        except (EOFError, OSError):
            rc = self._reap(w)
            why = f"Runtime exited during init: {_exit_reason(rc)} (see {pool.log_path})"
            raise _InitFailed(_error("Runtime.ExitError", why, trace=True)) from None
        if msg.get("type") != "ready":
            self._reap(w)
            raise _InitFailed(msg.get("error") or _error("Runtime.Unknown", str(msg), trace=True))
        return w

    def _release(self, w: _Worker, wait: bool = True) -> None:
        """An invocation finished: keep the worker warm, or stop it if its version was retired
        (in a thread unless `wait`: the event loop must not wait for a process to exit)."""
        pool = w.pool
        with self._lock:
            keep = not (pool.retired or self._closing)
            if keep:
                pool.idle.append(w)
            else:
                pool.live.discard(w)
            self._changed.notify_all()
        if not keep:
            if wait:
                w.stop()
            else:
                threading.Thread(target=w.stop, daemon=True, name="worker-stop").start()

    def _discard(self, w: _Worker) -> None:
        """A worker died or was killed: forget it and start a replacement if the pool is kept warm."""
        pool = w.pool
        with self._lock:
            pool.live.discard(w)
            replace = not (pool.retired or self._closing) and pool.target > len(pool.live) + pool.starting
            if replace:
                pool.starting += 1
            self._changed.notify_all()
        if replace:
            threading.Thread(target=self._replace, args=(pool,), daemon=True, name="worker-replace").start()

    def _replace(self, pool: _Pool) -> None:
        try:
            self._start_idle(pool)
        except _InitFailed as e:
            log.warning("%s v%s: replacement worker failed: %s", pool.fn, pool.version, e)

    def _start_idle(self, pool: _Pool) -> _Worker:
        """Start a worker into the idle list (its `pool.starting` slot is already reserved)."""
        try:
            w = self._spawn(pool)
        except _InitFailed:
            with self._lock:
                pool.starting -= 1
                self._changed.notify_all()
            raise
        with self._lock:
            pool.starting -= 1
            keep = not (pool.retired or self._closing)
            if keep:
                pool.live.add(w)
                pool.idle.append(w)
            self._changed.notify_all()
        if not keep:
            w.stop()
        return w

    def warm(self, fn: str, version: int, count: int = 1) -> None:
        """Make sure `count` workers of `version` run (and are replaced if they die); returns once
        they answered ready. FunctionInitError if the handler cannot start."""
        pool = self._pool(fn, version)
        with self._lock:
            if self._closing:
                raise RuntimeClosed("the runtime is shutting down")
            pool.retired = False
            pool.target = max(pool.target, count)
            need = max(0, count - len(pool.live) - pool.starting)
            pool.starting += need
        errors: list[dict[str, Any]] = []

        def start() -> None:
            try:
                self._start_idle(pool)
            except _InitFailed as e:
                errors.append(e.error)

        threads = [threading.Thread(target=start, daemon=True) for _ in range(need - 1)]
        for t in threads:
            t.start()
        if need:
            start()
        for t in threads:
            t.join()
        if errors:
            raise FunctionInitError(fn, version, errors[0])
        with self._lock:  # others may still be starting the workers we counted on
            self._changed.wait_for(lambda: pool.live or not pool.starting, INIT_TIMEOUT)
            missing = not pool.live
            if missing:
                pool.starting += 1
        if missing:
            try:
                self._start_idle(pool)
            except _InitFailed as e:
                raise FunctionInitError(fn, version, e.error) from None

    def is_warm(self, fn: str, version: int) -> bool:
        self._spec(fn)
        pool = self._pools.get((fn, version))
        return bool(pool is not None and pool.live and not pool.retired)

    def retire(self, fn: str, version: int) -> None:
        """Stop `version`'s idle workers now; busy ones stop when their invocation finishes."""
        self._spec(fn)
        for via_alias in (False, True):  # its metric series keys come back if it is ever invoked again
            self._metric_keys.pop((fn, version, via_alias), None)
        pool = self._pools.get((fn, version))
        if pool is None:
            return
        with self._lock:
            pool.retired = True
            pool.env = None
            pool.target = 0
            idle, pool.idle = pool.idle, []
            pool.live.difference_update(idle)
            self._changed.notify_all()
        for w in idle:
            w.stop()

    def warm_versions(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._lock:
            for (fn, version), pool in self._pools.items():
                if pool.live and not pool.retired:
                    out.setdefault(fn, []).append(version)
        return {fn: sorted(vs) for fn, vs in sorted(out.items())}

    def close(self, drain_timeout: float = 10) -> None:
        """Stop taking invocations, let in-flight ones finish (up to `drain_timeout`), stop every worker."""
        with self._lock:
            self._closing = True
            self._changed.wait_for(lambda: self._total_inflight == 0, drain_timeout)
            idle = [w for p in self._pools.values() for w in p.idle]
            busy = [w for p in self._pools.values() for w in p.live if w not in p.idle]
            for p in self._pools.values():
                p.idle = []
                p.live.difference_update(idle)
        for w in busy:  # past the drain timeout: their invocations end as Runtime.ExitError
            try:
                os.killpg(w.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for w in idle:
            w.sock.close()
        self._cold_pool.shutdown(wait=False)
        deadline = time.monotonic() + STOP_GRACE
        for w in idle:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- configuration -------------------------------------------------------------------------

    def _spec(self, fn: str) -> FunctionSpec:
        spec = self.manifest.functions.get(fn)
        if spec is None:
            known = ", ".join(sorted(self.manifest.functions))
            raise UsageError(f"unknown function {fn!r} (functions: {known})")
        return spec

    def _pool_env(self, pool: _Pool) -> dict[str, str]:
        """The environment a worker of the pool's function version starts with."""
        fn, version, config = pool.fn, pool.version, pool.config
        env = dict(os.environ)
        env.pop("BACKOUT_FAULT", None)  # faults come from a release's environment, never the supervisor's
        if self.aws_env:  # the local endpoints' dummy keys, never the operator's own credentials
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                env.pop(key, None)
        env.update(self.aws_env)
        env.update(config.environment)
        env.update(self.extra_env)
        env.update(self.function_env.get(fn, {}))
        env.update(self.releases.get(version).environment)
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": fn,
                "AWS_LAMBDA_FUNCTION_VERSION": str(version),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn}",
                "_HANDLER": config.handler,
                "LAMBDA_TASK_ROOT": str(pool.code_dir),
            }
        )
        env.setdefault("AWS_REGION", "local")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, os.environ.get("PYTHONPATH")) if p)
        return env

    def _pool(self, fn: str, version: int) -> _Pool:
        pool = self._pools.get((fn, version))
        if pool is not None:
            return pool
        spec = self._spec(fn)
        info = self.releases.get(version)
        config = info.configuration.get(fn) or self.default_config.get(fn) or FunctionConfig(
            spec.handler, spec.timeout, spec.memory, dict(spec.environment))
        code_dir = self.releases.code_dir(version)
        log_path = self.state_dir / "logs" / fn / f"v{version}.log"
        with self._lock:
            return self._pools.setdefault((fn, version), _Pool(fn, version, config, code_dir, log_path))

    # -- metrics -------------------------------------------------------------------------------

    def _record(
        self,
        fn: str,
        version: int,
        via_alias: bool,
        concurrent: int,
        *,
        throttled: bool = False,
        error: bool = False,
        duration: float = 0.0,
    ) -> None:
        ts = time.time()
        if throttled:
            values = [("Throttles", 1.0, "Count")]
        else:
            values = [
                ("Invocations", 1.0, "Count"),
                ("Errors", float(error), "Count"),
                ("Duration", duration, "Milliseconds"),
            ]
        values.append(("ConcurrentExecutions", float(concurrent), "Count"))
        try:
            if self._record_many is not None:
                keys = self._metric_keys.get((fn, version, via_alias))
                if keys is None:
                    keys = self._series_keys(fn, version, via_alias)
                self._record_many([(k, v, unit) for metric, v, unit in values for k in keys[metric]], ts)
                return
            for dims in _dimsets(fn, version, via_alias):
                for metric, value, unit in values:
                    self.sink.record(NS_LAMBDA, metric, dict(dims), value, unit, ts)
        except Exception:
            log.exception("metric sink failed")

    def _series_keys(self, fn: str, version: int, via_alias: bool) -> dict[str, list[Any]]:
        key_of = self.sink.series_key  # type: ignore[attr-defined]
        dimsets = _dimsets(fn, version, via_alias)
        keys = {m: [key_of(NS_LAMBDA, m, d) for d in dimsets] for m in _LAMBDA_METRICS}
        self._metric_keys[(fn, version, via_alias)] = keys
        return keys

    def _record_emf(self, docs: list[dict[str, Any]]) -> None:
        """Each metric of each EMF document under its namespace and every declared dimension set."""
        for doc in docs:
            try:
                aws = doc["_aws"]
                ts = float(aws.get("Timestamp", time.time() * 1000.0)) / 1000.0
                for directive in aws["CloudWatchMetrics"]:
                    namespace = directive.get("Namespace", "aws-embedded-metrics")
                    dimsets = directive.get("Dimensions") or [[]]
                    for m in directive.get("Metrics", []):
                        name = m["Name"]
                        raw = doc.get(name)
                        if raw is None:
                            continue
                        values = raw if isinstance(raw, list) else [raw]
                        for keys in dimsets:
                            dims = {k: str(doc[k]) for k in keys if k in doc}
                            for v in values:
                                self.sink.record(namespace, name, dims, float(v), m.get("Unit", "None"), ts)
            except Exception:
                log.exception("bad EMF document from a handler: %.200s", doc)


def _error(error_type: str, message: str, trace: bool = False) -> dict[str, Any]:
    """Lambda's error shape for errors the runtime (not the handler) produces."""
    shape: dict[str, Any] = {"errorType": error_type, "errorMessage": message}
    if trace:
        shape["stackTrace"] = []
    return shape


def _exit_reason(rc: int | None) -> str:
    if rc is None:
        return "unknown"
    if rc < 0:
        try:
            return f"signal: {signal.strsignal(-rc) or signal.Signals(-rc).name}".lower()
        except ValueError:
            return f"signal: {-rc}"
    return f"exit status {rc}"


_LAMBDA_METRICS = ("Invocations", "Errors", "Duration", "Throttles", "ConcurrentExecutions")


def _dimsets(fn: str, version: int, via_alias: bool) -> list[dict[str, str]]:
    dimsets = [{"FunctionName": fn}, {"FunctionName": fn, "ExecutedVersion": str(version)}]
    if via_alias:  # the service's traffic, per version (as Lambda's alias metrics): backout's probes go by version
        dimsets.append({"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}"})
        dimsets.append({"FunctionName": fn, "Resource": f"{fn}:{LIVE_ALIAS}", "ExecutedVersion": str(version)})
    return dimsets


# -- the parent's side of the worker protocol -------------------------------------------------------
# Frames as multiprocessing.connection writes them (the worker reads them with a Connection): a
# signed 32-bit big-endian length, or -1 and a 64-bit length for payloads over 2 GiB.
_LEN = struct.Struct("!i")
_LEN64 = struct.Struct("!Q")
_READ = 256 * 1024


def _event_json(fn: str, event: Any) -> str:
    try:
        return json.dumps(event)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{fn}: event is not JSON: {e}") from None


def _request(rid: str, timeout: float, event_json: str) -> bytes:
    deadline = time.time() + timeout
    data = f'{{"request_id": "{rid}", "deadline": {deadline!r}, "event": {event_json}}}'.encode()
    n = len(data)
    return (_LEN.pack(n) if n <= 0x7FFFFFFF else _LEN.pack(-1) + _LEN64.pack(n)) + data


class _FrameReader:
    """Reassembles one frame from the chunks a non-blocking read returns."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> bytes | None:
        """The frame's payload once it is complete, else None."""
        data = self.buf + chunk if self.buf else chunk
        n = len(data)
        if n >= 4:
            size = _LEN.unpack_from(data)[0]
            start = 4
            if size == -1:
                if n < 12:
                    self.buf = data
                    return None
                size, start = _LEN64.unpack_from(data, 4)[0], 12
            if n >= start + size:
                return data[start : start + size]
        self.buf = data
        return None


def _wait(fd: int, events: int, timeout: float) -> bool:
    if timeout <= 0:
        return False
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(timeout * 1000.0))


def _send_sync(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of `data` to the non-blocking `fd`; False if the deadline passed first."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if not _wait(fd, select.POLLOUT, deadline - time.monotonic()):
                return False
    return True


def _recv_sync(fd: int, deadline: float) -> bytes | None:
    """One frame from the non-blocking `fd`; None if the deadline passed first, EOFError if closed."""
    frame = _FrameReader()
    while True:
        try:
            chunk = os.read(fd, _READ)
        except BlockingIOError:
            if not _wait(fd, select.POLLIN, deadline - time.monotonic()):
                return None
            continue
        if not chunk:
            raise EOFError
        msg = frame.feed(chunk)
        if msg is not None:
            return msg


Outcome = tuple[Any, str | None, float, list[dict[str, Any]]]  # payload, error, duration_ms, emf docs


def _reply(raw: bytes) -> Outcome:
    msg = json.loads(raw)
    duration = float(msg.get("duration_ms", 0.0))
    if "error" in msg:
        return msg["error"], "Unhandled", duration, msg.get("emf") or []
    return msg.get("payload"), None, duration, msg.get("emf") or []


def _timed_out(rid: str, timeout: float) -> Outcome:
    shape = _error("Task timed out", f"{rid} Task timed out after {timeout:.2f} seconds")
    return shape, "Unhandled", timeout * 1000.0, []


def _exited(rid: str, rc: int | None, start: float) -> Outcome:
    if rc == OOM_EXIT:  # the worker's memory watchdog: Lambda's shape for a function over its memory
        why = f"RequestId: {rid} Error: Runtime exited with error: signal: killed"
        return _error("Runtime.OutOfMemory", why), "Unhandled", (time.perf_counter() - start) * 1000.0, []
    why = f"RequestId: {rid} Error: Runtime exited with error: {_exit_reason(rc)}"
    return _error("Runtime.ExitError", why), "Unhandled", (time.perf_counter() - start) * 1000.0, []


class _AsyncCall:
    """One invocation on an idle warm worker, driven by event-loop callbacks.

    The request is written and the reply read when the socket is ready (add_writer/add_reader), the
    timeout is a loop timer. The bookkeeping (release or replace the worker, the concurrency count,
    metrics) happens in these callbacks, not in the awaiting coroutine, so an invocation whose caller
    is cancelled still ends exactly as a threaded one would; `result` then just goes unread."""

    __slots__ = (
        "rt", "loop", "w", "fd", "via_alias", "concurrent", "rid", "timeout", "start",
        "pending", "writing", "frame", "timer", "finished", "result",
    )

    def __init__(
        self,
        rt: Runtime,
        loop: asyncio.AbstractEventLoop,
        w: _Worker,
        via_alias: bool,
        concurrent: int,
        rid: str,
        event_json: str,
        timeout: float,
    ) -> None:
        self.rt, self.loop, self.w, self.fd = rt, loop, w, w.fd
        self.via_alias, self.concurrent, self.rid, self.timeout = via_alias, concurrent, rid, timeout
        self.result: asyncio.Future[InvokeResult] = loop.create_future()
        self.frame = _FrameReader()
        self.finished = False
        self.writing = False
        self.start = time.perf_counter()
        self.timer = loop.call_later(timeout, self._on_timeout)
        self.pending = memoryview(_request(rid, timeout, event_json))
        self._on_writable()  # an idle worker is blocked reading: a request usually fits in one write
        if not self.finished:
            loop.add_reader(self.fd, self._on_readable)

    def _on_writable(self) -> None:
        try:
            self.pending = self.pending[os.write(self.fd, self.pending) :]
        except BlockingIOError:
            pass
        except OSError:
            self._died()
            return
        if not self.pending:
            if self.writing:
                self.writing = False
                self.loop.remove_writer(self.fd)
        elif not self.writing:
            self.writing = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._died()
            return
        raw = self.frame.feed(chunk)
        if raw is None:
            return
        self._stop_io()
        self.rt._release(self.w, wait=False)
        try:
            outcome = _reply(raw)
        except ValueError as e:  # not the worker protocol: nothing a caller can use
            outcome = _error("Runtime.InvalidResponse", str(e)), "Unhandled", 0.0, []
        self._complete(outcome)

    def _on_timeout(self) -> None:
        if self.finished:
            return
        self._stop_io()
        w = self.w
        w.signal_kill()
        w.sock.close()
        threading.Thread(target=w.proc.wait, daemon=True, name="worker-reap").start()
        self.rt._discard(w)
        self._complete(_timed_out(self.rid, self.timeout))

    def _died(self) -> None:
        """EOF or a socket error: the worker exited; its exit status (waited for in a thread)
        goes into the error message."""
        self._stop_io()
        try:
            reaped = self.loop.run_in_executor(None, self.rt._reap, self.w)
        except RuntimeError:  # the loop's executor is shutting down: wait here (the worker has exited)
            reaped = self.loop.create_future()
            reaped.set_result(self.rt._reap(self.w))
        reaped.add_done_callback(self._reaped)

    def _reaped(self, reaped: asyncio.Future[int]) -> None:
        rc = None if reaped.cancelled() or reaped.exception() else reaped.result()
        self.rt._discard(self.w)
        self._complete(_exited(self.rid, rc, self.start))

    def _stop_io(self) -> None:
        self.finished = True
        self.timer.cancel()
        self.loop.remove_reader(self.fd)
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)

    def _complete(self, outcome: Outcome) -> None:
        payload, error, duration, emf = outcome
        rt, fn, version = self.rt, self.w.pool.fn, self.w.pool.version
        try:
            rt._done(fn)
            rt._record(fn, version, self.via_alias, self.concurrent, error=error is not None, duration=duration)
            if emf:
                rt._record_emf(emf)
        finally:
            if not self.result.done():
                self.result.set_result(
                    InvokeResult(fn, version, self.rid, payload, error=error, duration_ms=duration)
                )
