"""Runtime + worker: real worker processes running handlers from real releases."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms.base import NS_LAMBDA, FunctionConfig, InvokeResult
from backout.platforms.local.releases import Releases
from backout.platforms.local.runtime import FunctionInitError, Runtime, RuntimeClosed

HANDLER = """
import os, signal, sys, time

TAG = "{tag}"


def handler(event, context):
    action = event.get("action")
    if action == "sleep":
        if event.get("marker"):
            open(event["marker"], "w").close()
        time.sleep(event["seconds"])
    elif action == "raise":
        raise ValueError("bad input: " + str(event.get("why")))
    elif action == "exit":
        os._exit(3)
    elif action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "print":
        print("line one")
        sys.stdout.write("line two, ")
        print("same line", flush=True)
        print("to stderr", file=sys.stderr)
    elif action == "unjson":
        return {{"s": {{1, 2}}}}
    elif action == "context":
        env = os.environ
        return {{
            "function_name": context.function_name,
            "function_version": context.function_version,
            "arn": context.invoked_function_arn,
            "request_id": context.aws_request_id,
            "memory": context.memory_limit_in_mb,
            "log_group": context.log_group_name,
            "log_stream": context.log_stream_name,
            "remaining": context.get_remaining_time_in_millis(),
            "env": {{k: env.get(k) for k in event["env"]}},
            "cwd": os.getcwd(),
            "path0": sys.path[0],
        }}
    elif action == "echo":
        return event
    elif action == "modules":
        return {{m: m in sys.modules for m in ("pydantic", "backout.manifest")}}
    return {{"tag": TAG, "pid": os.getpid()}}
"""

POWERTOOLS = """
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

metrics = Metrics(namespace="SecurityAssistant", service="sda-test")


@metrics.log_metrics
def handler(event, context):
    metrics.add_dimension(name="Stage", value="unit")
    metrics.add_metric(name="JobsProcessed", unit=MetricUnit.Count, value=event["jobs"])
    metrics.add_metric(name="PagesRead", unit=MetricUnit.Count, value=3)
    metrics.add_metric(name="PagesRead", unit=MetricUnit.Count, value=4)
    return {"ok": True}
"""

MANIFEST = """
[service]
name = "svc"
source = "src"
packages = ["app"]

[functions.f]
handler = "app.h.handler"
timeout = "{timeout}"
memory = 256
environment = {{ FROM_MANIFEST = "m", SHARED = "manifest" }}

[functions.one]
handler = "app.h.handler"
timeout = "10s"
reserved_concurrency = 1

[functions.emf]
handler = "app.pt.handler"
timeout = "20s"

[functions.broken]
handler = "app.nope.handler"

[environments.staging]
gateway_port = 0
control_port = 0
"""


class Collect:
    """A real metric sink that keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, str], float, str, float]] = []
        self._lock = threading.Lock()

    def record(
        self, namespace: str, metric: str, dimensions: dict[str, str], value: float, unit: str, ts: float
    ) -> None:
        with self._lock:
            self.records.append((namespace, metric, dict(dimensions), value, unit, ts))

    def values(self, metric: str, dims: dict[str, str], namespace: str = NS_LAMBDA) -> list[float]:
        return [r[3] for r in self.records if r[0] == namespace and r[1] == metric and r[2] == dims]


