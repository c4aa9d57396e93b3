"""Notifications delivered by apprise to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backout.control.notify import KINDS, DeliveryResult, Notification, Notifier
from backout.errors import UsageError
from backout.manifest import NotifySpec

EVIDENCE = "error rate 31.0 % (9/29) > 5 % over 60 s on worker v7"


class Receiver:
    """A webhook endpoint: records every JSON body; answers `fail_first` requests with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict] = []
        self.paths: list[str] = []
        self.requests = 0
        self.times: list[float] = []  # time.monotonic() of each request's arrival
        self.fail_first = fail_first
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.times.append(time.monotonic())
                outer.requests += 1
                if outer.requests <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.received.append(json.loads(body))
                outer.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                outer.arrived.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hooks/backout") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rolled_back() -> Notification:
    return Notification(
        kind="rolled_back", environment="prod", deployment_id="d-0007", stable="r6", target="r7",
        reason="alarm error-rate:worker", evidence=[EVIDENCE], incident_id="INC-0003",
        command="backout incident show INC-0003 --env prod", service="security-assistant",
    )


def test_rollback_notification_reaches_a_real_receiver_with_its_evidence(receiver: Receiver) -> None:
    results: list[DeliveryResult] = []
    with Notifier([NotifySpec(url=receiver.url())], on_result=results.append) as notifier:
        assert notifier.notify(rolled_back()) == 1
        assert notifier.flush(10)
    (msg,) = receiver.received
    assert receiver.paths == ["/hooks/backout"]
    assert msg["type"] == "failure"  # critical
    assert msg["title"] == "[security-assistant/prod] deployment d-0007 rolled back to r6"
    assert EVIDENCE in msg["message"]
    assert "Releases: stable r6, new r7" in msg["message"]
    assert "backout incident show INC-0003 --env prod" in msg["message"]
    assert "Reason: alarm error-rate:worker" in msg["message"]
    assert [(r.ok, r.attempts) for r in results] == [(True, 1)]
    assert "127.0.0.1" in results[0].target


def test_min_severity_filters_per_target(receiver: Receiver) -> None:
    critical_only = Receiver()
    try:
        specs = [NotifySpec(url=receiver.url("all")), NotifySpec(url=critical_only.url("pager"),
                                                                  min_severity="critical")]
        with Notifier(specs) as notifier:
            started = Notification("deployment_started", "prod", deployment_id="d-0007", stable="r6",
                                   target="r7")
            assert notifier.notify(started) == 1
            assert notifier.notify(rolled_back()) == 2
            assert notifier.notify(Notification("approval_needed", "prod", deployment_id="d-0008",
                                                stable="r6", target="r8")) == 1
            assert notifier.flush(10)
        assert [m["title"] for m in receiver.received] == [
            "[prod] deployment d-0007 started: r6 → r7",
            "[security-assistant/prod] deployment d-0007 rolled back to r6",
            "[prod] deployment d-0008 waits for approval: r6 → r8",
        ]
        assert [m["type"] for m in receiver.received] == ["info", "failure", "warning"]
        assert len(critical_only.received) == 1 and EVIDENCE in critical_only.received[0]["message"]
    finally:
        critical_only.close()


def test_dead_target_never_blocks_and_is_retried_then_logged(receiver: Receiver,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backout.control.notify")
    dead = f"json://127.0.0.1:{closed_port()}/hook"
    results: list[DeliveryResult] = []
    notifier = Notifier([NotifySpec(url=dead), NotifySpec(url=receiver.url())], attempts=3, backoff=0.1,
                        on_result=results.append)
    try:
        t0 = time.perf_counter()
        assert notifier.notify(rolled_back()) == 2
        elapsed = time.perf_counter() - t0
        assert elapsed < 0.05, f"notify() took {elapsed * 1000:.1f} ms"
        assert receiver.arrived.wait(5)  # the healthy target is not held up by the dead one
        assert notifier.flush(20)
    finally:
        notifier.close()
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].attempts == 3 and failed[0].error
    text = caplog.text
    assert text.count("failed (attempt") == 2  # attempts 1 and 2, then retried
    assert "rolled_back" in text and "failed after 3 attempts, giving up" in text
    assert len(receiver.received) == 1


def test_retries_with_backoff_until_the_target_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backout.control.notify")
    flaky = Receiver(fail_first=2)
    try:
        results: list[DeliveryResult] = []
        with Notifier([NotifySpec(url=flaky.url())], attempts=4, backoff=0.1, on_result=results.append) as n:
            t0 = time.monotonic()
            n.notify(rolled_back())
            assert n.flush(20)
            took = time.monotonic() - t0
        assert flaky.requests == 3 and len(flaky.received) == 1
        assert [(r.ok, r.attempts) for r in results] == [(True, 3)]
        assert took >= 0.1 + 0.2 - 0.02  # waited 0.1 s then 0.2 s between the attempts
        assert "retrying in 0.10 s" in caplog.text and "retrying in 0.20 s" in caplog.text
    finally:
        flaky.close()


