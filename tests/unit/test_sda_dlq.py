"""The DLQ processor: classified failures (timeout, crash, repeated error), message kept, JobDeadLettered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sda import api, dlq, worker
from sda.events import LambdaContext, response_json, sqs_event, upload_event
from sda.jobs import new_job, new_job_id
from sda_local import local_sda
from sda_local import sda_store as store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drawings" / "sample_01.pdf"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    yield from local_sda(tmp_path / "env", monkeypatch)


def submit() -> tuple[str, str]:
    r = api.handler(upload_event(SAMPLE.read_bytes()), LambdaContext())
    assert r["statusCode"] == 202
    job_id = response_json(r)["job_id"]
    return job_id, json.dumps({"job_id": job_id, "correlation_id": "c"})


def dead_letter(body: str, last_error: str | None = None) -> dict[str, Any]:
    event = sqs_event([body], receive_count=3, queue="processing-dlq")
    if last_error:
        event["Records"][0]["messageAttributes"] = {"LastError": {"stringValue": last_error, "dataType": "String"}}
    return event


def emf_count(output: str, name: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    return [d for d in docs if name in d]


def test_repeated_transient_errors_through_the_real_queues(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Three failed receives move the message to the DLQ; the processor fails the job with the reason."""
    from backout.platforms.local.mappings import sqs_record
    from backout.platforms.local.queues import QueueStore

    job_id, _ = submit()
    job = store().get_job(job_id)
    folder = Path(env["BACKOUT_DATA_DIR"]) / "files" / job["client_slug"] / job["project_slug"] / job_id
    (folder / "schedule.xlsx").mkdir(parents=True)  # the output cannot be written: a storage fault

    qs = QueueStore(Path(env["BACKOUT_PLATFORM_DB"]))
    try:
        original = None
        for receive in range(1, 4):
            [m] = qs.receive("processing", 1, visibility_timeout=30)
            assert m.receive_count == receive
            original = original or m.body
            try:
                worker.handler({"Records": [sqs_record(m)]}, LambdaContext(timeout_s=120))
                qs.delete("processing", m.receipt_handle)
            except Exception as exc:  # what the event source mapping does with a function error
                qs.record_failure("processing", m.receipt_handle, f"{type(exc).__name__}: {exc}", 0)
        assert qs.receive("processing", 1) == []  # past max_receive_count: moved, not returned
        [d] = qs.receive("processing-dlq", 10)
        capsys.readouterr()
        assert dlq.handler({"Records": [sqs_record(d)]}, LambdaContext()) == {"batchItemFailures": []}
    finally:
        qs.close()
    job = store().get_job(job_id)
    assert job["status"] == "failed"
    assert job["error"]["reason"] == "repeated_transient_error" and job["error"]["stage"] == "excel_generation"
    assert "3 attempts failed" in job["error"]["message"] and "schedule.xlsx" in job["error"]["message"]
    assert job["dead_letter"]["message_body"] == original
    assert job["dead_letter"]["classification"] == "repeated_transient_error"
    assert [a["outcome"] for a in job["attempts"]] == ["transient_error"] * 3
    out = capsys.readouterr().out
    classified = [d for d in emf_count(out, "JobDeadLettered") if d.get("Classification")]
    assert [d["Classification"] for d in classified] == ["repeated_transient_error"]
    status = response_json(
        api.handler(
            {"httpMethod": "GET", "path": f"/status/{job_id}", "headers": {}, "requestContext": {}, "body": None},
            LambdaContext(),
        )
    )
    assert status["status"] == "failed" and status["error"]["reason"] == "repeated_transient_error"


def _worker_process(body: str, faults: str, timeout_s: float) -> subprocess.Popen[str]:
    code = (
        "import sys\n"
        "from sda import worker\n"
        "from sda.events import LambdaContext, sqs_event\n"
        f"worker.handler(sqs_event([{body!r}]), LambdaContext(timeout_s={timeout_s}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "SDA_FAULTS": faults},
    )