class Service:
    def __init__(self, root: Path, timeout: str = "2s") -> None:
        self.root = root
        self.src = root / "src"
        (self.src / "app").mkdir(parents=True)
        (self.src / "app" / "__init__.py").write_text("")
        (self.src / "app" / "pt.py").write_text(POWERTOOLS)
        (root / "backout.toml").write_text(MANIFEST.format(timeout=timeout))
        self.manifest = load_manifest(root / "backout.toml")
        self.state = root / "state"
        self.releases = Releases(self.state)
        self.sink = Collect()
        self.runtimes: list[Runtime] = []

    def publish(self, tag: str = "one", environment: dict[str, str] | None = None) -> int:
        (self.src / "app" / "h.py").write_text(HANDLER.format(tag=tag))
        return self.releases.publish(self.src, ["app"], environment)

    def runtime(self, **kw: Any) -> Runtime:
        rt = Runtime(self.manifest, self.state, self.releases, self.sink, **kw)
        self.runtimes.append(rt)
        return rt


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(timeout: str = "2s") -> Service:
        s = Service(tmp_path / f"svc{len(made)}", timeout)
        made.append(s)
        return s

    yield make
    for s in made:
        for rt in s.runtimes:
            rt.close(drain_timeout=1)


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def function_workers() -> list[int]:
    """This process's children that are function workers (not, say, an emulator another test started)."""
    out = []
    for p in psutil.Process().children():
        try:
            if "backout.platforms.local.worker" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- isolation and the Lambda contract ----------------------------------------------------------------


def test_two_versions_of_one_module_side_by_side(service: Callable[..., Service]) -> None:
    s = service()
    v1, v2 = s.publish("one"), s.publish("two")
    rt = s.runtime()
    rt.warm("f", v1)
    rt.warm("f", v2)
    assert rt.warm_versions() == {"f": [1, 2]}
    for _ in range(3):
        a, b = rt.invoke("f", v1, {}), rt.invoke("f", v2, {})
        assert (a.payload["tag"], b.payload["tag"]) == ("one", "two")
        assert a.ok and b.ok and a.version == 1 and b.version == 2
        assert a.payload["pid"] != b.payload["pid"]


