"""The local platform's metric store: CloudWatch-like, per-second resolution, raw samples kept.

Why raw samples: percentiles (p50/p90/p99) must be exact over a period, as the canary judges
compare distributions, and a second's worth of samples is small. Why this layout:

* `record` is on the invocation hot path (several calls per request, many threads), so it is one
  lock and a list append into the series' *hot* second.
* `flush` (the supervisor calls it every second, and once more on close) appends every sample not
  yet on disk to `m_datapoints` in the platform db, and turns seconds that can no longer change
  into compact sorted arrays (*cold*), run-length encoded when values repeat (counts of 0/1), kept
  in chunks of 64 seconds per series (`_Cold`: a handful of large blocks instead of objects).
* Memory holds only the last `memory` seconds (10 minutes: every default alarm window, and the
  canary judges read each second once, as it closes); older seconds are read from the db, kept for
  `retention`. Memory is then bounded by the traffic of `memory` seconds, not of six hours (a soak
  at 50 req/s grew the supervisor by 155.8 MB/h while everything stayed in memory).
* A new store on the same db loads the last `memory` seconds, so alarms and canary judges see
  the same history across a supervisor restart.

Query semantics follow GetMetricStatistics: one metric, exact dimension match, samples whose second
lies in [start, end), grouped into periods aligned to epoch multiples of `period`; one datapoint per
period that has samples, stamped with the period's aligned start (the first one may start before
`start` and then only covers the part of it inside the window). Statistics: SampleCount, Sum,
Average, Minimum, Maximum, percentiles (`p99`) and CloudWatch's trimmed count between absolute values
(`TC(250:)`: the samples above 250; the slow-requests judge counts slow invocations with it).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from backout.errors import UsageError
from backout.platforms.base import Datapoint, MetricQuery
from backout.statefiles import bound_cache

Dims = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, Dims]

# Metrics that are levels, not event streams: Prometheus shows their last value, not a sum.
GAUGE_METRICS = frozenset(
    {
        "ConcurrentExecutions",
        "ApproximateNumberOfMessagesVisible",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateAgeOfOldestMessage",
    }
)
SEAL_AFTER = 2  # a second is packed once it ended this many seconds ago (late samples still merge)
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_TRIMMED_COUNT = re.compile(rf"^TC\(({_NUMBER})?:({_NUMBER})?\)$", re.IGNORECASE)  # absolute bounds only
_SIMPLE = ("SampleCount", "Sum", "Average", "Minimum", "Maximum")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS m_datapoints (
    namespace  TEXT    NOT NULL,
    metric     TEXT    NOT NULL,
    dimensions TEXT    NOT NULL,  -- JSON object, keys sorted
    unit       TEXT    NOT NULL,
    ts         INTEGER NOT NULL,  -- the epoch second the samples belong to
    n          INTEGER NOT NULL,  -- number of samples in this row
    vals       BLOB    NOT NULL,  -- float64 array: sorted samples, or sorted distinct values if counts
    counts     BLOB               -- int64 array: occurrences of each of vals (run-length), or NULL
);
CREATE INDEX IF NOT EXISTS m_datapoints_ts ON m_datapoints (ts);
CREATE INDEX IF NOT EXISTS m_datapoints_series ON m_datapoints (namespace, metric, dimensions, ts);
"""


@dataclass(frozen=True, slots=True)
class _Packed:
    """The samples of one second (or one chunk of it), sorted; `counts` when values repeat."""

    vals: np.ndarray  # float64
    counts: np.ndarray | None  # int64, one per entry of vals; None: one sample per entry
    n: int
    total: float
    lo: float
    hi: float

    @staticmethod
    def of(samples: Iterable[float]) -> _Packed:
        """Pack one second: plain Python for the few dozen samples a second usually holds (several
        times faster than numpy's per-call overhead at that size), numpy arrays out."""
        s = sorted(samples)
        n = len(s)
        uniq: list[float] = []
        cnt: list[int] = []
        for v in s:
            if uniq and uniq[-1] == v:
                cnt[-1] += 1
            else:
                uniq.append(v)
                cnt.append(1)
        total = math.fsum(s)
        if len(uniq) * 2 <= n:  # run-length: repeated values (counts of 0/1) as value + occurrences
            return _Packed(np.array(uniq, dtype=np.float64), np.array(cnt, dtype=np.int64), n, total, s[0], s[-1])
        return _Packed(np.array(s, dtype=np.float64), None, n, total, s[0], s[-1])

    @staticmethod
    def from_blobs(n: int, vals: bytes, counts: bytes | None) -> _Packed:
        v = np.frombuffer(vals, dtype=np.float64)
        c = None if counts is None else np.frombuffer(counts, dtype=np.int64)
        total = math.fsum((v * c).tolist()) if c is not None else math.fsum(v.tolist())
        return _Packed(v, c, n, total, float(v[0]), float(v[-1]))

    def as_numpy(self) -> np.ndarray:
        return self.vals if self.counts is None else np.repeat(self.vals, self.counts)

    def merge(self, other: _Packed) -> _Packed:
        return _Packed.of(np.concatenate((self.as_numpy(), other.as_numpy())).tolist())


