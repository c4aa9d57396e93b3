"""The control state shared between machines (a DynamoDB table on moto): two stores stand for two
processes — the one-deployment lock names its holder, a takeover needs an expired lease, a holder that
lost its lease has every write refused — and the guard's handler, called as Lambda calls it, puts an
orphaned split back on stable, records why and opens an incident with its notification.

Lease expiry is reached by giving a store a clock ahead of (or behind) the real one, not by sleeping."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aws.conftest import Stack, client
from backout.control import states as st
from backout.control.lease import LeaseHeld, LeaseLost
from backout.control.shared_store import SharedStore
from backout.control.strategies import Step, Strategy
from backout.platforms.base import Release
from backout_lambda import state_table
from support import Receiver

CANARY = Strategy("Canary25", (Step(25.0, 30.0), Step(100.0, 0.0)))


@pytest.fixture
def table(moto_url: str) -> Any:
    import boto3

    name = f"backout-state-{uuid.uuid4().hex[:8]}"
    state_table.create_table(client(moto_url, "dynamodb"), name)
    return boto3.resource("dynamodb", region_name="us-east-1", endpoint_url=moto_url).Table(name)


def release(rid: int, **versions: str) -> Release:
    return Release(rid, versions or {"api": str(rid)}, f"digest{rid}", time.time())


def test_the_lock_names_its_holder_a_takeover_waits_for_expiry_and_a_stale_holder_is_refused(table: Any) -> None:
    a = SharedStore(table, holder="ci-runner:101:aaaa", expiry=60)
    b = SharedStore(table, holder="laptop:202:bbbb", expiry=60)
    d = a.create_deployment("prod", release(1), release(2), CANARY, created_by="ci")
    d = a.transition(d.id, st.IN_PROGRESS, current_step=0, current_weight=25.0, step_started_at=time.time())
    a.add_event("step_reached", "25 % on r2", deployment_id=d.id, data={"weight": 25.0, "e": float("inf")})

    # every machine sees the same deployment, and a second deploy is refused naming who drives the first
    assert b.active_deployment("prod") == d
    with pytest.raises(st.AlreadyActive, match=r"d-0001 is already active in prod \(InProgress.*held by "
                                               r"ci-runner:101:aaaa \(fence 1, expires in"):
        b.create_deployment("prod", release(1), release(3), CANARY)
    # while the lease is live nobody takes over, and a non-holder cannot write the active deployment
    with pytest.raises(LeaseHeld, match="held by ci-runner:101:aaaa"):
        b.take_over(d.id)
    with pytest.raises(LeaseLost, match="take it over"):
        b.transition(d.id, st.ROLLED_BACK)
    # it asks instead; the holder reads the request
    b.request(d.id, "stop", {"rollback": True, "reason": "bad canary", "who": "ops"})
    assert a.requests(d.id)["stop"]["reason"] == "bad canary"
    a.renew(d.id)

    # 61 s later on the laptop's clock the CI runner has not renewed: the laptop takes over, fence 2
    later = SharedStore(table, holder=b.holder, expiry=60, clock=lambda: time.time() + 61)
    lease = later.take_over(d.id)
    assert (lease.holder, lease.fence) == ("laptop:202:bbbb", 2)
    # the runner comes back: every write it tries is refused with the new holder's name, nothing changes
    for stale_write in (lambda: a.transition(d.id, st.POST_TRAFFIC, expect=st.IN_PROGRESS),
                        lambda: a.update(d.id, current_weight=50.0),
                        lambda: a.add_event("step_reached", "50 %", deployment_id=d.id),
                        lambda: a.record_alarm_evaluation(d.id, "errors:api", "OK", 0.0, 5.0, ">", 60.0),
                        lambda: a.renew(d.id)):
        with pytest.raises(LeaseLost, match=r"no longer holds its lease .* held by laptop:202:bbbb \(fence 2"):
            stale_write()
    assert later.get(d.id).current_weight == 25.0 and later.get(d.id).status == st.IN_PROGRESS
    assert [e.message for e in later.events(deployment_id=d.id)] == ["25 % on r2"]
    assert later.events(deployment_id=d.id)[0].data == {"weight": 25.0, "e": float("inf")}

    # the new holder rolls it back; the lock stays until every alias is back (the rollback completes),
    # then goes with it, and the next deployment may start anywhere
    done = later.transition(d.id, st.ROLLED_BACK, reason="bad canary")
    assert done.finished_at is not None and done.rollback_decided_at is not None
    assert a.active_deployment("prod") is None
    with pytest.raises(st.AlreadyActive, match=r"d-0001 is rolling back in prod: .* held by laptop:202:bbbb"):
        a.create_deployment("prod", release(1), release(3), CANARY)
    later.update(d.id, rollback_completed_at=time.time())
    nxt = a.create_deployment("prod", release(1), release(3), CANARY)
    assert (nxt.id, a.lease(nxt.id).holder) == ("d-0002", "ci-runner:101:aaaa")
    assert [x.id for x in b.deployments("prod")] == ["d-0002", "d-0001"]


def test_incidents_events_and_records_read_the_same_from_every_machine(table: Any) -> None:
    a, b = SharedStore(table), SharedStore(table)
    d = a.create_deployment("prod", release(1), release(2), CANARY)
    a.add_event("created", "created", deployment_id=d.id)
    a.transition(d.id, st.ROLLED_BACK, reason="errors")
    inc = a.open_incident("prod", "d-0001 rolled back", deployment_id=d.id, trigger={"kind": "alarm"},
                          evidence={"alarms": ["errors 31 % > 5 %"]})
    a.add_event("incident_opened", "opened", deployment_id=d.id, incident_id=inc.id)
    b.add_event("note", "customers told", incident_id=inc.id)
    b.add_incident_note(inc.id, "looking", author="ops")
    b.add_incident_action(inc.id, "add a test", owner="dev")
    a.complete_incident_action(inc.id, 0)
    closed = b.close_incident(inc.id, root_cause="a bad release")

    assert a.incident_for_deployment("1") == closed == a.get_incident("INC-1")
    assert (closed.status, closed.root_cause, closed.action_items[0]["done"]) == ("closed", "a bad release", True)
    assert [e.kind for e in b.events(incident_id=inc.id)] == ["incident_opened", "note"]
    timeline = b.events(deployment_id=d.id, incident_id=inc.id)
    assert [e.kind for e in timeline] == ["created", "incident_opened", "note"]
    assert [e.kind for e in b.events(deployment_id=d.id, after_id=timeline[0].id)] == ["incident_opened"]
    assert [i.id for i in b.incidents("prod", status="closed")] == [inc.id] and b.incidents("staging") == []
    a.set_switch("prod", "throttle", {"rate": 0.0, "burst": 0}, who="ops", reason="emergency")
    assert b.switches("prod") == {"throttle": {"rate": 0.0, "burst": 0}}
    drill = a.record_drill("prod", "errors", 60.0, 1.0, 40.5, True, 3.5, 0.2, {"steps": ["x"]})
    assert b.drills("prod") == [drill]
    snap = a.record_snapshot("prod", "bk-1", "before d-0001", deployment_id=d.id)
    assert b.snapshots("prod", deployment_id=d.id) == [snap]


@pytest.fixture
def split(stack: Stack) -> Iterator[tuple[Stack, dict[str, str]]]:
    """The stack's functions with versions 1 and 2, each live alias sending 25 % to version 2."""
    lam = client(stack.url, "lambda")
    for real in stack.functions.values():
        lam.publish_version(FunctionName=real)
        lam.update_function_configuration(FunctionName=real, Description="r2")
        lam.publish_version(FunctionName=real)
        lam.create_alias(FunctionName=real, Name="live", FunctionVersion="1",
                         RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}})
    yield stack, {fn: "1" for fn in stack.functions}


