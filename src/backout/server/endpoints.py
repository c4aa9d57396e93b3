"""Where a running supervisor listens and how to authenticate to it: files in the state dir.

Kept apart from `process` (which imports uvicorn and the server's app) because every CLI command
reads them and should not pay for the server's imports.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
from pathlib import Path

from backout.errors import UsageError

ENDPOINTS = "endpoints.json"
TOKEN = "token"
LOCK = "supervisor.lock"


def read_token(state_dir: Path) -> str:
    """The control API's bearer token, created at first start with mode 0600. A token that group or
    others can read is refused (as ssh refuses such a key): anyone who read it can roll back prod."""
    p = state_dir / TOKEN
    if not p.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise UsageError(f"{p} is readable by other users (mode {mode:04o}): anyone who read it controls this "
                         f"environment; run `chmod 600 {p}` (or delete it to get a new token at the next start)")
    return p.read_text().strip()


def read_endpoints(state_dir: Path) -> dict[str, object] | None:
    """Where a running supervisor listens, or None when none runs for this state dir."""
    try:
        ep = json.loads((state_dir / ENDPOINTS).read_text())
    except (OSError, json.JSONDecodeError):  # none, or a starting supervisor is replacing a killed one's
        return None
    if not _lock_held(state_dir):
        return None
    return ep


def is_running(state_dir: Path) -> bool:
    """True while a supervisor holds the state dir: until it has drained and is about to exit."""
    return _lock_held(state_dir)


def _lock_held(state_dir: Path) -> bool:
    p = state_dir / LOCK
    if not p.exists():
        return False
    with p.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
