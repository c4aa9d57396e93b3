"""The local platform end to end: a real supervisor (`backout up --detach`), real worker processes,
real HTTP on 127.0.0.1, driven through the `backout` CLI, the gateway and the control API.

Issue 2's acceptance points: weighted routing (chi-square), isolated versions, Lambda's error
shapes, the gateway's status codes, DLQ redrive, paused processing, `kill -9` of a worker and of
the supervisor, the control API's token, a second `up`, `down`, metrics and logs.

One supervisor serves every test of the module (per xdist worker); each test leaves the shared
settings (alias, throttle, processing) as it found them, so the tests run in any order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import chisquare

from backout.platforms.local.queues import QueueStore
from support import ROOT, RunningEnv, wait_for

pytestmark = pytest.mark.slow

APP = '''
import json
import os
import time
from pathlib import Path

TAG = "{tag}"


def _http(status, body):
    return {{"statusCode": status, "headers": {{"content-type": "application/json"}}, "body": json.dumps(body)}}


def handler(event, context):
    if event.get("test") is True:
        return {{"status": "ok"}}
    if "httpMethod" not in event:  # a direct invocation (`backout invoke`)
        action = event.get("action")
        if action == "raise":
            raise ValueError("bad input: " + str(event.get("why")))
        if action == "sleep":
            time.sleep(float(event["seconds"]))
        return {{"tag": TAG, "x": os.environ.get("X"), "version": context.function_version, "pid": os.getpid()}}
    route = event["resource"]
    if route == "/boom":
        raise RuntimeError("boom")
    if route in ("/slow", "/hold"):
        # /slow sleeps ?s= seconds; /hold waits for the gate file (at most 20 s). Both leave a marker
        # file named by ?tag= while they run.
        params = event.get("queryStringParameters") or {{}}
        gate = os.environ["OUT_FILE"] + ".gate"
        marker = Path(os.environ["OUT_FILE"] + f".{{params.get('tag', 'x')}}.{{os.getpid()}}")
        marker.touch()
        end = time.monotonic() + (20.0 if route == "/hold" else float(params.get("s", "5")))
        while time.monotonic() < end and not (route == "/hold" and os.path.exists(gate)):
            time.sleep(0.01)
        marker.unlink()
    if route == "/send":
        from backout.platforms.local.queues import QueueStore

        mid = QueueStore(Path(os.environ["BACKOUT_PLATFORM_DB"])).send("jobs", event["body"])
        return _http(200, {{"messageId": mid}})
    if route == "/health":
        return _http(200, {{"status": "healthy"}})
    return _http(200, {{"tag": TAG, "x": os.environ.get("X"), "params": event.get("pathParameters")}})


def work(event, context):
    """Appends each processed id to OUT_FILE (fsynced); fails the ids whose `fail_if` file exists."""
    if event.get("test") is True:
        return {{"status": "ok"}}
    out = os.environ["OUT_FILE"]
    busy = Path(f"{{out}}.busy.{{os.getpid()}}")
    busy.touch()
    failures = []
    with open(out, "a") as f:
        for r in event["Records"]:
            body = json.loads(r["body"])
            if body.get("fail_if") and os.path.exists(body["fail_if"]):
                print("failing", body["id"], flush=True)
                failures.append({{"itemIdentifier": r["messageId"]}})
                continue
            if body.get("sleep"):
                time.sleep(body["sleep"])
            print("processed", body["id"], flush=True)
            f.write(body["id"] + "\\n")
            f.flush()
            os.fsync(f.fileno())
    busy.unlink()
    return {{"batchItemFailures": failures}}
'''

MANIFEST = """
[service]
name = "svc"
source = "code"

[functions.api]
handler = "app.handler"
timeout = "2s"
reserved_concurrency = 4
environment = {{ OUT_FILE = "{out}" }}
events = [{{ http = "GET /items/{{id}}" }}, {{ http = "GET /boom" }}, {{ http = "GET /slow" }},
          {{ http = "POST /send" }}, {{ http = "GET /health" }}]

[functions.hold]
handler = "app.handler"
timeout = "30s"
reserved_concurrency = 2
environment = {{ OUT_FILE = "{out}" }}
events = [{{ http = "GET /hold" }}]

