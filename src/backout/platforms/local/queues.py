"""Durable SQS-style queues in the platform's SQLite file.

Why SQLite: the supervisor's threads and the service's worker processes (the API
function sends jobs from its own process) share one file, and a committed
transaction survives a `kill -9` of any of them (WAL; synchronous=NORMAL only
risks the last commits on an OS crash, not a process crash). Every send returns
after its commit, so an acknowledged message is never lost.

Semantics follow SQS standard queues: visibility timeout, receive count,
redrive to a dead-letter queue after `max_receive_count` receives (checked when
a message would be received again, as SQS does), retention, delay, long polling,
`start_message_move_task`-style redrive. Tables are prefixed `q_` because other
modules share the file.

A receive on behalf of a function version (an event source mapping) records that version with the
message, so a message moved to a DLQ counts against the version that received it last
(`dlq_arrivals_by_version`): a canary's alarm is not set off by the stable version's failures. A
message last received by anything else (the SQS endpoint's consumers, or never received) counts for
the queue only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backout.errors import UsageError
from backout.statefiles import bound_cache


@dataclass(frozen=True)
class QueueStats:
    """A queue's depth and its lifetime counters (SQS keeps no such counters: the platform turns
    their per-second deltas into CloudWatch-style metrics)."""

    name: str
    visible: int
    in_flight: int
    delayed: int
    age_of_oldest: float  # seconds, 0 when empty
    sent: int  # counters since the queue was created
    received: int
    deleted: int
    moved_to_dlq: int  # messages this queue moved to its DLQ
    dlq_arrivals: int  # messages moved into this queue (when it is a DLQ)
    dead_letter_queue: str | None = None
    # of those, per function version that received them last (the rest had no known receiver)
    dlq_arrivals_by_version: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_BYTES = 256 * 1024  # SQS's limit for body + attributes
POLL_INTERVAL = 0.02  # long polls look at the db this often (other processes cannot notify us)
BUSY_TIMEOUT_MS = 30_000

# Attributes a message carries while it sits in a dead-letter queue.
ATTR_SOURCE_QUEUE = "DeadLetterQueueSource"
ATTR_LAST_ERROR = "LastError"
_DLQ_ATTRS = (ATTR_SOURCE_QUEUE, ATTR_LAST_ERROR)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS q_queues (
    name TEXT PRIMARY KEY,
    visibility_timeout REAL NOT NULL,
    max_receive_count INTEGER,
    dead_letter_queue TEXT,
    retention REAL NOT NULL,
    delay REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS q_counters (
    queue TEXT PRIMARY KEY,
    sent INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    moved_to_dlq INTEGER NOT NULL DEFAULT 0,
    dlq_arrivals INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS q_messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL,
    receipt_handle TEXT,
    last_error TEXT,
    receiver_version TEXT
);
CREATE TABLE IF NOT EXISTS q_dlq_arrivals (
    queue TEXT NOT NULL,
    version TEXT NOT NULL,
    arrivals INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, version)
);
CREATE INDEX IF NOT EXISTS q_messages_order ON q_messages (queue);
CREATE INDEX IF NOT EXISTS q_messages_visible ON q_messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS q_messages_sent ON q_messages (queue, sent_at);
"""

_MSG_COLS = "seq, id, body, attributes, sent_at, receive_count, first_received_at, last_error, receiver_version"


@dataclass(frozen=True)
class Message:
    """One received message; `receipt_handle` is valid until the message is received again."""

    id: str
    receipt_handle: str
    body: str
    attributes: dict[str, str]
    receive_count: int
    sent_at: float
    first_received_at: float | None
    queue: str
    receiver: str | None = None  # the function version this receive is for (None: not a function's)


