"""A drill's synthetic traffic is tagged, writes only where the manifest allows, and is cleaned up: the
service's queues and DLQ are left as the drill found them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backout.runbooks import drill
from fakes import FakePlatform, World, write_manifest


class ClockTime:
    """The drill's `time` module on the FakeClock: its sleeps move the clock (and yield briefly)."""

    def __init__(self, fake: FakePlatform) -> None:
        self.fake = fake

    def time(self) -> float:
        return self.fake.clock.now()

    def sleep(self, seconds: float) -> None:
        self.fake.clock.advance(seconds)
        time.sleep(min(seconds, 0.01))


def pumped_traffic(fake: FakePlatform) -> type:
    class Traffic(drill.SyntheticTraffic):
        """The real synthetic traffic's tagged messages; its requests in bursts through the fake gateway,
        and the fake's event source mappings pumped as the clock moves."""

        def start(self) -> None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()

        def stop(self) -> None:
            self._stop.set()
            self._t.join(5)

        def _run(self) -> None:
            while not self._stop.wait(0.01):
                for r in fake.traffic("api", 10):
                    self.stats["requests"] += 1
                    self.stats["http_errors"] += not r.ok
                self.send_messages()
                fake.pump()

    return Traffic


def test_synthetic_messages_go_only_to_queues_marked_for_drills_with_the_drills_tag(tmp_path: Path) -> None:
    sent: list[tuple[str, str, dict[str, str]]] = []

    def send(q: str, body: str, attributes: dict[str, str]) -> str:
        sent.append((q, body, attributes))
        return "id"

    plain = drill.SyntheticTraffic(write_manifest(tmp_path / "a"), "http://127.0.0.1:1", send, "drill-x")
    assert plain.queues == [] and plain.paths == ["/health", "/items/drill"]
    plain.send_messages()
    assert sent == []  # by default a drill writes into no queue of the service
    marked = drill.SyntheticTraffic(write_manifest(tmp_path / "b", jobs="drill = true"), "http://127.0.0.1:1", send,
                                    "drill-x")
    marked.send_messages()
    assert sent == [("jobs", '{"backout_drill": true, "seq": 1}', {"backout-drill": "drill-x"})]


def test_the_gateway_counts_tagged_requests_apart(tmp_path: Path) -> None:
    from backout.platforms.base import NS_API, MetricQuery
    from backout.platforms.local.gateway import Gateway, Route
    from backout.platforms.local.metrics import MetricStore

    store = MetricStore()
    gw = Gateway([Route("api", "GET", "/health")], lambda fn, ev: None, store, "svc", "staging", 1000,  # type: ignore[arg-type, return-value]
                 drill_throttle())
    now = time.time()
    gw._record(200, "3", 1.0)
    gw._record(200, "3", 1.0, drill=True)
    dimsets = ({"ApiName": "svc", "Stage": "staging"}, {"ApiName": "svc", "Stage": "staging", "Origin": "drill"})
    q = [MetricQuery.of(NS_API, "Count", dims, now - 5, now + 5, 10, "Sum") for dims in dimsets]
    assert [sum(p.value for p in store.query(x)) for x in q] == [2.0, 1.0]


def drill_throttle() -> Any:
    from backout.platforms.base import Throttle

    return Throttle(100.0, 100)


def test_a_drill_leaves_the_services_queues_and_dlq_as_it_found_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, jobs="drill = true")
    try:
        before = {q: w.fake.peek_messages(q) for q in ("jobs", "jobs-dlq")}
        monkeypatch.setattr(drill, "time", ClockTime(w.fake))
        monkeypatch.setattr(drill, "SyntheticTraffic", pumped_traffic(w.fake))
        out = drill.drill(w.ctx, "errors=0.5", target_seconds=30, allow_prod=False, who="alice")
        assert out["passed"], out["failures"]
        assert out["detail"]["traffic"]["messages"] > 0
        tag = out["detail"]["tag"]
        cleaned = out["detail"]["cleaned_up"]
        assert set(cleaned) == {"jobs", "jobs-dlq"} and sum(cleaned.values()) > 0, cleaned  # left by the drill
        assert {q: w.fake.peek_messages(q) for q in ("jobs", "jobs-dlq")} == before == {"jobs": [], "jobs-dlq": []}
        assert tag.startswith("drill-") and out["detail"]["verify"]["ok"]
    finally:
        w.close()