def live(stack: Stack) -> dict[str, tuple[str, dict[str, float]]]:
    lam = client(stack.url, "lambda")
    out = {}
    for fn, real in stack.functions.items():
        a = lam.get_alias(FunctionName=real, Name="live")
        out[fn] = (a["FunctionVersion"], (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {})
    return out


def test_the_guard_rolls_back_an_orphaned_split_and_opens_an_incident(
        split: tuple[Stack, dict[str, str]], table: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from backout_lambda import guard

    stack, stable = split
    versions = {"stable": stable, "target": {fn: "2" for fn in stack.functions}}
    # the driver died 3 minutes ago: its lease expired 2 minutes ago (its clock said so when it wrote it)
    dead = SharedStore(table, holder="ci-runner:101:dead", expiry=60, functions=stack.functions,
                       clock=lambda: time.time() - 180)
    d = dead.create_deployment("prod", Release(1, versions["stable"], "a", 0), Release(2, versions["target"], "b", 0),
                               CANARY)
    dead.transition(d.id, st.IN_PROGRESS, current_step=0, current_weight=25.0, step_started_at=time.time() - 180)
    # a deployment in another environment whose driver is alive is left alone
    alive = SharedStore(table, holder="laptop:1:live", expiry=60, functions=stack.functions)
    other = alive.create_deployment("staging", Release(1, versions["stable"], "a", 0),
                                    Release(2, versions["target"], "b", 0), CANARY)
    assert {fn: w for fn, (_, w) in live(stack).items()} == {fn: {"2": 0.25} for fn in stack.functions}

    # the notification: an SNS topic (read back through an SQS subscription) and a plain HTTP POST
    sns, sqs = client(stack.url, "sns"), client(stack.url, "sqs")
    topic = sns.create_topic(Name=f"backout-{stack.tag}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{stack.tag}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    receiver = Receiver()
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url)  # what boto3 inside the function reads
    monkeypatch.setenv("BACKOUT_STATE_TABLE", table.name)
    monkeypatch.setenv("BACKOUT_GUARD_GRACE", "60")
    monkeypatch.setenv("BACKOUT_NOTIFY_TOPIC", topic)
    monkeypatch.setenv("BACKOUT_NOTIFY_URL", f"http://127.0.0.1:{receiver.port}/hook")

    class Context:
        aws_request_id = "req-1"

    out = guard.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, Context())

    assert [r["deployment"] for r in out["rolled_back"]] == [d.id] and out["left"] == [other.id]
    assert live(stack) == {fn: ("1", {}) for fn in stack.functions}  # every alias on stable, no routing
    reader = SharedStore(table)
    after = reader.get(d.id)
    assert after.status == st.ROLLED_BACK and after.rollback_completed_at is not None
    assert "lease of ci-runner:101:dead expired" in after.reason
    assert (reader.lease(d.id).holder, reader.lease(d.id).fence) == ("guard:req-1", 2)
    assert reader.active_deployment("prod") is None and reader.active_deployment("staging") == other
    inc = reader.incident_for_deployment(d.id)
    assert inc is not None and inc.severity == "critical" and inc.trigger["kind"] == "guard"
    assert [(e.kind, e.incident_id) for e in reader.events(deployment_id=d.id)] == [
        ("rolled_back", None), ("incident_opened", inc.id)]
    # the driver, were it to come back, is refused
    with pytest.raises(LeaseLost, match="held by guard:req-1"):
        dead.update(d.id, current_weight=50.0)
    assert receiver.received[0]["incident_id"] == inc.id and receiver.received[0]["kind"] == "rolled_back"
    message = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=5)["Messages"][0]["Body"]
    assert inc.id in json.loads(json.loads(message)["Message"])["incident_id"]

    # a second run finds nothing left to do
    assert guard.handler({}, Context()) == {"rolled_back": [], "left": [other.id], "failed": []}