[functions.worker]
handler = "app.work"
environment = {{ OUT_FILE = "{out}" }}
events = [{{ queue = "jobs", batch_size = 5, retry_after = "0.3s" }}]

[queues.jobs]
visibility_timeout = "30s"
max_receive_count = 2
dead_letter_queue = "dlq"

[queues.dlq]

[environments.staging]
gateway_port = 0
control_port = 0
max_body = 4096
"""


class Svc:
    """The running test service: the environment plus its files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "processed.txt"
        (root / "code").mkdir()
        (root / "code" / "app.py").write_text(APP.format(tag="one"))
        (root / "backout.toml").write_text(MANIFEST.format(out=self.out))
        self.env = RunningEnv(root / "backout.toml")
        self.gw = httpx.Client(base_url=self.env.gateway_url, timeout=30, limits=httpx.Limits(max_connections=8))
        self.queue = QueueStore(self.env.state_dir / "platform.db")

    def reconnect(self) -> None:
        self.gw.close()
        self.gw = httpx.Client(base_url=self.env.gateway_url, timeout=30, limits=httpx.Limits(max_connections=8))

    def processed(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def send(self, ids: list[str], **extra: Any) -> None:
        """Acknowledged sends, as the API function makes them."""
        for i in ids:
            self.queue.send("jobs", json.dumps({"id": i, **extra}))

    def drained(self) -> bool:
        s = self.queue.stats("jobs")
        return s.visible + s.in_flight + s.delayed == 0

    def worker_pids(self, function: str) -> list[int]:
        """Live worker processes of `function` (children of the supervisor)."""
        pids = []
        for c in psutil.Process(self.env.pid).children():
            try:
                if c.environ().get("AWS_LAMBDA_FUNCTION_NAME") == function and c.status() != psutil.STATUS_ZOMBIE:
                    pids.append(c.pid)
            except psutil.NoSuchProcess:
                continue
        return pids


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Svc]:
    s = Svc(tmp_path_factory.mktemp("platform"))
    try:
        yield s
    finally:
        s.gw.close()
        s.env.stop()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _versions(svc: Svc, n: int, path: str = "/items/1", threads: int = 3) -> Counter[str]:
    """n gateway requests from a few threads; the count of each X-Backout-Version that answered 200."""

    def one(_: int) -> tuple[int, str]:
        r = svc.gw.get(path)
        return r.status_code, r.headers["x-backout-version"]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, range(n)))
    assert {status for status, _ in results} == {200}, Counter(status for status, _ in results)
    return Counter(v for _, v in results)


# --- functions, versions, aliases ------------------------------------------------------------------


def test_weighted_routing_matches_weights_and_changes_at_once(svc: Svc) -> None:
    env = svc.env
    v2 = env.cli_json("publish", "--set-env", "X=1")["id"]
    assert v2 > 1
    assert env.cli_json("publish", "--set-env", "X=1")["id"] == v2  # same content → same version
    try:
        w = env.cli_json("alias", "api", "--stable", "1", "--canary", str(v2), "--weight", "10")
        assert (w["stable"], w["canary"], w["canary_weight"]) == ("1", str(v2), 10.0)
        counts = _versions(svc, 2000)
        assert set(counts) == {"1", str(v2)}
        observed = [counts["1"], counts[str(v2)]]
        p = chisquare(observed, [1800, 200]).pvalue
        assert p > 0.001, f"{observed} is not 90/10 (p={p:.2g})"

        env.cli_json("alias", "api", "--stable", "1", "--canary", str(v2), "--weight", "50")
        counts = _versions(svc, 400)
        observed = [counts["1"], counts[str(v2)]]
        p = chisquare(observed, [200, 200]).pvalue
        assert p > 0.001, f"{observed} right after the change to 50 % is not 50/50 (p={p:.2g})"
        # the canary version really runs its own release's environment
        xs = Counter(svc.gw.get("/items/1").json()["x"] for _ in range(40))
        assert set(xs) == {None, "1"}

        # weight changes under traffic drop no invocation
        stop = threading.Event()
        seen: list[int] = []

        def traffic() -> None:
            while not stop.is_set():
                seen.append(svc.gw.get("/items/3").status_code)

        threads = [threading.Thread(target=traffic) for _ in range(2)]
        for t in threads:
            t.start()
        for weight in ("0", "100", "30", "100", "10"):
            env.api("PUT", "/aliases/api", json={"stable": 1, "canary": v2, "weight": float(weight)})
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(10)
        assert len(seen) > 20 and set(seen) == {200}, Counter(seen)
    finally:
        env.cli("alias", "api", "--stable", "1", check=True)
    assert _versions(svc, 50) == {"1": 50}