@dataclass(frozen=True, slots=True)
class _Part:
    """What a query reads of sealed seconds of one period: counts, sum, extremes, and the samples
    (unsorted) when its statistic needs them."""

    n: int
    total: float
    lo: float
    hi: float
    values: np.ndarray | None

    def as_numpy(self) -> np.ndarray:
        assert self.values is not None
        return self.values


_CHUNK = 64  # sealed seconds per chunk of a series' cold window
_SEC, _N, _TOTAL, _LO, _HI, _OFF, _K, _RLE = range(8)  # the columns of a chunk's `meta`


class _Chunk:
    """Up to `_CHUNK` sealed seconds of one series in two numpy arrays: `meta` (a row per second:
    second, samples, sum, min, max, where its values start, how many, run-length or not) and `data`
    (the values, each run-length second's counts after its values, stored as int64 bits)."""

    __slots__ = ("meta", "data", "used", "filled", "first", "last")

    def __init__(self) -> None:
        self.meta = np.empty((_CHUNK, 8), dtype=np.float64)
        self.data = np.empty(256, dtype=np.float64)
        self.used = 0  # rows of meta
        self.filled = 0  # entries of data
        self.first = math.inf  # the smallest and largest second held (late seconds may come out of order)
        self.last = -math.inf

    def add(self, sec: int, p: _Packed) -> None:
        k = len(p.vals)
        need = self.filled + (2 * k if p.counts is not None else k)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)), dtype=np.float64)
            grown[: self.filled] = self.data[: self.filled]
            self.data = grown  # views handed out earlier keep the old buffer: written values never change
        o = self.filled
        self.data[o : o + k] = p.vals
        if p.counts is not None:
            self.data[o + k : o + 2 * k].view(np.int64)[:] = p.counts
        self.meta[self.used] = (sec, p.n, p.total, p.lo, p.hi, o, k, p.counts is not None)
        self.used += 1
        self.filled = need
        self.first, self.last = min(self.first, sec), max(self.last, sec)

    def parts(self, lo: int, hi: int, period: int, values: bool) -> Iterator[tuple[int, _Part]]:
        """The seconds lo <= s < hi, one part per aligned period: counts and sums vectorised, the
        samples themselves (`values`) only for the statistics that need them."""
        if self.last < lo or self.first >= hi:
            return
        m = self.meta[: self.used]
        rows = m[(m[:, _SEC] >= lo) & (m[:, _SEC] < hi)]
        if not len(rows):
            return
        starts = rows[:, _SEC].astype(np.int64)
        starts -= starts % period
        if len(rows) > 1 and np.any(starts[1:] < starts[:-1]):  # a late second: put periods in order
            order = np.argsort(starts, kind="stable")
            rows, starts = rows[order], starts[order]
        cut = np.flatnonzero(np.concatenate(([True], starts[1:] != starts[:-1])))
        n = np.add.reduceat(rows[:, _N], cut).tolist()
        total = np.add.reduceat(rows[:, _TOTAL], cut).tolist()
        mn = np.minimum.reduceat(rows[:, _LO], cut).tolist()
        mx = np.maximum.reduceat(rows[:, _HI], cut).tolist()
        bounds = [*cut.tolist(), len(rows)]
        for g, start in enumerate(starts[cut].tolist()):
            vals = self._values(rows[bounds[g] : bounds[g + 1]]) if values else None
            yield start, _Part(int(n[g]), total[g], mn[g], mx[g], vals)

    def _values(self, rows: np.ndarray) -> np.ndarray:
        """Every sample of `rows`, unsorted: one slice when they lie side by side without counts."""
        spans = rows[:, _OFF : _RLE + 1].tolist()
        if not any(rle for _o, _k, rle in spans):
            first, last = spans[0], spans[-1]
            if int(last[0] + last[1] - first[0]) == int(rows[:, _K].sum()):
                return self.data[int(first[0]) : int(last[0] + last[1])]
        pieces = []
        for o, k, rle in spans:
            o, k = int(o), int(k)
            v = self.data[o : o + k]
            pieces.append(np.repeat(v, self.data[o + k : o + 2 * k].view(np.int64)) if rle else v)
        return np.concatenate(pieces)

    def totals(self, lo: int, hi: int) -> tuple[float, int]:
        if self.last < lo or self.first >= hi:
            return 0.0, 0
        m = self.meta[: self.used]
        inside = (m[:, _SEC] >= lo) & (m[:, _SEC] < hi)
        return math.fsum(m[inside, _TOTAL].tolist()), int(m[inside, _N].sum())


