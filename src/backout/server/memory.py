"""Give the supervisor's freed heap back to the operating system, once a minute.

Why: the supervisor is one long-lived process whose gateway threads allocate and free request
bodies and responses all day. glibc keeps what they free in per-thread arenas and only returns the
top of each heap, so the resident size ratchets up with every burst (a deployment's verify, hooks
and backups) even though nothing is live any more; `malloc_trim(0)` releases every free page of
every arena (madvise), in a few milliseconds. Elsewhere (macOS, musl) there is nothing to call and
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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release() -> bool:
    """Return free heap pages to the OS now; whether anything was released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


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
