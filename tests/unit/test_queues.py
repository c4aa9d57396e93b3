"""QueueStore: SQS semantics on SQLite, across threads and processes, and durability under kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backout.errors import UsageError
from backout.manifest import load_manifest
from backout.platforms.base import DLQ_ARRIVALS, NS_BACKOUT, MetricQuery
from backout.platforms.local.platform import LocalPlatform
from backout.platforms.local.queues import ATTR_LAST_ERROR, ATTR_SOURCE_QUEUE, QueueStore


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "platform.db"


@pytest.fixture
def store(db: Path) -> QueueStore:
    s = QueueStore(db)
    s.ensure_queue("jobs", visibility_timeout=0.5)
    yield s
    s.close()


def _child(tmp_path: Path, name: str, code: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _drain_ids(s: QueueStore, queue: str) -> list[str]:
    ids = []
    while msgs := s.receive(queue, 10, visibility_timeout=60):
        ids += [m.id for m in msgs]
    return ids


# --- basics --------------------------------------------------------------------------------------
def test_send_receive_delete(store: QueueStore) -> None:
    mid = store.send("jobs", "hello", attributes={"kind": "pdf"})
    [m] = store.receive("jobs")
    assert (m.id, m.body, m.attributes, m.queue, m.receive_count) == (
        mid,
        "hello",
        {"kind": "pdf"},
        "jobs",
        1,
    )
    assert m.first_received_at is not None and m.first_received_at >= m.sent_at
    assert store.receive("jobs") == []  # invisible while in flight
    assert store.delete("jobs", m.receipt_handle) is True
    assert store.delete("jobs", m.receipt_handle) is False
    time.sleep(0.6)
    assert store.receive("jobs") == []  # deleted for good, not merely invisible


def test_oldest_first_and_batch(store: QueueStore) -> None:
    ids = store.send_batch("jobs", [f"m{i}" for i in range(5)])
    got = store.receive("jobs", max_messages=3)
    assert [m.id for m in got] == ids[:3]
    assert [m.id for m in store.receive("jobs", max_messages=10)] == ids[3:]


def test_queue_admin_and_usage_errors(store: QueueStore) -> None:
    store.ensure_queue("dlq")
    store.ensure_queue("work", visibility_timeout=3, max_receive_count=2, dead_letter_queue="dlq", delay=1.5)
    store.ensure_queue("work", visibility_timeout=4, max_receive_count=2, dead_letter_queue="dlq")  # updates
    attrs = store.attributes("work")
    assert (attrs["visibility_timeout"], attrs["delay"], attrs["dead_letter_queue"]) == (4.0, 0.0, "dlq")
    assert store.queues() == ["dlq", "jobs", "work"]
    with pytest.raises(UsageError, match="no queue named 'nope'"):
        store.send("nope", "x")
    with pytest.raises(UsageError):
        store.receive("nope")
    with pytest.raises(UsageError):
        store.stats("nope")
    with pytest.raises(UsageError, match="max_receive_count"):
        store.ensure_queue("bad", dead_letter_queue="dlq")
    with pytest.raises(UsageError, match="own dead-letter"):
        store.ensure_queue("bad", max_receive_count=1, dead_letter_queue="bad")
    with pytest.raises(UsageError, match="limit"):
        store.send("jobs", "x" * (256 * 1024 + 1))
    with pytest.raises(UsageError, match="receipt handle"):
        store.delete("jobs", "garbage")


def test_delay_per_message_and_queue_default(store: QueueStore) -> None:
    store.send("jobs", "later", delay=0.4)
    store.ensure_queue("slow", delay=0.4)
    store.send("slow", "later too")
    assert store.receive("jobs") == [] and store.receive("slow") == []
    assert store.stats("jobs").delayed == 1
    time.sleep(0.5)
    assert [m.body for m in store.receive("jobs")] == ["later"]
    assert [m.body for m in store.receive("slow")] == ["later too"]


def test_visibility_timeout_redelivers_and_counts_receives(store: QueueStore) -> None:
    store.send("jobs", "x")
    [m1] = store.receive("jobs")
    time.sleep(0.6)
    [m2] = store.receive("jobs")
    assert m2.id == m1.id and m2.receive_count == 2 and m2.receipt_handle != m1.receipt_handle
    assert m2.first_received_at == m1.first_received_at
    assert store.delete("jobs", m1.receipt_handle) is False  # stale handle: no error, no delete
    assert store.stats("jobs").in_flight == 1
    assert store.delete("jobs", m2.receipt_handle) is True


def test_receive_visibility_override_and_change_visibility(store: QueueStore) -> None:
    store.send("jobs", "x")
    [m] = store.receive("jobs", visibility_timeout=30)
    assert store.change_visibility("jobs", m.receipt_handle, 0) is True
    [again] = store.receive("jobs", visibility_timeout=30)
    assert again.receive_count == 2
    assert store.change_visibility("jobs", m.receipt_handle, 0) is False  # stale


def test_release_undoes_the_receive(store: QueueStore) -> None:
    store.send("jobs", "x")
    [m] = store.receive("jobs")
    assert store.release("jobs", m.receipt_handle) is True
    [m2] = store.receive("jobs")
    assert m2.receive_count == 1
    assert store.release("jobs", m2.receipt_handle, delay=0.3)
    assert store.receive("jobs") == [] and store.stats("jobs").delayed == 1
    time.sleep(0.4)
    assert store.receive("jobs")[0].receive_count == 1
    assert store.delete("jobs", m2.receipt_handle) is False  # a released handle is stale


def test_retention_drops_expired_messages(store: QueueStore) -> None:
    store.ensure_queue("short", retention=0.3)
    store.send("short", "old")
    time.sleep(0.4)
    store.send("short", "new")
    assert store.stats("short").visible == 1
    assert [m.body for m in store.receive("short", 10)] == ["new"]


def test_purge(store: QueueStore) -> None:
    store.send_batch("jobs", ["a", "b", "c"])
    store.receive("jobs")
    assert store.purge("jobs") == 3
    s = store.stats("jobs")
    assert (s.visible, s.in_flight, s.sent) == (0, 0, 3)


# --- long polling --------------------------------------------------------------------------------
def test_long_poll_wakes_on_in_process_send(store: QueueStore) -> None:
    threading.Timer(0.3, lambda: store.send("jobs", "wake")).start()
    t0 = time.monotonic()
    msgs = store.receive("jobs", wait=5.0)
    elapsed = time.monotonic() - t0
    assert [m.body for m in msgs] == ["wake"]
    assert 0.25 <= elapsed < 2.0


def test_long_poll_wakes_on_send_from_another_process(store: QueueStore, db: Path, tmp_path: Path) -> None:
    p = _child(
        tmp_path,
        "sender.py",
        """
        import sys, time
        from pathlib import Path
        from backout.platforms.local.queues import QueueStore
        s = QueueStore(Path(sys.argv[1]))
        time.sleep(0.5)
        print(s.send("jobs", "from afar"), flush=True)
        """,
        str(db),
    )
    try:
        t0 = time.monotonic()
        msgs = store.receive("jobs", wait=15.0)
        elapsed = time.monotonic() - t0
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert [m.id for m in msgs] == [out.strip()]
    assert elapsed < 12.0  # woke on the message, not at the end of the wait


def test_long_poll_returns_empty_at_timeout_and_on_cancel(store: QueueStore) -> None:
    t0 = time.monotonic()
    assert store.receive("jobs", wait=0.3) == []
    assert 0.25 <= time.monotonic() - t0 < 2.0
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    assert store.receive("jobs", wait=10, cancel=cancel) == []
    assert time.monotonic() - t0 < 3.0


# --- dead-letter queue ---------------------------------------------------------------------------
def test_redrive_to_dlq_after_max_receives_and_back(store: QueueStore) -> None:
    store.ensure_queue("dlq", visibility_timeout=0.5)
    store.ensure_queue("work", visibility_timeout=0.5, max_receive_count=2, dead_letter_queue="dlq")
    mid = store.send("work", "poison", attributes={"job": "7"})
    keep = store.send("work", "fine")
    for expected in (1, 2):
        got = {m.id: m for m in store.receive("work", 10, visibility_timeout=0)}
        assert got[mid].receive_count == expected
        if expected == 1:
            store.record_failure("work", got[mid].receipt_handle, "ValueError: bad pdf")
        store.delete("work", got[keep].receipt_handle) if keep in got else None
    # Third receive: already received twice → moved to the DLQ instead of returned.
    assert store.receive("work", 10) == []
    [d] = store.receive("dlq")
    assert (d.id, d.body, d.receive_count) == (mid, "poison", 1)
    assert d.attributes == {"job": "7", ATTR_SOURCE_QUEUE: "work", ATTR_LAST_ERROR: "ValueError: bad pdf"}
    assert store.release("dlq", d.receipt_handle)
    s = store.stats("work")
    assert (s.moved_to_dlq, s.dead_letter_queue) == (1, "dlq")
    assert store.stats("dlq").dlq_arrivals == 1

    assert store.redrive("dlq") == 1
    assert store.stats("dlq").visible == 0
    [back] = store.receive("work")
    assert (back.id, back.receive_count, back.attributes) == (mid, 1, {"job": "7"})


def test_dlq_arrivals_count_against_the_version_that_received_the_message_last(store: QueueStore) -> None:
    """A function version's receive is recorded with the message; the move to the DLQ counts against the
    last one. A receive by anything else (the SQS endpoint's consumers) leaves no version: queue only."""
    store.ensure_queue("dlq")
    store.ensure_queue("work", visibility_timeout=0, max_receive_count=2, dead_letter_queue="dlq")
    asked: list[str] = []

    def version(v: str):
        return lambda: asked.append(v) or v

    assert store.receive("work", 10, receiver=version("0")) == [] and asked == [], "no message, no version asked"
    store.send_batch("work", ["late", "stranger"])
    batch = store.receive("work", 10, receiver=version("6"))
    assert [(m.body, m.receiver) for m in batch] == [("late", "6"), ("stranger", "6")] and asked == ["6"]
    [late] = store.receive("work", 1, receiver=version("6"))  # the stable version fails it again
    [stranger] = store.receive("work", 1)  # a consumer that is no function version
    assert (late.body, late.receiver, stranger.body, stranger.receiver) == ("late", "6", "stranger", None)
    assert store.receive("work", 10, receiver=version("7")) == []  # both moved; the canary 7 received neither
    d = store.stats("dlq")
    assert (d.dlq_arrivals, d.dlq_arrivals_by_version) == (2, {"6": 1})
    assert asked == ["6", "6"]
    # back from the DLQ, a message starts afresh: its next DLQ arrival is its next receiver's
    assert store.redrive("dlq") == 2
    for _ in range(2):
        assert len(store.receive("work", 10, receiver=version("7"))) == 2
    store.receive("work", 10)
    assert store.stats("dlq").dlq_arrivals_by_version == {"6": 1, "7": 2}


def test_a_platform_db_from_before_receivers_were_recorded_gets_the_column(db: Path) -> None:
    s = QueueStore(db)
    s.ensure_queue("jobs")
    s.send("jobs", "old")
    s.close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE q_messages DROP COLUMN receiver_version")
    con.close()
    s = QueueStore(db)
    [m] = s.receive("jobs", receiver=lambda: "3")
    assert (m.body, m.receiver) == ("old", "3")
    s.close()


def test_redrive_errors_and_explicit_target(store: QueueStore) -> None:
    store.ensure_queue("dlq")
    with pytest.raises(UsageError):
        store.redrive("nope")
    store.send("dlq", "stray")  # no queue uses "dlq" and the message carries no source
    with pytest.raises(UsageError, match="name a target"):
        store.redrive("dlq")
    assert store.redrive("dlq", to="jobs") == 1
    assert [m.body for m in store.receive("jobs")] == ["stray"]


def test_stats_counters_survive_draining_the_dlq(store: QueueStore) -> None:
    store.ensure_queue("dlq")
    store.ensure_queue("work", visibility_timeout=0, max_receive_count=1, dead_letter_queue="dlq")
    store.send_batch("work", ["a", "b", "c"])
    store.send("work", "d", delay=30)
    assert len(store.receive("work", 10)) == 3  # visibility 0: visible again at once
    assert store.receive("work", 10) == []  # all three moved
    for m in store.receive("dlq", 10):  # a DLQ consumer drains it
        assert store.delete("dlq", m.receipt_handle)
    w, d = store.stats("work"), store.stats("dlq")
    assert (w.sent, w.received, w.deleted, w.moved_to_dlq, w.delayed, w.visible) == (4, 3, 0, 3, 1, 0)
    assert (d.visible, d.in_flight, d.dlq_arrivals, d.received, d.deleted, d.sent) == (0, 0, 3, 3, 3, 0)
    assert w.age_of_oldest >= 0 and d.age_of_oldest == 0.0


def test_stats_gauges(store: QueueStore) -> None:
    store.send_batch("jobs", ["a", "b"])
    store.send("jobs", "c", delay=30)
    store.receive("jobs")
    time.sleep(0.05)
    s = store.stats("jobs")
    assert (s.visible, s.in_flight, s.delayed) == (1, 1, 1)
    assert s.age_of_oldest >= 0.04


# --- concurrency and durability ------------------------------------------------------------------
def test_concurrent_consumers_receive_each_message_once(store: QueueStore, db: Path) -> None:
    ids = set(store.send_batch("jobs", [str(i) for i in range(300)]))
    store.ensure_queue("jobs", visibility_timeout=60)
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        s = QueueStore(db)  # also another store instance on the same file
        while msgs := s.receive("jobs", 7):
            for m in msgs:
                assert s.delete("jobs", m.receipt_handle)
            with lock:
                seen.extend(m.id for m in msgs)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == sorted(ids)  # no duplicates, none lost
    assert store.stats("jobs").deleted == 300


def test_acknowledged_sends_survive_kill_9(store: QueueStore, db: Path, tmp_path: Path) -> None:
    p = _child(
        tmp_path,
        "spammer.py",
        """
        import sys
        from pathlib import Path
        from backout.platforms.local.queues import QueueStore
        s = QueueStore(Path(sys.argv[1]))
        i = 0
        while True:
            print(s.send("jobs", f"msg {i}"), flush=True)
            i += 1
        """,
        str(db),
    )
    acked: list[str] = []
    assert p.stdout is not None
    try:
        while len(acked) < 300:
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else "child died"
            acked.append(line.strip())
        os.kill(p.pid, signal.SIGKILL)
        rest, _ = p.communicate(timeout=10)
    finally:
        p.kill()
    acked += [x for x in rest.splitlines() if x.strip()]
    # A fresh store (as after a restart) sees every acknowledged message.
    fresh = QueueStore(db)
    in_queue = set(_drain_ids(fresh, "jobs"))
    missing = [a for a in acked if a not in in_queue]
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert len(in_queue) >= len(acked)


PLATFORM_MANIFEST = """
[service]
name = "svc"
[functions.worker]
handler = "app.handler"
[queues.jobs]
visibility_timeout = "0s"
max_receive_count = 1
dead_letter_queue = "jobs-dlq"
[queues.jobs-dlq]
[environments.test]
gateway_port = 0
control_port = 0
"""


def test_the_platform_publishes_dlq_arrivals_per_queue_and_per_last_receiving_version(tmp_path: Path) -> None:
    (tmp_path / "backout.toml").write_text(PLATFORM_MANIFEST)
    p = LocalPlatform(load_manifest(tmp_path / "backout.toml"), "test", tmp_path / "state")
    try:
        t = float(int(time.time()))
        p.sample_queues(now=t)  # the counters' baseline
        p.send_message("jobs", "received by version 3")
        p.send_message("jobs", "received by no function version")
        assert [m.receiver for m in p.queue_store.receive("jobs", 1, receiver=lambda: "3")] == ["3"]
        assert [m.receiver for m in p.queue_store.receive("jobs", 1)] == [None]
        assert p.queue_store.receive("jobs", 10, receiver=lambda: "4") == []  # both moved to the DLQ
        p.sample_queues(now=t + 1)

        def arrivals(**dims: str) -> float:
            q = MetricQuery.of(NS_BACKOUT, DLQ_ARRIVALS, {"QueueName": "jobs-dlq", **dims}, t, t + 2, 1, "Sum")
            return sum(d.value for d in p.metrics([q])[0])

        assert (arrivals(), arrivals(ExecutedVersion="3"), arrivals(ExecutedVersion="4")) == (2.0, 1.0, 0.0)
    finally:
        p.close(drain_timeout=1)


def test_now_refuses_to_wait_and_applies_nothing(store: QueueStore, db: Path) -> None:
    """`QueueStore.now` (the SQS endpoint's event-loop path): a call that would wait for another
    writer's lock, or a long poll, raises WouldBlock with nothing applied; the same call then works."""
    from backout.platforms.local.queues import WouldBlock

    store.ensure_queue("q")
    store.send("q", "first")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(WouldBlock):
            store.now(store.send, "q", "blocked")
        with pytest.raises(WouldBlock):
            store.now(store.receive, "q")
        assert store.now(store.stats, "q").visible == 1, "a read needs no lock"
    finally:
        other.execute("COMMIT")
        other.close()
    with pytest.raises(WouldBlock):
        store.now(store.receive, "q", 1, None, 1.0)  # a long poll waits by design
    [m] = store.now(store.receive, "q")
    assert m.body == "first" and m.receive_count == 1, "the refused receive counted nothing"
    assert store.now(store.delete, "q", m.receipt_handle)
    assert store.stats("q").visible == 0 and store.stats("q").sent == 1, "the refused send sent nothing"
    store.checkpoint()
