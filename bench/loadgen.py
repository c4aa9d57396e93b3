"""A small HTTP/1.1 load generator, run as its own process: `python -m bench.loadgen URL [options]`.

Why not httpx: on a 2-core machine the client competes with the server for CPU, so the client must
be cheap per request. This one speaks just enough HTTP/1.1 (keep-alive GETs, Content-Length bodies)
over asyncio streams on uvloop, which is several times cheaper than a general-purpose client and
needs nothing that is not already installed (wrk is not on a fresh machine).

Modes (the result is one JSON object on stdout):
  closed   --connections C --duration S   each connection sends its next request as soon as the
                                          previous answer arrived: the server's throughput
  open     --rate R --duration S          requests start on a fixed schedule (R per second) over a
                                          small pool of connections; latency is measured from the
                                          scheduled start, so a stalled server is not hidden. Several
                                          URLs: R per second each, interleaved, one report each
  --raw                                   also report every latency (ms), in completion order
  --trace                                 also report (monotonic time sent, received, X-Backout-Version)
                                          for every response (time.monotonic is system-wide, so the parent
                                          process can line it up with its own clock)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import numpy as np


class _Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    async def get(self) -> tuple[int, str]:
        """Send the request, read the whole response; (status, X-Backout-Version or "")."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, version = 0, ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-backout-version":
                version = value.strip().decode()
        if length:
            await self.reader.readexactly(length)
        return status, version

    def close(self) -> None:
        self.writer.close()


async def _connect(url: str) -> _Conn:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: backout-bench\r\n\r\n".encode()
    return _Conn(reader, writer, request)


class _Results:
    def __init__(self, trace: bool, raw: bool = False) -> None:
        self.raw = raw
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors = 0
        self.trace: list[tuple[float, float, str]] | None = [] if trace else None

    def add(self, latency: float, status: int, version: str) -> None:
        self.latencies.append(latency)
        self.statuses[status] += 1
        self.versions[version] += 1
        if self.trace is not None:
            now = time.monotonic()
            self.trace.append((now - latency, now, version))

    def report(self, elapsed: float) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000.0
        ok = self.statuses.get(200, 0)
        out: dict[str, Any] = {
            "requests": len(self.latencies),
            "ok": ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "versions": dict(self.versions),
            "elapsed_s": round(elapsed, 3),
            "rps": round(ok / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p90": round(float(np.percentile(lat, 90)), 3),
                "p99": round(float(np.percentile(lat, 99)), 3),
                "max": round(float(lat.max()), 3),
                "mean": round(float(lat.mean()), 3),
            }
            if len(lat)
            else {},
        }
        if self.trace is not None:
            out["trace"] = self.trace
        if self.raw:
            out["latencies_ms"] = [round(x, 4) for x in lat.tolist()]
        return out


async def closed(url: str, connections: int, duration: float, trace: bool) -> dict[str, Any]:
    res = _Results(trace)
    conns = [await _connect(url) for _ in range(connections)]
    t0 = time.perf_counter()
    end = t0 + duration

    async def loop(c: _Conn) -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                status, version = await c.get()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                res.errors += 1
                c.close()
                c = await _connect(url)
                continue
            res.add(time.perf_counter() - start, status, version)

    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return res.report(elapsed)


async def open_loop(
    urls: list[str], rate: float, duration: float, connections: int, trace: bool, raw: bool = False
) -> list[dict[str, Any]]:
    """`rate` requests per second to each URL; with several URLs their requests interleave evenly in
    time, so a noisy neighbour on the machine hits every target alike. One report per URL."""
    results = [_Results(trace, raw) for _ in urls]
    pools: list[asyncio.Queue[_Conn]] = []
    for url in urls:
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        for _ in range(connections):
            idle.put_nowait(await _connect(url))
        pools.append(idle)
    n = int(rate * duration)
    interval = 1.0 / rate
    t0 = time.perf_counter()

    async def one(k: int, scheduled: float) -> None:
        idle, res = pools[k], results[k]
        c = await idle.get()  # waiting for a free connection counts as latency
        try:
            status, version = await c.get()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            res.errors += 1
            c.close()
            c = await _connect(urls[k])
        else:
            res.add(time.perf_counter() - scheduled, status, version)
        idle.put_nowait(c)

    tasks = []
    for i in range(n):
        for k in range(len(urls)):
            scheduled = t0 + (i + k / len(urls)) * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(k, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for idle in pools:
        while not idle.empty():
            idle.get_nowait().close()
    return [res.report(elapsed) for res in results]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("url", nargs="+", help="one URL; several only with --rate")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=0.0, help="requests per second (open loop); 0: closed loop")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--raw", action="store_true")
    a = p.parse_args(argv)
    coro: Any
    if a.rate > 0:
        coro = open_loop(a.url, a.rate, a.duration, a.connections, a.trace, a.raw)
    elif len(a.url) > 1:
        p.error("several URLs need --rate (open loop)")
    else:
        coro = closed(a.url[0], a.connections, a.duration, a.trace)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        out = asyncio.run(coro)
    else:
        out = uvloop.run(coro)
    if isinstance(out, list):
        out = out[0] if len(out) == 1 else {"targets": out}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
