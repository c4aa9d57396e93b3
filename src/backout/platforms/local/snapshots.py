"""Snapshots: the local platform's backups of its data dir.

A snapshot is a directory: `data/` (an SQLite online backup of every database, a copy of every other
file), `files.db` (each file's name and its source's identity: size, mtime, ctime, inode) and
`snapshot.json` (id, time, label, counts), written last and renamed into place, so a half-written
snapshot is never listed.

A file whose identity has not changed since the newest snapshot is hard-linked from it instead of
copied again, as `rsync --link-dest` does: a backup before every deployment costs the data that
changed, not all of it. Snapshot files are never written after their snapshot is sealed (a restore
copies out of them), so sharing them is safe, and deleting a snapshot drops only its links: after
each snapshot the oldest beyond the environment's `backups_keep` are deleted.

Everything streams: the data dir is walked a directory at a time with plain strings, the list of
files goes to `files.db` row by row, and lookups in the newest snapshot are by primary key. The
supervisor that takes a backup before each deployment holds no list of thousands of files at once
(such bursts pinned Python's memory arenas: the soak's supervisor stepped up at every deployment).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

from backout.errors import UsageError
from backout.platforms.base import Backup

LAST = ".last-snapshot"  # the newest sealed snapshot's id: the next backup links unchanged files from it
INDEX = "files.db"
META = "snapshot.json"
_SCHEMA = "CREATE TABLE files (rel TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT, ino INT) WITHOUT ROWID"
_BATCH = 500


class Snapshots:
    """The snapshots of one data dir, kept in `root`."""

    def __init__(self, data_dir: Path, root: Path, keep: int = 0) -> None:
        self.data_dir = data_dir
        self.root = root
        self.keep = keep  # after each snapshot, the oldest beyond this many are deleted (0: none)

    def take(self, label: str = "") -> Backup:
        """A new snapshot, then the oldest beyond `keep` pruned — in a child process: SQLite's online
        backup and the copies allocate megabytes for a moment, and in the supervisor (a backup before
        every deployment) that burst left its malloc arenas larger each time while long-lived
        allocations landed in it. The child's error is raised here as its last line."""
        r = subprocess.run(
            [sys.executable, "-P", "-m", __name__, str(self.data_dir), str(self.root), str(self.keep), label],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        )
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise OSError(f"backup of {self.data_dir} failed: {why}")
        return Backup(**json.loads(r.stdout))

    def take_here(self, label: str = "") -> Backup:
        """`take`, in this process (the child's side)."""
        sid = time.strftime("snap-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        tmp = self.root / f".{sid}.tmp"
        (tmp / "data").mkdir(parents=True)
        dbs: list[str] = []
        files = linked = 0
        before = self._newest()
        data = str(tmp / "data")
        with closing(sqlite3.connect(tmp / INDEX, isolation_level=None)) as index:
            index.execute("PRAGMA journal_mode=OFF")
            index.execute("PRAGMA synchronous=OFF")  # fsync'd once, below, before the snapshot is sealed
            index.execute(_SCHEMA)
            index.execute("BEGIN")
            rows: list[tuple[str, int, int, int, int]] = []
            try:
                for path, rel in walk(str(self.data_dir)):
                    if is_sidecar(rel):
                        continue
                    dest = os.path.join(data, rel)
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    if is_sqlite(path):
                        with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(dest)) as dst:
                            src.backup(dst)
                        dbs.append(rel)
                        continue
                    try:
                        st = os.stat(path)  # before the copy: a write during it makes the next backup copy again
                        source = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                        if before is not None and before.identity(rel) == source and _link(before.file(rel), dest):
                            linked += 1
                        else:
                            shutil.copy2(path, dest)
                    except FileNotFoundError:  # written to a temp name and renamed meanwhile: the new name
                        continue  # is in the walk, or was created after the backup started
                    rows.append((rel, *source))
                    files += 1
                    if len(rows) >= _BATCH:
                        index.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", rows)
                        rows.clear()
                index.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", rows)
                index.execute("COMMIT")
            finally:
                if before is not None:
                    before.close()
        with open(tmp / INDEX, "rb+") as f:
            os.fsync(f.fileno())
        info = Backup(sid, time.time(), label, {"databases": dbs, "files": files, "unchanged": linked})
        meta = {"id": sid, "created_at": info.created_at, "label": label, "databases": dbs, "files": files,
                "unchanged": linked, "index": INDEX}
        (tmp / META).write_text(json.dumps(meta))
        tmp.rename(self.root / sid)
        pointer = self.root / f"{LAST}.tmp"
        pointer.write_text(sid)
        pointer.replace(self.root / LAST)
        self.prune()
        return info

    def prune(self) -> list[str]:
        """Delete the oldest snapshots beyond `keep`; their ids. Each is renamed out of the listing
        first, so a crash mid-delete leaves a hidden directory (removed by the next prune), never a
        listed snapshot with files missing. Newer snapshots keep their own links to shared files."""
        for leftover in self.root.glob(".*.del"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.keep <= 0:
            return []
        old = self.list()[: -self.keep]
        for b in old:
            gone = self.root / f".{b.id}.del"
            (self.root / b.id).rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        return [b.id for b in old]

    def list(self) -> list[Backup]:
        out = []
        for d in sorted(self.root.iterdir()):
            meta = d / META
            if d.name.startswith(".") or not meta.exists():
                continue
            m = json.loads(meta.read_text())
            files = m["files"] if isinstance(m["files"], int) else len(m["files"])  # a dict before the index
            out.append(Backup(m["id"], m["created_at"], m["label"],
                              {"databases": m["databases"], "files": files, "unchanged": m.get("unchanged", 0)}))
        return sorted(out, key=lambda s: s.created_at)

    def path(self, snapshot_id: str) -> Path:
        """The snapshot's `data/` directory (a side copy: the service's repair code reads it there)."""
        d = self.root / snapshot_id
        if not snapshot_id or snapshot_id.startswith(".") or "/" in snapshot_id or not (d / META).exists():
            raise UsageError(f"no backup {snapshot_id!r} (see `backout backup list`)")
        return d / "data"

    def restore(self, snapshot_id: str) -> None:
        """Put the data dir back as the snapshot saw it: its databases through SQLite's online backup
        (open connections see the change), its files copied out and renamed into place, and files
        it did not have removed."""
        src_root = self.path(snapshot_id)
        snap = _Snapshot(src_root.parent)
        try:
            for rel in snap.databases:
                with closing(sqlite3.connect(src_root / rel)) as src, \
                        closing(sqlite3.connect(self.data_dir / rel, timeout=30)) as dst:
                    src.backup(dst)
            dbs = set(snap.databases)
            for path, rel in walk(str(self.data_dir)):
                if rel not in dbs and not is_sidecar(rel) and not is_sqlite(path) and not snap.has(rel):
                    os.unlink(path)
            for rel in snap.files():
                dest = self.data_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".restore")
                shutil.copy2(src_root / rel, tmp)
                tmp.replace(dest)
        finally:
            snap.close()

    def _newest(self) -> _Snapshot | None:
        """The newest sealed snapshot, named by the pointer (not found by reading every snapshot)."""
        try:
            sid = (self.root / LAST).read_text().strip()
            return _Snapshot(self.path(sid).parent)
        except (OSError, ValueError, UsageError, sqlite3.Error):
            return None


