"""The supervisor gives freed heap back to the OS (server/memory.py): glibc keeps what threads free."""

from __future__ import annotations

import sys
import threading

import psutil
import pytest

from backout.server import memory

MB = 1024 * 1024
glibc = pytest.mark.skipif(memory._malloc_trim() is None, reason="needs glibc's malloc_trim")


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
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert memory.release() is False
    finally:
        memory._malloc_trim.cache_clear()
