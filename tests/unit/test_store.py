from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backout.control.store import (
    ACTIVE_STATUSES,
    InvalidTransition,
    Store,
    can_transition,
)
from backout.control.strategies import Step, Strategy, resolve
from backout.errors import UsageError
from backout.platforms.base import Release

QUICK = Strategy("Quick", (Step(10, 2), Step(100, 0)))


def rel(n: int) -> Release:
    """A release whose functions all carry the release id as their version (as the local platform numbers them)."""
    return Release(n, {"api": str(n), "worker": str(n)}, f"digest-{n}", 0.0)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "state" / "control.db")
    yield s
    s.close()


def test_create_get_and_ids(store: Store) -> None:
    d = store.create_deployment("staging", rel(3), rel(4), QUICK, description="fix parser", created_by="ana",
                                now=1000.0)
    assert d.id == "d-0001" and d.status == "Created" and d.active and not d.terminal
    assert d.steps == (Step(10, 2), Step(100, 0)) and d.strategy_obj == QUICK
    assert d.current_step is None and d.current_weight == 0 and d.created_at == 1000.0
    assert (d.stable_release, d.target_release, d.description, d.created_by) == (3, 4, "fix parser", "ana")
    for ref in ("d-0001", "1", "D-1", "d-01"):
        assert store.get(ref) == d
    with pytest.raises(UsageError, match="no deployment 'd-0099'"):
        store.get("d-0099")
    assert store.find("42") is None
    assert store.active_deployment("staging") == d
    assert store.active_deployment("prod") is None


def test_second_active_deployment_is_refused_naming_the_active_one(store: Store) -> None:
    first = store.create_deployment("staging", rel(1), rel(2), QUICK)
    with pytest.raises(UsageError) as e:
        store.create_deployment("staging", rel(1), rel(3), QUICK)
    assert "d-0001" in str(e.value) and "staging" in str(e.value) and "\n" not in str(e.value)
    other = store.create_deployment("prod", rel(1), rel(2), QUICK)  # other environment: fine
    assert other.id == "d-0002"
    store.transition(first.id, "RolledBack", reason="alarm")
    again = store.create_deployment("staging", rel(1), rel(3), QUICK)
    assert again.id == "d-0003"
    assert [d.id for d in store.deployments("staging")] == ["d-0003", "d-0001"]
    assert [d.id for d in store.deployments(limit=2)] == ["d-0003", "d-0002"]
    assert {d.id for d in store.active_deployments()} == {"d-0002", "d-0003"}


def test_concurrent_creates_in_threads_only_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    Store(path).close()
    stores = [Store(path) for _ in range(8)]  # separate engines, like separate processes
    barrier = threading.Barrier(len(stores))
    results: list[object] = [None] * len(stores)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stores[i].create_deployment("staging", rel(1), rel(2 + i), QUICK)
        except UsageError as e:
            results[i] = e

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, UsageError)]
    assert len(winners) == 1 and len(losers) == len(stores) - 1
    assert all(winners[0].id in str(e) for e in losers)  # type: ignore[union-attr]
    for s in stores:
        s.close()