def _orphaned(table: Any, stack: Stack, stable: dict[str, str]) -> tuple[SharedStore, Any]:
    """A prod deployment at its 25 % step whose driver died 3 minutes ago (its lease expired 2 minutes
    ago, by the clock it wrote it with): the store of that dead driver, and the deployment."""
    dead = SharedStore(table, holder="ci-runner:101:dead", expiry=60, functions=stack.functions,
                       clock=lambda: time.time() - 180)
    d = dead.create_deployment("prod", Release(1, stable, "a", 0),
                               Release(2, {fn: "2" for fn in stack.functions}, "b", 0), CANARY)
    dead.transition(d.id, st.IN_PROGRESS, current_step=0, current_weight=25.0)
    return dead, d


def test_a_guard_run_that_cannot_move_an_alias_keeps_the_lock_and_the_next_run_finishes_the_rollback(
        split: tuple[Stack, dict[str, str]], table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lambda refuses one `update_alias` of the guard's first run: the deployment stays RolledBack
    without completion and keeps its lock (no new deployment meanwhile); the next run moves the alias
    left, completes the rollback and opens the one incident. The locks are read with a Query."""
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    from backout_lambda import guard

    stack, stable = split
    dead, d = _orphaned(table, stack, stable)
    stubborn = next(iter(stack.functions.values()))
    calls: list[str] = []
    refused: list[str] = []
    real_call = BaseClient._make_api_call

    def flaky(self: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append(operation)
        if operation == "UpdateAlias" and params["FunctionName"] == stubborn and not refused:
            refused.append(stubborn)
            raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}},
                              operation)
        return real_call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", flaky)
    receiver = Receiver()
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url)
    monkeypatch.setenv("BACKOUT_STATE_TABLE", table.name)
    monkeypatch.setenv("BACKOUT_NOTIFY_URL", f"http://127.0.0.1:{receiver.port}/hook")

    class Run:
        def __init__(self, n: int) -> None:
            self.aws_request_id = f"req-{n}"

    with pytest.raises(guard.Incomplete, match=f"rollback of {d.id} did not complete"):
        guard.handler({}, Run(1))
    reader = SharedStore(table)
    half = reader.get(d.id)
    assert half.status == st.ROLLED_BACK and half.rollback_completed_at is None
    assert live(stack)[stack.api] == ("1", {"2": 0.25}) and live(stack)[stack.worker] == ("1", {})
    assert reader.incident_for_deployment(d.id) is None and receiver.received == []
    assert reader.lease(d.id).expired()  # given back: the next run need not wait for it
    with pytest.raises(st.AlreadyActive, match=f"{d.id} is rolling back in prod"):
        reader.create_deployment("prod", release(1), release(3), CANARY)

    out = guard.handler({}, Run(2))
    assert [r["deployment"] for r in out["rolled_back"]] == [d.id] and out["failed"] == []
    assert live(stack) == {fn: ("1", {}) for fn in stack.functions}
    done = reader.get(d.id)
    assert done.rollback_completed_at is not None and "lease of ci-runner:101:dead expired" in done.reason
    assert reader.lease(d.id).holder == "guard:req-2"
    inc = reader.incident_for_deployment(d.id)
    assert inc is not None and [i.id for i in reader.incidents("prod")] == [inc.id]
    assert [(e.kind, e.incident_id) for e in reader.events(deployment_id=d.id)] == [
        ("rolled_back", None), ("incident_opened", inc.id)]
    assert [m["incident_id"] for m in receiver.received] == [inc.id]
    assert guard.handler({}, Run(3)) == {"rolled_back": [], "left": [], "failed": []}
    assert "Scan" not in calls and "Query" in calls
    assert reader.create_deployment("prod", release(1), release(3), CANARY).id == "d-0002"


def test_the_guard_finishes_a_rollback_its_driver_recorded_but_did_not_complete(
        split: tuple[Stack, dict[str, str]], table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """backout's deployer records RolledBack before it moves an alias: a driver that dies in between
    leaves the lock, and the guard finishes the rollback once the driver's lease expired."""
    from backout_lambda import guard

    stack, stable = split
    dead, d = _orphaned(table, stack, stable)
    dead.transition(d.id, st.ROLLED_BACK, reason="errors:api 31 % > 5 %")  # … and the driver dies here
    assert dead.active_deployment("prod") is None
    with pytest.raises(st.AlreadyActive, match="is rolling back"):
        dead.refuse_if_active("prod")
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url)
    monkeypatch.setenv("BACKOUT_STATE_TABLE", table.name)

    class Context:
        aws_request_id = "req-1"

    out = guard.handler({}, Context())
    assert [r["deployment"] for r in out["rolled_back"]] == [d.id]
    assert live(stack) == {fn: ("1", {}) for fn in stack.functions}
    reader = SharedStore(table)
    after = reader.get(d.id)
    assert after.reason == "errors:api 31 % > 5 %" and after.rollback_completed_at is not None
    inc = reader.incident_for_deployment(d.id)
    assert inc is not None and "completed by the guard" in inc.title and inc.trigger["kind"] == "guard"
    reader.refuse_if_active("prod")  # the lock went with the completion


