"""The state dir's files: private to their owner, and SQLite databases checked before they are used.

The state dir holds the control token, the jobs of the service, its queues and the deployment
history, so it is created 0700 and everything a supervisor writes into it 0600 (its umask is set to
077 at start, which its worker processes inherit). A database that a full disk, a bad copy or a
crash of the file system left damaged is named with one line that says how to recover, instead of
a traceback from deep inside SQLAlchemy or sqlite3 at the first query. Every connection the
supervisor keeps open gets a small page cache (`bound_cache`), so its memory has a known ceiling.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from backout.errors import UsageError

PRIVATE_UMASK = 0o077
# SQLite's own page cache per connection (its default is 2,000 KiB). The supervisor keeps a dozen
# connections open for days; in a 30-minute soak the metric store's two grew to 0.7 and 2.0 MB (their
# db grows with the metric retention), a third of the supervisor's RSS growth once warm. The OS page
# cache holds the same pages, and another process's commit empties a connection's cache anyway.
CACHE_KIB = 256


def secure_state_dir(state_dir: Path) -> None:
    """Create the state dir 0700 (or tighten an existing one) and make this process and its children
    create files that only their owner can read."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(state_dir.stat().st_mode) & 0o077:
        state_dir.chmod(0o700)
    os.umask(PRIVATE_UMASK)


def bound_cache(con: sqlite3.Connection, kib: int = CACHE_KIB) -> sqlite3.Connection:
    """Cap the page cache of a long-lived connection at `kib` KiB (`CACHE_KIB`); the connection."""
    con.execute(f"PRAGMA cache_size=-{int(kib)}")
    return con


def check_database(path: Path, env: str | None = None) -> None:
    """UsageError with one line when `path` exists but is not a readable, intact SQLite database."""
    if not path.exists() or path.stat().st_size == 0:
        return  # created on first use
    problem = ""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
        if rows != [("ok",)]:
            problem = str(rows[0][0]) if rows else "no answer from quick_check"
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        problem = str(e)
    if problem:
        where = f" --env {env}" if env else ""
        raise UsageError(
            f"{path} is damaged ({problem}): move it aside, start again and bring the data back with "
            f"`backout backup list{where}` and `backout backup restore ID{where}`"
        )
