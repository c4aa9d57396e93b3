"""Keep the supervisor's heap small: few malloc arenas, and freed memory given back once a minute.

Why: the supervisor is one long-lived process whose gateway threads allocate and free request
bodies and responses all day. glibc keeps what they free in per-thread arenas and only returns the
top of each heap, so the resident size ratchets up with every burst (a deployment's verify, hooks
and backups) even though nothing is live any more; `malloc_trim(0)` releases every free page of
every arena (madvise), in a few milliseconds, and two arenas for the whole process (`mallopt`)
leave less free space scattered between them. Elsewhere (macOS, musl) there is nothing to call and
this does nothing.

The supervisor's Python objects come from malloc too, so that trim reaches them (why:
`supervisor_environ`). Its workers and hooks keep the allocator the user has.

`usage()` splits the resident size into what holds it (Python's small-object arenas, malloc's heap
in use and free, SQLite's share of it), for `/metrics` and the soak: a slope of the RSS alone says
that something grows, not what.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

EVERY = 60.0  # seconds between trims
ARENAS = 2  # glibc malloc arenas for the whole process
_M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)
ALLOCATOR = "malloc"  # the supervisor's PYTHONMALLOC: Python's objects from glibc, trimmed with the rest
_CHOSEN = "BACKOUT_SUPERVISOR_PYTHONMALLOC"  # set when backout, not the user, chose PYTHONMALLOC


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None
    return libc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None  # glibc 2.33+
    if fn is None:
        return None
    fn.argtypes, fn.restype = [], _MallInfo2
    return fn  # type: ignore[no-any-return]


@functools.cache
def _sqlite_memory_used() -> Callable[[], int] | None:
    """`sqlite3_memory_used` of the very library the sqlite3 module runs on (looked up through the
    extension's own handle, so a second SQLite on the system cannot answer instead)."""
    try:
        import _sqlite3

        fn = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], ctypes.c_int64
    return fn  # type: ignore[no-any-return]


_PY_ARENAS = re.compile(r"^(\d+) arenas \* (\d+) bytes/arena", re.M)
_PY_IN_USE = re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", re.M)


@functools.cache
def _memstream_stats() -> tuple[ctypes.CDLL, Callable[..., int]] | None:
    """libc (for `open_memstream`) and CPython's `_PyObject_DebugMallocStats`, prototyped once; None
    where either is missing."""
    libc = _libc()
    stats = getattr(ctypes.pythonapi, "_PyObject_DebugMallocStats", None)
    if libc is None or stats is None or not hasattr(libc, "open_memstream"):
        return None
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.open_memstream.restype = ctypes.c_void_p
    libc.fclose.argtypes, libc.free.argtypes = [ctypes.c_void_p], [ctypes.c_void_p]
    stats.argtypes, stats.restype = [ctypes.c_void_p], ctypes.c_int
    return libc, stats


def _python_stats() -> str:
    """CPython's small-object allocator report (what `sys._debugmallocstats` prints), written into
    memory rather than to the process's stderr; "" where there is no such report."""
    found = _memstream_stats()
    if found is None:
        return ""
    libc, stats = found
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    fp = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not fp:
        return ""
    try:
        stats(fp)
    finally:
        libc.fclose(fp)  # sets buf and size
    try:
        return ctypes.string_at(buf.value, size.value).decode(errors="replace") if buf.value else ""
    finally:
        libc.free(buf)


def usage() -> dict[str, int]:
    """This process's memory by part, in bytes; a part this platform cannot tell is left out.

    `rss`: resident; `python_arenas`: CPython's small-object arenas (freed only when empty) and
    `python_in_use`: the blocks live in them; `malloc_in_use` / `malloc_free`: malloc's heap handed
    out (larger Python objects, numpy arrays, SQLite) and held free; `sqlite`: SQLite's share."""
    out = {"rss": psutil.Process().memory_info().rss}
    text = _python_stats()
    if (m := _PY_ARENAS.search(text)) is not None:
        out["python_arenas"] = int(m[1]) * int(m[2])
    if (m := _PY_IN_USE.search(text)) is not None:
        out["python_in_use"] = int(m[1].replace(",", ""))
    if (mallinfo := _mallinfo2()) is not None:
        mi = mallinfo()
        out["malloc_in_use"] = mi.uordblks + mi.hblkhd
        out["malloc_free"] = mi.fordblks
    if (used := _sqlite_memory_used()) is not None:
        out["sqlite"] = int(used())
    return out


def limit_arenas(n: int = ARENAS) -> bool:
    """Let the process's threads share `n` malloc arenas (glibc's default: 8 per core). Each arena
    keeps its own free space between bursts; the gateway's thread pool spread over 16 of them held
    several times what it used. Call before the threads start; whether it took effect."""
    libc = _libc()
    return bool(libc.mallopt(_M_ARENA_MAX, n)) if libc is not None else False


def release() -> bool:
    """Return free heap pages to the OS now; whether anything was released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class Trimmer:
    """`tick()` once a second; trims every `every` seconds."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self._next = clock() + every

    def tick(self) -> None:
        now = self.clock()
        if now >= self._next:
            self._next = now + self.every
            release()


def supervisor_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a supervisor starts in: Python's small objects from malloc, unless the user chose
    an allocator (any `PYTHONMALLOC` set is kept) or there is no glibc to trim it.

    Why: CPython's own allocator (pymalloc) gives a 1 MiB arena back only once every object in it is
    dead. A long-lived object born during a burst (a scrape, a deployment's creation, a rollback) pins
    the arena the burst opened, so a supervisor that lives through bursts all day gains an arena every
    few minutes while what lives in them stays flat. glibc's heap is returned page by page (4 KiB) by
    the trim this process already runs every minute, so a pinned page holds 4 KiB, not 1 MiB."""
    env = dict(os.environ if environ is None else environ)
    if _chooses(env):
        env["PYTHONMALLOC"], env[_CHOSEN] = ALLOCATOR, "1"
    return env


def _chooses(env: Mapping[str, str]) -> bool:
    """Whether backout picks a supervisor's allocator in `env`: the user chose none, and glibc is there
    to trim what malloc frees."""
    return "PYTHONMALLOC" not in env and _libc() is not None


def restore_environ() -> None:
    """In the supervisor once started: the processes it starts (workers, hooks, backups) get the
    allocator the user has (pymalloc unless they chose another), as Lambda's runtime does."""
    if os.environ.pop(_CHOSEN, None) is not None:
        os.environ.pop("PYTHONMALLOC", None)


def reexec_argv(orig_argv: Sequence[str] | None = None) -> list[str] | None:
    """The command line to start this `backout` process again with the supervisor's allocator (the
    allocator is fixed when the interpreter starts); None when it runs with it already, when the user
    chose one, or when this process is not the `backout` command (a test calling the CLI in process)."""
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)
    if not _chooses(os.environ) or len(argv) < 2:
        return None
    ours = ("-m", "backout.cli.main") in itertools.pairwise(argv) or Path(argv[1]).name == "backout"
    return [sys.executable, *argv[1:]] if ours else None