def test_timeout_is_classified_from_the_watchdog(env: dict[str, str]) -> None:
    job_id, body = submit()
    proc = _worker_process(body, "worker_hang", timeout_s=2.0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            attempts = store().get_job(job_id)["attempts"]
            if attempts and attempts[-1]["outcome"] == "timeout":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the watchdog never recorded the timeout")
    finally:
        proc.kill()  # the runtime stops the invocation at its deadline
        proc.wait(30)
    dlq.handler(dead_letter(body), LambdaContext())
    job = store().get_job(job_id)
    assert job["status"] == "failed" and job["error"]["reason"] == "timeout"
    assert job["error"]["stage"] == "drawing_analysis"
    assert job["dead_letter"]["message_body"] == body


def test_a_killed_worker_is_classified_as_a_crash(env: dict[str, str]) -> None:
    job_id, body = submit()
    proc = _worker_process(body, "worker_crash", timeout_s=60)
    assert proc.wait(60) == 137, proc.stderr.read() if proc.stderr else ""
    assert store().get_job(job_id)["attempts"][-1]["outcome"] == "started"  # no outcome: it died
    dlq.handler(dead_letter(body), LambdaContext())
    job = store().get_job(job_id)
    assert job["error"]["reason"] == "crash" and "crash or out of memory" in job["error"]["message"]
    assert job["error"]["stage"] == "drawing_analysis"


@pytest.mark.parametrize(
    ("last_error", "expected"),
    [
        ("Task timed out: abc Task timed out after 120.00 seconds", "timeout"),
        ("Runtime.ExitError: RequestId: abc Error: Runtime exited with error: signal: killed", "crash"),
        ("MemoryError: ", "crash"),
        ("RuntimeError: injected fault", "repeated_transient_error"),
        (None, "no_attempt"),
    ],
)
def test_the_platform_error_classifies_jobs_without_attempts(
    env: dict[str, str], last_error: str | None, expected: str
) -> None:
    job_id, body = submit()
    dlq.handler(dead_letter(body, last_error), LambdaContext())
    job = store().get_job(job_id)
    assert job["status"] == "failed" and job["error"]["reason"] == expected
    assert job["error"]["code"] == "DEAD_LETTERED" and job["dead_letter"]["message_body"] == body


def test_recorded_memory_errors_are_crashes(env: dict[str, str]) -> None:
    job = new_job(new_job_id(), "Acme", "Tower")
    job["attempts"] = [{"attempt_id": "a", "outcome": "out_of_memory", "stage": "drawing_analysis"}]
    store().create_job(job)
    dlq.handler(dead_letter(json.dumps({"job_id": job["job_id"]})), LambdaContext())
    failed = store().get_job(job["job_id"])
    assert failed["error"]["reason"] == "crash" and "out of memory" in failed["error"]["message"]


def test_a_completed_job_keeps_its_result(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    job_id, body = submit()
    worker.handler(sqs_event([body]), LambdaContext(timeout_s=120))
    capsys.readouterr()
    dlq.handler(dead_letter(body, "Task timed out after 120.00 seconds"), LambdaContext())
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["error"] is None
    assert job["dead_letter"]["message_body"] == body
    assert emf_count(capsys.readouterr().out, "JobDeadLettered")


def test_unknown_jobs_are_acknowledged_and_counted(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    event = sqs_event(["not json", json.dumps({"job_id": "job_20250101000000000_none"})], queue="processing-dlq")
    assert dlq.handler(event, LambdaContext()) == {"batchItemFailures": []}
    docs = emf_count(capsys.readouterr().out, "JobDeadLettered")
    assert [d["Classification"] for d in docs if d.get("Classification")] == ["unknown_job", "unknown_job"]


def test_storage_outage_leaves_the_message_on_the_dlq(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, body = submit()
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    monkeypatch.setenv("BACKOUT_DATA_DIR", str(blocked))
    with pytest.raises(Exception, match="unusable"):
        dlq.handler(dead_letter(body), LambdaContext())
    monkeypatch.setenv("BACKOUT_DATA_DIR", env["BACKOUT_DATA_DIR"])
    assert store().get_job(job_id)["status"] == "queued"
