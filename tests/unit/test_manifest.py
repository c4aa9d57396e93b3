"""The manifest: the SDA's parses; every kind of mistake is one line naming file, key path, problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backout.manifest import ManifestError, load_manifest, parse_duration

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[service]
name = "svc"
source = "."
[functions.api]
handler = "app.handler"
events = [{ http = "GET /items/{id}" }]
[functions.worker]
handler = "app.work"
timeout = "5s"
events = [{ queue = "jobs", batch_size = 5 }]
[queues.jobs]
visibility_timeout = "5s"
max_receive_count = 3
dead_letter_queue = "dlq"
[queues.dlq]
[environments.staging]
gateway_port = 0
control_port = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "backout.toml"
    p.write_text(text)
    return p


def test_sda_manifest_loads() -> None:
    m = load_manifest(ROOT / "backout.toml")
    assert m.service.name == "security-assistant"
    assert {"api", "worker", "dlq_processor"} <= set(m.functions)
    assert m.queues["processing"].dead_letter_queue == "processing-dlq"
    assert m.queues["processing"].max_receive_count == 3
    assert m.environments["prod"].error_rate_threshold == 5.0
    assert m.environments["staging"].error_rate_threshold == 10.0
    assert m.environments["prod"].require_approval
    assert [e.path for e in m.functions["api"].http_events][:2] == ["/process-drawing", "/status/{job_id}"]


def test_good_manifest_and_durations(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, GOOD))
    assert m.queues["jobs"].visibility_timeout == 5.0
    assert m.functions["worker"].queue_events[0].batch_size == 5
    assert m.state_dir("staging") == (tmp_path / ".backout" / "staging").resolve()
    assert parse_duration("250ms") == 0.25 and parse_duration("5m") == 300 and parse_duration(3) == 3.0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("max_receive_count = 3", "max_receive_count = 0"), "queues.jobs.max_receive_count"),
        (('dead_letter_queue = "dlq"', 'dead_letter_queue = "nope"'), "no queue named 'nope'"),
        (('handler = "app.handler"', 'handler = "nodot"'), "functions.api.handler"),
        (('http = "GET /items/{id}"', 'http = "FETCH items"'), "must look like 'POST /path/{param}'"),
        (('queue = "jobs"', 'queue = "missing"'), "no queue named 'missing'"),
        (("gateway_port = 0", "gateway_port = 70000"), "environments.staging.gateway_port"),
        (('visibility_timeout = "5s"', 'visibility_timeout = "soon"'), "not a duration"),
        (('visibility_timeout = "5s"', 'visibility_timeout = "4s"'),
         "functions.worker.timeout: 5 s is longer than queues.jobs.visibility_timeout (4 s)"),
        (
            ("[queues.dlq]", "[queues.dlq]\ncolour = 'red'"),
            "queues.dlq.colour: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_manifest_one_line(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    p = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: ")
    assert expected in msg


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(write(tmp_path, "[service\nname="))
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.toml")


def test_cli_bad_manifest_exit_2_no_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace("max_receive_count = 3", "max_receive_count = -1"))
    r = subprocess.run(
        [sys.executable, "-m", "backout.cli.main", "--manifest", str(p), "queue", "stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "queues.jobs.max_receive_count" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_unknown_env_exit_2(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    r = subprocess.run(
        [sys.executable, "-m", "backout.cli.main", "--manifest", str(p), "queue", "stats", "--env", "qa"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no environment named 'qa'" in r.stderr