def test_a_stop_from_another_machine_and_a_takeover_that_cannot_trust_the_step(table: Any, tmp_path: Path) -> None:
    """Two control planes over one cloud (a FakePlatform) and one state table: machine B's stop is
    carried out by A, which drives the deployment; after A is gone, B's takeover finds an alias no step
    explains (moved by hand) and rolls back instead of going on."""
    from backout.control.deployer import Deployer
    from fakes import RecordingNotifier, World

    w = World(tmp_path, store=lambda _: SharedStore(table, holder="machine-a", renew=0.2, expiry=1.0))
    b = Deployer(w.manifest, w.env, w.fake, SharedStore(table, holder="machine-b", renew=0.2, expiry=1.0),
                 RecordingNotifier(), clock=w.clock.now)
    try:
        r1, r2 = w.fake.releases()[-1], w.release()
        d = w.deploy(r2, (50, 600), (100, 0))
        w.wait_step(d.id, 0)
        stopped = b.stop(d.id, rollback=True, reason="canary looks wrong", who="ops")
        assert stopped.status == st.ROLLED_BACK and "canary looks wrong" in stopped.reason
        assert w.store.lease(d.id).holder == "machine-a"  # A rolled it back itself, B only asked
        assert {fn: w.fake.get_weights(fn).versions for fn in r1.versions} == w.live(r1)
        assert "stop_requested" in w.kinds(d.id) and "taken_over" not in w.kinds(d.id)

        r3 = w.release()
        d3 = w.deploy(r3, (50, 600), (100, 0))
        w.wait_step(d3.id, 0)
        w.deployer.close()  # machine A goes away mid-canary (its lease released: no wait for the expiry)
        w.fake.set_weights("api", r1.version("api"), r3.version("api"), 80.0)  # and someone edits an alias
        b.follow(d3.id)
        done = w.wait(lambda: (x := b.store.get(d3.id)).terminal and b.store.incident_for_deployment(d3.id) and x,
                      timeout=60, what="the takeover's rollback")
        assert done.status == st.ROLLED_BACK
        assert "cannot be trusted: api sends 80 % to r3" in done.reason
        assert {fn: w.fake.get_weights(fn).versions for fn in r1.versions} == w.live(r1)
        assert b.store.lease(d3.id).holder == "machine-b" and b.store.lease(d3.id).fence == 2
        inc = b.store.incident_for_deployment(d3.id)
        assert inc is not None and inc.trigger["kind"] == "takeover"
    finally:
        b.close()
        w.close()


