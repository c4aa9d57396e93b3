"""The live alias of each function: which versions it sends invocations to, and with what weight.

Every invocation through the alias reads it, so reads come from an in-memory snapshot (no I/O,
no lock). A change is written to the platform db first and then the snapshot is swapped in one
assignment: the next invocation sees the new weights, one already in flight keeps its version.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from backout.errors import UsageError
from backout.statefiles import bound_cache

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT PRIMARY KEY,
    stable INTEGER NOT NULL,
    canary INTEGER NULL,
    canary_weight REAL NOT NULL DEFAULT 0
)
"""



@dataclass(frozen=True)
class Weights:
    """The live alias as stored locally: versions are this platform's integers (the protocol's
    `AliasWeights` carries them as strings, as Lambda does)."""

    function: str
    stable: int
    canary: int | None = None
    canary_weight: float = 0.0

    def pick(self, rnd: random.Random | None = None) -> int:
        """The version one invocation goes to, chosen by weight as Lambda does."""
        if self.canary is None or self.canary_weight <= 0:
            return self.stable
        r = (rnd or random).random() * 100.0
        return self.canary if r < self.canary_weight else self.stable

    @property
    def versions(self) -> dict[int, float]:
        if self.canary is None or self.canary_weight <= 0:
            return {self.stable: 100.0}
        if self.canary_weight >= 100:
            return {self.canary: 100.0}
        return {self.stable: 100.0 - self.canary_weight, self.canary: self.canary_weight}

class Aliases:
    """Live aliases stored in the `aliases` table of the platform db (shared with other tables)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._db = bound_cache(
            sqlite3.connect(self.db_path, timeout=30, check_same_thread=False, isolation_level=None))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._cache: dict[str, Weights] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read every alias from the db (another process may have changed one)."""
        with self._write_lock:
            rows = self._db.execute("SELECT function, stable, canary, canary_weight FROM aliases").fetchall()
            self._cache = {row[0]: Weights(*row) for row in rows}

    def get(self, fn: str) -> Weights:
        w = self._cache.get(fn)
        if w is None:
            raise UsageError(f"function {fn!r} has no live alias yet (deploy a version first)")
        return w

    def all(self) -> dict[str, Weights]:
        return dict(self._cache)

    def set(self, fn: str, stable: int, canary: int | None = None, pct: float = 0.0) -> Weights:
        """Point `fn:live` at `stable`, with `pct` percent going to `canary` (100 → all to canary)."""
        w = _validated(fn, stable, canary, pct)
        with self._write_lock:
            self._db.execute(
                "INSERT INTO aliases(function, stable, canary, canary_weight) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(function) DO UPDATE SET stable=excluded.stable, canary=excluded.canary, "
                "canary_weight=excluded.canary_weight",
                (w.function, w.stable, w.canary, w.canary_weight),
            )
            cache = dict(self._cache)
            cache[fn] = w
            self._cache = cache  # one assignment: readers see the old or the new dict, never a mix
        return w

    def close(self) -> None:
        with self._write_lock:
            self._db.close()


def _validated(fn: str, stable: int, canary: int | None, pct: float) -> Weights:
    if isinstance(stable, bool) or not isinstance(stable, int) or stable < 1:
        raise UsageError(f"{fn}: stable version must be a positive integer, not {stable!r}")
    if canary is not None and (isinstance(canary, bool) or not isinstance(canary, int) or canary < 1):
        raise UsageError(f"{fn}: canary version must be a positive integer, not {canary!r}")
    pct = float(pct)
    if not 0.0 <= pct <= 100.0:
        raise UsageError(f"{fn}: canary weight must be between 0 and 100 percent, not {pct:g}")
    if canary is None and pct > 0:
        raise UsageError(f"{fn}: a canary weight of {pct:g}% needs a canary version")
    if canary is None or canary == stable:
        return Weights(fn, stable)
    return Weights(fn, stable, canary, pct)
