"""The supervisor gives freed heap back to the OS (server/memory.py): glibc keeps what threads free; it
says what holds its memory (`usage`); its SQLite connections have a small page cache (statefiles)."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from backout.control.store import Store
from backout.platforms.local.aliases import Aliases
from backout.platforms.local.metrics import MetricStore
from backout.platforms.local.queues import QueueStore
from backout.server import memory
from backout.statefiles import CACHE_KIB, bound_cache

MB = 1024 * 1024
glibc = pytest.mark.skipif(memory._libc() is None, reason="needs glibc's malloc_trim and mallopt")


@glibc
def test_release_returns_what_a_thread_freed_but_glibc_kept() -> None:
    """A thread allocates 48 MB in 2 KB blocks (above pymalloc's 512 bytes: glibc serves them from the
    thread's arena) and frees all but the last: the arena's top is pinned, so glibc keeps the pages
    resident until malloc_trim gives them back."""
    proc = psutil.Process()
    kept: list[bytearray] = []

    def churn() -> None:
        blocks = [bytearray(2048) for _ in range(48 * MB // 2048)]
        for b in blocks:
            b[0] = 1  # touched: resident
        kept.append(blocks[-1])
        del blocks

    t = threading.Thread(target=churn)
    t.start()
    t.join()
    before = proc.memory_info().rss
    memory.release()
    after = proc.memory_info().rss
    assert before - after > 24 * MB, (before / MB, after / MB)
    assert kept


@glibc
def test_limit_arenas_makes_threads_share_two_arenas() -> None:
    """In a fresh interpreter (the limit is process-wide and must come before threads): eight threads
    that allocate at once get glibc's two arenas, not one each (malloc_info lists the arenas)."""
    code = textwrap.dedent("""
        import ctypes, re, sys, tempfile, threading
        from backout.server import memory
        if sys.argv[1] == "limit":
            assert memory.limit_arenas()
        allocated, done = threading.Barrier(9), threading.Event()
        def work():
            held = [bytearray(4096) for _ in range(64)]
            allocated.wait()
            done.wait()
        ts = [threading.Thread(target=work) for _ in range(8)]
        for t in ts:
            t.start()
        allocated.wait()  # every thread holds its memory now
        libc = memory._libc()
        libc.fopen.restype = ctypes.c_void_p
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        with tempfile.NamedTemporaryFile() as f:
            fp = libc.fopen(f.name.encode(), b"w")
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            print(len(re.findall("<heap nr=", open(f.name).read())))
        done.set()
        for t in ts:
            t.join()
    """)
    counts = {}
    for mode in ("limit", "default"):
        r = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        counts[mode] = int(r.stdout)
    assert counts["limit"] <= 2 < counts["default"], counts


def test_the_trimmer_trims_once_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    calls: list[float] = []
    monkeypatch.setattr(memory, "release", lambda: calls.append(now[0]) or True)
    t = memory.Trimmer(every=60.0, clock=lambda: now[0])
    for _ in range(200):  # 200 one-second ticks
        now[0] += 1.0
        t.tick()
    assert calls == [160.0, 220.0, 280.0]


def test_release_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    memory._libc.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert memory.release() is False
    finally:
        memory._libc.cache_clear()


# --- the supervisor's allocator (memory.supervisor_environ) ---
_BURST = textwrap.dedent("""
    import gc, psutil
    from backout.server import memory
    rss = lambda: psutil.Process().memory_info().rss
    gc.collect(); memory.release()
    base = rss()
    burst = [bytes(100) + i.to_bytes(8, "little") for i in range(400_000)]  # ≈ 56 MB of 141-byte objects
    survivors = burst[::5000]  # one in 5,000 lives on: one per ≈ 0.7 MB, so in every 1 MiB arena
    peak = rss()
    del burst; gc.collect(); memory.release()
    print((peak - base) / 2**20, (rss() - base) / 2**20)
""")


@glibc
def test_a_burst_with_a_few_survivors_is_given_back_on_the_supervisors_allocator() -> None:
    """Why the supervisor runs on malloc: a burst of small objects of which a few live on keeps every
    1 MiB arena of CPython's allocator, but only the survivors' 4 KiB pages of glibc's trimmed heap."""
    kept = {}
    for name, env in (("pymalloc", {**os.environ, "PYTHONMALLOC": "pymalloc"}),
                      ("supervisor", memory.supervisor_environ(_without_allocator()))):
        r = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        peak, kept[name] = map(float, r.stdout.split())
        assert peak > 40, (name, peak)
    assert kept["pymalloc"] > 40 and kept["supervisor"] < 4, kept


def _without_allocator() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", memory._CHOSEN)}


def test_the_supervisor_gets_malloc_unless_the_user_chose_and_its_children_get_the_users_allocator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = memory.supervisor_environ({"PATH": "/bin"})
    assert env["PYTHONMALLOC"] == "malloc" and env[memory._CHOSEN] == "1" and env["PATH"] == "/bin"
    assert memory.supervisor_environ({"PYTHONMALLOC": "pymalloc_debug"}) == {"PYTHONMALLOC": "pymalloc_debug"}
    # started with backout's choice: the workers and hooks it starts inherit none of it
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    memory.restore_environ()
    assert "PYTHONMALLOC" not in os.environ and memory._CHOSEN not in os.environ
    # started with the user's: kept for its children too
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    memory.restore_environ()
    assert os.environ["PYTHONMALLOC"] == "malloc"
    # without glibc nothing would trim malloc's heap: CPython's allocator stays
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.supervisor_environ({"PATH": "/bin"}) == {"PATH": "/bin"}
    monkeypatch.delenv("PYTHONMALLOC")
    assert memory.reexec_argv(["python", "-m", "backout.cli.main", "up"]) is None


def test_a_foreground_up_starts_again_on_the_supervisors_allocator_only_as_the_backout_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    py = sys.executable
    assert memory.reexec_argv(["python", "-m", "backout.cli.main", "up"]) == [py, "-m", "backout.cli.main", "up"]
    assert memory.reexec_argv(["python", "/v/bin/backout", "up", "--env", "prod"]) == [
        py, "/v/bin/backout", "up", "--env", "prod"]
    assert memory.reexec_argv(["python", "-P", "-m", "backout.cli.main", "up"]) == [
        py, "-P", "-m", "backout.cli.main", "up"]
    assert memory.reexec_argv(["python", "-m", "pytest", "tests"]) is None  # the CLI called in a test process
    assert memory.reexec_argv(["python"]) is None
    monkeypatch.setenv("PYTHONMALLOC", "malloc")  # already on it (after the exec), or the user's choice
    assert memory.reexec_argv(["python", "-m", "backout.cli.main", "up"]) is None


# --- what holds the memory (usage) and SQLite's share of it (statefiles.bound_cache) ---
@glibc
def test_usage_names_the_part_that_grew() -> None:
    """Small objects show in Python's arenas, a large buffer in malloc's heap, an in-memory database's
    pages in SQLite's share: each grows by about what was put there."""
    gc.collect()  # earlier tests' garbage is not freed in the middle of the measurement
    before = memory.usage()
    assert {"rss", "python_arenas", "python_in_use", "malloc_in_use", "malloc_free", "sqlite"} <= set(before)
    assert before["python_in_use"] <= before["python_arenas"] < before["rss"]
    small = [{"k": i} for i in range(100_000)]  # ≈ 100 B each (+ the list): well over 8 MB of blocks
    big = bytearray(32 * MB)
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (x TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", ((str(i) * 40,) for i in range(100_000)))  # ≈ 20 MB of rows
    after = memory.usage()
    assert after["python_in_use"] - before["python_in_use"] > 8 * MB
    # the buffer and most of SQLite's pages (both malloc's), give or take what the process freed meanwhile
    assert after["malloc_in_use"] - before["malloc_in_use"] > 32 * MB + 0.8 * (after["sqlite"] - before["sqlite"])
    assert after["sqlite"] - before["sqlite"] > 10 * MB
    con.close()
    assert memory.usage()["sqlite"] - before["sqlite"] < 1 * MB
    del small, big


def _cache_bytes_after_a_scan(db: Path, bound: bool) -> int:
    con = sqlite3.connect(db)
    if bound:
        bound_cache(con)
    base = memory.usage()["sqlite"]
    assert con.execute("SELECT count(*), sum(length(x)) FROM t").fetchone()[0] == 40_000
    grown = memory.usage()["sqlite"] - base
    con.close()
    return grown


@pytest.mark.skipif(memory._sqlite_memory_used() is None, reason="needs sqlite3_memory_used")
def test_a_bound_connection_keeps_its_page_cache_small(tmp_path: Path) -> None:
    """Reading an 8 MB database fills a default connection's cache to SQLite's 2,000 KiB; a bound one
    stays at CACHE_KIB."""
    db = tmp_path / "big.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", ((f"{i:0200d}",) for i in range(40_000)))
    con.commit()
    con.close()
    assert db.stat().st_size > 8 * MB
    default, bound = _cache_bytes_after_a_scan(db, bound=False), _cache_bytes_after_a_scan(db, bound=True)
    assert default > 1.5 * MB, default
    assert bound < (CACHE_KIB + 128) * 1024, bound


def test_the_supervisors_long_lived_connections_are_bound(tmp_path: Path) -> None:
    """The metric store's writer and reader, the queue store's per-thread connections, the aliases and
    the control store: every connection the supervisor keeps open has the small cache."""
    db = tmp_path / "platform.db"
    metrics = MetricStore(db)
    queues = QueueStore(db)
    aliases = Aliases(db)
    store = Store(tmp_path / "control.db")
    try:
        conns = [metrics._db, metrics._reader, queues._conn(), aliases._db]
        assert [c.execute("PRAGMA cache_size").fetchone()[0] for c in conns] == [-CACHE_KIB] * 4  # type: ignore[union-attr]
        with store._engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA cache_size").scalar() == -CACHE_KIB
    finally:
        metrics.close()
        queues.close()
        aliases.close()
        store.close()