def test_the_guard_and_a_restarted_driver_finishing_one_rollback_open_one_incident(
        split: tuple[Stack, dict[str, str]], table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that recorded RolledBack and died: a restarted `backout up` (its reconcile) and the guard
    both finish that rollback. Whichever opens the incident second gets the first one's, even when it
    looked for one just before the other wrote it."""
    from backout_lambda import guard

    stack, stable = split
    dead, d = _orphaned(table, stack, stable)
    dead.transition(d.id, st.ROLLED_BACK, reason="errors:api 31 % > 5 %")
    restarted = SharedStore(table, holder="laptop:7:up", functions=stack.functions)
    first = restarted.open_incident("prod", f"{d.id} rolled back", deployment_id=d.id,
                                    trigger={"kind": "internal"}, rollback=True)
    assert SharedStore(table).open_incident("prod", "again", deployment_id=d.id, rollback=True) == first
    monkeypatch.setattr(guard, "_incident_of", lambda table, did: None)  # it read before the restart wrote
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url)
    monkeypatch.setenv("BACKOUT_STATE_TABLE", table.name)

    class Context:
        aws_request_id = "req-1"

    out = guard.handler({}, Context())
    assert [(r["deployment"], r["incident"]) for r in out["rolled_back"]] == [(d.id, first.id)]
    assert live(stack) == {fn: ("1", {}) for fn in stack.functions}
    reader = SharedStore(table)
    assert [i.id for i in reader.incidents("prod")] == [first.id]
    assert reader.get(d.id).rollback_completed_at is not None