def test_concurrent_creates_in_processes_only_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    Store(path).close()
    script = textwrap.dedent(f"""
        import sys
        from backout.control.store import Store
        from backout.control.strategies import Step, Strategy
        from backout.errors import UsageError
        from backout.platforms.base import Release
        s = Store({str(path)!r})
        print("READY", flush=True)
        sys.stdin.readline()  # the barrier: every process is loaded and waiting
        try:
            r1, rn = (Release(n, {{"api": str(n)}}, "d", 0.0) for n in (1, int(sys.argv[1])))
            print("WON", s.create_deployment("prod", r1, rn, Strategy("Q", (Step(100, 0),))).id)
        except UsageError as e:
            print("LOST", e)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(10 + i)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    won = [o for o in outs if o.startswith("WON")]
    lost = [o for o in outs if o.startswith("LOST")]
    assert len(won) == 1 and len(lost) == 3, outs
    winner_id = won[0].split()[1]
    assert all(winner_id in o for o in lost)


def test_schema_itself_refuses_two_active_deployments(store: Store) -> None:
    store.create_deployment("staging", rel(1), rel(2), QUICK)
    con = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO deployments (seq, id, env, stable_release, target_release, stable_versions, target_versions,"
            " strategy, steps, status, current_weight, created_at, description, reason, created_by)"
            " VALUES (99, 'd-0099', 'staging', 1, 3, '{}', '{}', 'Q', '[]', 'InProgress', 0, 0, '', '', '')"
        )
    con.close()


def test_transitions_are_validated(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    d = store.transition(d.id, "AwaitingApproval")
    with pytest.raises(InvalidTransition, match="is AwaitingApproval, not PreTraffic"):
        store.transition(d.id, "InProgress", expect="PreTraffic")
    d = store.transition(d.id, "InProgress", expect=["AwaitingApproval"], current_step=0, current_weight=10.0,
                         step_started_at=5.0)  # skipping PreTraffic is fine (no hooks)
    assert (d.status, d.current_step, d.current_weight, d.step_started_at) == ("InProgress", 0, 10.0, 5.0)
    with pytest.raises(InvalidTransition, match="cannot become PreTraffic"):
        store.transition(d.id, "PreTraffic")  # never backwards
    d = store.transition(d.id, "InProgress", current_step=1, current_weight=100.0)  # same status: fine
    assert d.finished_at is None
    d = store.transition(d.id, "Succeeded")
    assert d.terminal and d.finished_at is not None and d.duration is not None and d.duration >= 0
    for status in ("RolledBack", "Succeeded", "InProgress", "Stopped"):
        with pytest.raises(InvalidTransition, match="Succeeded; it cannot become"):
            store.transition(d.id, status)
    with pytest.raises(ValueError):
        store.transition(d.id, "Exploded")
    with pytest.raises(TypeError, match="colour"):
        store.update(d.id, colour="red")
    with pytest.raises(TypeError):
        store.update(d.id, status="Created")
    assert issubclass(InvalidTransition, UsageError)


def test_can_transition_table() -> None:
    for a in ACTIVE_STATUSES:
        for t in ("Succeeded", "RolledBack", "Stopped", "Failed"):
            assert can_transition(a, t)
            assert not can_transition(t, a)
    assert can_transition("Created", "InProgress") and not can_transition("PostTraffic", "InProgress")


def test_rolled_back_records_decision_and_completion(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    store.transition(d.id, "InProgress", current_step=0, current_weight=10.0)
    before = time.time()
    d = store.transition(d.id, "RolledBack", reason="error rate 31.0 % (9/29) > 5 % over 60 s on worker v2",
                         current_weight=0.0)
    assert d.rollback_decided_at is not None and d.rollback_decided_at >= before
    assert d.finished_at is not None and d.rollback_completed_at is None
    d = store.update(d.id, rollback_completed_at=d.rollback_decided_at + 0.02)  # allowed after terminal
    assert d.rollback_completed_at == pytest.approx(d.rollback_decided_at + 0.02)
    explicit = store.create_deployment("staging", rel(1), rel(3), QUICK)
    d2 = store.transition(explicit.id, "RolledBack", rollback_decided_at=123.0, finished_at=124.0)
    assert (d2.rollback_decided_at, d2.finished_at) == (123.0, 124.0)


def test_transition_is_durable_when_it_returns(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after `transition` returns: the status is on disk."""
    path = tmp_path / "control.db"
    with Store(path) as s:
        d = s.create_deployment("staging", rel(1), rel(2), QUICK)
    script = textwrap.dedent(f"""
        import os, signal
        from backout.control.store import Store
        s = Store({str(path)!r})
        s.transition("{d.id}", "RolledBack", reason="killed right after")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert p.returncode == -9
    with Store(path) as s:
        after = s.get(d.id)
    assert after.status == "RolledBack" and after.reason == "killed right after"


def test_wal_mode_and_readers_not_blocked_by_a_writer(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    con = sqlite3.connect(store.path, isolation_level=None)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    con.execute("UPDATE deployments SET reason = 'uncommitted' WHERE id = ?", (d.id,))
    t0 = time.monotonic()
    assert store.get(d.id).reason == ""  # readers go on, and see only committed data
    assert time.monotonic() - t0 < 2
    done: list[str] = []
    writer = threading.Thread(target=lambda: done.append(store.update(d.id, reason="mine").reason))
    writer.start()
    time.sleep(0.3)
    assert not done  # the store's write waits for the lock instead of failing
    con.execute("COMMIT")
    writer.join(10)
    assert done == ["mine"]
    con.close()


def test_events_filtering_and_polling(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    e1 = store.add_event("deployment_started", "v1 → v2", deployment_id=d.id, ts=10.0)
    e2 = store.add_event("step_reached", "10 %", deployment_id="1", data={"weight": 10}, ts=11.0)
    inc = store.open_incident("staging", "rollback of d-0001", deployment_id=d.id)
    e3 = store.add_event("incident_opened", "INC-0001", incident_id=inc.id, severity="critical", ts=12.0)
    store.add_event("supervisor_started", "up", ts=9.0)
    assert [e.id for e in store.events(deployment_id=d.id)] == [e1.id, e2.id]
    assert store.events(deployment_id=d.id)[1].data == {"weight": 10}
    assert [e.kind for e in store.events(incident_id="inc-1")] == ["incident_opened"]
    assert [e.id for e in store.events(deployment_id=d.id, incident_id=inc.id)] == [e1.id, e2.id, e3.id]
    assert [e.id for e in store.events(deployment_id=d.id, after_id=e1.id)] == [e2.id]
    assert [e.kind for e in store.events()][0] == "supervisor_started"
    with pytest.raises(ValueError):
        store.add_event("x", "y", severity="fatal")


def test_events_from_many_threads(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                store.add_event("tick", f"{n}-{i}", deployment_id=d.id)
                store.update(d.id, current_weight=float(i))
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(store.events(deployment_id=d.id)) == 150


def test_alarm_evaluations(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    store.record_alarm_evaluation(d.id, "error-rate-worker", "OK", 0.0, 5.0, "GreaterThanThreshold", 60,
                                  "error rate 0.0 % (0/25) ≤ 5 % over 60 s on worker v2", ts=1.0)
    store.record_alarm_evaluation(d.id, "error-rate-worker", "ALARM", 31.0, 5.0, "GreaterThanThreshold", 60,
                                  "error rate 31.0 % (9/29) > 5 % over 60 s on worker v2", ts=2.0)
    store.record_alarm_evaluation(d.id, "dlq", "INSUFFICIENT_DATA", None, 0.0, "GreaterThanThreshold", 3, "",
                                  ts=1.5)
    evs = store.alarm_evaluations(d.id)
    assert [(e.alarm, e.state) for e in evs] == [("error-rate-worker", "OK"), ("dlq", "INSUFFICIENT_DATA"),
                                                 ("error-rate-worker", "ALARM")]
    assert evs[2].value == 31.0 and evs[2].threshold == 5.0 and evs[2].window_seconds == 60
    assert evs[1].value is None
    assert len(store.alarm_evaluations(d.id, alarm="dlq")) == 1
    with pytest.raises(ValueError):
        store.record_alarm_evaluation(d.id, "x", "RED", 1, 1, "GreaterThanThreshold", 1)


def test_incidents_lifecycle(store: Store) -> None:
    d = store.create_deployment("prod", rel(6), rel(7), resolve("AllAtOnce"))
    evidence = {"alarm": "error-rate-worker", "value": 31.0, "threshold": 5.0}
    inc = store.open_incident("prod", "automatic rollback of d-0001", deployment_id=d.id,
                              trigger={"kind": "alarm"}, evidence=evidence, opened_at=100.0)
    assert inc.id == "INC-0001" and inc.status == "open" and inc.severity == "critical"
    assert inc.evidence == evidence and inc.trigger == {"kind": "alarm"} and inc.opened_at == 100.0
    store.add_incident_note(inc.id, "worker v7 crashes on rotated pages", author="ana")
    store.add_incident_action("inc-1", "add a rotated drawing to the tests", owner="bo")
    store.add_incident_action("1", "alert on DLQ depth")
    store.add_incident_lesson(inc.id, "canary caught it in 8 s")
    store.complete_incident_action(inc.id, 1)
    with pytest.raises(UsageError, match="no action item 5"):
        store.complete_incident_action(inc.id, 4)
    store.set_root_cause(inc.id, "off-by-one in page rotation")
    got = store.get_incident("INC-0001")
    assert [n["text"] for n in got.notes] == ["worker v7 crashes on rotated pages"]
    assert got.notes[0]["author"] == "ana"
    assert [(a["text"], a["done"]) for a in got.action_items] == [
        ("add a rotated drawing to the tests", False), ("alert on DLQ depth", True)]
    assert got.lessons[0]["text"] == "canary caught it in 8 s"
    assert got.root_cause == "off-by-one in page rotation"
    second = store.open_incident("staging", "emergency stop", severity="warning")
    assert second.id == "INC-0002"
    assert [i.id for i in store.incidents()] == ["INC-0002", "INC-0001"]
    assert [i.id for i in store.incidents(env="prod")] == ["INC-0001"]
    assert store.incident_for_deployment(d.id) == got
    closed = store.close_incident(inc.id, now=200.0)
    assert closed.status == "closed" and closed.closed_at == 200.0 and closed.root_cause == got.root_cause
    assert [i.id for i in store.incidents(status="open")] == ["INC-0002"]
    with pytest.raises(UsageError, match="already closed"):
        store.close_incident(inc.id)
    store.add_incident_note(inc.id, "post-mortem done")  # notes still allowed after closing
    with pytest.raises(UsageError, match="no incident 'INC-0042'"):
        store.get_incident("INC-0042")


def test_drills_and_snapshots(store: Store) -> None:
    d = store.create_deployment("staging", rel(1), rel(2), QUICK)
    dr = store.record_drill("staging", "error-rate", 30.0, 100.0, 112.0, True, detection_seconds=4.2,
                            rollback_seconds=0.04, detail={"deployment": d.id})
    store.record_drill("staging", "dlq", 30.0, 200.0, 260.0, False, detail={"why": "too slow"})
    assert dr.id == "drill-0001" and dr.passed and dr.detection_seconds == 4.2
    assert [x.fault for x in store.drills("staging")] == ["dlq", "error-rate"]
    assert store.drills("prod") == []
    assert store.drills(limit=1)[0].passed is False
    s1 = store.record_snapshot("staging", "20240101-abc", label="before d-0001", deployment_id=d.id)
    store.record_snapshot("staging", "20240102-def")
    assert s1.id == "snap-0001" and s1.deployment_id == "d-0001"
    assert [s.platform_snapshot_id for s in store.snapshots("staging")] == ["20240102-def", "20240101-abc"]
    assert [s.id for s in store.snapshots(deployment_id=d.id)] == ["snap-0001"]


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    with Store(path) as s:
        d = s.create_deployment("staging", rel(1), rel(2), QUICK)
        s.transition(d.id, "InProgress", current_step=0, current_weight=10.0, step_started_at=50.0)
    with Store.for_env(tmp_path) as s:
        again = s.get(d.id)
        assert again.status == "InProgress" and again.step_started_at == 50.0
        assert s.active_deployment("staging") == again


def test_a_deployment_has_one_rollback_incident_and_other_incidents_besides(store: Store) -> None:
    d = store.create_deployment("prod", rel(1), rel(2), Strategy("AllAtOnce", (Step(100.0, 0.0),)))
    first = store.open_incident("prod", "d-0001 rolled back", deployment_id=d.id, trigger={"kind": "alarm"},
                                rollback=True)
    again = store.open_incident("prod", "d-0001 rolled back: restart", deployment_id=d.id,
                                trigger={"kind": "internal"}, rollback=True)
    assert again == first and first.trigger == {"kind": "alarm", "rollback_incident": True}
    emergency = store.open_incident("prod", "emergency stop", deployment_id=d.id, trigger={"kind": "emergency"})
    assert emergency.id != first.id
    assert sorted(i.id for i in store.incidents("prod")) == sorted([first.id, emergency.id])