def test_two_versions_run_side_by_side_isolated(svc: Svc) -> None:
    env = svc.env
    code2 = svc.root / "code2"
    code2.mkdir(exist_ok=True)
    (code2 / "app.py").write_text(APP.format(tag="two"))
    v = env.cli_json("publish", str(code2))["id"]
    assert v > 1

    def invoke(version: int) -> dict[str, Any]:
        return env.cli_json("invoke", "api", "--version", str(version), "--payload", '{"action": "hello"}')

    with ThreadPoolExecutor(2) as pool:  # both at the same time
        a, b = pool.map(invoke, [1, v])
    assert (a["version"], b["version"]) == ("1", str(v))
    assert (a["payload"]["tag"], b["payload"]["tag"]) == ("one", "two")
    assert a["payload"]["version"] == "1" and b["payload"]["version"] == str(v)
    assert a["payload"]["pid"] != b["payload"]["pid"]

    # through the gateway, every answer comes from the code of the version that claims it
    try:
        env.cli("alias", "api", "--stable", "1", "--canary", str(v), "--weight", "50", check=True)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: svc.gw.get("/items/9"), range(60)))
        tags = {(r.headers["x-backout-version"], r.json()["tag"]) for r in answers}
        assert tags == {("1", "one"), (str(v), "two")}
    finally:
        env.cli("alias", "api", "--stable", "1", check=True)


def test_error_shapes_through_invoke(svc: Svc) -> None:
    env = svc.env
    r = env.cli("invoke", "api", "--payload", '{"action": "raise", "why": 42}', "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["error"] == "Unhandled"
    shape = out["payload"]
    assert shape["errorType"] == "ValueError" and shape["errorMessage"] == "bad input: 42"
    assert isinstance(shape["stackTrace"], list) and any("app.py" in f for f in shape["stackTrace"])
    assert not any("platforms/local/worker.py" in f for f in shape["stackTrace"]), "runtime frames in the trace"

    t0 = time.monotonic()
    r = env.cli("invoke", "api", "--payload", '{"action": "sleep", "seconds": 10}', "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["payload"]["errorType"] == "Task timed out"
    assert "Task timed out after 2.00 seconds" in out["payload"]["errorMessage"]
    assert 1.9 < time.monotonic() - t0 < 12

    # the worker was replaced: the next invocation works
    assert env.cli_json("invoke", "api", "--payload", '{"test": true}')["payload"] == {"status": "ok"}


def test_reserved_concurrency_throttles(svc: Svc) -> None:
    env = svc.env
    gate = Path(str(svc.out) + ".gate")
    gate.unlink(missing_ok=True)
    held = lambda: list(svc.root.glob("processed.txt.hold.*"))  # noqa: E731
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(svc.gw.get, "/hold", params={"tag": "hold"}) for _ in range(6)]
        try:
            wait_for(lambda: len(held()) >= 2, timeout=15, what="2 held invocations")
            # `hold` has a reserved concurrency of 2, both in use: a direct invocation is throttled
            r = env.cli("invoke", "hold", "--payload", '{"test": true}', "--json")
            assert r.returncode == 1, r.stderr
            out = json.loads(r.stdout)
            assert out["throttled"] is True
            assert out["payload"] == {"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."}
        finally:
            gate.touch()
        responses = [f.result() for f in futures]
    gate.unlink()
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 2, 429: 4}, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    assert env.cli_json("invoke", "hold", "--payload", '{"test": true}')["payload"] == {"status": "ok"}
    m = env.cli_json("metrics", "hold", "--since", "10m")
    assert m["Throttles"] >= 5 and m["ConcurrentExecutions.Maximum"] == 2


