"""The SQS-compatible endpoint: send + receive + delete round trips per second through it, with boto3
and with a light raw-HTTP client, next to the same loop on the in-process `QueueStore` (the floor:
SQLite commits alone).

The endpoint runs in its own process, as in the supervisor: `python -m bench.sqs_endpoint --serve DB`
serves the local platform's `SqsEndpoint` over the queues of DB with the gateway's uvicorn settings
(uvloop, httptools, no access log) on a free port of 127.0.0.1 and prints the port. The client side,
one message at a time — `SendMessage`, `ReceiveMessage`, `DeleteMessage` (3 HTTP requests per round
trip), as a Lambda handler or a worker loop would:

* `sqs-roundtrip`: one boto3 client (≈ 5 ms of client CPU per round trip: signing, serialising, parsing);
* `sqs-roundtrip-boto3-4-processes`: 4 client processes, each a boto3 client on its own queue;
* `sqs-roundtrip-raw`: one raw-HTTP client (`http.client`, keep-alive, the JSON protocol with
  `X-Amz-Target`, no signing: the endpoint checks none), so the figure is the server's own capacity;
* `sqs-roundtrip-raw-4-processes`: 4 such clients in processes;
* `sqs-batched`: messages per second with boto3's `send_message_batch`, `receive_message(10)` and
  `delete_message_batch` (10 messages per request);
* `queue-store-roundtrip`: `QueueStore.send` / `receive` / `delete` in-process, no HTTP.

Client processes (`--client boto3|raw`) warm up, say they are ready and start together. Each figure
records the 1-minute load average when it started (the machine is often shared) and, for the single
raw client, the endpoint's CPU per request (psutil).

`python -m bench.sqs_endpoint` runs them alone; `python -m bench --only sqs` runs them with the others.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.platform import Figure

BENCHMARKS = ("sqs",)
TARGET = 500.0  # round trips per second through the endpoint (issue 15)
QUEUES = [f"q{i}" for i in range(4)]


def serve(db: Path) -> None:
    """The endpoint over db's queues, as the supervisor serves it."""
    import uvicorn

    from backout.platforms.local.queues import QueueStore
    from backout.platforms.local.sqs import SqsEndpoint

    store = QueueStore(db)
    for q in QUEUES:
        store.ensure_queue(q)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    endpoint = SqsEndpoint(store, QUEUES, base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(endpoint.app, log_level="warning", access_log=False, loop="uvloop",
                                           http="httptools", timeout_keep_alive=30, lifespan="off"))
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


def _client(url: str):  # noqa: ANN202 - a botocore client
    import boto3

    return boto3.client("sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench")


def _roundtrips(url: str, queue: str, seconds: float, out: list[int]) -> None:
    c = _client(url)
    q = f"{url}/000000000000/{queue}"
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c.send_message(QueueUrl=q, MessageBody=f"m{n}")
        [m] = c.receive_message(QueueUrl=q)["Messages"]
        c.delete_message(QueueUrl=q, ReceiptHandle=m["ReceiptHandle"])
        n += 1
    out.append(n)


def _raw_roundtrips(url: str, queue: str, seconds: float, out: list[int]) -> None:
    """The same round trips as `_roundtrips` in plain HTTP/1.1 on one keep-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    q = f"{url}/000000000000/{queue}"

    def call(action: str, params: dict[str, str]) -> dict:  # type: ignore[type-arg]
        conn.request("POST", "/", json.dumps(params), {"X-Amz-Target": f"AmazonSQS.{action}",
                                                       "Content-Type": "application/x-amz-json-1.0"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{action}: HTTP {r.status}: {body[:200]!r}")
        return json.loads(body)

    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        call("SendMessage", {"QueueUrl": q, "MessageBody": f"m{n}"})
        [m] = call("ReceiveMessage", {"QueueUrl": q})["Messages"]
        call("DeleteMessage", {"QueueUrl": q, "ReceiptHandle": m["ReceiptHandle"]})
        n += 1
    conn.close()
    out.append(n)


LOOPS = {"boto3": _roundtrips, "raw": _raw_roundtrips}


def client(kind: str, url: str, queue: str, seconds: float) -> None:
    """One client process: warm up, print `ready`, wait for a line on stdin, run, print the count."""
    LOOPS[kind](url, queue, 0.3, [])
    print("ready", flush=True)
    sys.stdin.readline()
    out: list[int] = []
    LOOPS[kind](url, queue, seconds, out)
    print(out[0], flush=True)


def _processes(kind: str, url: str, seconds: float) -> int:
    """Round trips of len(QUEUES) client processes started together, one queue each."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.sqs_endpoint", "--client", kind, "--url", url,
                               "--queue", q, "--seconds", str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for q in QUEUES]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        return sum(int(p.stdout.readline()) for p in procs if p.stdout is not None)
    finally:
        for p in procs:
            p.wait(60)


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _batched(url: str, seconds: float) -> int:
    c = _client(url)
    q = f"{url}/000000000000/{QUEUES[0]}"
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c.send_message_batch(QueueUrl=q, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(10)])
        got = 0
        while got < 10:
            msgs = c.receive_message(QueueUrl=q, MaxNumberOfMessages=10)["Messages"]
            c.delete_message_batch(QueueUrl=q, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                        for i, m in enumerate(msgs)])
            got += len(msgs)
        n += got
    return n


