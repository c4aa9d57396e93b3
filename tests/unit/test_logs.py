"""The control plane's JSON log lines (backout.logs), through real logging and a real `up` process."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backout import logs

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure() changes the root logger of this process: put it back after each test."""
    root = logging.getLogger()
    level = root.level
    yield
    if logs._installed is not None:
        root.removeHandler(logs._installed)
        logs._installed.close()
        logs._installed = None
    root.setLevel(level)


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_record_is_one_json_line_with_timestamp_level_logger_event_and_extras() -> None:
    out = io.StringIO()
    logs.configure(logging.INFO, out)
    before = datetime.now(UTC).replace(microsecond=0)
    logging.getLogger("backout.control.notify").warning(
        "notification %s to %s failed (attempt %d of %d)", "rolled_back", "json://127.0.0.1/hook", 1, 4,
        extra={"deployment_id": "d-0007", "versions": [6, 7], "arrow": "v6 → v7"},
    )
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("}\n")
    assert "v6 → v7" in text  # not \u2192: readable with grep and less
    (doc,) = lines(text)
    assert list(doc) == ["timestamp", "level", "logger", "event", "deployment_id", "versions", "arrow"]
    assert TIMESTAMP.match(doc["timestamp"])
    assert before <= datetime.fromisoformat(doc["timestamp"]) <= datetime.now(UTC)
    assert doc == {
        "timestamp": doc["timestamp"],
        "level": "WARNING",
        "logger": "backout.control.notify",
        "event": "notification rolled_back to json://127.0.0.1/hook failed (attempt 1 of 4)",
        "deployment_id": "d-0007",
        "versions": [6, 7],
        "arrow": "v6 → v7",
    }


def test_levels_filter_and_every_logger_is_rendered() -> None:
    out = io.StringIO()
    logs.configure("WARNING", out)
    logging.getLogger("backout.supervisor").info("not shown")
    logging.getLogger("backout.supervisor").error("periodic %s failed", "tick")
    logging.getLogger("apprise").warning("a library's warning")  # as logging.basicConfig did: root
    assert [(d["level"], d["logger"], d["event"]) for d in lines(out.getvalue())] == [
        ("ERROR", "backout.supervisor", "periodic tick failed"),
        ("WARNING", "apprise", "a library's warning"),
    ]


def test_an_exception_is_one_escaped_string_on_the_same_line() -> None:
    out = io.StringIO()
    logs.configure(logging.INFO, out)
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("backout.supervisor").exception("periodic %s failed", "sample_queues", extra={"n": 3})
    (doc,) = lines(out.getvalue())
    assert doc["event"] == "periodic sample_queues failed" and doc["level"] == "ERROR" and doc["n"] == 3
    assert doc["exception"].startswith("Traceback (most recent call last):\n")
    assert doc["exception"].endswith("KeyError: 'missing'")


def test_a_file_target_appends_and_a_second_configure_replaces_the_handler(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.log"
    path.write_text("an earlier line\n")
    first = logs.configure(logging.INFO, file=path)
    logging.getLogger("backout.a").info("one")
    second = logs.configure(logging.INFO, file=path)
    assert first is not second and first not in logging.getLogger().handlers
    assert first.stream is None  # type: ignore[attr-defined]  # closed by the second configure
    logging.getLogger("backout.a").info("two")
    second.flush()
    text = path.read_text().splitlines()
    assert text[0] == "an earlier line"
    assert [json.loads(line)["event"] for line in text[1:]] == ["one", "two"]  # no doubled line
    with pytest.raises(ValueError, match="stream or a file"):
        logs.configure(logging.INFO, io.StringIO(), file=path)


def test_a_fresh_process_logs_json_lines_to_stderr_by_default() -> None:
    """What `backout up` does (its stderr is supervisor.log when detached), in a new interpreter."""
    code = (
        "import logging\n"
        "from backout import logs\n"
        "logs.configure(logging.WARNING)\n"
        "logging.getLogger('backout.supervisor').warning('%s up', 'staging', extra={'pid': 42})\n"
        "logging.getLogger('backout.supervisor').info('hidden')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    (doc,) = lines(r.stderr)
    assert (doc["level"], doc["logger"], doc["event"]) == ("WARNING", "backout.supervisor", "staging up")
    assert doc["pid"] == 42
