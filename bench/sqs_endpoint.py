"""The SQS-compatible endpoint: send + receive + delete round trips per second through it, with boto3,
next to the same loop on the in-process `QueueStore` (the floor: SQLite commits alone).

The endpoint runs in its own process, as in the supervisor: `python -m bench.sqs_endpoint --serve DB`
serves the local platform's `SqsEndpoint` over the queues of DB with the gateway's uvicorn settings
(uvloop, httptools, no access log) on a free port of 127.0.0.1 and prints the port. The client side:

* `sqs-roundtrip`: one boto3 client, one message at a time: `send_message`, `receive_message`,
  `delete_message` (3 HTTP requests per round trip), as a Lambda handler or a worker loop would;
* `sqs-roundtrip-4-clients`: the same loop in 4 threads, each with its own client and queue;
* `sqs-batched`: messages per second with `send_message_batch`, `receive_message(10)` and
  `delete_message_batch` (10 messages per request);
* `queue-store-roundtrip`: `QueueStore.send` / `receive` / `delete` in-process, no HTTP.

`python -m bench.sqs_endpoint` runs them alone; `python -m bench --only sqs` runs them with the others.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
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
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "platform.db"
        proc = subprocess.Popen([sys.executable, "-m", "bench.sqs_endpoint", "--serve", str(db)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = f"http://127.0.0.1:{int(proc.stdout.readline())}"
            _roundtrips(url, QUEUES[0], 0.5, [])  # warm-up: connections, botocore's models
            single: list[int] = []
            server, me = psutil.Process(proc.pid), psutil.Process()
            cpu0 = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
            _roundtrips(url, QUEUES[0], seconds, single)
            cpu1 = (sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2]))
            requests = 3 * single[0]
            cpu_ms = {"server_cpu_ms_per_request": round((cpu1[0] - cpu0[0]) * 1000 / requests, 3),
                      "client_cpu_ms_per_request": round((cpu1[1] - cpu0[1]) * 1000 / requests, 3)}
            four: list[int] = []
            threads = [threading.Thread(target=_roundtrips, args=(url, q, seconds, four)) for q in QUEUES]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            batched = _batched(url, seconds)
        finally:
            proc.terminate()
            proc.wait(10)
        direct = _store_roundtrips(Path(tmp) / "direct.db", seconds)
    one = single[0] / seconds
    return [
        Figure("sqs-roundtrip", one, "round trips/s", f">= {TARGET:.0f}/s", one >= TARGET,
               {"requests_per_roundtrip": 3, "seconds": seconds, **cpu_ms}),
        Figure("sqs-roundtrip-4-clients", sum(four) / seconds, "round trips/s", f">= {TARGET:.0f}/s",
               sum(four) / seconds >= TARGET, {"clients": len(four)}),
        Figure("sqs-batched", batched / seconds, "messages/s", detail={"per_request": 10}),
        Figure("queue-store-roundtrip", direct / seconds, "round trips/s", detail={"in_process": True}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sqs_endpoint", description=__doc__.split("\n")[0])
    p.add_argument("--serve", metavar="DB", help="serve the endpoint over DB's queues (the benchmark's server side)")
    p.add_argument("--quick", action="store_true", help="2 s per figure instead of 10")
    a = p.parse_args(argv)
    if a.serve:
        serve(Path(a.serve))
        return 0
    for f in run(quick=a.quick):
        verdict = "" if f.ok is None else ("  ok" if f.ok else "  MISS")
        print(f"{f.name:<26} {f.value:>10,.1f} {f.unit}{f'  (target {f.target})' if f.target else ''}{verdict}")
        if f.detail:
            print(f"{'':<26}   {f.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