def _store_roundtrips(db: Path, seconds: float) -> int:
    from backout.platforms.local.queues import QueueStore

    store = QueueStore(db)
    store.ensure_queue("direct")
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        store.send("direct", f"m{n}")
        [m] = store.receive("direct")
        store.delete("direct", m.receipt_handle)
        n += 1
    store.close()
    return n


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "sqs" not in only:
        return []
    seconds = 2.0 if quick else 10.0
    load: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "platform.db"
        proc = subprocess.Popen([sys.executable, "-m", "bench.sqs_endpoint", "--serve", str(db)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = f"http://127.0.0.1:{int(proc.stdout.readline())}"
            _roundtrips(url, QUEUES[0], 0.5, [])  # warm-up: connections, botocore's models
            single: list[int] = []
            load["sqs-roundtrip"] = _load()
            _roundtrips(url, QUEUES[0], seconds, single)
            load["sqs-roundtrip-boto3-4-processes"] = _load()
            boto_procs = _processes("boto3", url, seconds)
            raw: list[int] = []
            server, me = psutil.Process(proc.pid), psutil.Process()
            load["sqs-roundtrip-raw"] = _load()
            cpu0 = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
            _raw_roundtrips(url, QUEUES[0], seconds, raw)
            cpu1 = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
            requests = 3 * raw[0]
            cpu_ms = {"server_cpu_ms_per_request": round((cpu1[0] - cpu0[0]) * 1000 / requests, 3),
                      "client_cpu_ms_per_request": round((cpu1[1] - cpu0[1]) * 1000 / requests, 3)}
            load["sqs-roundtrip-raw-4-processes"] = _load()
            raw_procs = _processes("raw", url, seconds)
            load["sqs-batched"] = _load()
            batched = _batched(url, seconds)
        finally:
            proc.terminate()
            proc.wait(10)
        load["queue-store-roundtrip"] = _load()
        direct = _store_roundtrips(Path(tmp) / "direct.db", seconds)
    target = f">= {TARGET:.0f}/s"

    def rt(name: str, n: int, **detail: object) -> Figure:
        return Figure(name, n / seconds, "round trips/s", target, n / seconds >= TARGET,
                      {"load_average": load[name], **detail})

    return [
        rt("sqs-roundtrip", single[0], clients=1, requests_per_roundtrip=3),
        rt("sqs-roundtrip-boto3-4-processes", boto_procs, clients=len(QUEUES)),
        rt("sqs-roundtrip-raw", raw[0], clients=1, **cpu_ms),
        rt("sqs-roundtrip-raw-4-processes", raw_procs, clients=len(QUEUES)),
        Figure("sqs-batched", batched / seconds, "messages/s",
               detail={"per_request": 10, "load_average": load["sqs-batched"]}),
        Figure("queue-store-roundtrip", direct / seconds, "round trips/s",
               detail={"in_process": True, "load_average": load["queue-store-roundtrip"]}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sqs_endpoint", description=__doc__.split("\n")[0])
    p.add_argument("--serve", metavar="DB", help="serve the endpoint over DB's queues (the benchmark's server side)")
    p.add_argument("--quick", action="store_true", help="2 s per figure instead of 10")
    p.add_argument("--client", choices=sorted(LOOPS), help="be one client process (the benchmark's own use)")
    p.add_argument("--url", help="with --client: the endpoint")
    p.add_argument("--queue", default=QUEUES[0], help="with --client: the queue")
    p.add_argument("--seconds", type=float, default=10.0, help="with --client: how long")
    a = p.parse_args(argv)
    if a.serve:
        serve(Path(a.serve))
        return 0
    if a.client:
        if not a.url:
            p.error("--client needs --url")
        client(a.client, a.url, a.queue, a.seconds)
        return 0
    for f in run(quick=a.quick):
        verdict = "" if f.ok is None else ("  ok" if f.ok else "  MISS")
        print(f"{f.name:<26} {f.value:>10,.1f} {f.unit}{f'  (target {f.target})' if f.target else ''}{verdict}")
        if f.detail:
            print(f"{'':<26}   {f.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
