"""The known-answer hook against a real HTTP server that throttles: a 429 is retried with backoff (a
busy service is not a wrong answer), a wrong schedule still fails, and a throttle that never ends is
reported as the upload's status once the hook's time is up."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sda.known_answer import check

ROOT = Path(__file__).resolve().parents[2]
DRAWING = ROOT / "examples" / "drawings" / "sample_01.pdf"
TRUTH = ROOT / "examples" / "drawings" / "sample_01.json"


class FakeSda(http.server.ThreadingHTTPServer):
    """The SDA's three routes the hook uses, answering 429 to the first `throttle` requests of each."""

    def __init__(self, schedule: dict[str, Any], throttle: int) -> None:
        self.schedule, self.throttle, self.seen = schedule, throttle, {"POST": 0, "status": 0, "download": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, kind: str, code: int, doc: dict[str, Any]) -> None:
                outer.seen[kind] += 1
                if outer.seen[kind] <= outer.throttle:
                    code, doc = 429, {"message": "Too Many Requests"}
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer("POST", 202, {"job_id": "j-1"})

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/status/"):
                    self._answer("status", 200, {"status": "completed", "processed_by": {"version": "7"}})
                else:
                    self._answer("download", 200, {"schedule": outer.schedule})

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[FakeSda] = []

    def start(schedule: dict[str, Any], throttle: int) -> FakeSda:
        s = FakeSda(schedule, throttle)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_throttled_requests_are_retried_until_the_answer(serve: Any) -> None:
    s = serve(json.loads(TRUTH.read_text()), throttle=2)
    assert check(s.url, DRAWING, TRUTH, timeout=30) == []
    assert s.seen == {"POST": 3, "status": 3, "download": 3}  # two 429s each, then the answer


def test_a_wrong_schedule_still_fails(serve: Any) -> None:
    truth = json.loads(TRUTH.read_text())
    wrong = {**truth, "doors": truth["doors"][1:]}
    s = serve(wrong, throttle=1)
    problems = check(s.url, DRAWING, TRUTH, timeout=30)
    assert problems == [f"job j-1 (v7): missing door {truth['doors'][0]['id']}"]


def test_a_throttle_that_outlasts_the_timeout_is_the_failure(serve: Any) -> None:
    s = serve(json.loads(TRUTH.read_text()), throttle=10_000)
    assert check(s.url, DRAWING, TRUTH, timeout=0.5) == ['upload → 429: {"message": "Too Many Requests"}']


def test_an_http_smoke_test_asks_again_while_throttled(serve: Any, tmp_path: Path) -> None:
    """The `http` smoke check (the `smoke` hook after 100 %) on a busy service: 429s, then the answer."""
    from backout.control.smoke import _run_one
    from backout.manifest import SmokeSpec

    s = serve({}, throttle=2)
    r = _run_one(SmokeSpec(http="GET /status/j-1"), tmp_path, "staging", s.url, timeout=30)
    assert r.ok and r.detail == "GET /status/j-1 → 200" and s.seen["status"] == 3
    busy = serve({}, throttle=10_000)
    r = _run_one(SmokeSpec(http="GET /status/j-1"), tmp_path, "staging", busy.url, timeout=0.5)
    assert not r.ok and r.detail.startswith("GET /status/j-1 → 429 (expected 200)")
