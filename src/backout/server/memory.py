"""Keep the supervisor's heap small: few malloc arenas, and freed memory given back once a minute.

Why: the supervisor is one long-lived process whose gateway threads allocate and free request
bodies and responses all day. glibc keeps what they free in per-thread arenas and only returns the
top of each heap, so the resident size ratchets up with every burst (a deployment's verify, hooks
and backups) even though nothing is live any more; `malloc_trim(0)` releases every free page of
every arena (madvise), in a few milliseconds, and two arenas for the whole process (`mallopt`)
leave less free space scattered between them. Elsewhere (macOS, musl) there is nothing to call and
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import time
from collections.abc import Callable

EVERY = 60.0  # seconds between trims
ARENAS = 2  # glibc malloc arenas for the whole process
_M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)


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