class _Cold:
    """The sealed seconds of one series, oldest chunk first.

    Why chunks of numpy arrays: the window holds every series' last 10 minutes, and one Python
    object per series-second (with its arrays, key and dict slot) was ≈ 5 allocations a second per
    series, each living 10 minutes, in Python's small-object allocator — the kind of population
    that keeps its arenas from ever being returned. A chunk is two allocations per 64 seconds,
    outside it. A late sample's second is added again (queries add up the parts of a second)."""

    __slots__ = ("chunks", "floor")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.floor = -math.inf  # seconds before it are pruned, even if their chunk is still held

    def __bool__(self) -> bool:
        return bool(self.chunks)

    def add(self, sec: int, p: _Packed) -> None:
        if not self.chunks or self.chunks[-1].used == _CHUNK:
            self.chunks.append(_Chunk())
        self.chunks[-1].add(sec, p)

    def parts(self, lo: int, hi: int, period: int, values: bool) -> Iterator[tuple[int, _Part]]:
        lo = max(lo, self.floor)  # type: ignore[assignment]
        for c in self.chunks:
            yield from c.parts(lo, hi, period, values)

    def totals(self, lo: int, hi: int) -> tuple[float, int]:
        lo = max(lo, self.floor)  # type: ignore[assignment]
        total, count = 0.0, 0
        for c in self.chunks:
            t, n = c.totals(lo, hi)
            total += t
            count += n
        return total, count

    def prune(self, before: int) -> None:
        """Forget the seconds before `before`: whole chunks go once their newest second is older."""
        self.floor = max(self.floor, before)
        keep = [c for c in self.chunks if c.last >= before]
        if len(keep) != len(self.chunks):
            self.chunks = keep

    def seconds(self) -> set[int]:
        """The seconds held (tests look at what memory holds)."""
        return {int(sec) for c in self.chunks for sec in c.meta[: c.used, _SEC].tolist() if sec >= self.floor}


@dataclass(slots=True)
class _Series:
    unit: str
    hot: dict[int, list[float]] = field(default_factory=dict)  # seconds that may still grow
    saved: dict[int, int] = field(default_factory=dict)  # hot second → samples already on disk
    cold: _Cold = field(default_factory=_Cold)  # sealed seconds
    total: float = 0.0  # running sum and count since it came into memory (Prometheus counters)
    count: int = 0
    last: float = 0.0
    last_ts: float = 0.0