# --- the gateway ---------------------------------------------------------------------------------


def test_gateway_status_codes(svc: Svc) -> None:
    gw = svc.gw
    r = gw.get("/items/abc", params={"q": "1"})
    assert r.status_code == 200 and r.json()["params"] == {"id": "abc"}
    assert r.headers["x-amzn-requestid"]

    r = gw.get("/nowhere")
    assert (r.status_code, r.json()) == (404, {"message": "Not Found"})
    r = gw.delete("/items/1")
    assert r.status_code == 405 and r.headers["allow"] == "GET" and r.json() == {"message": "Method Not Allowed"}
    r = gw.post("/send", content=b"x" * 5000)
    assert r.status_code == 413 and r.json() == {"message": "Request Entity Too Large"}

    r = gw.get("/boom")
    assert (r.status_code, r.json()) == (502, {"message": "Internal server error"})
    assert r.headers["x-backout-version"] == "1"
    t0 = time.monotonic()
    r = gw.get("/slow", params={"s": "10", "tag": "timeout"})
    assert (r.status_code, r.json()) == (502, {"message": "Internal server error"})
    assert 1.9 < time.monotonic() - t0 < 12


def test_stage_throttle_to_zero_and_back(svc: Svc) -> None:
    env, gw = svc.env, svc.gw
    before = env.api("GET", "/platform")["throttle"]
    try:
        assert env.api("POST", "/throttle", json={"rate": 0, "burst": 0}) == {"rate": 0.0, "burst": 0}
        for path in ("/health", "/items/1", "/nowhere"):
            r = gw.get(path)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, (path, r.status_code)
        assert env.api("GET", "/platform")["throttle"]["blocked"] is True
    finally:
        env.api("POST", "/throttle", json={"rate": before["rate"], "burst": before["burst"]})
    assert gw.get("/health").status_code == 200
    assert gw.get("/items/2").status_code == 200


# --- queues and event source mappings --------------------------------------------------------------


def test_poison_message_dead_lettered_then_redriven(svc: Svc) -> None:
    env = svc.env
    poison = svc.root / "poison"
    poison.touch()
    before = env.cli_json("queue", "stats", "dlq")
    before_jobs = env.cli_json("queue", "stats", "jobs")
    r = svc.gw.post("/send", json={"id": "poison-1", "fail_if": str(poison)})
    assert r.status_code == 200 and r.json()["messageId"]
    svc.send(["fine-1"])

    # two receives (max_receive_count) fail, the third attempt moves it to the dlq
    dlq = wait_for(
        lambda: (s := env.api("GET", "/queues/dlq"))["visible"] > before["visible"] and s,
        timeout=30,
        what="the poison message in the dlq",
    )
    # the counters are metrics (SQS keeps none), sampled once a second: the arrival shows within a second or two
    wait_for(lambda: env.api("GET", "/queues/dlq")["dlq_arrivals"] == before["dlq_arrivals"] + 1,
             timeout=10, what="the DLQ arrival counted")
    wait_for(lambda: env.api("GET", "/queues/jobs")["moved_to_dlq"] >= before_jobs["moved_to_dlq"] + 1,
             timeout=10, what="the move to the DLQ counted")
    wait_for(lambda: "fine-1" in svc.processed(), what="the good message")
    assert "poison-1" not in svc.processed()

    poison.unlink()  # the bug is fixed: redrive
    moved = env.cli_json("queue", "redrive", "dlq")["moved"]
    assert moved == dlq["visible"]
    assert env.cli_json("queue", "stats", "dlq")["visible"] == 0
    wait_for(lambda: "poison-1" in svc.processed(), what="the redriven message processed")
    wait_for(svc.drained, what="jobs drained")
    assert svc.queue.stats("dlq").visible == 0


