"""Traffic: the one path for alias weights, the API throttle and processing — per-function version
numbers, operator overrides refused during a deployment, switches stored before they are applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from backout.control.traffic import Traffic
from backout.errors import UsageError
from backout.platforms.base import Throttle
from fakes import CrashingStore, FakePlatform, Killed, World, write_manifest


def test_route_splits_each_function_between_its_own_versions(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    t = world.deployer.traffic
    t.route(r1.versions, r2.versions, 25)
    assert world.fake.live_versions() == {"api": {"1": 75.0, "2": 25.0}, "worker": {"11": 75.0, "12": 25.0},
                                          "repair": {"21": 100.0}}
    t.route(r1.versions, r2.versions, 100)
    assert world.fake.live_versions() == world.live(r2)
    t.route(r1.versions, r2.versions, 0)
    assert world.fake.live_versions() == world.live(r1)


def test_route_puts_a_function_without_a_stable_version_on_its_target(world: World) -> None:
    r2 = world.release("worker")
    world.deployer.traffic.route({"api": "1"}, r2.versions, 10)
    # api kept its version in r2: stable and canary are one version, so nothing is split
    assert world.fake.live_versions() == {"api": {"1": 100.0}, "worker": {"12": 100.0}, "repair": {"21": 100.0}}


def test_live_and_stable_release_are_found_by_each_functions_own_version(world: World) -> None:
    r1, r2 = world.fake.releases()[0], world.release("api", "worker")
    t = world.deployer.traffic
    assert t.live_release() == r1 and t.stable_release() == r1
    t.route(r1.versions, r2.versions, 50)
    assert t.live_release() is None, "split traffic has no single live release"
    assert t.stable_release() == r1
    t.point_all(r2)
    assert t.live_release() == r2 and t.stable_release() == r2
    world.fake.set_weights("worker", "11")  # worker back on r1's version, api still on r2's
    assert t.live_release() is None and t.stable_release() is None


def test_operator_alias_override_is_recorded_then_applied(world: World) -> None:
    world.release("worker")
    world.deployer.traffic.override("worker", "11", "12", 10, who="alice")
    assert world.fake.live_versions()["worker"] == {"11": 90.0, "12": 10.0}
    (e,) = [e for e in world.store.events() if e.kind == "alias_override"]
    assert e.message == "alice set worker:live → v11 + 10 % v12"
    assert e.data == {"function": "worker", "stable": "11", "canary": "12", "weight": 10, "who": "alice"}


def test_alias_override_is_refused_while_a_deployment_runs(world: World) -> None:
    d = world.deploy(world.release("worker"))
    world.wait_step(d.id, 0)
    with pytest.raises(UsageError, match="deployment d-0001 is already active in staging"):
        world.deployer.traffic.override("worker", "11", None, 0, who="alice")
    assert world.fake.live_versions()["worker"] == {"11": 50.0, "12": 50.0}
    assert not [e for e in world.store.events() if e.kind == "alias_override"]


def test_alias_override_of_an_unknown_function_or_version_is_refused(world: World) -> None:
    t = world.deployer.traffic
    with pytest.raises(UsageError, match="no function named 'nope'"):
        t.override("nope", "1", None, 0, who="x")
    with pytest.raises(UsageError, match="worker: unknown version '99'"):
        t.override("worker", "99", None, 0, who="x")
    with pytest.raises(UsageError, match="canary weight must be between 0 and 100"):
        world.fake.set_weights("worker", "11", "11", 120)


def test_throttle_is_stored_as_the_wanted_switch_then_applied(world: World) -> None:
    got = world.deployer.traffic.set_throttle(0, 0, who="alice", reason="stop the bleeding")
    assert got == Throttle(0.0, 0) == world.fake.get_throttle()
    assert world.store.switches("staging") == {"throttle": {"rate": 0, "burst": 0}}
    status, _, _ = world.fake.request("GET", "/health")
    assert status == 429


def test_negative_throttle_is_refused_before_anything_is_stored(world: World) -> None:
    with pytest.raises(UsageError, match="must be ≥ 0"):
        world.deployer.traffic.set_throttle(-1, 5)
    assert world.store.switches("staging") == {}


def test_processing_switch_is_stored_then_applied_and_pauses_delivery(world: World) -> None:
    world.deployer.traffic.set_processing(False, who="bob", reason="corruption")
    assert world.store.switches("staging") == {"processing": False} and not world.fake.get_processing()
    world.fake.send_message("jobs", '{"job": "a"}')
    assert world.fake.pump() == 0 and world.fake.messages("jobs") == ['{"job": "a"}']
    world.deployer.traffic.set_processing(True)
    assert world.fake.pump() == 1 and world.fake.messages("jobs") == []
    assert world.fake.tables["jobs"]["a"]["processed_by"] == {"function": "worker", "version": "11"}


@pytest.mark.parametrize("switch", ["throttle", "processing"])
def test_kill_between_a_stored_switch_and_the_platform_is_repaired_by_reconcile_switches(
    tmp_path: Path, switch: str
) -> None:
    w = World(tmp_path, store=lambda p: CrashingStore(p, f"set_switch {switch}"))
    try:
        with pytest.raises(Killed):
            if switch == "throttle":
                w.deployer.traffic.set_throttle(0, 0, who="alice")
            else:
                w.deployer.traffic.set_processing(False, who="alice")
        assert w.fake.get_throttle().rate == 10000.0 and w.fake.get_processing(), "the platform was never told"
        w.restart()
        changed = w.deployer.traffic.reconcile_switches()
        if switch == "throttle":
            assert changed == ["API throttle → rate 0, burst 0"] and w.fake.get_throttle() == Throttle(0.0, 0)
        else:
            assert changed == ["processing → paused"] and not w.fake.get_processing()
        assert w.deployer.traffic.reconcile_switches() == [], "a second pass finds nothing to do"
    finally:
        w.close()


def test_reconcile_switches_with_nothing_stored_changes_nothing(world: World) -> None:
    world.fake.set_processing(False)  # not through Traffic: no wanted state, nothing to restore
    assert Traffic(world.fake, world.store, "staging").reconcile_switches() == []
    assert not world.fake.get_processing()


# --- the FakePlatform's own rules (what every test above relies on) -----------------------------------------
def test_fake_numbers_each_functions_versions_on_its_own_and_keeps_unchanged_ones(world: World) -> None:
    r1 = world.fake.releases()[0]
    assert r1.versions == {"api": "1", "worker": "11", "repair": "21"}
    assert world.fake.publish(world.manifest.source_dir) == r1, "same content: the same release"
    r2 = world.release("worker")
    assert (r2.id, r2.versions) == (2, {"api": "1", "worker": "12", "repair": "21"})
    r3 = world.fake.republish(r2.id, {"BACKOUT_FAULT": "crash"})
    assert (r3.id, r3.versions) == (3, {"api": "2", "worker": "13", "repair": "22"}), "new configuration everywhere"


def test_fake_alias_sends_exactly_the_canary_weight_evenly(world: World) -> None:
    world.release("worker")
    world.fake.set_weights("worker", "11", "12", 10)
    picks = [r.version for r in world.fake.traffic("worker", 100)]
    assert picks.count("12") == 10 and picks[9] == picks[19] == "12"


def test_fake_metrics_are_epoch_aligned_counted_and_within_getmetricdata_limits(world: World) -> None:
    from backout.platforms.base import MAX_QUERIES, NS_LAMBDA, MetricQuery

    t0 = world.clock.now()
    world.fake.traffic("worker", 3, at=t0 - t0 % 60 + 59)  # the last second of a minute
    world.fake.traffic("worker", 2, at=t0 - t0 % 60 + 60)  # the first of the next
    q = MetricQuery.of(NS_LAMBDA, "Invocations", {"FunctionName": "worker", "ExecutedVersion": "11"},
                       t0 - t0 % 60, t0 - t0 % 60 + 120, 60)
    calls = world.fake.metrics_calls
    (series,) = world.fake.metrics([q])
    assert [(p.timestamp % 60, p.value) for p in series] == [(0, 3.0), (0, 2.0)]
    assert world.fake.metrics_calls == calls + 1
    with pytest.raises(UsageError, match="501 metric queries in one call"):
        world.fake.metrics([q] * (MAX_QUERIES + 1))
    with pytest.raises(ValueError, match="metric period 7 s"):
        MetricQuery.of(NS_LAMBDA, "Invocations", {}, 0, 60, 7)


def test_a_fake_platform_is_a_platform_with_capacity(tmp_path: Path) -> None:
    from backout.platforms.base import Capacity, Hosted, Platform, PrometheusExport

    fake = FakePlatform(write_manifest(tmp_path))
    assert isinstance(fake, Platform) and isinstance(fake, Capacity)
    assert not isinstance(fake, Hosted) and not isinstance(fake, PrometheusExport)
