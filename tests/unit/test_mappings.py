"""EventSourceMapping: Lambda's SQS poller — batches, partial failures, DLQ, throttles, pause, kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.platforms.base import InvokeResult
from backout.platforms.local.mappings import EventSourceMapping, batch_item_failures
from backout.platforms.local.queues import ATTR_LAST_ERROR, ATTR_SOURCE_QUEUE, QueueStore


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "platform.db"


@pytest.fixture
def store(db: Path) -> Iterator[QueueStore]:
    s = QueueStore(db)
    s.ensure_queue("dlq", visibility_timeout=1)
    s.ensure_queue("jobs", visibility_timeout=0.5, max_receive_count=3, dead_letter_queue="dlq")
    yield s
    s.close()


@pytest.fixture
def mappings() -> Iterator[list[EventSourceMapping]]:
    made: list[EventSourceMapping] = []
    yield made
    for m in made:
        m.stop(drain_timeout=5)


def ok(fn: str, payload: Any = None) -> InvokeResult:
    return InvokeResult(fn, 1, str(uuid.uuid4()), payload)


def failed(fn: str, message: str) -> InvokeResult:
    payload = {"errorType": "RuntimeError", "errorMessage": message, "stackTrace": []}
    return InvokeResult(fn, 1, str(uuid.uuid4()), payload, error="Unhandled")


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def empty(s: QueueStore, q: str) -> bool:
    st = s.stats(q)
    return st.visible + st.in_flight + st.delayed == 0


def test_batches_carry_lambda_sqs_records(store: QueueStore, mappings: list[EventSourceMapping]) -> None:
    ids = store.send_batch("jobs", [f"job {i}" for i in range(23)])
    store.send("jobs", "with attrs", attributes={"kind": "pdf"})
    batches: list[list[dict[str, Any]]] = []

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        batches.append(event["Records"])
        return ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=10, region="eu-west-2")
    mappings.append(m)
    m.start()
    wait_for(lambda: empty(store, "jobs"))
    records = [r for b in batches for r in b]
    assert all(1 <= len(b) <= 10 for b in batches) and max(len(b) for b in batches) == 10
    assert sorted(r["messageId"] for r in records) == sorted([*ids, records[-1]["messageId"]])
    r = records[0]
    assert r["eventSource"] == "aws:sqs" and r["awsRegion"] == "eu-west-2"
    assert r["eventSourceARN"] == "arn:aws:sqs:eu-west-2:000000000000:jobs"
    assert r["md5OfBody"] == hashlib.md5(r["body"].encode()).hexdigest()
    assert r["attributes"]["ApproximateReceiveCount"] == "1"
    assert set(r["attributes"]) == {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert int(r["attributes"]["SentTimestamp"]) <= int(r["attributes"]["ApproximateFirstReceiveTimestamp"])
    assert r["receiptHandle"] and r["messageAttributes"] == {}
    assert records[-1]["messageAttributes"] == {
        "kind": {"stringValue": "pdf", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
    }
    st = store.stats("jobs")
    assert (st.deleted, st.received) == (24, 24)
    assert m.in_flight == 0 and m.counters["succeeded"] == 24


def test_default_region_arn(store: QueueStore, mappings: list[EventSourceMapping]) -> None:
    store.send("jobs", "x")
    seen: list[dict[str, Any]] = []
    m = EventSourceMapping(store, "jobs", "worker", lambda fn, ev: seen.append(ev) or ok(fn))
    mappings.append(m)
    m.start()
    wait_for(lambda: bool(seen))
    rec = seen[0]["Records"][0]
    assert rec["eventSourceARN"] == "arn:aws:sqs:local:000000000000:jobs" and rec["awsRegion"] == "local"


def test_partial_batch_failures_retry_only_the_failed(
    store: QueueStore, mappings: list[EventSourceMapping]
) -> None:
    store.send_batch("jobs", ["good 1", "bad 1", "good 2", "bad 2"])
    deliveries: dict[str, list[int]] = {}
    lock = threading.Lock()

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        failures = []
        with lock:
            for r in event["Records"]:
                n = int(r["attributes"]["ApproximateReceiveCount"])
                deliveries.setdefault(r["body"], []).append(n)
                if r["body"].startswith("bad") and n == 1:
                    failures.append({"itemIdentifier": r["messageId"]})
        return ok(fn, {"batchItemFailures": failures})

    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=4, retry_after=0.2)
    mappings.append(m)
    m.start()
    wait_for(lambda: empty(store, "jobs"))
    assert deliveries == {"good 1": [1], "good 2": [1], "bad 1": [1, 2], "bad 2": [1, 2]}
    assert store.stats("dlq").dlq_arrivals == 0


def test_batch_item_failures_parsing() -> None:
    ids = {"a", "b"}
    assert batch_item_failures(None, ids) == set()
    assert batch_item_failures({"batchItemFailures": []}, ids) == set()
    assert batch_item_failures({"batchItemFailures": [{"itemIdentifier": "a"}]}, ids) == {"a"}
    assert batch_item_failures('{"batchItemFailures": [{"itemIdentifier": "b"}]}', ids) == {"b"}
    # Lambda fails the whole batch on an identifier it does not know, or an empty one.
    assert batch_item_failures({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, ids) is None
    assert batch_item_failures({"batchItemFailures": [{"itemIdentifier": ""}]}, ids) is None


def test_function_errors_reach_the_dlq_after_max_receives(
    store: QueueStore, mappings: list[EventSourceMapping]
) -> None:
    poison = store.send("jobs", "poison")
    store.send_batch("jobs", ["fine 1", "fine 2"])
    attempts: list[str] = []

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        [r] = event["Records"]
        attempts.append(r["body"])
        return failed(fn, "cannot parse drawing") if r["body"] == "poison" else ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=1, retry_after=0.1)
    mappings.append(m)
    m.start()
    wait_for(lambda: store.stats("dlq").visible == 1)
    wait_for(lambda: empty(store, "jobs"))
    assert attempts.count("poison") == 3 and attempts.count("fine 1") == 1
    [d] = store.receive("dlq")
    assert d.id == poison and d.receive_count == 1
    assert d.attributes[ATTR_SOURCE_QUEUE] == "jobs"
    assert d.attributes[ATTR_LAST_ERROR] == "RuntimeError: cannot parse drawing"
    assert store.stats("jobs").moved_to_dlq == 1 and store.stats("jobs").deleted == 2


def test_with_a_route_each_batch_goes_to_the_version_picked_at_its_receive(
    store: QueueStore, mappings: list[EventSourceMapping]
) -> None:
    """The alias's choice is made at the receive and recorded there: the batch is invoked on exactly that
    version, and a message the stable version fails for the last time counts against the stable one."""
    picks = iter(["6", "7", "6"])  # stable, canary, stable again
    calls: list[tuple[str, str]] = []

    def invoke(fn: str, event: dict[str, Any], version: str | None = None) -> InvokeResult:
        [r] = event["Records"]
        assert version is not None, "a routed mapping names the version"
        calls.append((r["body"], version))
        return failed(fn, "late failure of the stable version")

    def route(fn: str) -> str:
        assert fn == "worker"
        return next(picks)

    store.send("jobs", "job")
    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=1, retry_after=0.05, route=route)
    mappings.append(m)
    m.start()
    wait_for(lambda: store.stats("dlq").dlq_arrivals == 1)
    assert calls == [("job", "6"), ("job", "7"), ("job", "6")]
    assert store.stats("dlq").dlq_arrivals_by_version == {"6": 1}


def test_invoke_that_raises_loses_nothing(store: QueueStore, mappings: list[EventSourceMapping]) -> None:
    store.send("jobs", "x")
    calls: list[int] = []

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("worker process died")
        return ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke, retry_after=0.1)
    mappings.append(m)
    m.start()
    wait_for(lambda: empty(store, "jobs"))
    assert len(calls) == 2 and store.stats("jobs").deleted == 1


def test_throttles_do_not_dead_letter(store: QueueStore, mappings: list[EventSourceMapping]) -> None:
    store.ensure_queue("jobs", visibility_timeout=0.5, max_receive_count=1, dead_letter_queue="dlq")
    store.send_batch("jobs", ["a", "b", "c"])
    calls: list[int] = []

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        calls.append(len(event["Records"]))
        if len(calls) <= 4:
            return InvokeResult(fn, 0, "", {"errorMessage": "Rate Exceeded."}, throttled=True)
        return ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=10)
    mappings.append(m)
    m.start()
    wait_for(lambda: empty(store, "jobs"))
    st = store.stats("jobs")
    assert len(calls) >= 5 and m.counters["throttled"] == 4
    assert (st.moved_to_dlq, st.deleted, store.stats("dlq").dlq_arrivals) == (0, 3, 0)


def test_pause_leaves_messages_waiting_and_resume_processes_all(
    store: QueueStore, mappings: list[EventSourceMapping]
) -> None:
    # max_receive_count=1: a single counted extra receive during the pause would dead-letter a message.
    store.ensure_queue("jobs", visibility_timeout=1.0, max_receive_count=1, dead_letter_queue="dlq")
    sent = set(store.send_batch("jobs", [f"m{i}" for i in range(40)]))
    done: list[str] = []
    lock = threading.Lock()

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        time.sleep(0.05)
        with lock:
            done.extend(r["messageId"] for r in event["Records"])
        return ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=2, concurrency=3)
    mappings.append(m)
    m.start()
    wait_for(lambda: len(done) >= 6)
    m.set_enabled(False)
    assert not m.enabled
    assert m.wait_idle(10)  # the in-flight batches finished
    n_done = len(done)
    assert 6 <= n_done < 40
    time.sleep(1.2)  # longer than the visibility timeout: nothing moves while paused
    st = store.stats("jobs")
    assert len(done) == n_done
    assert (st.visible, st.in_flight, st.delayed, st.moved_to_dlq) == (40 - n_done, 0, 0, 0)
    assert st.deleted == n_done and m.in_flight == 0

    m.set_enabled(True)
    assert m.enabled
    wait_for(lambda: empty(store, "jobs"))
    assert set(done) == sent
    assert store.stats("jobs").moved_to_dlq == 0 and store.stats("dlq").dlq_arrivals == 0


def test_created_disabled_then_enabled(store: QueueStore, mappings: list[EventSourceMapping]) -> None:
    store.send("jobs", "x")
    done: list[str] = []
    m = EventSourceMapping(store, "jobs", "w", lambda fn, ev: done.append("x") or ok(fn), enabled=False)
    mappings.append(m)
    m.start()
    time.sleep(0.3)
    assert done == [] and store.stats("jobs").visible == 1
    m.set_enabled(True)
    wait_for(lambda: done == ["x"])


def test_stop_drains_in_flight_batch(store: QueueStore) -> None:
    store.send("jobs", "slow")
    started = threading.Event()

    def invoke(fn: str, event: dict[str, Any]) -> InvokeResult:
        started.set()
        time.sleep(0.4)
        return ok(fn)

    m = EventSourceMapping(store, "jobs", "worker", invoke)
    m.start()
    assert started.wait(10)
    t0 = time.monotonic()
    assert m.stop(drain_timeout=10) is True
    assert time.monotonic() - t0 < 5
    assert store.stats("jobs").deleted == 1 and m.in_flight == 0
    store.send("jobs", "after stop")
    time.sleep(0.3)
    assert store.stats("jobs").visible == 1  # no poller left


_WORKER = """
import os, sys, time
from pathlib import Path
from backout.platforms.base import InvokeResult
from backout.platforms.local.mappings import EventSourceMapping
from backout.platforms.local.queues import QueueStore

db, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
store = QueueStore(Path(db))
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def invoke(fn, event):
    for r in event["Records"]:
        os.write(fd, (r["messageId"] + "\\n").encode())
    os.fsync(fd)
    time.sleep(0.2)
    return InvokeResult(fn, 1, "req", None)

m = EventSourceMapping(store, "jobs", "worker", invoke, batch_size=5, concurrency=2)
m.start()
if mode == "forever":
    while True:
        time.sleep(1)
deadline = time.monotonic() + 40
while time.monotonic() < deadline:
    s = store.stats("jobs")
    if s.visible + s.in_flight + s.delayed == 0:
        break
    time.sleep(0.05)
print("drained" if m.stop(5) else "stuck", flush=True)
"""


def test_kill_9_mid_batch_then_restart_processes_everything(
    store: QueueStore, db: Path, tmp_path: Path
) -> None:
    store.ensure_queue("jobs", visibility_timeout=1.0)  # no DLQ: a slow machine must not dead-letter
    sent = set(store.send_batch("jobs", [f"drawing {i}" for i in range(120)]))
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    out = tmp_path / "processed.txt"

    def processed() -> list[str]:
        return out.read_text().split() if out.exists() else []

    p = subprocess.Popen([sys.executable, str(script), str(db), str(out), "forever"], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(processed()) >= 20, timeout=30)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
    at_kill = store.stats("jobs")
    assert at_kill.in_flight > 0, "killed between batches: the test did not exercise a mid-batch kill"
    assert len(set(processed())) < len(sent)

    restart = subprocess.run(
        [sys.executable, str(script), str(db), str(out), "drain"], capture_output=True, text=True, timeout=60
    )
    assert restart.returncode == 0, restart.stderr
    assert restart.stdout.strip() == "drained"
    assert sent <= set(processed())  # duplicates allowed, losses not
    assert empty(store, "jobs")
