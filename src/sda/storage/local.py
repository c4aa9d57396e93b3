"""Local storage: a SQLite jobs table (WAL, one connection per operation) and a files directory.

Several api and worker processes share one data dir, so every write is a
short transaction and every file is written to a temporary name and renamed
into place (readers never see half a file). The full record is kept as JSON;
the columns beside it exist for the unique constraints and the indexes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sda.errors import (
    FileMissing,
    InvalidFileName,
    JobExists,
    JobNotFound,
    StatusConflict,
    StorageUnavailable,
)
from sda.jobs import iso
from sda.storage.base import Check, check_file_name, job_prefix

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    company_client_job TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    client_name TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    processed_version TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs(client_name, created_at);
CREATE INDEX IF NOT EXISTS jobs_processed_version ON jobs(processed_version, created_at);
"""


def _processed_version(job: dict[str, Any]) -> str | None:
    by = job.get("processed_by") or {}
    return None if by.get("version") is None else str(by["version"])


def _row(job: dict[str, Any]) -> tuple[Any, ...]:
    return (
        job["job_id"],
        job["company_client_job"],
        job["status"],
        job.get("client_name"),
        job["created_at"],
        job["updated_at"],
        _processed_version(job),
        json.dumps(job, separators=(",", ":"), default=str),
    )


class LocalStorage:
    mode = "local"

    def __init__(self, data_dir: Path, busy_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "jobs.db"
        self.files_dir = self.data_dir / "files"
        self.busy_timeout_s = busy_timeout_s
        self._ready = False

    # -- table ---------------------------------------------------------------------------------

    def _init(self) -> None:
        if self._ready:
            return
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.files_dir.mkdir(mode=0o700, exist_ok=True)
            if not self.db_path.exists():  # created private: the jobs hold client names and files
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT, 0o600))
            with self._connect(init=False) as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"local storage at {self.data_dir} is unusable: {exc}") from exc
        self._ready = True

    @contextmanager
    def _connect(self, init: bool = True) -> Iterator[sqlite3.Connection]:
        if init:
            self._init()
        try:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"cannot open {self.db_path}: {exc}") from exc
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"jobs table error: {exc}") from exc
        finally:
            conn.close()

    def create_job(self, job: dict[str, Any]) -> None:
        with self._connect() as conn:
            try:
                conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?)", _row(job))
            except sqlite3.IntegrityError as exc:
                raise JobExists(job["job_id"]) from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def update_job(
        self, job_id: str, changes: dict[str, Any], *, only_if_status: Iterable[str] | None = None
    ) -> dict[str, Any]:
        allowed = set(only_if_status) if only_if_status is not None else None
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None:
                    raise JobNotFound(job_id)
                job = json.loads(row[0])
                if allowed is not None and job.get("status") not in allowed:
                    raise StatusConflict(f"{job_id} is {job.get('status')}, not one of {sorted(allowed)}")
                job.update(changes)
                job["updated_at"] = changes.get("updated_at") or iso()
                conn.execute(
                    "UPDATE jobs SET status=?, client_name=?, updated_at=?, processed_version=?, data=? WHERE job_id=?",
                    (
                        job["status"],
                        job.get("client_name"),
                        job["updated_at"],
                        _processed_version(job),
                        json.dumps(job, separators=(",", ":"), default=str),
                        job_id,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return job

    def put_job(self, job: dict[str, Any]) -> None:
        with self._connect() as conn:
            try:
                conn.execute("INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?)", _row(job))
            except sqlite3.IntegrityError as exc:
                raise JobExists(f"{job['company_client_job']} belongs to another job id") from exc

    def list_jobs(
        self, *, status: str | None = None, client_name: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if client_name is not None:
            where.append("client_name = ?")
            args.append(client_name)
        sql = "SELECT data FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        with self._connect() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def jobs_processed_by(self, version: str | int) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT data FROM jobs WHERE processed_version = ? ORDER BY created_at", (str(version),)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # -- files ---------------------------------------------------------------------------------

    def _path(self, job: dict[str, Any], name: str) -> Path:
        check_file_name(name)
        root = self.files_dir.resolve()
        path = (self.files_dir / job_prefix(job) / name).resolve()
        if not path.is_relative_to(root):
            raise InvalidFileName(f"{name!r} leaves the job folder")
        return path

    def put_file(self, job: dict[str, Any], name: str, data: bytes, content_type: str | None = None) -> str:
        self._init()
        path = self._path(job, name)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {name} for {job['job_id']}: {exc}") from exc
        return f"{job_prefix(job)}/{name}"

    def get_file(self, job: dict[str, Any], name: str) -> bytes:
        path = self._path(job, name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise FileMissing(f"{job['job_id']}/{name} does not exist") from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {name} for {job['job_id']}: {exc}") from exc

    def has_file(self, job: dict[str, Any], name: str) -> bool:
        return self._path(job, name).is_file()

    # -- health --------------------------------------------------------------------------------

    def check(self) -> list[Check]:
        return [self._check_table(), self._check_files()]

    def _check_table(self) -> Check:
        t0 = time.perf_counter()
        try:
            with self._connect() as conn:
                n = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            ok, detail = True, f"{self.db_path.name} ({n} jobs)"
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            ok, detail = False, str(exc)
        return Check("table", ok, detail, (time.perf_counter() - t0) * 1000)

    def _check_files(self) -> Check:
        t0 = time.perf_counter()
        probe = self.files_dir / ".health" / f"probe-{os.getpid()}-{time.monotonic_ns()}"
        try:
            if not self.data_dir.is_dir():
                raise StorageUnavailable(f"data dir {self.data_dir} is not a readable directory")
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            if probe.read_bytes() != b"ok":
                raise StorageUnavailable(f"{probe} read back wrong bytes")
            ok, detail = True, self.files_dir.name
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, str(exc)
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        return Check("storage", ok, detail, (time.perf_counter() - t0) * 1000)


class LocalSideCopy:
    """A snapshot of the data dir (its own `jobs.db` and `files/`), as the local platform's backups
    are: already a side copy, read in place and never written."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # a snapshot taken before the service wrote anything has no data dir at all: it is empty, not missing
        if not (self.root.is_dir() or (not self.root.exists() and self.root.parent.is_dir())):
            raise StorageUnavailable(f"snapshot {self.root} is not a directory")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        db = self.root / "jobs.db"
        if not db.exists():  # a snapshot taken before the first job
            return []
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                return [json.loads(r[0]) for r in con.execute(sql, args)]
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"snapshot {db}: {exc}") from exc

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT data FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT data FROM jobs")

    def job_files(self, job: dict[str, Any]) -> dict[str, bytes]:
        folder = self.root / "files" / job_prefix(job)
        if not folder.is_dir():
            return {}
        return {p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}