def test_paused_processing_leaves_messages_waiting(svc: Svc) -> None:
    env = svc.env
    wait_for(svc.drained, what="jobs drained before pausing")
    ids = [f"paused-{i}" for i in range(12)]
    try:
        assert env.api("POST", "/processing", json={"enabled": False}) == {"enabled": False}
        svc.send(ids)
        time.sleep(1.5)  # longer than a poll, longer than retry_after
        s = env.cli_json("queue", "stats", "jobs")
        assert (s["visible"], s["in_flight"]) == (len(ids), 0)
        assert not set(ids) & set(svc.processed())
        assert env.api("GET", "/platform")["processing"] is False
    finally:
        env.api("POST", "/processing", json={"enabled": True})
    wait_for(lambda: set(ids) <= set(svc.processed()), what="every paused message processed")
    wait_for(svc.drained, what="jobs drained")
    assert svc.queue.stats("dlq").visible == 0  # pausing dead-letters nothing


def test_kill_9_of_a_worker_mid_batch_loses_nothing(svc: Svc) -> None:
    wait_for(svc.drained, what="jobs drained")
    ids = [f"wk-{i}" for i in range(100)]
    svc.send(ids, sleep=0.04)
    wait_for(lambda: len(set(ids) & set(svc.processed())) >= 10, what="processing under way")

    def busy_worker() -> int | None:
        live = set(svc.worker_pids("worker"))
        for p in svc.root.glob("processed.txt.busy.*"):
            pid = int(p.name.rsplit(".", 1)[1])
            if pid in live:
                return pid
        return None

    victim = wait_for(busy_worker, timeout=30, interval=0.01, what="a worker mid-batch")
    os.kill(victim, signal.SIGKILL)
    assert len(set(ids) & set(svc.processed())) < len(ids), "the batch finished before the kill"
    wait_for(lambda: set(ids) <= set(svc.processed()), timeout=30, what="every message processed")
    wait_for(svc.drained, what="jobs drained")
    assert svc.queue.stats("dlq").visible == 0
    assert victim not in svc.worker_pids("worker")


def test_kill_9_of_the_supervisor_mid_processing_loses_nothing(svc: Svc) -> None:
    env = svc.env
    wait_for(svc.drained, what="jobs drained")
    ids = [f"sup-{i}" for i in range(100)]
    svc.send(ids, sleep=0.04)
    wait_for(lambda: len(set(ids) & set(svc.processed())) >= 10, what="processing under way")
    old = env.pid
    # kill while a batch is in flight: between two batches (a delete, then a receive) none is
    wait_for(lambda: svc.queue.stats("jobs").in_flight > 0, interval=0.005, what="a batch in flight")
    env.kill9()
    assert len(set(ids) & set(svc.processed())) < len(ids), "processing finished before the kill"
    # orphaned workers notice and exit once their invocation is done
    wait_for(lambda: not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == old], timeout=10)

    env.restart()
    assert env.pid != old
    svc.reconnect()
    wait_for(lambda: set(ids) <= set(svc.processed()), timeout=40, what="every acknowledged message processed")
    wait_for(svc.drained, timeout=20, what="the queue drained after the restart")
    assert svc.queue.stats("dlq").visible == 0
    assert svc.gw.get("/health").status_code == 200


# --- running it: control API, up/down, metrics, logs ------------------------------------------------


def test_control_api_needs_the_token(svc: Svc) -> None:
    env = svc.env
    token = env.state_dir / "token"
    assert token.stat().st_mode & 0o777 == 0o600
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": env.token}):
        for method, path in (("GET", "/status"), ("POST", "/throttle"), ("GET", "/metrics")):
            r = httpx.request(method, env.control_url + path, headers=headers, json={"rate": 0, "burst": 0})
            assert r.status_code == 401, (headers, method, path, r.status_code)
    assert env.api("GET", "/platform")["throttle"]["blocked"] is False
    assert env.api("GET", "/platform")["env"] == "staging"


def test_the_supervisor_runs_on_malloc_and_its_workers_on_pythons_own_allocator(svc: Svc) -> None:
    """server/memory.py: supervisor_environ. /proc shows each process's environment as it started."""
    sup = psutil.Process(svc.env.pid)
    assert sup.environ().get("PYTHONMALLOC") == "malloc"
    workers = [c for c in sup.children() if "backout.platforms.local.worker" in c.cmdline()]
    assert workers, [c.cmdline() for c in sup.children()]
    assert all("PYTHONMALLOC" not in w.environ() for w in workers)
    fams = {f.name: f for f in text_string_to_metric_families(svc.env.http.get("/metrics").text)}
    parts = {s.labels["part"] for s in fams["backout_supervisor_memory_bytes"].samples}
    assert {"rss", "malloc_in_use", "malloc_free", "sqlite"} <= parts and "python_arenas" not in parts


