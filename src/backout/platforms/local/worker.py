"""A warm worker process: one function version's handler, invoked one event at a time (like Lambda).

Started by `runtime.py` as `python -P -m backout.platforms.local.worker FD`, where FD is this
process's end of a socketpair. Configuration comes from Lambda's own environment variables
(_HANDLER, LAMBDA_TASK_ROOT, AWS_LAMBDA_FUNCTION_NAME, …). Messages are JSON, framed as
multiprocessing's Connection frames them (a 4-byte big-endian length; -1 and 8 bytes over 2 GiB):

    worker → parent   {"type": "ready", "pid", "init_ms"}  |  {"type": "init_error", "error": shape}
    parent → worker   {"request_id", "event", "deadline"}        (deadline: epoch seconds)
    worker → parent   {"request_id", "payload" | "error": shape, "emf": [...], "duration_ms"}

The function's `memory` (AWS_LAMBDA_FUNCTION_MEMORY_SIZE, MB) is enforced as Lambda enforces it: a
watchdog thread samples the resident set every OOM_CHECK seconds and, past the limit, the worker
exits at once with OOM_EXIT; the parent reports the invocation as Lambda does (`Runtime.OutOfMemory`,
"Runtime exited with error: signal: killed"). An RSS watchdog rather than RLIMIT_AS: the address
space of a Python process with threads is many times its memory use (each thread's malloc arena
reserves 64 MB), so an address-space limit would refuse healthy handlers.

The parent closing its end stops the worker. This module imports only the stdlib before the
handler is loaded, so a warm worker of a trivial handler stays small (backout, pydantic and
friends are never imported here).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import random
import struct
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

# -- stdout: a line-buffered tee that keeps CloudWatch EMF lines ------------------------------------


class EmfTee(io.TextIOBase):
    """sys.stdout for the handler: each line goes to fd 1 (the version's log file) at once, and lines
    that are CloudWatch Embedded Metric Format documents are kept for the current invocation."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._partial = ""
        self._lock = threading.Lock()  # a handler's threads may print at the same time
        self.emf: list[dict[str, Any]] = []

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            if "\n" not in s:
                self._partial += s
                return len(s)
            head, _, self._partial = (self._partial + s).rpartition("\n")
            _write_all(self._fd, (head + "\n").encode("utf-8", "backslashreplace"))
            if '"_aws"' in head:
                for line in head.split("\n"):
                    self._keep_emf(line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                text, self._partial = self._partial, ""
                _write_all(self._fd, text.encode("utf-8", "backslashreplace"))

    def _keep_emf(self, line: str) -> None:
        line = line.strip()
        if not (line.startswith("{") and '"_aws"' in line):
            return
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if isinstance(doc, dict) and isinstance(doc.get("_aws"), dict) and "CloudWatchMetrics" in doc["_aws"]:
            if _own_signals(doc["_aws"]["CloudWatchMetrics"]):
                return
            self.emf.append(doc)


# The handler wrapper's namespace (`backout.platforms.base.NS_BACKOUT`; not imported: this module stays
# stdlib-only). Its line is for AWS, where nothing else measures per version; here the runtime, the
# gateway and the queues record the same series first-hand, so keeping it would count them twice.
_BACKOUT_NAMESPACE = "Backout"


def _own_signals(directives: Any) -> bool:
    """True for an EMF document that holds only backout's own signals (the handler wrapper's line)."""
    return isinstance(directives, list) and bool(directives) and all(
        isinstance(d, dict) and d.get("Namespace") == _BACKOUT_NAMESPACE for d in directives
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- fault injection for rollback drills ----------------------------------------------------------


class Faults:
    """BACKOUT_FAULT, e.g. `errors=0.5,latency=3s`: failures a drill injects through a release's
    environment alone, so any service can be made to fail without a code change."""

    def __init__(self, spec: str) -> None:
        self.error_rate = 0.0
        self.latency = 0.0
        self.crash = False
        self.dlq = False
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key == "errors":
                self.error_rate = float(value) if value else 1.0
                if not 0.0 <= self.error_rate <= 1.0:
                    raise ValueError(f"errors={value}: a probability between 0 and 1")
            elif key == "latency":
                self.latency = _seconds(value)
            elif key == "crash" and not value:
                self.crash = True
            elif key == "dlq" and not value:
                self.dlq = True
            else:
                raise ValueError(f"unknown fault {part!r} (use errors=P, latency=3s, crash, dlq)")

    def before(self, event: Any) -> None:
        # backout's own probes pass untouched: a drill's fault hits real traffic, so the drill proves
        # the alarms. The same test as `backout.control.probes.is_probe` (this module imports no backout).
        if _is_probe(event):
            return
        if self.latency:
            time.sleep(self.latency)
        if self.crash:
            sys.stderr.write("[ERROR] injected crash (BACKOUT_FAULT=crash)\n")
            os._exit(1)
        if self.error_rate and random.random() < self.error_rate:
            raise RuntimeError("injected fault")
        if self.dlq and _is_queue_event(event):
            raise RuntimeError("injected fault: queue message rejected (BACKOUT_FAULT=dlq)")


def _seconds(value: str) -> float:
    v = value.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * factor
    return float(v)


PROBE_HEADER = "x-backout-probe"  # backout.control.probes.PROBE_HEADER, lower-cased
PROBE_ATTRIBUTE = "backout-probe"  # backout.control.probes.PROBE_ATTRIBUTE


def _is_probe(event: Any) -> bool:
    """A marked probe (HTTP header or SQS message attribute on every record), or `{"test": true}`."""
    if not isinstance(event, dict):
        return False
    if event.get("test") is True:
        return True
    headers = event.get("headers")
    if isinstance(headers, dict) and any(str(k).lower() == PROBE_HEADER for k in headers):
        return True
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and all(
        isinstance(r, dict) and PROBE_ATTRIBUTE in (r.get("messageAttributes") or {}) for r in records)


def _is_queue_event(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and any(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records
    )


# -- the Lambda context -----------------------------------------------------------------------------


class LambdaContext:
    """What Lambda passes as `context`. The fields fixed for the worker's life are read from the
    environment once (`_fixed`), not on every invocation."""

    _fixed: dict[str, Any] | None = None

    def __init__(self, request_id: str, deadline: float) -> None:
        fixed = LambdaContext._fixed
        if fixed is None:
            fixed = LambdaContext._fixed = _context_fields(os.environ)
        self.__dict__.update(fixed)
        self.aws_request_id = request_id
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _context_fields(env: Any) -> dict[str, Any]:
    name, version = env["AWS_LAMBDA_FUNCTION_NAME"], env["AWS_LAMBDA_FUNCTION_VERSION"]
    return {
        "function_name": name,
        "function_version": version,
        "invoked_function_arn": f"arn:aws:lambda:local:000000000000:function:{name}:{version}",
        "memory_limit_in_mb": int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")),
        "log_group_name": env.get("AWS_LAMBDA_LOG_GROUP_NAME", f"/aws/lambda/{name}"),
        "log_stream_name": env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
        "identity": None,
        "client_context": None,
    }


def _user_frames(exc: BaseException) -> list[str]:
    """The traceback without the runtime's own frames (this module, importlib), as Lambda shows it."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f.filename != __file__ and not f.filename.startswith("<frozen importlib")
    ]
    return traceback.format_list(frames)


def error_shape(exc: BaseException) -> dict[str, Any]:
    """Lambda's error payload for an unhandled exception."""
    return {"errorType": type(exc).__name__, "errorMessage": str(exc), "stackTrace": _user_frames(exc)}


def _init_error(error_type: str, message: str, exc: BaseException | None = None) -> dict[str, Any]:
    trace = _user_frames(exc) if exc is not None else []
    return {"errorType": error_type, "errorMessage": message, "stackTrace": trace}


# -- the memory limit -------------------------------------------------------------------------------

OOM_EXIT = 197  # an exit status of its own: the parent reads it as "out of memory"
OOM_CHECK = 0.05  # seconds between two samples of the resident set


def _watch_memory(limit_mb: int) -> None:
    """Exit the worker the moment its resident memory passes the function's limit."""
    while True:
        rss = _rss_mb()
        if rss > limit_mb:
            _write_all(2, f"[ERROR] Runtime exited: out of memory ({rss} MB used, {limit_mb} MB allowed)\n".encode())
            os._exit(OOM_EXIT)
        time.sleep(OOM_CHECK)


def start_memory_watchdog(limit_mb: int) -> None:
    if limit_mb > 0:
        threading.Thread(target=_watch_memory, args=(limit_mb,), name="memory-watchdog", daemon=True).start()


# -- the worker -------------------------------------------------------------------------------------


class Worker:
    def __init__(self, conn: Connection, tee: EmfTee) -> None:
        self.conn = conn
        self.fd = conn.fileno() if conn is not None else -1
        self.tee = tee
        self.handler: Any = None
        self.faults = Faults("")
        self.version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.max_rss = 0

    def init(self) -> dict[str, Any] | None:
        """Load the handler; the Lambda-shaped error if it cannot be loaded."""
        spec = os.environ.get("_HANDLER", "")
        mod, _, attr = spec.rpartition(".")
        try:
            self.faults = Faults(os.environ.get("BACKOUT_FAULT", ""))
        except ValueError as e:
            return _init_error("Runtime.InvalidFault", f"BACKOUT_FAULT: {e}")
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            return _init_error("Runtime.ImportModuleError", f"Unable to import module '{mod}': {e}", e)
        except SyntaxError as e:
            return _init_error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{mod}': {e}", e)
        except Exception as e:
            return error_shape(e)
        handler = getattr(module, attr, None)
        if not callable(handler):
            return _init_error("Runtime.HandlerNotFound", f"Handler '{attr}' missing on module '{mod}'")
        self.handler = handler
        return None

    def invoke(self, req: dict[str, Any]) -> bytes:
        rid = req["request_id"]
        event = req.get("event")
        tee = self.tee
        tee.emf = []
        _write_all(1, f"START RequestId: {rid} Version: {self.version}\n".encode())
        start = time.perf_counter()
        body: dict[str, Any] = {"request_id": rid}
        try:
            self.faults.before(event)
            body["payload"] = self.handler(event, LambdaContext(rid, float(req["deadline"])))
        except Exception as e:
            body["error"] = error_shape(e)
            tee.flush()
            sys.stderr.write(f"[ERROR] {type(e).__name__}: {e}\n{traceback.format_exc()}")
        duration = (time.perf_counter() - start) * 1000.0
        tee.flush()
        self.max_rss = max(self.max_rss, _rss_mb())
        _write_all(
            1,
            f"END RequestId: {rid}\nREPORT RequestId: {rid}\tDuration: {duration:.2f} ms\t"
            f"Memory Size: {self.memory} MB\tMax Memory Used: {self.max_rss} MB\n".encode(),
        )
        body["emf"] = tee.emf
        body["duration_ms"] = duration
        try:
            return json.dumps(body).encode()
        except (TypeError, ValueError) as e:
            body.pop("payload", None)
            body["error"] = {
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {e}",
                "stackTrace": [],
            }
            sys.stderr.write(f"[ERROR] Runtime.MarshalError: {e}\n")
            return json.dumps(body, default=str).encode()

    def serve(self) -> None:
        while True:
            try:
                raw = _recv(self.fd)
            except (EOFError, OSError):
                return
            out = self.invoke(json.loads(raw))
            try:
                self.conn.send_bytes(out)
            except OSError:
                return


_LEN = struct.Struct("!i")
_LEN64 = struct.Struct("!Q")


def _recv(fd: int) -> bytes:
    """One frame from the parent: usually a single read (Connection.recv_bytes makes two)."""
    data = os.read(fd, 65536)
    if not data:
        raise EOFError
    while len(data) < 4 or (len(data) < 12 and _LEN.unpack_from(data)[0] == -1):
        data += _read_more(fd, 65536)
    size, start = _LEN.unpack_from(data)[0], 4
    if size == -1:
        size, start = _LEN64.unpack_from(data, 4)[0], 12
    if len(data) >= start + size:
        return data[start : start + size]
    buf = bytearray(data)
    while len(buf) < start + size:
        buf += _read_more(fd, start + size - len(buf))
    return bytes(buf[start:])


def _read_more(fd: int, n: int) -> bytes:
    chunk = os.read(fd, n)
    if not chunk:
        raise EOFError
    return chunk


def _rss_mb() -> int:
    """Resident memory now (ru_maxrss would include the parent's pages from before exec)."""
    global _STATM
    try:
        if _STATM < 0:
            _STATM = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_STATM, 128, 0).split()[1]) * _PAGE // (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return 0


_STATM = -1  # kept open: one pread per invocation instead of open + read + close
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _isolate_sys_path(task_root: str) -> None:
    """The release's code first; drop the project checkout that made backout importable, so a
    handler imports its own release's modules and never the working copy's."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    checkout = None if os.path.basename(here) in ("site-packages", "dist-packages") else here
    sys.path[:] = [task_root, *(p for p in sys.path if p and os.path.abspath(p) != checkout)]


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[0]))
    started = time.perf_counter()
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    _isolate_sys_path(task_root)
    tee = EmfTee(1)
    sys.stdout = tee
    worker = Worker(conn, tee)
    try:
        start_memory_watchdog(int(worker.memory))
    except ValueError:
        pass  # not a number: the parent always sets it; a hand-started worker runs unlimited
    err = worker.init()
    tee.flush()
    if err is not None:
        sys.stderr.write(f"[ERROR] init failed: {err['errorType']}: {err['errorMessage']}\n")
        conn.send_bytes(json.dumps({"type": "init_error", "error": err}).encode())
        os._exit(1)
    init_ms = (time.perf_counter() - started) * 1000.0
    conn.send_bytes(json.dumps({"type": "ready", "pid": os.getpid(), "init_ms": init_ms}).encode())
    worker.serve()
    tee.flush()
    sys.stderr.flush()
    os._exit(0)  # don't wait for threads a handler may have left running


if __name__ == "__main__":
    main(sys.argv[1:])