class MetricStore:
    """Per-second metrics in memory, persisted to `m_datapoints` by `flush()`."""

    def __init__(self, db_path: Path | None = None, retention: float = 6 * 3600, memory: float = 600) -> None:
        """Without a db everything stays in memory for `retention`; with one, `memory` seconds do."""
        self.retention = float(retention)
        self.memory = min(float(memory), self.retention) if db_path is not None else self.retention
        self._series: dict[SeriesKey, _Series] = {}
        self._lock = threading.Lock()  # guards _series, _mem_from and every series' dicts
        self._flush_lock = threading.Lock()  # one flush at a time; never held by record()
        self._read_lock = threading.Lock()  # the read connection: one query at a time
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Every second from here on is in memory; earlier ones are in the db only.
        self._mem_from = int(time.time() - self.memory)
        if db_path is not None:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            self._db = bound_cache(sqlite3.connect(
                str(db_path), timeout=30, check_same_thread=False, isolation_level=None
            ))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._reader = bound_cache(sqlite3.connect(
                str(db_path), timeout=30, check_same_thread=False, isolation_level=None
            ))
            self._load()

    # --- the sink -----------------------------------------------------------------------
    def record(
        self,
        namespace: str,
        metric: str,
        dimensions: dict[str, str],
        value: float,
        unit: str = "None",
        ts: float | None = None,
    ) -> None:
        """One sample. Cheap on purpose: called several times per invocation from many threads."""
        self.record_many(((self.series_key(namespace, metric, dimensions), float(value), unit),), ts)

    @staticmethod
    def series_key(namespace: str, metric: str, dimensions: dict[str, str]) -> SeriesKey:
        """The identity of a series, for callers that record the same series very often."""
        return (namespace, metric, tuple(sorted((k, str(v)) for k, v in dimensions.items())))

    def record_many(self, samples: Iterable[tuple[SeriesKey, float, str]], ts: float | None = None) -> None:
        """Several samples (series key, value, unit) at one instant under one lock: the gateway's
        per-response metrics. Same effect as calling `record` for each."""
        if ts is None:
            ts = time.time()
        sec = int(ts)
        with self._lock:
            for key, value, unit in samples:
                s = self._series.get(key)
                if s is None:
                    s = self._series[key] = _Series(unit)
                b = s.hot.get(sec)
                if b is None:
                    s.hot[sec] = [value]
                else:
                    b.append(value)
                s.total += value
                s.count += 1
                if ts >= s.last_ts:
                    s.last, s.last_ts = value, ts

    # --- reads --------------------------------------------------------------------------
    def query(self, q: MetricQuery) -> list[Datapoint]:
        """GetMetricStatistics over [q.start, q.end): one datapoint per aligned period with samples."""
        return self.query_many([q])[0]

    def query_many(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        """Several queries answered from ONE snapshot (one hold of the lock that `record_many` takes):
        samples recorded together — an invocation's Invocations, Errors and Duration — are in every
        answer together or in none, even for the second still filling. The canary judges rely on it to
        read the current second (`consistent_metrics` of the local platform)."""
        asks = []
        for q in queries:
            stat, pct = _statistic(q.statistic)
            if q.period <= 0:
                raise UsageError(f"metric period must be a positive number of seconds, not {q.period}")
            key = (q.namespace, q.metric, tuple(sorted((k, str(v)) for k, v in q.dimensions)))
            asks.append((q, key, stat, pct, math.ceil(q.start), math.ceil(q.end)))  # start <= s < end
        found: list[dict[int, list[_Part | _Packed | list[float]]]] = []
        with self._lock:
            mem_from = self._mem_from
            for q, key, stat, _pct, lo, hi in asks:
                periods: dict[int, list[_Part | _Packed | list[float]]] = {}
                s = self._series.get(key)
                if self._reader is not None:  # before mem_from: the db's (a late sample's second is in both)
                    lo = max(lo, mem_from)
                if s is not None and hi > lo:
                    for start, part in s.cold.parts(lo, hi, q.period, stat in ("pct", "tc")):
                        periods.setdefault(start, []).append(part)
                    for sec, part in _in_window(s.hot, lo, hi):
                        periods.setdefault(sec - sec % q.period, []).append(list(part))
                found.append(periods)
        for (q, key, _stat, _pct, lo, hi), periods in zip(asks, found, strict=True):
            if lo < mem_from and self._reader is not None:  # settled seconds, only on disk now
                for sec, part in self._read(key, lo, min(hi, mem_from)):
                    periods.setdefault(sec - sec % q.period, []).append(part)
        out = []
        for (_q, _key, stat, pct, _lo, _hi), periods in zip(asks, found, strict=True):
            points = [_datapoint(ts, parts, stat, pct) for ts, parts in periods.items()]
            points.sort(key=lambda d: d.timestamp)
            out.append(points)
        return out

    def list_metrics(self, namespace: str | None = None) -> list[tuple[str, str, dict[str, str]]]:
        """Every series with samples in memory or on disk (ListMetrics), sorted."""
        with self._lock:
            keys = set(self._series)
        with self._read_lock:
            if self._reader is not None:  # series that left memory (their samples are older than it)
                rows = self._reader.execute("SELECT DISTINCT namespace, metric, dimensions FROM m_datapoints")
                keys.update((ns, m, tuple(sorted(json.loads(d).items()))) for ns, m, d in rows)
        return [(ns, m, dict(d)) for ns, m, d in sorted(keys) if namespace is None or ns == namespace]

    def prometheus(self, now: float | None = None) -> str:
        """Prometheus text exposition: per series the last minute's sum/count (last value for gauges)
        and running totals since the series came into memory (this store's load, or its first sample
        after it left memory)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, now))
        return generate_latest(registry).decode()

    def families(self, now: float | None = None) -> Iterator[Metric]:
        """The same figures as prometheus_client families, for a registry that serves them with others."""
        return _Collector(self, now).collect()

    # --- persistence --------------------------------------------------------------------
    def flush(self, now: float | None = None) -> int:
        """Write every sample not yet on disk, pack settled seconds, drop what is past retention.

        Returns the number of samples written. Safe to call from any thread, at any rate."""
        now = time.time() if now is None else now
        seal_before = int(now) - SEAL_AFTER + 1  # seconds < this are settled
        cutoff = int(now - self.retention)
        mem_cutoff = max(cutoff, int(now - self.memory))
        with self._flush_lock:
            rows: list[tuple[SeriesKey, str, int, list[float]]] = []
            sealing: list[tuple[SeriesKey, _Series, int, list[float], int]] = []
            with self._lock:
                for key, s in self._series.items():
                    for sec, b in s.hot.items():
                        n = len(b)
                        done = s.saved.get(sec, 0)
                        if n > done:
                            rows.append((key, s.unit, sec, b[done:n]))
                            s.saved[sec] = n
                        if sec < seal_before:
                            sealing.append((key, s, sec, b, n))
            packed = [(item, _Packed.of(item[3][: item[4]])) for item in sealing]
            with self._lock:
                for (_key, s, sec, b, n), p in packed:
                    tail = b[n:]  # arrived since the snapshot above: stays hot, not yet on disk
                    if tail:
                        s.hot[sec] = tail
                        s.saved.pop(sec, None)
                    else:
                        del s.hot[sec]
                        del s.saved[sec]
                    s.cold.add(sec, p)  # a late sample's second again: queries add its parts up
            if self._db is not None:
                self._write(rows, cutoff)
            with self._lock:  # after the write: a second leaves memory only once it is on disk
                self._prune(mem_cutoff, cutoff)
        return sum(len(r[3]) for r in rows)

    def close(self) -> None:
        """Flush and release the db."""
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _prune(self, mem_cutoff: int, cutoff: int) -> None:
        """Drop seconds before `mem_cutoff` from memory (they are on disk: `flush` writes a second
        before it is ever this old), and series with nothing since then (caller holds the lock).

        With a db, a series leaves memory once its last sample is older than the window: every
        release adds its versions' series and stops the previous ones, and a supervisor that kept
        them until retention (6 h) grew by ≈ 1,000 small objects a deployment in the soak. Its data
        stays on disk (queries, `list_metrics`); its Prometheus counters restart from 0 if it ever
        gets samples again (a counter reset, which Prometheus handles). Without a db, at retention."""
        if mem_cutoff > self._mem_from:
            self._mem_from = mem_cutoff
        gone = mem_cutoff if self._db is not None else cutoff
        empty: list[SeriesKey] = []
        for key, s in self._series.items():
            s.cold.prune(mem_cutoff)
            on_disk = [sec for sec, b in s.hot.items() if sec < mem_cutoff and s.saved.get(sec) == len(b)]
            for sec in {sec for sec in s.hot if sec < cutoff}.union(on_disk):
                del s.hot[sec]
                s.saved.pop(sec, None)
            if not s.cold and not s.hot and s.last_ts < gone:
                empty.append(key)
        for key in empty:
            del self._series[key]

    def _read(self, key: SeriesKey, lo: int, hi: int) -> list[tuple[int, _Packed]]:
        """The samples of `key` with lo <= second < hi from the db, one part per second."""
        if hi <= lo:
            return []
        ns, metric, dims = key
        by_sec: dict[int, _Packed] = {}
        with self._read_lock:
            if self._reader is None:
                return []
            rows = self._reader.execute(
                "SELECT ts, n, vals, counts FROM m_datapoints WHERE namespace = ? AND metric = ?"
                " AND dimensions = ? AND ts >= ? AND ts < ? ORDER BY ts, rowid",
                (ns, metric, _dims_json(dims), lo, hi),
            ).fetchall()
        for sec, n, vals, counts in rows:
            p = _Packed.from_blobs(n, vals, counts)
            old = by_sec.get(sec)
            by_sec[sec] = old.merge(p) if old is not None else p
        return list(by_sec.items())

    def _write(self, rows: list[tuple[SeriesKey, str, int, list[float]]], cutoff: int) -> None:
        assert self._db is not None
        params = []
        for (ns, metric, dims), unit, sec, samples in rows:
            p = _Packed.of(samples)
            counts = p.counts.tobytes() if p.counts is not None else None
            params.append((ns, metric, _dims_json(dims), unit, sec, p.n, p.vals.tobytes(), counts))
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if params:
                db.executemany("INSERT INTO m_datapoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)", params)
            db.execute("DELETE FROM m_datapoints WHERE ts < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _load(self) -> None:
        assert self._db is not None
        cutoff = self._mem_from
        merged: dict[tuple[SeriesKey, int], _Packed] = {}
        units: dict[SeriesKey, str] = {}
        cur = self._db.execute(
            "SELECT namespace, metric, dimensions, unit, ts, n, vals, counts FROM m_datapoints"
            " WHERE ts >= ? ORDER BY ts, rowid",
            (cutoff,),
        )
        for ns, metric, dims, unit, sec, n, vals, counts in cur:
            key = (ns, metric, tuple(sorted(json.loads(dims).items())))
            units.setdefault(key, unit)
            p = _Packed.from_blobs(n, vals, counts)
            old = merged.get((key, sec))
            merged[(key, sec)] = old.merge(p) if old is not None else p
        with self._lock:
            for (key, sec), p in merged.items():  # insertion order is time order
                s = self._series.get(key)
                if s is None:
                    s = self._series[key] = _Series(units[key])
                s.cold.add(sec, p)
                s.total += p.total
                s.count += p.n
                if sec >= s.last_ts:
                    s.last, s.last_ts = (p.vals[-1] if p.n == 1 else p.total / p.n), float(sec)

    # used by the Prometheus collector
    def _snapshot(self, now: float) -> list[tuple[SeriesKey, str, float, float, float, int, float]]:
        """Per series: unit, last-minute sum, last-minute count, running sum, running count, last value."""
        lo, hi = int(now) - 59, int(now) + 1
        out = []
        with self._lock:
            for key, s in self._series.items():
                total, count = s.cold.totals(lo, hi)
                for _sec, b in _in_window(s.hot, lo, hi):
                    total += math.fsum(b)
                    count += len(b)
                out.append((key, s.unit, total, count, s.total, s.count, s.last))
        return out


def _in_window(d: dict[int, Any], lo: int, hi: int) -> Iterator[tuple[int, Any]]:
    """Entries of a second-keyed dict with lo <= second < hi, looking up or scanning, whichever is less."""
    if hi - lo <= len(d):
        for sec in range(lo, hi):
            part = d.get(sec)
            if part is not None:
                yield sec, part
    else:
        for sec, part in list(d.items()):
            if lo <= sec < hi:
                yield sec, part


Bounds = tuple[float, float]  # a trimmed count's (lower, upper): lower < sample <= upper


def _statistic(name: str) -> tuple[str, float | Bounds | None]:
    """(kind, argument): a simple statistic, `pct` with its percentile, or `tc` with its bounds.
    `TC(X:Y)` is CloudWatch's trimmed count with absolute bounds: the samples with X < value <= Y,
    either bound left out for none (`TC(250:)`: the samples above 250, as the slow-requests judge
    asks of Duration)."""
    if name in _SIMPLE:
        return name, None
    m = _PERCENTILE.match(name)
    if m and 0 <= float(m.group(1)) <= 100:
        return "pct", float(m.group(1))
    m = _TRIMMED_COUNT.match(name)
    if m and (m.group(1) is not None or m.group(2) is not None):
        lo = -math.inf if m.group(1) is None else float(m.group(1))
        hi = math.inf if m.group(2) is None else float(m.group(2))
        if lo < hi:
            return "tc", (lo, hi)
    raise UsageError(
        f"unknown statistic {name!r}: use SampleCount, Sum, Average, Minimum, Maximum, a percentile"
        " like p99 or a trimmed count between absolute values like TC(250:)"
    )


def _trimmed_count(parts: list[_Part | _Packed | list[float]], bounds: Bounds) -> float:
    """The samples of `parts` with lower < value <= upper."""
    lo, hi = bounds
    n = 0
    for p in parts:
        v = p.as_numpy() if not isinstance(p, list) else np.asarray(p, dtype=np.float64)
        n += int(np.count_nonzero((v > lo) & (v <= hi)))
    return float(n)


def _datapoint(ts: int, parts: list[_Part | _Packed | list[float]], stat: str, pct: float | Bounds | None) -> Datapoint:
    n = 0
    total = 0.0
    lo, hi = math.inf, -math.inf
    for p in parts:
        if not isinstance(p, list):  # a sealed part (memory or db); a list is a hot second
            n += p.n
            total += p.total
            lo, hi = min(lo, p.lo), max(hi, p.hi)
        else:
            n += len(p)
            total += math.fsum(p)
            lo, hi = min(lo, min(p)), max(hi, max(p))
    if stat == "SampleCount":
        value = float(n)
    elif stat == "Sum":
        value = total
    elif stat == "Average":
        value = total / n
    elif stat == "Minimum":
        value = lo
    elif stat == "Maximum":
        value = hi
    elif stat == "tc":
        assert isinstance(pct, tuple)
        value = _trimmed_count(parts, pct)
    else:
        assert isinstance(pct, float)
        arrays = [p.as_numpy() if not isinstance(p, list) else np.asarray(p, dtype=np.float64) for p in parts]
        value = float(np.percentile(np.concatenate(arrays), pct))
    return Datapoint(timestamp=float(ts), value=value, sample_count=float(n))


def _dims_json(dims: Dims) -> str:
    return json.dumps(dict(dims), sort_keys=True, separators=(",", ":"))


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9]+")


def prometheus_name(namespace: str, metric: str) -> str:
    """`AWS/Lambda` + `Invocations` → `backout_aws_lambda_invocations`; `4XXError` → `4xx_error`."""
    parts = [_NOT_NAME.sub("_", _CAMEL.sub("_", p)).strip("_").lower() for p in (namespace, metric)]
    return "backout_" + "_".join(p for p in parts if p)


def _label(name: str) -> str:
    out = _NOT_NAME.sub("_", name)
    return out if out and not out[0].isdigit() else "_" + out


class _Collector:
    """A prometheus_client custom collector over one store's current contents."""

    def __init__(self, store: MetricStore, now: float | None) -> None:
        self.store = store
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = time.time() if self.now is None else self.now
        families: dict[str, list[Metric]] = {}
        for (ns, metric, dims), unit, m_sum, m_count, r_sum, r_count, last in sorted(
            self.store._snapshot(now), key=lambda r: r[0]
        ):
            name = prometheus_name(ns, metric)
            labels = {_label(k): v for k, v in dims}
            what = f"{ns} {metric} ({unit})"
            fams = families.get(name)
            if fams is None:
                if metric in GAUGE_METRICS:
                    fams = [GaugeMetricFamily(name, f"{what}: last value")]
                else:
                    fams = [
                        GaugeMetricFamily(f"{name}_last_minute_sum", f"{what}: sum over the last 60 s"),
                        GaugeMetricFamily(f"{name}_last_minute_count", f"{what}: samples in the last 60 s"),
                        CounterMetricFamily(name, f"{what}: running sum of values"),
                        CounterMetricFamily(f"{name}_samples", f"{what}: running count of samples"),
                    ]
                families[name] = fams
            if metric in GAUGE_METRICS:
                fams[0].samples.append(Sample(name, labels, last))
            else:
                fams[0].samples.append(Sample(f"{name}_last_minute_sum", labels, m_sum))
                fams[1].samples.append(Sample(f"{name}_last_minute_count", labels, float(m_count)))
                fams[2].samples.append(Sample(f"{name}_total", labels, r_sum))
                fams[3].samples.append(Sample(f"{name}_samples_total", labels, float(r_count)))
        for fams in families.values():
            yield from fams