class _Snapshot:
    """One sealed snapshot's list of files: its index (`files.db`) or, for a snapshot written before
    the index, the name → size map in its `snapshot.json` (nothing is linked from those)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        meta = json.loads((root / META).read_text())
        self.databases: list[str] = meta["databases"]
        self._legacy: dict[str, object] | None = None if isinstance(meta["files"], int) else meta["files"]
        self._index = None
        if self._legacy is None:
            self._index = sqlite3.connect(f"file:{root / INDEX}?mode=ro", uri=True)

    def identity(self, rel: str) -> tuple[int, ...] | None:
        if self._index is None:
            return None
        row = self._index.execute("SELECT size, mtime_ns, ctime_ns, ino FROM files WHERE rel = ?", (rel,)).fetchone()
        return None if row is None else tuple(row)

    def has(self, rel: str) -> bool:
        if self._index is None:
            return rel in (self._legacy or {})
        return self._index.execute("SELECT 1 FROM files WHERE rel = ?", (rel,)).fetchone() is not None

    def files(self) -> Iterator[str]:
        if self._index is None:
            yield from self._legacy or {}
            return
        for (rel,) in self._index.execute("SELECT rel FROM files"):
            yield rel

    def file(self, rel: str) -> str:
        return os.path.join(self.root, "data", rel)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()


def walk(root: str) -> Iterator[tuple[str, str]]:
    """(path, path relative to `root` with `/`) of every file under `root`, a directory at a time in
    name order, as plain strings (pathlib interns every part of every path it builds)."""
    for d, dirs, names in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(d, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in sorted(names):
            yield os.path.join(d, name), prefix + name


def is_sqlite(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def is_sidecar(name: str) -> bool:
    """An SQLite database's WAL, shared-memory or rollback journal: backed up with its database."""
    return name.endswith(("-wal", "-shm", "-journal"))


def _link(src: str, dest: str) -> bool:
    """Hard-link a sealed snapshot's copy; False where the file system cannot (then it is copied)."""
    try:
        os.link(src, dest)
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    """`python -m backout.platforms.local.snapshots DATA_DIR ROOT KEEP LABEL`: take one snapshot and
    print it as JSON (what `Snapshots.take` runs)."""
    data_dir, root, keep, label = argv
    b = Snapshots(Path(data_dir), Path(root), int(keep)).take_here(label)
    print(json.dumps(asdict(b)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