def test_attempts_and_backoff_are_pinned(caplog: pytest.LogCaptureFixture) -> None:
    """4 attempts, waits of backoff·2^(n-1) capped at max_backoff, no jitter; the last failure is
    reported with the attempt count and apprise's reason."""
    caplog.set_level(logging.INFO, logger="backout.control.notify")
    down = Receiver(fail_first=100)  # answers every request with 500
    try:
        results: list[DeliveryResult] = []
        with Notifier([NotifySpec(url=down.url())], attempts=4, backoff=0.1, max_backoff=0.25,
                      on_result=results.append) as n:
            n.notify(rolled_back())
            assert n.flush(20)
        assert down.requests == 4 and down.received == []
        assert results == [DeliveryResult(results[0].target, results[0].notification, False, 4,
                                          "the service refused it or could not be reached")]
        gaps = [b - a for a, b in zip(down.times, down.times[1:], strict=False)]
        for gap, wait in zip(gaps, [0.1, 0.2, 0.25], strict=True):
            assert wait - 0.01 <= gap < wait + 1.0, gaps  # the cap itself is pinned by the log below
        ours = [r for r in caplog.records if r.name == "backout.control.notify"]
        retries = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
        assert [m.rsplit("; ", 1)[1] for m in retries] == [
            "retrying in 0.10 s", "retrying in 0.20 s", "retrying in 0.25 s"
        ]
        assert [m.split(": ", 1)[0].rsplit(" ", 4)[1:] for m in retries] == [
            ["(attempt", "1", "of", "4)"], ["(attempt", "2", "of", "4)"], ["(attempt", "3", "of", "4)"]
        ]
        assert [r.getMessage().split(": ", 1)[0] for r in ours if r.levelno == logging.ERROR] == [
            f"notification rolled_back to {results[0].target} failed after 4 attempts, giving up"
        ]
    finally:
        down.close()


def test_close_cuts_a_backoff_short_and_reports_the_attempts_made(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backout.control.notify")
    down = Receiver(fail_first=100)
    try:
        results: list[DeliveryResult] = []
        n = Notifier([NotifySpec(url=down.url())], attempts=3, backoff=30.0, on_result=results.append)
        n.notify(rolled_back())
        deadline = time.monotonic() + 5
        while not any("retrying in 30.00 s" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no retry was scheduled"
            time.sleep(0.01)
        t0 = time.monotonic()
        n.close(timeout=0.2)
        assert time.monotonic() - t0 < 2  # not 30 s
        assert down.requests == 1
        assert [(r.ok, r.attempts, r.error) for r in results] == [
            (False, 1, "the service refused it or could not be reached")
        ]
        assert "dropped at shutdown after 1 attempt(s)" in caplog.text
    finally:
        down.close()


def test_invalid_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a URL apprise understands"):
        Notifier([NotifySpec(url="nosuchservice://token@host")])


def test_every_kind_renders_a_title_and_body() -> None:
    for kind in KINDS:
        n = Notification(kind, "staging", deployment_id="d-0002", stable="r1", target="r2",
                         weight=10, hook="pre-traffic", passed=True, incident_id="INC-0001",
                         evidence=["DLQ arrivals 1 > 0 over 31 s since the deployment started on jobs-dlq"],
                         command="backout deployment show d-0002 --env staging")
        assert n.title.startswith("[staging]") and "?" not in n.title, n.title
        assert "DLQ arrivals 1 > 0" in n.body and "backout deployment show d-0002" in n.body
    assert Notification("step_reached", "prod", deployment_id="d-1", target="r7", weight=10).title \
        == "[prod] deployment d-1: 10 % on r7"
    assert Notification("hook_failed", "prod", deployment_id="d-1", hook="pre-traffic").severity == "critical"
    assert Notification("drill_result", "staging", passed=False).severity == "warning"
    assert Notification("drill_result", "staging", passed=False).title == "[staging] rollback drill FAILED"
    assert Notification("stopped", "prod", severity="info").severity == "info"
    assert Notification("succeeded", "prod", evidence="one line").evidence == ("one line",)
    with pytest.raises(ValueError, match="unknown notification kind"):
        Notification("exploded", "prod")
    with pytest.raises(ValueError, match="severity"):
        Notification("stopped", "prod", severity="fatal")


def test_notify_without_targets_and_after_close() -> None:
    n = Notifier([])
    assert n.notify(rolled_back()) == 0 and n.flush(0.1)
    n.close()
    assert n.notify(rolled_back()) == 0
