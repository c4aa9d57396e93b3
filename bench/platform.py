"""Issue 2's benchmarks of the local platform, measured side by side in one run.

* gateway → trivial handler (a real supervisor, a real worker process) against the same handler
  served directly by uvicorn in-process (bench/direct.py): throughput, and latency at a fixed rate;
* queue send + receive + delete round trips (QueueStore on a fresh SQLite file);
* weight change (control API PUT /aliases/api) → first response from the newly weighted version;
* resident memory of one warm worker of the trivial handler.

Load comes from bench/loadgen.py in its own process. Everything runs on 127.0.0.1 with free ports,
in a temporary directory, and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

APP = """
def handler(event, context):
    if event.get("test") is True:
        return {"status": "ok"}
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "ok"}
"""

MANIFEST = """
[service]
name = "bench"
source = "code"

[functions.api]
handler = "app.handler"
timeout = "10s"
reserved_concurrency = 64
events = [{ http = "GET /hello" }]

[environments.bench]
gateway_port = 0
control_port = 0
"""


@dataclass
class Figure:
    """One reported number, with its target when the issue sets one."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    """`backout up --detach` of the benchmark service; `down` (and a kill if need be) at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "code").mkdir(parents=True, exist_ok=True)
        (root / "code" / "app.py").write_text(APP)
        self.manifest = root / "backout.toml"
        self.manifest.write_text(MANIFEST)
        self.state = root / ".backout" / "bench"
        self._cli("up", "--detach")
        ep = json.loads((self.state / "endpoints.json").read_text())
        self.pid = int(ep["pid"])
        self.gateway_url = str(ep["gateway_url"])
        token = (self.state / "token").read_text().strip()
        self.control = httpx.Client(
            base_url=str(ep["control_url"]), headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def _cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "backout.cli.main", "--manifest", str(self.manifest), *args, "--env", "bench"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = self.control.request(method, path, **kw)
        r.raise_for_status()
        return r.json()

    def workers(self, function: str = "api") -> list[psutil.Process]:
        out = []
        for c in psutil.Process(self.pid).children():
            try:
                if c.environ().get("AWS_LAMBDA_FUNCTION_NAME") == function:
                    out.append(c)
            except psutil.NoSuchProcess:
                continue
        return out

    def close(self) -> None:
        self.control.close()
        try:
            self._cli("down")
        except subprocess.SubprocessError:
            try:
                psutil.Process(self.pid).kill()
            except psutil.NoSuchProcess:
                pass


@contextmanager
def direct_server(code_dir: Path) -> Iterator[tuple[str, int]]:
    """bench/direct.py in its own process; yields its URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.direct", str(code_dir), "app.handler"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/hello", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def loadgen(url: str, *args: str) -> dict[str, Any]:
    """One run of bench/loadgen.py in its own process."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", url, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(r.stdout)


# --- the benchmarks --------------------------------------------------------------------------------


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def throughput(sup: Supervisor, direct: str, direct_pid: int, duration: float, connections: list[int]) -> list[Figure]:
    """Closed-loop req/s of both servers at each concurrency (alternating), best of each; and the CPU
    time each side spends per request (supervisor + worker processes; the direct server), which a
    busy neighbour on the machine disturbs far less than req/s."""
    gw = f"{sup.gateway_url}/hello"
    dr = f"{direct}/hello"
    for url in (gw, dr):  # warm up: worker processes started, connections and caches hot
        loadgen(url, "--connections", str(max(connections)), "--duration", "1.5")
    runs: dict[str, dict[int, dict[str, Any]]] = {"gateway": {}, "direct": {}}
    cpu: dict[str, dict[int, float]] = {"gateway": {}, "direct": {}}  # µs per request
    supervisor_cpu: dict[int, float] = {}  # the gateway's share spent in the supervisor process
    for c in connections:
        for name, url in (("direct", dr), ("gateway", gw)):
            pids = [direct_pid] if name == "direct" else [sup.pid, *(p.pid for p in sup.workers())]
            before = _cpu_seconds(pids)
            r = loadgen(url, "--connections", str(c), "--duration", str(duration))
            if name == "gateway":
                pids = [sup.pid, *(p.pid for p in sup.workers())]
            after = _cpu_seconds(pids)
            used = sum(after[p] - before.get(p, 0.0) for p in after)
            runs[name][c] = r
            cpu[name][c] = round(used / max(1, r["requests"]) * 1e6, 1)
            if name == "gateway":
                own = after.get(sup.pid, 0.0) - before.get(sup.pid, 0.0)
                supervisor_cpu[c] = round(own / max(1, r["requests"]) * 1e6, 1)
    best = {name: max(r.values(), key=lambda x: x["rps"]) for name, r in runs.items()}
    per_c = {
        name: {
            c: {
                "rps": r["rps"],
                "p99_ms": r["latency_ms"]["p99"],
                "non_200": r["requests"] - r["ok"],
                "cpu_us_per_request": cpu[name][c],
                **({"of_which_supervisor_us": supervisor_cpu[c]} if name == "gateway" else {}),
            }
            for c, r in rs.items()
        }
        for name, rs in runs.items()
    }
    ratio = 100.0 * best["gateway"]["rps"] / best["direct"]["rps"]
    gw_cpu, dr_cpu = min(cpu["gateway"].values()), min(cpu["direct"].values())
    return [
        Figure(
            "gateway throughput (trivial handler, worker process)",
            best["gateway"]["rps"],
            "req/s",
            detail=per_c["gateway"],
        ),
        Figure(
            "direct uvicorn throughput (same handler in-process)",
            best["direct"]["rps"],
            "req/s",
            detail=per_c["direct"],
        ),
        Figure("gateway / direct throughput", round(ratio, 1), "%", "≥ 50 %", ratio >= 50.0),
        Figure("server CPU per request: gateway (supervisor + workers)", gw_cpu, "µs"),
        Figure("server CPU per request: direct uvicorn", dr_cpu, "µs"),
        Figure("direct / gateway CPU per request", round(100.0 * dr_cpu / gw_cpu, 1), "%"),
    ]


def latency_at_rate(sup: Supervisor, direct: str, rate: float, duration: float) -> list[Figure]:
    """Open-loop latency at a fixed request rate to both servers at once, their requests interleaved
    (one every 5 ms, alternating): a busy neighbour on the shared machine then hits both alike."""
    args = ("--rate", str(rate), "--duration", str(duration), "--connections", "4")
    d, g = loadgen(f"{direct}/hello", f"{sup.gateway_url}/hello", *args)["targets"]
    added = g["latency_ms"]["p99"] - d["latency_ms"]["p99"]
    r = f"at {rate:g} req/s"
    out = []
    for name, res in (("direct", d), ("gateway", g)):
        detail = {
            "requests": res["requests"],
            "non_200": res["requests"] - res["ok"],
            "max_ms": res["latency_ms"]["max"],
        }
        out.append(Figure(f"{name} p50 {r}", res["latency_ms"]["p50"], "ms", detail=detail))
        out.append(Figure(f"{name} p99 {r}", res["latency_ms"]["p99"], "ms"))
    out.append(Figure(f"added p99 {r} (gateway − direct)", round(added, 3), "ms", "≤ 5 ms", added <= 5.0))
    return out


def queue_round_trips(tmp: Path, n: int) -> list[Figure]:
    """send + receive + delete, one message at a time (the target), and ten at a time."""
    from backout.platforms.local.queues import QueueStore

    q = QueueStore(tmp / "queue-bench.db")
    q.ensure_queue("jobs", visibility_timeout=30)
    for _ in range(100):  # warm: connection, pages, statements
        q.send("jobs", "warm")
        for m in q.receive("jobs", 1):
            q.delete("jobs", m.receipt_handle)
    body = json.dumps({"job_id": "job_0123456789", "file": "drawing.pdf", "client": "bench"})
    t0 = time.perf_counter()
    for _ in range(n):
        q.send("jobs", body)
        (m,) = q.receive("jobs", 1)
        q.delete("jobs", m.receipt_handle)
    single = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n // 10):
        q.send_batch("jobs", [body] * 10)
        for m in q.receive("jobs", 10):
            q.delete("jobs", m.receipt_handle)
    batched = n / (time.perf_counter() - t0)
    assert q.stats("jobs").visible == 0
    q.close()
    return [
        Figure(
            "queue send+receive+delete, 1 message at a time",
            round(single),
            "msg/s",
            "≥ 1,000 msg/s",
            single >= 1000,
            {"messages": n},
        ),
        Figure("queue send_batch(10)+receive(10)+10 deletes", round(batched), "msg/s", detail={"messages": n}),
    ]


def weight_change(sup: Supervisor, rounds: int) -> list[Figure]:
    """Under steady traffic, flip the alias between v1 and v2 (100 %) and time the first new answer."""
    v2 = sup.api("POST", "/publish", json={"environment": {"BENCH_VERSION": "2"}})["id"]
    sup.api("PUT", "/aliases/api", json={"stable": 1, "canary": v2, "weight": 0})  # both warm
    sup.api("PUT", "/aliases/api", json={"stable": 1})
    interval = 0.4
    duration = 1.0 + rounds * interval + 1.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            f"{sup.gateway_url}/hello",
            "--connections",
            "2",
            "--duration",
            str(duration),
            "--trace",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    switches: list[tuple[float, float, str]] = []  # (before the PUT, after it returned, new version)
    time.sleep(1.0)
    for i in range(rounds):
        new = str(v2) if i % 2 == 0 else "1"
        body = {"stable": 1, "canary": v2, "weight": 100} if new != "1" else {"stable": 1}
        t0 = time.monotonic()
        sup.api("PUT", "/aliases/api", json=body)
        switches.append((t0, time.monotonic(), new))
        time.sleep(interval)
    out, _ = proc.communicate(timeout=duration + 60)
    sup.api("PUT", "/aliases/api", json={"stable": 1})
    result = json.loads(out)
    trace = result["trace"]
    delays, stale, put_ms = [], 0, []
    for k, (t0, t1, new) in enumerate(switches):
        until = switches[k + 1][0] if k + 1 < len(switches) else float("inf")
        window = [(sent, got, v) for sent, got, v in trace if t0 <= got < until]
        first = next((got for _, got, v in window if v == new), None)
        if first is None:
            raise RuntimeError(f"no response from v{new} after switch {k}")
        delays.append((first - t0) * 1000.0)
        put_ms.append((t1 - t0) * 1000.0)
        # a request sent after the PUT returned must be routed by the new weights
        stale += sum(1 for sent, _, v in window if v != new and sent > t1)
    delays.sort()
    worst = delays[-1]
    return [
        Figure(
            "weight change → first response from the new version",
            round(worst, 2),
            "ms (max)",
            "≤ 100 ms",
            worst <= 100.0,
            {
                "switches": len(delays),
                "median_ms": round(statistics.median(delays), 2),
                "control_api_put_median_ms": round(statistics.median(put_ms), 2),
                "old_version_answers_to_requests_sent_after_put": stale,
                "requests": result["requests"],
                "non_200": result["requests"] - result["ok"],
            },
        ),
    ]


def worker_rss(sup: Supervisor) -> list[Figure]:
    """RSS (and USS: memory no other process shares) of the warm workers of the trivial handler."""
    for _ in range(50):
        httpx.get(f"{sup.gateway_url}/hello", timeout=10)
    procs = sup.workers("api")
    if not procs:
        raise RuntimeError("no warm worker of api")
    rss = [p.memory_info().rss / 2**20 for p in procs]
    uss = [p.memory_full_info().uss / 2**20 for p in procs]
    worst = max(rss)
    return [
        Figure(
            "RSS of one warm worker (trivial handler)",
            round(worst, 1),
            "MB (max over workers)",
            "≤ 60 MB",
            worst <= 60.0,
            {
                "workers": len(procs),
                "rss_mb_median": round(statistics.median(rss), 1),
                "uss_mb_median": round(statistics.median(uss), 1),
            },
        ),
    ]


BENCHMARKS = ("throughput", "latency", "queue", "weights", "memory")


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    """Every benchmark (or `only` some), on one supervisor and one direct server."""
    wanted = set(BENCHMARKS) if not only else only
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="backout-bench-") as d:
        tmp = Path(d)
        if "queue" in wanted:
            figures += queue_round_trips(tmp, 1000 if quick else 3000)
        if wanted & {"throughput", "latency", "weights", "memory"}:
            sup = Supervisor(tmp / "svc")
            try:
                with direct_server(tmp / "svc" / "code") as (direct, direct_pid):
                    if "throughput" in wanted:
                        figures += throughput(sup, direct, direct_pid, 2.0 if quick else 5.0, [4, 16])
                    if "latency" in wanted:
                        figures += latency_at_rate(sup, direct, 100.0, 4.0 if quick else 15.0)
                if "memory" in wanted:
                    figures += worker_rss(sup)
                if "weights" in wanted:
                    figures += weight_change(sup, 10 if quick else 30)
            finally:
                sup.close()
    return figures


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
