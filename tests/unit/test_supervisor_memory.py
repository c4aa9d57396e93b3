"""The supervisor gives freed heap back to the OS (server/memory.py): glibc keeps what threads free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

from backout.server import memory

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