def test_context_and_environment(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish(environment={"SHARED": "release", "FROM_RELEASE": "r"})
    rt = s.runtime(extra_env={"FROM_EXTRA": "e", "SHARED": "extra"})
    keys = [
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_REGION",
        "FROM_MANIFEST",
        "FROM_EXTRA",
        "FROM_RELEASE",
        "SHARED",
    ]
    r = rt.invoke("f", v, {"action": "context", "env": keys})
    assert r.ok, r.payload
    p = r.payload
    assert p["function_name"] == "f" and p["function_version"] == "1"
    assert p["arn"] == "arn:aws:lambda:local:000000000000:function:f:1"
    assert p["request_id"] == r.request_id
    assert p["memory"] == 256 and p["log_group"] == "/aws/lambda/f" and "[1]" in p["log_stream"]
    assert 1000 < p["remaining"] <= 2000  # timeout is 2s
    assert p["env"] == {
        "AWS_LAMBDA_FUNCTION_NAME": "f",
        "AWS_LAMBDA_FUNCTION_VERSION": "1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_REGION": os.environ.get("AWS_REGION", "local"),  # "local" unless already set
        "FROM_MANIFEST": "m",
        "FROM_EXTRA": "e",
        "FROM_RELEASE": "r",
        "SHARED": "release",  # manifest < environment extras < release overrides
    }
    assert p["path0"] == str(s.releases.code_dir(v)) == p["cwd"]


def test_each_version_runs_with_the_configuration_its_release_holds(service: Callable[..., Service]) -> None:
    """As on Lambda: timeout, memory, environment and handler are the version's, not the manifest's of
    the moment, so invoking an older version (a rollback) brings its configuration back."""
    s = service()  # the manifest says: timeout 2s, memory 256, FROM_MANIFEST=m
    (s.src / "app" / "h.py").write_text(HANDLER.format(tag="one"))
    (s.src / "app" / "other.py").write_text("def handler(event, context):\n    return {'other': True}\n")
    good = FunctionConfig("app.h.handler", 5.0, 512, {"MODE": "good"})
    bad = FunctionConfig("app.h.handler", 0.5, 1024, {"MODE": "bad"})
    v1 = s.releases.publish(s.src, ["app"], configuration={"f": good})
    v2 = s.releases.publish(s.src, ["app"], configuration={"f": bad})
    v3 = s.releases.publish(s.src, ["app"], configuration={"f": FunctionConfig("app.other.handler", 5.0, 512)})
    assert (v1, v2, v3) == (1, 2, 3), "a configuration-only change is a new version"
    rt = s.runtime(extra_env={"BACKOUT_ENV": "test"})
    keys = ["MODE", "FROM_MANIFEST", "BACKOUT_ENV", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
    a = rt.invoke("f", v1, {"action": "context", "env": keys}).payload
    b = rt.invoke("f", v2, {"action": "context", "env": keys}).payload
    assert (a["memory"], a["env"]) == (512, {"MODE": "good", "FROM_MANIFEST": None, "BACKOUT_ENV": "test",
                                             "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512"})
    assert (b["memory"], b["env"]) == (1024, {"MODE": "bad", "FROM_MANIFEST": None, "BACKOUT_ENV": "test",
                                              "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"})
    assert 2000 < a["remaining"] <= 5000 and b["remaining"] <= 500
    slow = {"action": "sleep", "seconds": 0.8}
    r = rt.invoke("f", v2, slow)
    assert r.payload == {"errorType": "Task timed out",
                         "errorMessage": f"{r.request_id} Task timed out after 0.50 seconds"}
    assert rt.invoke("f", v1, slow).ok, "the older version keeps its own timeout"
    assert rt.invoke("f", v3, {}).payload == {"other": True}


def test_unhandled_exception_shape(service: Callable[..., Service]) -> None:
    s = service()
    rt = s.runtime()
    r = rt.invoke("f", s.publish(), {"action": "raise", "why": "no pdf"})
    assert r.error == "Unhandled" and not r.ok
    assert r.payload["errorType"] == "ValueError"
    assert r.payload["errorMessage"] == "bad input: no pdf"
    assert isinstance(r.payload["stackTrace"], list) and all(
        isinstance(x, str) for x in r.payload["stackTrace"]
    )
    assert any("h.py" in line and "handler" in line for line in r.payload["stackTrace"])
    # A result that is not JSON is an error too, and the worker survives both.
    r = rt.invoke("f", 1, {"action": "unjson"})
    assert r.error == "Unhandled" and r.payload["errorType"] == "Runtime.MarshalError"
    assert "not JSON serializable" in r.payload["errorMessage"]
    assert rt.invoke("f", 1, {}).ok


def test_timeout_kills_and_replaces_the_worker(service: Callable[..., Service]) -> None:
    s = service(timeout="1s")
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    pid = rt.invoke("f", v, {}).payload["pid"]
    t0 = time.monotonic()
    r = rt.invoke("f", v, {"action": "sleep", "seconds": 30})
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 5
    assert r.error == "Unhandled"
    assert r.payload == {
        "errorType": "Task timed out",
        "errorMessage": f"{r.request_id} Task timed out after 1.00 seconds",
    }
    assert r.duration_ms == pytest.approx(1000.0)
    assert wait_for(lambda: gone(pid), 5)
    assert wait_for(lambda: rt.is_warm("f", v))  # a replacement started in the background
    after = rt.invoke("f", v, {})
    assert after.ok and after.payload["pid"] != pid


def test_idle_worker_killed_from_outside_is_skipped(service: Callable[..., Service]) -> None:
    """The OOM killer (here: SIGKILL) takes an idle worker: the next invocation still succeeds."""
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    pid = rt.invoke("f", v, {}).payload["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    r = rt.invoke("f", v, {})
    assert r.ok and r.payload["pid"] != pid


@pytest.mark.parametrize(
    ("action", "reason"), [("exit", "exit status 3"), ("segv", "signal: segmentation fault")]
)
def test_worker_dying_mid_invocation(service: Callable[..., Service], action: str, reason: str) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    t0 = time.monotonic()
    r = rt.invoke("f", v, {"action": action})
    assert time.monotonic() - t0 < 10
    assert r.error == "Unhandled" and r.payload["errorType"] == "Runtime.ExitError"
    assert (
        r.payload["errorMessage"] == f"RequestId: {r.request_id} Error: Runtime exited with error: {reason}"
    )
    assert rt.invoke("f", v, {}).ok  # a new worker took its place


def test_throttle_when_reserved_concurrency_is_used_up(
    service: Callable[..., Service], tmp_path: Path
) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("one", v)
    marker = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rt.invoke, "one", v, {"action": "sleep", "seconds": 1.5, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        t0 = time.monotonic()
        second = rt.invoke("one", v, {})
        assert time.monotonic() - t0 < 0.5  # returned at once, not queued
        assert second.throttled and not second.ok and second.error is None
        assert second.payload == {"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."}
        assert first.result().ok
    assert rt.invoke("one", v, {}).ok  # capacity is back
    dims = {"FunctionName": "one"}
    assert s.sink.values("Throttles", dims) == [1.0]
    assert s.sink.values("Invocations", dims) == [1.0, 1.0]


def test_reserved_concurrency_is_shared_by_all_versions(
    service: Callable[..., Service], tmp_path: Path
) -> None:
    s = service()
    v1, v2 = s.publish("one"), s.publish("two")
    rt = s.runtime()
    marker = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rt.invoke, "one", v1, {"action": "sleep", "seconds": 1.0, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        assert rt.invoke("one", v2, {}).throttled
        assert first.result().ok


def test_concurrent_invocations_reuse_warm_workers(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime(max_concurrency=16)
    event = {"action": "sleep", "seconds": 0.4}
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: rt.invoke("f", v, event), range(6)))
    assert all(r.ok for r in results)
    concurrency = s.sink.values("ConcurrentExecutions", {"FunctionName": "f"})
    assert max(concurrency) >= 2
    pids = {rt.invoke("f", v, {}).payload["pid"] for _ in range(10)}
    live = {p.pid for p in psutil.Process().children() if p.is_running() and not gone(p.pid)}
    assert pids <= live  # sequential calls run on workers that already existed
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda _: rt.invoke("f", v, {}), range(40)))
    assert all(r.ok for r in again)
    assert len({r.payload["pid"] for r in again}) <= 6  # no new worker per call


def test_max_concurrency_default_applies_without_reservation(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime(max_concurrency=2)
    event = {"action": "sleep", "seconds": 1.0}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: rt.invoke("f", v, event), range(4)))
    assert sum(r.throttled for r in results) >= 1
    assert sum(r.ok for r in results) >= 2


# -- metrics and logs ---------------------------------------------------------------------------------


def test_lambda_metrics_for_each_dimension_set(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    assert rt.invoke("f", v, {}, via_alias=True).ok
    assert not rt.invoke("f", v, {"action": "raise"}, via_alias=True).ok
    assert rt.invoke("f", v, {}).ok  # direct: no Resource dimension
    fn = {"FunctionName": "f"}
    ver = {"FunctionName": "f", "ExecutedVersion": "1"}
    alias = {"FunctionName": "f", "Resource": "f:live"}
    for dims, n in ((fn, 3), (ver, 3), (alias, 2)):
        assert s.sink.values("Invocations", dims) == [1.0] * n
        assert len(s.sink.values("Duration", dims)) == n
        assert len(s.sink.values("ConcurrentExecutions", dims)) == n
    assert s.sink.values("Errors", alias) == [0.0, 1.0]
    assert s.sink.values("Errors", fn) == [0.0, 1.0, 0.0]
    assert all(d >= 0 for d in s.sink.values("Duration", fn))
    units = {(r[1], r[4]) for r in s.sink.records}
    assert ("Duration", "Milliseconds") in units and ("Invocations", "Count") in units
    assert not s.sink.values("Throttles", fn)


def test_powertools_emf_becomes_sink_records(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    before = time.time()
    r = rt.invoke("emf", v, {"jobs": 2})
    assert r.ok and r.payload == {"ok": True}
    emf = [x for x in s.sink.records if x[0] == "SecurityAssistant"]
    dims = {"service": "sda-test", "Stage": "unit"}
    assert sorted((x[1], x[2] == dims, x[3], x[4]) for x in emf) == [
        ("JobsProcessed", True, 2.0, "Count"),
        ("PagesRead", True, 3.0, "Count"),
        ("PagesRead", True, 4.0, "Count"),
    ]
    assert all(before - 1 <= x[5] <= time.time() + 1 for x in emf)
    # The EMF line still reaches the log, like CloudWatch Logs.
    log = (s.state / "logs" / "emf" / "v1.log").read_text()
    assert '"_aws"' in log and "JobsProcessed" in log
    # Each invocation returns only its own EMF documents.
    rt.invoke("emf", v, {"jobs": 5})
    assert sorted(x[3] for x in s.sink.records if x[1] == "JobsProcessed") == [2.0, 5.0]


def test_log_file_receives_output(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    r = rt.invoke("f", v, {"action": "print"})
    assert r.ok
    rt.invoke("f", v, {"action": "raise", "why": "logged"})
    log = (s.state / "logs" / "f" / "v1.log").read_text()
    assert "line one\nline two, same line\n" in log
    assert "to stderr\n" in log
    assert f"START RequestId: {r.request_id} Version: 1" in log
    assert f"REPORT RequestId: {r.request_id}\tDuration:" in log
    assert "[ERROR] ValueError: bad input: logged" in log


# -- fault injection ----------------------------------------------------------------------------------


def test_fault_errors(service: Callable[..., Service]) -> None:
    s = service()
    always = s.publish(environment={"BACKOUT_FAULT": "errors=1"})
    half = s.publish(environment={"BACKOUT_FAULT": "errors=0.5"})
    rt = s.runtime()
    r = rt.invoke("f", always, {})
    assert r.payload["errorType"] == "RuntimeError" and r.payload["errorMessage"] == "injected fault"
    outcomes = [rt.invoke("f", half, {}).ok for _ in range(80)]
    assert 10 <= sum(outcomes) <= 70  # binomial(80, 0.5): outside this is < 1e-9


def test_fault_latency_and_combination(service: Callable[..., Service]) -> None:
    s = service(timeout="5s")
    v = s.publish(environment={"BACKOUT_FAULT": "latency=700ms, errors=1"})
    rt = s.runtime()
    rt.warm("f", v)
    t0 = time.monotonic()
    r = rt.invoke("f", v, {})
    assert time.monotonic() - t0 >= 0.7 and r.duration_ms >= 700
    assert r.payload["errorMessage"] == "injected fault"


def test_fault_crash(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish(environment={"BACKOUT_FAULT": "crash"})
    rt = s.runtime()
    rt.warm("f", v)  # the handler loads; only invocations crash
    for _ in range(2):
        r = rt.invoke("f", v, {})
        assert r.payload["errorType"] == "Runtime.ExitError" and "exit status 1" in r.payload["errorMessage"]


def test_fault_dlq_rejects_only_queue_events(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish(environment={"BACKOUT_FAULT": "dlq"})
    rt = s.runtime()
    queue_event = {"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": "{}"}]}
    r = rt.invoke("f", v, queue_event)
    assert r.error == "Unhandled" and "injected fault" in r.payload["errorMessage"]
    assert rt.invoke("f", v, {"httpMethod": "GET", "path": "/health"}).ok
    assert rt.invoke("f", v, {"Records": [{"eventSource": "aws:s3"}]}).ok


def test_supervisor_environment_cannot_inject_faults(
    service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKOUT_FAULT", "crash")
    monkeypatch.setenv("SUPERVISOR_SETTING", "inherited")
    s = service()
    v = s.publish()
    r = s.runtime().invoke("f", v, {"action": "context", "env": ["BACKOUT_FAULT", "SUPERVISOR_SETTING"]})
    assert r.ok and r.payload["env"] == {"BACKOUT_FAULT": None, "SUPERVISOR_SETTING": "inherited"}


def test_bad_fault_spec_fails_init(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish(environment={"BACKOUT_FAULT": "explode"})
    rt = s.runtime()
    with pytest.raises(FunctionInitError, match="Runtime.InvalidFault.*unknown fault 'explode'"):
        rt.warm("f", v)


# -- lifecycle ----------------------------------------------------------------------------------------


def test_init_error_on_warm_and_on_invoke(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    with pytest.raises(FunctionInitError, match="Unable to import module 'app.nope'") as e:
        rt.warm("broken", v)
    assert e.value.error["errorType"] == "Runtime.ImportModuleError"
    assert not rt.is_warm("broken", v)
    r = rt.invoke("broken", v, {})
    assert r.error == "Unhandled" and r.payload["errorType"] == "Runtime.ImportModuleError"
    assert s.sink.values("Errors", {"FunctionName": "broken"}) == [1.0]


def test_unknown_function_and_version(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    with pytest.raises(UsageError, match=r"unknown function 'nope' \(functions: broken, emf, f, one\)"):
        rt.invoke("nope", v, {})
    with pytest.raises(UsageError, match=r"unknown version 9 \(published: 1\)"):
        rt.invoke("f", 9, {})
    with pytest.raises(UsageError, match="unknown version 9"):
        rt.warm("f", 9)
    with pytest.raises(UsageError, match="unknown function"):
        rt.is_warm("nope", 1)


def test_retire_stops_idle_workers_after_in_flight_finish(
    service: Callable[..., Service], tmp_path: Path
) -> None:
    s = service()
    v1, v2 = s.publish("one"), s.publish("two")
    rt = s.runtime()
    rt.warm("f", v1, count=2)
    rt.warm("f", v2)
    v2_pid = rt.invoke("f", v2, {}).payload["pid"]
    marker = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(rt.invoke, "f", v1, {"action": "sleep", "seconds": 0.8, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        v1_pids = set(function_workers()) - {v2_pid}
        assert len(v1_pids) == 2
        rt.retire("f", v1)
        assert not rt.is_warm("f", v1) and rt.warm_versions() == {"f": [2]}
        assert rt._pools[("f", v1)].env is None  # a retired version keeps no copy of the environment
        assert not busy.done()
        assert wait_for(lambda: sum(map(gone, v1_pids)) == 1, 5)  # the idle one stopped at once
        result = busy.result()
    assert result.ok  # the in-flight invocation finished on its worker
    assert wait_for(lambda: all(map(gone, v1_pids)), 5)  # ...which then stopped too
    assert not gone(v2_pid) and rt.invoke("f", v2, {}).payload["pid"] == v2_pid
    # A retired version can still be invoked (e.g. a rollback target): it starts cold again.
    assert rt.invoke("f", v1, {}).payload["tag"] == "one"
    assert rt._pools[("f", v1)].env["AWS_LAMBDA_FUNCTION_VERSION"] == str(v1)  # built anew for it


def test_close_drains_in_flight_then_stops_workers(service: Callable[..., Service], tmp_path: Path) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v, count=2)
    marker = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(rt.invoke, "f", v, {"action": "sleep", "seconds": 0.8, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        workers = function_workers()
        assert len(workers) == 2
        rt.close(drain_timeout=10)
        assert busy.done() and busy.result().ok
    assert all(gone(p) for p in workers)
    with pytest.raises(RuntimeClosed):
        rt.invoke("f", v, {})


def test_close_after_drain_timeout_ends_stuck_invocations(
    service: Callable[..., Service], tmp_path: Path
) -> None:
    s = service(timeout="30s")
    v = s.publish()
    rt = s.runtime()
    marker = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(rt.invoke, "f", v, {"action": "sleep", "seconds": 20, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        t0 = time.monotonic()
        rt.close(drain_timeout=0.3)
        r: InvokeResult = busy.result(timeout=10)
        assert time.monotonic() - t0 < 5
    assert r.payload["errorType"] == "Runtime.ExitError"


# -- cost -----------------------------------------------------------------------------------------------


def test_warm_invocation_is_cheap_and_worker_is_small(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    for _ in range(20):
        rt.invoke("f", v, {})
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        r = rt.invoke("f", v, {})
        times.append((time.perf_counter() - t0) * 1000)
    assert r.ok
    # Includes 8 sink records and JSON both ways; typically ~0.2 ms. Slack for a busy shared machine.
    assert statistics.median(times) < 2.0
    rss_mb = psutil.Process(r.payload["pid"]).memory_info().rss / 2**20
    assert rss_mb <= 60
    mods = rt.invoke("f", v, {"action": "modules"}).payload
    assert mods == {"pydantic": False, "backout.manifest": False}


# -- the asyncio path (the gateway's) -----------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_async_invocation_on_a_warm_worker_matches_the_sync_one(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    pid = rt.invoke("f", v, {}).payload["pid"]

    async def calls() -> list[InvokeResult]:
        return [
            await rt.invoke_async("f", v, {}, via_alias=True),
            await rt.invoke_async("f", v, {"action": "raise", "why": "async"}, via_alias=True),
            await rt.invoke_async("f", v, {"action": "unjson"}),
        ]

    ok, raised, unjson = run(calls())
    assert ok.ok and ok.payload == {"tag": "one", "pid": pid}  # the warm worker, no new one
    assert raised.error == "Unhandled" and raised.payload["errorType"] == "ValueError"
    assert raised.payload["errorMessage"] == "bad input: async" and raised.payload["stackTrace"]
    assert unjson.payload["errorType"] == "Runtime.MarshalError"
    alias = {"FunctionName": "f", "Resource": "f:live"}
    assert s.sink.values("Invocations", {"FunctionName": "f"}) == [1.0] * 4
    assert s.sink.values("Errors", alias) == [0.0, 1.0]
    assert len(s.sink.values("Duration", {"FunctionName": "f", "ExecutedVersion": "1"})) == 4
    assert rt.invoke("f", v, {}).payload["pid"] == pid  # the sync path reuses the same worker


def test_async_cold_start_and_unknown_version(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    r = run(rt.invoke_async("f", v, {}))  # no worker yet: started in a thread
    assert r.ok and rt.is_warm("f", v)
    assert run(rt.invoke_async("f", v, {})).payload["pid"] == r.payload["pid"]
    with pytest.raises(UsageError, match="unknown version 9"):
        run(rt.invoke_async("f", 9, {}))
    with pytest.raises(UsageError, match="unknown function"):
        run(rt.invoke_async("nope", v, {}))
    with pytest.raises(UsageError, match="not JSON"):
        run(rt.invoke_async("f", v, {"x": {1, 2}}))


def test_async_large_event_and_result_cross_the_socket(service: Callable[..., Service]) -> None:
    """Bigger than a socket buffer both ways: the request is written as the worker reads it."""
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    event = {"action": "echo", "blob": "x" * 3_000_000}
    r = run(rt.invoke_async("f", v, event))
    assert r.ok and r.payload == event


def test_async_timeout_and_crash(service: Callable[..., Service]) -> None:
    s = service(timeout="1s")
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    pid = rt.invoke("f", v, {}).payload["pid"]
    t0 = time.monotonic()
    r = run(rt.invoke_async("f", v, {"action": "sleep", "seconds": 30}))
    assert 0.9 < time.monotonic() - t0 < 5
    assert r.payload == {
        "errorType": "Task timed out",
        "errorMessage": f"{r.request_id} Task timed out after 1.00 seconds",
    }
    assert r.error == "Unhandled" and r.duration_ms == pytest.approx(1000.0)
    assert wait_for(lambda: gone(pid), 5)
    assert wait_for(lambda: rt.is_warm("f", v))  # replaced in the background
    for action, reason in (("exit", "exit status 3"), ("segv", "signal: segmentation fault")):
        assert wait_for(lambda: rt.is_warm("f", v))
        r = run(rt.invoke_async("f", v, {"action": action}))
        assert r.payload["errorType"] == "Runtime.ExitError"
        assert r.payload["errorMessage"] == f"RequestId: {r.request_id} Error: Runtime exited with error: {reason}"
    assert run(rt.invoke_async("f", v, {})).ok
    assert s.sink.values("Errors", {"FunctionName": "f"}) == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_async_and_sync_share_the_concurrency_limit(service: Callable[..., Service], tmp_path: Path) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("one", v)
    marker = tmp_path / "started"

    async def async_busy_then_sync() -> tuple[InvokeResult, InvokeResult]:
        busy = asyncio.ensure_future(
            rt.invoke_async("one", v, {"action": "sleep", "seconds": 1.0, "marker": str(marker)})
        )
        while not marker.exists():
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        second = await asyncio.to_thread(rt.invoke, "one", v, {})
        assert time.monotonic() - t0 < 0.5
        return await busy, second

    first, second = run(async_busy_then_sync())
    assert first.ok and second.throttled
    marker.unlink()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(rt.invoke, "one", v, {"action": "sleep", "seconds": 1.0, "marker": str(marker)})
        assert wait_for(marker.exists, 10)
        r = run(rt.invoke_async("one", v, {}))
        assert r.throttled and r.payload == {"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."}
        assert busy.result().ok
    assert run(rt.invoke_async("one", v, {})).ok
    assert s.sink.values("Throttles", {"FunctionName": "one"}) == [1.0, 1.0]


def test_async_invocations_run_concurrently_on_one_loop(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v, count=4)

    async def four() -> list[InvokeResult]:
        event = {"action": "sleep", "seconds": 0.6}
        return await asyncio.gather(*(rt.invoke_async("f", v, event) for _ in range(4)))

    t0 = time.monotonic()
    results = run(four())
    assert time.monotonic() - t0 < 4 * 0.6 * 0.8  # serially 2.4 s
    assert all(r.ok for r in results)
    assert max(s.sink.values("ConcurrentExecutions", {"FunctionName": "f"})) >= 2


def test_async_emf_metrics(service: Callable[..., Service]) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("emf", v)
    assert run(rt.invoke_async("emf", v, {"jobs": 7})).ok
    assert [x[3] for x in s.sink.records if x[1] == "JobsProcessed"] == [7.0]


def test_a_cancelled_async_caller_still_completes_the_invocation(
    service: Callable[..., Service], tmp_path: Path
) -> None:
    """As with the thread pool: the caller going away does not cut the invocation short, and its
    worker goes back to the pool, its count and metrics as for any other invocation."""
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("one", v)
    pid = rt.invoke("one", v, {}).payload["pid"]
    marker = tmp_path / "started"

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(
            rt.invoke_async("one", v, {"action": "sleep", "seconds": 0.5, "marker": str(marker)})
        )
        while not marker.exists():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await rt.invoke_async("one", v, {})).throttled  # still running: still counted
        await asyncio.sleep(1.0)  # the loop keeps running: the reply arrives and is handled

    run(cancel_midway())
    assert s.sink.values("Invocations", {"FunctionName": "one"}) == [1.0, 1.0]
    assert rt.invoke("one", v, {}).payload["pid"] == pid


def test_close_drains_async_invocations(service: Callable[..., Service], tmp_path: Path) -> None:
    s = service()
    v = s.publish()
    rt = s.runtime()
    rt.warm("f", v)
    marker = tmp_path / "started"

    async def close_while_busy() -> InvokeResult:
        busy = asyncio.ensure_future(
            rt.invoke_async("f", v, {"action": "sleep", "seconds": 0.5, "marker": str(marker)})
        )
        while not marker.exists():
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(asyncio.to_thread(rt.close, 10))
        result = await busy
        await closing
        with pytest.raises(RuntimeClosed):
            await rt.invoke_async("f", v, {})
        return result

    assert run(close_while_busy()).ok