def test_second_up_is_refused(svc: Svc) -> None:
    env = svc.env
    for args in (("up", "--detach"), ("up",)):
        r = env.cli(*args, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "already running" in lines[0] and f"pid {env.pid}" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert psutil.pid_exists(env.pid)
    assert svc.gw.get("/health").status_code == 200


def test_down_drains_in_flight_work_then_up_again(svc: Svc) -> None:
    env = svc.env
    old = env.pid
    result: dict[str, Any] = {}

    def slow() -> None:
        result["r"] = svc.gw.get("/slow", params={"s": "1.2", "tag": "down"})

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: list(svc.root.glob("processed.txt.down.*")), what="the slow request in flight")
    r = env.cli("down", timeout=60)
    t.join(10)
    assert r.returncode == 0, r.stderr
    assert result["r"].status_code == 200  # drained, not cut
    assert _gone(old)  # `down` returns once the supervisor has exited
    assert not (env.state_dir / "endpoints.json").exists()
    r = env.cli("queue", "stats")
    assert r.returncode == 2 and "not running" in r.stderr
    env.restart()
    svc.reconnect()
    assert svc.gw.get("/health").status_code == 200


def test_metrics_cli_and_prometheus(svc: Svc) -> None:
    env = svc.env
    before = env.cli_json("metrics", "api", "--since", "10m")
    for _ in range(10):
        assert svc.gw.get("/items/5").status_code == 200

    def counted() -> dict[str, Any] | None:
        m = env.cli_json("metrics", "api", "--since", "10m")
        return m if m["Invocations"] >= (before["Invocations"] or 0) + 10 else None

    m = wait_for(counted, what="10 more invocations in the metrics")
    assert m["Duration.p99"] > 0 and m["error_rate_pct"] is not None
    v1 = env.cli_json("metrics", "api", "--version", "1", "--since", "10m")
    assert v1["Invocations"] >= 10
    # as `aws cloudwatch get-metric-statistics --period 300`: one row per period, the statistics asked for
    stats = env.cli_json("metrics", "api", "--since", "10m", "--period", "5m", "--metric", "Invocations",
                         "--statistics", "Sum,SampleCount")
    assert stats["Label"] == "Invocations" and stats["Period"] == 300
    assert all(pt["Timestamp"] % 300 == 0 for pt in stats["Datapoints"])
    assert sum(pt["Sum"] for pt in stats["Datapoints"]) >= m["Invocations"]
    r = env.cli("metrics", "api", "--period", "7s")
    assert r.returncode == 2 and "CloudWatch accepts" in r.stderr

    r = env.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families, "no metric families"
    inv = [f for name, f in families.items() if "lambda" in name and "invocations" in name]
    assert inv, sorted(families)
    assert any(s.labels.get("FunctionName") == "api" and s.value > 0 for f in inv for s in f.samples)


def test_logs_show_what_the_handler_printed(svc: Svc) -> None:
    svc.send(["logged-1"])
    wait_for(lambda: "logged-1" in svc.processed(), what="the message processed")

    def logged() -> subprocess.CompletedProcess[str] | None:
        r = svc.env.cli("logs", "worker", "-n", "500")
        return r if r.returncode == 0 and "processed logged-1" in r.stdout else None

    r = wait_for(logged, what="the print in the logs")
    assert "START RequestId:" in r.stdout and "REPORT RequestId:" in r.stdout
    r = svc.env.cli("logs", "nosuch")
    assert r.returncode == 2 and "no function named" in r.stderr


def test_bad_manifest_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "backout.toml"
    bad.write_text(MANIFEST.format(out=tmp_path / "o").replace('timeout = "2s"', 'timeout = "soon"'))
    r = subprocess.run(
        [sys.executable, "-m", "backout.cli.main", "--manifest", str(bad), "up", "--detach"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "functions.api.timeout" in lines[0], r.stderr