@dataclass
class _Signal:
    """Wakes in-process long polls on a send (other processes are seen by polling)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    generation: int = 0
    watchers: set[Callable[[], None]] = field(default_factory=set)

    def notify(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()
            watchers = list(self.watchers)
        for w in watchers:
            w()


_signals: dict[str, _Signal] = {}
_signals_lock = threading.Lock()


def _signal_for(db_path: Path) -> _Signal:
    key = str(db_path)
    with _signals_lock:
        return _signals.setdefault(key, _Signal())


class WouldBlock(Exception):
    """A call made through `QueueStore.now` would have had to wait (nothing of it was applied)."""


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class QueueStore:
    """All queues of one platform db. Thread-safe (a connection per thread) and multi-process safe."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path).resolve()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: dict[tuple[int, bool], tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = {}
        self._conns_lock = threading.Lock()
        self._signal = _signal_for(self.db_path)
        self._retry(self._init_db)

    # --- connections and transactions -------------------------------------------------------
    def _init_db(self) -> None:
        c = self._conn()
        c.execute("PRAGMA journal_mode=WAL")
        self._write(lambda c: _exec_script(c, _SCHEMA))
        self._write(_add_receiver_column)

    def _conn(self) -> sqlite3.Connection:
        nowait = getattr(self._local, "nowait", False)
        c: sqlite3.Connection | None = getattr(self._local, "fast" if nowait else "conn", None)
        if c is not None:
            return c
        c = sqlite3.connect(
            self.db_path, timeout=0 if nowait else BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False
        )
        c.execute(f"PRAGMA busy_timeout={0 if nowait else BUSY_TIMEOUT_MS}")
        c.execute("PRAGMA synchronous=NORMAL")
        bound_cache(c)
        if nowait:  # its commits never run a checkpoint (an fsync) where the caller cannot wait: `checkpoint`
            c.execute("PRAGMA wal_autocheckpoint=0")
        setattr(self._local, "fast" if nowait else "conn", c)
        me = threading.current_thread()
        with self._conns_lock:
            # Close connections of threads that have ended (sqlite3 connections cannot be weakly held).
            for ident, (ref, old) in list(self._conns.items()):
                t = ref()
                if t is None or not t.is_alive():
                    old.close()
                    del self._conns[ident]
            self._conns[(id(me), nowait)] = (weakref.ref(me), c)
        return c

    def close(self) -> None:
        """Close every connection this store opened (any thread); the store reopens lazily if used again."""
        with self._conns_lock:
            for _ref, c in self._conns.values():
                c.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> QueueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a method of this store) if it needs no wait: a write whose lock another
        connection holds, or a long poll, raises `WouldBlock` at once, its transaction rolled back, so
        the caller can run the same call where waiting is fine (a thread). For an event loop: an
        uncontended call costs less than the hop to a thread. Its connection never checkpoints the WAL
        on commit; the caller runs `checkpoint` where it may wait."""
        self._local.nowait = True
        try:
            return fn(*args)
        finally:
            self._local.nowait = False

    def checkpoint(self) -> None:
        """Copy the WAL into the database file as far as readers allow (PASSIVE): for writers that
        skip the automatic checkpoint (`now`)."""
        self._retry(lambda: self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying while another process holds the lock past busy_timeout (in `now`: not at all)."""
        delay = 0.005
        deadline = time.monotonic() + 120
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if _is_busy(e) and getattr(self._local, "nowait", False):
                    raise WouldBlock(str(e)) from e
                if not _is_busy(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """One read-modify-write transaction (BEGIN IMMEDIATE: the write lock up front, no upgrade races)."""

        def attempt() -> T:
            c = self._conn()
            c.execute("BEGIN IMMEDIATE")
            try:
                out = fn(c)
                c.execute("COMMIT")
                return out
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A consistent snapshot for several SELECTs (deferred transaction: readers never block writers)."""

        def attempt() -> T:
            c = self._conn()
            c.execute("BEGIN")
            try:
                return fn(c)
            finally:
                if c.in_transaction:
                    c.execute("COMMIT")

        return self._retry(attempt)

    # --- queues -----------------------------------------------------------------------------
    def ensure_queue(
        self,
        name: str,
        visibility_timeout: float = 30.0,
        max_receive_count: int | None = None,
        dead_letter_queue: str | None = None,
        retention: float = 345600.0,
        delay: float = 0.0,
    ) -> None:
        """Create the queue or update its attributes (idempotent; counters and messages are kept)."""
        if not name or not isinstance(name, str):
            raise UsageError("a queue needs a non-empty name")
        if visibility_timeout < 0 or retention <= 0 or delay < 0:
            raise UsageError(f"queue {name!r}: visibility_timeout and delay must be >= 0, retention > 0")
        if max_receive_count is not None and max_receive_count < 1:
            raise UsageError(f"queue {name!r}: max_receive_count must be >= 1")
        if dead_letter_queue is not None:
            if dead_letter_queue == name:
                raise UsageError(f"queue {name!r} cannot be its own dead-letter queue")
            if max_receive_count is None:
                raise UsageError(f"queue {name!r}: a dead_letter_queue needs max_receive_count")

        def tx(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO q_queues (name, visibility_timeout, max_receive_count, dead_letter_queue,"
                " retention, delay, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET visibility_timeout=excluded.visibility_timeout,"
                " max_receive_count=excluded.max_receive_count, dead_letter_queue=excluded.dead_letter_queue,"
                " retention=excluded.retention, delay=excluded.delay",
                (
                    name,
                    float(visibility_timeout),
                    max_receive_count,
                    dead_letter_queue,
                    float(retention),
                    float(delay),
                    time.time(),
                ),
            )
            c.execute("INSERT OR IGNORE INTO q_counters (queue) VALUES (?)", (name,))

        self._write(tx)

    def queues(self) -> list[str]:
        return self._read(lambda c: [r[0] for r in c.execute("SELECT name FROM q_queues ORDER BY name")])

    def attributes(self, name: str) -> dict[str, Any]:
        return self._read(lambda c: _queue_row(c, name))

    # --- sending ----------------------------------------------------------------------------
    def send(
        self,
        queue: str,
        body: str,
        delay: float | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Enqueue one message; returns its id only after the commit (an acknowledged send is durable)."""
        return self._send_many(queue, [(body, delay, attributes)])[0]

    def send_batch(self, queue: str, bodies: Iterable[str], delay: float | None = None) -> list[str]:
        """Enqueue several messages in one transaction: all or none."""
        return self._send_many(queue, [(b, delay, None) for b in bodies])

    def send_entries(
        self, queue: str, entries: list[tuple[str, float | None, dict[str, str] | None]]
    ) -> list[str]:
        """Enqueue (body, delay, attributes) entries in one transaction (SQS's SendMessageBatch)."""
        return self._send_many(queue, entries)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (in the notifying thread) whenever a message may have become visible through
        this process: an asyncio long poll waits on it instead of a thread. Returns the unsubscribe."""
        with self._signal.cond:
            self._signal.watchers.add(callback)

        def unwatch() -> None:
            with self._signal.cond:
                self._signal.watchers.discard(callback)

        return unwatch

    def _send_many(
        self, queue: str, items: list[tuple[str, float | None, dict[str, str] | None]]
    ) -> list[str]:
        rows = []
        for body, delay, attrs in items:
            if not isinstance(body, str):
                raise UsageError(f"a message body must be a string, not {type(body).__name__}")
            if delay is not None and delay < 0:
                raise UsageError(f"message delay must be >= 0 (got {delay})")
            attrs = dict(attrs or {})
            for k, v in attrs.items():
                if not isinstance(k, str) or not isinstance(v, str) or not k:
                    raise UsageError("message attributes must map non-empty strings to strings")
            attrs_json = json.dumps(attrs, separators=(",", ":"))
            size = len(body.encode()) + len(attrs_json.encode())
            if size > MAX_MESSAGE_BYTES:
                raise UsageError(f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
            rows.append((str(uuid.uuid4()), body, attrs_json, delay))

        def tx(c: sqlite3.Connection) -> list[str]:
            q = _queue_row(c, queue)
            now = time.time()
            c.executemany(
                "INSERT INTO q_messages (id, queue, body, attributes, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (mid, queue, body, aj, now, now + (q["delay"] if d is None else d))
                    for mid, body, aj, d in rows
                ],
            )
            c.execute("UPDATE q_counters SET sent = sent + ? WHERE queue = ?", (len(rows), queue))
            return [r[0] for r in rows]

        ids = self._write(tx)
        self._signal.notify()
        return ids

    # --- receiving --------------------------------------------------------------------------
    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
        cancel: threading.Event | None = None,
        receiver: Callable[[], str] | None = None,
    ) -> list[Message]:
        """Up to `max_messages` visible messages, oldest first, each invisible for the visibility timeout.

        `wait` > 0 long-polls until something is visible; `cancel` (set by a pausing consumer) ends
        the wait early. Messages past `max_receive_count` go to the DLQ instead of being returned.
        `receiver` names the function version the batch goes to; it is called inside the receive (so an
        alias is read at the instant of the receive) and recorded with every message of the batch.
        """
        if max_messages < 1:
            raise UsageError(f"max_messages must be >= 1 (got {max_messages})")
        if visibility_timeout is not None and visibility_timeout < 0:
            raise UsageError(f"visibility_timeout must be >= 0 (got {visibility_timeout})")
        if wait > 0 and getattr(self._local, "nowait", False):
            raise WouldBlock("a long poll waits")
        self.attributes(queue)  # unknown queue → UsageError before any waiting
        deadline = time.monotonic() + max(0.0, wait)
        sig = self._signal
        while True:
            gen = sig.generation
            msgs = self._receive_once(queue, max_messages, visibility_timeout, receiver)
            remaining = deadline - time.monotonic()
            if msgs or remaining <= 0 or (cancel is not None and cancel.is_set()):
                return msgs
            with sig.cond:
                if sig.generation == gen:
                    sig.cond.wait(min(POLL_INTERVAL, remaining))

    def _receive_once(
        self, queue: str, max_messages: int, vt: float | None, receiver: Callable[[], str] | None = None
    ) -> list[Message]:
        # Cheap read first: an idle long poll must not take the write lock 50 times a second.
        earliest = self._retry(
            lambda: (
                self._conn()
                .execute("SELECT MIN(visible_at) FROM q_messages WHERE queue = ?", (queue,))
                .fetchone()[0]
            )
        )
        if earliest is None or earliest > time.time():
            return []
        moved_to: list[str] = []

        def tx(c: sqlite3.Connection) -> list[Message]:
            q = _queue_row(c, queue)
            now = time.time()
            c.execute("DELETE FROM q_messages WHERE queue = ? AND sent_at < ?", (queue, now - q["retention"]))
            timeout = q["visibility_timeout"] if vt is None else vt
            dlq, max_rc = q["dead_letter_queue"], q["max_receive_count"]
            out: list[Message] = []
            moved: list[str | None] = []  # the last receiver of each message moved to the DLQ
            version: str | None = None
            picked = False
            after = -1  # rows taken or moved here may still match (visibility 0): never look back
            while len(out) < max_messages:
                rows = c.execute(
                    f"SELECT {_MSG_COLS} FROM q_messages INDEXED BY q_messages_order"
                    " WHERE queue = ? AND visible_at <= ? AND seq > ? ORDER BY seq LIMIT ?",
                    (queue, now, after, max_messages - len(out)),
                ).fetchall()
                if not rows:
                    break
                for seq, mid, body, attrs_json, sent_at, rc, first, last_error, last_receiver in rows:
                    after = seq
                    if dlq is not None and max_rc is not None and rc >= max_rc:
                        _move_to_dlq(c, seq, queue, dlq, attrs_json, last_error, now)
                        moved.append(last_receiver)
                        continue
                    if not picked:
                        version, picked = (None if receiver is None else str(receiver())), True
                    handle = f"{mid}:{uuid.uuid4().hex}"
                    first = first if first is not None else now
                    c.execute(
                        "UPDATE q_messages SET receipt_handle = ?, receive_count = receive_count + 1,"
                        " first_received_at = ?, visible_at = ?, receiver_version = ? WHERE seq = ?",
                        (handle, first, now + timeout, version, seq),
                    )
                    out.append(
                        Message(mid, handle, body, json.loads(attrs_json), rc + 1, sent_at, first, queue, version)
                    )
            if out:
                c.execute("UPDATE q_counters SET received = received + ? WHERE queue = ?", (len(out), queue))
            if moved:
                c.execute(
                    "UPDATE q_counters SET moved_to_dlq = moved_to_dlq + ? WHERE queue = ?", (len(moved), queue)
                )
                c.execute("INSERT OR IGNORE INTO q_counters (queue) VALUES (?)", (dlq,))
                c.execute(
                    "UPDATE q_counters SET dlq_arrivals = dlq_arrivals + ? WHERE queue = ?", (len(moved), dlq)
                )
                for v in (v for v in moved if v is not None):
                    c.execute(
                        "INSERT INTO q_dlq_arrivals (queue, version, arrivals) VALUES (?, ?, 1)"
                        " ON CONFLICT(queue, version) DO UPDATE SET arrivals = arrivals + 1",
                        (dlq, v),
                    )
                moved_to.append(dlq)  # type: ignore[arg-type]
            return out

        msgs = self._write(tx)
        if moved_to:
            self._signal.notify()
        return msgs

    # --- settling ---------------------------------------------------------------------------
    def delete(self, queue: str, receipt_handle: str) -> bool:
        """Delete a received message; False when the handle is stale (message re-received or gone)."""
        mid = _message_id(receipt_handle)

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "DELETE FROM q_messages WHERE id = ? AND queue = ? AND receipt_handle = ?",
                (mid, queue, receipt_handle),
            )
            if cur.rowcount:
                c.execute("UPDATE q_counters SET deleted = deleted + 1 WHERE queue = ?", (queue,))
                return True
            _queue_row(c, queue)  # unknown queue → UsageError rather than a silent False
            return False

        return self._write(tx)

    def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool:
        """Make a received message visible again `timeout` seconds from now; False for a stale handle."""
        return self.record_failure(queue, receipt_handle, None, timeout)

    def record_failure(
        self, queue: str, receipt_handle: str, error: str | None, timeout: float | None = None
    ) -> bool:
        """Remember why processing failed (carried to the DLQ) and optionally reset the visibility."""
        if timeout is not None and timeout < 0:
            raise UsageError(f"visibility timeout must be >= 0 (got {timeout})")
        mid = _message_id(receipt_handle)
        sets, args = [], []
        if error is not None:
            sets.append("last_error = ?")
            args.append(error[:4000])
        if timeout is not None:
            sets.append("visible_at = ?")
            args.append(time.time() + timeout)
        if not sets:
            return True

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                f"UPDATE q_messages SET {', '.join(sets)} WHERE id = ? AND queue = ? AND receipt_handle = ?",
                (*args, mid, queue, receipt_handle),
            )
            if not cur.rowcount:
                _queue_row(c, queue)
            return bool(cur.rowcount)

        ok = self._write(tx)
        if ok and timeout is not None and timeout <= 0:
            self._signal.notify()
        return ok

    def release(self, queue: str, receipt_handle: str, delay: float = 0.0) -> bool:
        """Give a message back unprocessed: visible after `delay` and that receive no longer counts.

        For a consumer that was throttled or paused: such a receive must not bring the message closer
        to the DLQ. The handle becomes stale.
        """
        if delay < 0:
            raise UsageError(f"delay must be >= 0 (got {delay})")
        mid = _message_id(receipt_handle)

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE q_messages SET visible_at = ?, receipt_handle = NULL,"
                " receive_count = MAX(receive_count - 1, 0),"
                " first_received_at = CASE WHEN receive_count <= 1 THEN NULL ELSE first_received_at END"
                " WHERE id = ? AND queue = ? AND receipt_handle = ?",
                (time.time() + delay, mid, queue, receipt_handle),
            )
            if not cur.rowcount:
                _queue_row(c, queue)
            return bool(cur.rowcount)

        ok = self._write(tx)
        if ok and delay <= 0:
            self._signal.notify()
        return ok

    # --- administration ---------------------------------------------------------------------
    def redrive(self, dlq: str, to: str | None = None) -> int:
        """Move every message of `dlq` back to its source queue, receive count reset; returns how many.

        The target is `to`, else the queue each message came from, else the one queue whose
        dead_letter_queue is `dlq` (like SQS's start_message_move_task).
        """

        def tx(c: sqlite3.Connection) -> int:
            _queue_row(c, dlq)
            if to is not None:
                _queue_row(c, to)
            sources = [
                r[0] for r in c.execute("SELECT name FROM q_queues WHERE dead_letter_queue = ?", (dlq,))
            ]
            known = {r[0] for r in c.execute("SELECT name FROM q_queues")}
            rows = c.execute(
                "SELECT seq, attributes FROM q_messages WHERE queue = ? ORDER BY seq", (dlq,)
            ).fetchall()
            now = time.time()
            moved = 0
            for seq, attrs_json in rows:
                attrs = json.loads(attrs_json)
                target = to
                if target is None:
                    src = attrs.get(ATTR_SOURCE_QUEUE)
                    if src in known and src != dlq:
                        target = src
                    elif len(sources) == 1:
                        target = sources[0]
                    else:
                        raise UsageError(
                            f"cannot tell where {dlq!r}'s messages came from"
                            f" ({len(sources)} queues use it as their DLQ); name a target queue"
                        )
                for k in _DLQ_ATTRS:
                    attrs.pop(k, None)
                c.execute(
                    "UPDATE q_messages SET queue = ?, attributes = ?, visible_at = ?, receive_count = 0,"
                    " first_received_at = NULL, receipt_handle = NULL, last_error = NULL,"
                    " receiver_version = NULL WHERE seq = ?",
                    (target, json.dumps(attrs, separators=(",", ":")), now, seq),
                )
                moved += 1
            return moved

        n = self._write(tx)
        if n:
            self._signal.notify()
        return n

    def peek(self, queue: str, limit: int = 10) -> list[dict[str, Any]]:
        """The oldest `limit` messages as they sit in the queue, without receiving them (no receive count,
        no visibility change): what an operator reads to find out why a DLQ fills."""
        if limit < 1:
            raise UsageError(f"limit must be >= 1 (got {limit})")

        def tx(c: sqlite3.Connection) -> list[dict[str, Any]]:
            _queue_row(c, queue)
            now = time.time()
            rows = c.execute(
                "SELECT id, body, attributes, sent_at, visible_at, receive_count, last_error FROM q_messages"
                " WHERE queue = ? ORDER BY seq LIMIT ?", (queue, limit)).fetchall()
            return [{"id": mid, "body": body, "attributes": json.loads(attrs), "sent_at": sent_at,
                     "visible": visible_at <= now, "receive_count": rc, "last_error": last_error}
                    for mid, body, attrs, sent_at, visible_at, rc, last_error in rows]

        return self._read(tx)

    def delete_tagged(self, queue: str, attribute: str, value: str) -> int:
        """Delete every message of the queue whose message attribute `attribute` is `value` (a drill's
        own messages, wherever they ended up); returns how many."""

        def tx(c: sqlite3.Connection) -> int:
            _queue_row(c, queue)
            return c.execute(
                "DELETE FROM q_messages WHERE queue = ? AND json_extract(attributes, ?) = ?",
                (queue, f'$."{attribute}"', value)).rowcount

        return self._write(tx)

    def purge(self, queue: str) -> int:
        """Delete every message of the queue (counters are kept); returns how many were removed."""

        def tx(c: sqlite3.Connection) -> int:
            _queue_row(c, queue)
            return c.execute("DELETE FROM q_messages WHERE queue = ?", (queue,)).rowcount

        return self._write(tx)

    def stats(self, queue: str) -> QueueStats:
        """SQS's approximate counts (expired messages excluded) plus the monotonic counters."""

        def tx(c: sqlite3.Connection) -> QueueStats:
            q = _queue_row(c, queue)
            now = time.time()
            visible, in_flight, delayed, oldest = c.execute(
                "SELECT COALESCE(SUM(visible_at <= ?1), 0),"
                " COALESCE(SUM(visible_at > ?1 AND receipt_handle IS NOT NULL), 0),"
                " COALESCE(SUM(visible_at > ?1 AND receipt_handle IS NULL), 0), MIN(sent_at)"
                " FROM q_messages WHERE queue = ?2 AND sent_at >= ?3",
                (now, queue, now - q["retention"]),
            ).fetchone()
            counters = c.execute(
                "SELECT sent, received, deleted, moved_to_dlq, dlq_arrivals FROM q_counters WHERE queue = ?",
                (queue,),
            ).fetchone() or (0, 0, 0, 0, 0)
            by_version = dict(c.execute("SELECT version, arrivals FROM q_dlq_arrivals WHERE queue = ?", (queue,)))
            return QueueStats(
                name=queue,
                visible=visible,
                in_flight=in_flight,
                delayed=delayed,
                age_of_oldest=max(0.0, now - oldest) if oldest is not None else 0.0,
                sent=counters[0],
                received=counters[1],
                deleted=counters[2],
                moved_to_dlq=counters[3],
                dlq_arrivals=counters[4],
                dead_letter_queue=q["dead_letter_queue"],
                dlq_arrivals_by_version=by_version,
            )

        return self._read(tx)


# --- helpers (run inside a transaction) ---------------------------------------------------------
def _exec_script(c: sqlite3.Connection, script: str) -> None:
    for stmt in script.split(";"):
        if stmt.strip():
            c.execute(stmt)


def _add_receiver_column(c: sqlite3.Connection) -> None:
    """A platform db made before receivers were recorded gets the column (its messages have none)."""
    cols = {r[1] for r in c.execute("PRAGMA table_info(q_messages)")}
    if "receiver_version" not in cols:
        c.execute("ALTER TABLE q_messages ADD COLUMN receiver_version TEXT")


def _queue_row(c: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = c.execute(
        "SELECT name, visibility_timeout, max_receive_count, dead_letter_queue, retention, delay, created_at"
        " FROM q_queues WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        raise UsageError(f"no queue named {name!r}")
    keys = (
        "name",
        "visibility_timeout",
        "max_receive_count",
        "dead_letter_queue",
        "retention",
        "delay",
        "created_at",
    )
    return dict(zip(keys, row, strict=True))


def _move_to_dlq(
    c: sqlite3.Connection, seq: int, queue: str, dlq: str, attrs_json: str, last_error: str | None, now: float
) -> None:
    """SQS redrive policy: same id, body and sent time; receive count reset; where it came from and why."""
    if c.execute("SELECT 1 FROM q_queues WHERE name = ?", (dlq,)).fetchone() is None:
        # The manifest guarantees the DLQ exists; if someone removed it, keep the message rather than loop.
        log.warning("dead-letter queue %r of %r does not exist; creating it", dlq, queue)
        c.execute(
            "INSERT INTO q_queues (name, visibility_timeout, max_receive_count, dead_letter_queue, retention,"
            " delay, created_at) VALUES (?, 30.0, NULL, NULL, 1209600.0, 0.0, ?)",
            (dlq, now),
        )
    attrs = json.loads(attrs_json)
    attrs[ATTR_SOURCE_QUEUE] = queue
    if last_error:
        attrs[ATTR_LAST_ERROR] = last_error
    c.execute(
        "UPDATE q_messages SET queue = ?, attributes = ?, visible_at = ?, receive_count = 0,"
        " first_received_at = NULL, receipt_handle = NULL, receiver_version = NULL WHERE seq = ?",
        (dlq, json.dumps(attrs, separators=(",", ":")), now, seq),
    )


def _message_id(receipt_handle: str) -> str:
    if not isinstance(receipt_handle, str) or ":" not in receipt_handle:
        raise UsageError(f"not a receipt handle: {receipt_handle!r}")
    return receipt_handle.rsplit(":", 1)[0]
