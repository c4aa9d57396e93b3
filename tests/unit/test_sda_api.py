"""The api function, called in-process with real API Gateway events, real multipart bodies, real storage."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sda import api, queue, storage, worker
from sda.events import (
    LambdaContext,
    api_event,
    response_body,
    response_header,
    response_json,
    sqs_event,
    upload_event,
)
from sda.jobs import is_job_id
from sda_local import call_api as call
from sda_local import local_sda

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drawings" / "sample_01.pdf"
SHARED = REPO.parent / "shared" / "drawings"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    yield from local_sda(tmp_path / "env", monkeypatch)


def drawing() -> bytes:
    return SAMPLE.read_bytes()


def queued_messages(env: dict[str, str]) -> list[dict[str, Any]]:
    from backout.platforms.local.queues import QueueStore

    store = QueueStore(Path(env["BACKOUT_PLATFORM_DB"]))
    try:
        out = []
        while batch := store.receive("processing", 10, visibility_timeout=300):
            out += [json.loads(m.body) for m in batch]
        return out
    finally:
        store.close()


def assert_error(response: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    body = response_json(response)
    assert response["statusCode"] == status, body
    assert body["error_code"] == code, body
    assert set(body) >= {"error", "error_code", "timestamp", "correlation_id"}
    assert response_header(response, "X-Correlation-ID") == body["correlation_id"]
    return body


def test_upload_is_accepted_stored_and_queued(env: dict[str, str]) -> None:
    data = drawing()
    r = call(
        upload_event(
            data,
            client_name="St Mary's Hospital",
            project_name="Emergency Wing",
            filename="Level 2.pdf",
            headers={"X-Correlation-ID": "trace-123"},
        )
    )
    body = response_json(r)
    assert r["statusCode"] == 202, body
    assert body["status"] == "queued" and is_job_id(body["job_id"])
    assert body["correlation_id"] == "trace-123" == response_header(r, "X-Correlation-ID")
    assert isinstance(body["estimated_time_seconds"], int) and body["estimated_time_seconds"] > 0
    assert body["message"]
    job = storage.get_storage(__import__("sda.config").config.load()).get_job(body["job_id"])
    assert job["status"] == "queued" and job["client_name"] == "St Mary's Hospital"
    assert job["input_files"]["drawing"]["original_name"] == "Level 2.pdf"
    assert job["submitted_by"]["version"] == "7"
    stored = Path(env["BACKOUT_DATA_DIR"]) / "files" / "st_mary_s_hospital" / "emergency_wing" / body["job_id"]
    assert (stored / "drawing.pdf").read_bytes() == data
    assert queued_messages(env) == [
        {
            "job_id": body["job_id"],
            "company_client_job": job["company_client_job"],
            "correlation_id": "trace-123",
            "submitted_at": job["created_at"],
        }
    ]


def test_bad_requests_are_400(env: dict[str, str]) -> None:
    body, ctype = b'{"drawing": "x"}', "application/json"
    assert_error(
        call(api_event("POST", "/process-drawing", body=body, headers={"Content-Type": ctype})), 400, "NOT_MULTIPART"
    )
    assert_error(call(api_event("POST", "/process-drawing", body=b"x")), 400, "NOT_MULTIPART")
    assert_error(call(upload_event(None)), 400, "MISSING_FIELD")
    assert_error(call(upload_event(drawing(), client_name=None)), 400, "MISSING_FIELD")
    assert_error(call(upload_event(drawing(), project_name="   ")), 400, "MISSING_FIELD")
    assert_error(call(upload_event(b"")), 400, "EMPTY_FILE")
    truncated = upload_event(drawing())
    raw = response_body({"body": truncated["body"], "isBase64Encoded": True})
    truncated = api_event(
        "POST",
        "/process-drawing",
        body=raw[: len(raw) // 2],
        headers={"Content-Type": truncated["headers"]["Content-Type"]},
    )
    assert_error(call(truncated), 400, "MALFORMED_MULTIPART")
    assert queued_messages(env) == []


def test_too_large_is_413(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from sda import config

    assert config.load().max_upload_bytes == 100 * 1024 * 1024
    monkeypatch.setenv("SDA_MAX_UPLOAD_MB", "0.002")  # ~2 KB
    assert_error(call(upload_event(drawing())), 413, "PAYLOAD_TOO_LARGE")
    big = upload_event(b"%PDF-" + b"0" * 200_000)
    assert_error(call(big), 413, "PAYLOAD_TOO_LARGE")


def _encrypted(user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(drawing())))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_unprocessable_files_are_422(env: dict[str, str]) -> None:
    assert_error(call(upload_event(b"just some text, not a pdf", filename="notes.pdf")), 422, "NOT_A_PDF")
    corrupted = (
        (SHARED / "corrupted.pdf").read_bytes()
        if (SHARED / "corrupted.pdf").is_file()
        else (drawing()[: len(drawing()) // 2])
    )
    assert_error(call(upload_event(corrupted)), 422, "CORRUPT_PDF")
    assert_error(call(upload_event(_encrypted("secret"))), 422, "PASSWORD_PROTECTED")
    assert_error(
        call(upload_event(drawing(), context=("spec.bin", b"\x00\x01\x02 binary", "application/x"))),
        422,
        "UNSUPPORTED_CONTEXT_FILE",
    )
    assert queued_messages(env) == []
    # owner-password-only encryption opens without a password: accepted
    assert call(upload_event(_encrypted("")))["statusCode"] == 202


def test_path_traversal_names_never_escape_the_job_folder(env: dict[str, str], tmp_path: Path) -> None:
    names = ["../../x.pdf", "..\\..\\..\\windows\\evil.pdf", "/etc/passwd", "....//....//y.pdf"]
    ids = []
    for name in names:
        r = call(
            upload_event(
                drawing(),
                client_name="../../../tmp",
                project_name="../..",
                filename=name,
                context=(name + ".txt", b"Lock type: mortise", "text/plain"),
            )
        )
        assert r["statusCode"] == 202, response_json(r)
        ids.append(response_json(r)["job_id"])
    files_root = Path(env["BACKOUT_DATA_DIR"]) / "files"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    outside = [
        p
        for p in written
        if not p.is_relative_to(Path(env["BACKOUT_DATA_DIR"]))
        and p.name not in ("platform.db", "platform.db-wal", "platform.db-shm")
    ]
    assert outside == []
    for job_id in ids:
        folder = files_root / "tmp" / "unnamed" / job_id
        assert sorted(p.name for p in folder.iterdir()) == ["context.txt", "drawing.pdf"]
    assert not any(p.name in ("x.pdf", "evil.pdf", "passwd", "y.pdf") for p in written)
    job = storage.get_storage(__import__("sda.config").config.load()).get_job(ids[0])
    assert job["input_files"]["drawing"]["original_name"] == "x.pdf"


def test_unknown_jobs_routes_and_files_are_404(env: dict[str, str]) -> None:
    assert_error(call(api_event("GET", "/status/job_20250101000000000_abcd")), 404, "JOB_NOT_FOUND")
    assert_error(call(api_event("GET", "/status/..%2F..%2Fetc%2Fpasswd")), 404, "JOB_NOT_FOUND")
    assert_error(call(api_event("GET", "/download/job_20250101000000000_abcd/excel")), 404, "JOB_NOT_FOUND")
    assert_error(call(api_event("GET", "/nowhere")), 404, "NOT_FOUND")
    job_id = response_json(call(upload_event(drawing())))["job_id"]
    assert_error(call(api_event("GET", f"/download/{job_id}/passwords")), 404, "UNKNOWN_FILE_TYPE")
    assert_error(call(api_event("GET", f"/download/{job_id}/excel")), 409, "JOB_NOT_COMPLETED")


def test_status_progress_and_downloads_through_completion(env: dict[str, str]) -> None:
    from openpyxl import load_workbook

    job_id = response_json(call(upload_event(drawing())))["job_id"]
    status = response_json(call(api_event("GET", f"/status/{job_id}")))
    assert status["status"] == "queued" and status["progress"]["percentage"] == 0
    assert status["files"] == {} and status["error"] is None and status["processed_by"] is None

    [message] = queued_messages(env)
    worker.handler(sqs_event([json.dumps(message)]), LambdaContext(function_name="sda-worker", timeout_s=120))

    r = call(api_event("GET", f"/status/{job_id}"))
    status = response_json(r)
    assert r["statusCode"] == 200
    assert status["status"] == "completed" and status["progress"] == {"percentage": 100, "current_step": "Completed"}
    assert status["stages_completed"] == ["pdf_processing", "drawing_analysis", "excel_generation", "evaluation"]
    assert status["processed_by"]["version"] == "7"
    truth = json.loads(SAMPLE.with_suffix(".json").read_text())
    count = len(truth["doors"]) + len(truth["card_readers"]) + len(truth["exit_buttons"]) + len(truth["cameras"])
    assert status["files"]["components"]["count"] == count
    assert status["files"]["excel"]["download_url"] == f"/download/{job_id}/excel"
    aws_host = {"Host": "abc123.execute-api.us-east-1.amazonaws.com"}
    via_aws = response_json(call(api_event("GET", f"/status/{job_id}", headers=aws_host)))
    assert via_aws["files"]["excel"]["download_url"] == f"/prod/download/{job_id}/excel"
    assert status["summary"]["doors"] == len(truth["doors"])

    r = call(api_event("GET", f"/download/{job_id}/excel"))
    assert r["statusCode"] == 200 and r["isBase64Encoded"] is True
    assert response_header(r, "Content-Type") == ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    assert job_id in response_header(r, "Content-Disposition")
    wb = load_workbook(io.BytesIO(response_body(r)))
    assert wb.sheetnames == ["Schedule", "Summary"]
    rows = list(wb["Schedule"].iter_rows(values_only=True))
    assert rows[0] == ("Component ID", "Type", "Location", "Page", "Attributes", "Confidence", "Evidence")
    assert len(rows) == count + 1
    assert {r[0] for r in rows[1:]} >= {d["id"] for d in truth["doors"]}

    r = call(api_event("GET", f"/download/{job_id}/components"))
    assert r["statusCode"] == 200 and response_header(r, "Content-Type") == "application/json"
    document = response_json(r)
    assert document["count"] == count and document["schedule"]["metadata"]["total_doors"] == len(truth["doors"])


def test_500_concurrent_uploads_get_500_distinct_ids(env: dict[str, str]) -> None:
    data = drawing()
    events = [upload_event(data, client_name=f"Client {i % 7}") for i in range(500)]
    results: list[dict[str, Any]] = [{}] * 500
    barrier = threading.Barrier(500, timeout=60)

    def submit(i: int) -> None:
        barrier.wait()
        results[i] = call(events[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    refused = [response_json(r) for r in results if r.get("statusCode") != 202]
    assert [r.get("statusCode") for r in results] == [202] * 500, refused[:3]
    ids = {response_json(r)["job_id"] for r in results}
    assert len(ids) == 500
    stored = storage.get_storage(__import__("sda.config").config.load()).list_jobs(limit=10_000)
    assert {j["job_id"] for j in stored} == ids
    assert {m["job_id"] for m in queued_messages(env)} == ids


def test_an_id_collision_draws_a_new_id(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["job_20250101000000000_aaaa", "job_20250101000000000_aaaa", "job_20250101000000000_bbbb"])
    monkeypatch.setattr(api, "new_job_id", lambda: next(ids))
    first = response_json(call(upload_event(drawing())))["job_id"]
    second = response_json(call(upload_event(drawing())))["job_id"]
    assert (first, second) == ("job_20250101000000000_aaaa", "job_20250101000000000_bbbb")


def test_health(env: dict[str, str]) -> None:
    r = call(api_event("GET", "/health"))
    assert r["statusCode"] == 200
    assert response_json(r)["status"] == "healthy" and response_json(r)["version"] == "7"
    r = call(api_event("GET", "/health/detailed"))
    body = response_json(r)
    assert r["statusCode"] == 200 and body["status"] == "healthy", body
    assert set(body["checks"]) == {"storage", "table", "queue"}
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in body["checks"].values())
    # a direct invocation, as the runbook's `lambda invoke --payload '{"test": true}'`
    assert api.handler({"test": True}, LambdaContext())["status"] == "healthy"


def test_detailed_health_names_the_failing_dependency(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCESSING_QUEUE_URL", env["PROCESSING_QUEUE_URL"].replace("/processing", "/missing"))
    r = call(api_event("GET", "/health/detailed"))
    body = response_json(r)
    assert r["statusCode"] == 503 and body["failing"] == ["queue"] and "queue" in body["error"]
    assert "NonExistentQueue" in body["checks"]["queue"]["detail"]

    monkeypatch.setenv("PROCESSING_QUEUE_URL", env["PROCESSING_QUEUE_URL"])
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    monkeypatch.setenv("BACKOUT_DATA_DIR", str(blocked))
    body = response_json(r := call(api_event("GET", "/health/detailed")))
    assert r["statusCode"] == 503 and set(body["failing"]) == {"storage", "table"}

    monkeypatch.delenv("BACKOUT_DATA_DIR")
    body = response_json(r := call(api_event("GET", "/health/detailed")))
    assert r["statusCode"] == 503 and "BACKOUT_DATA_DIR" in body["checks"]["storage"]["detail"]


def test_queue_outage_is_503_and_the_job_is_marked_failed(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # a port nobody listens on: the queue's endpoint is down
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    body = assert_error(call(upload_event(drawing())), 503, "QUEUE_UNAVAILABLE")
    [job] = storage.get_storage(__import__("sda.config").config.load()).list_jobs()
    assert job["status"] == "failed" and job["error"]["stage"] == "queueing"
    assert body["correlation_id"] == job["correlation_id"]


def test_a_genuine_server_fault_is_500(env: dict[str, str]) -> None:
    job_id = response_json(call(upload_event(drawing())))["job_id"]
    from sda import config

    store = storage.get_storage(config.load())
    broken = {**store.get_job(job_id), "status": "processing", "stages_completed": 5}  # corrupted record
    store.put_job(broken)
    assert_error(call(api_event("GET", f"/status/{job_id}")), 500, "INTERNAL_ERROR")


def test_injected_api_faults_raise_out_of_the_handler(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDA_FAULTS", "api_error_rate=100")
    with pytest.raises(Exception, match="injected api fault"):
        call(api_event("GET", "/health"))


def test_aws_mode_end_to_end_with_sqs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from sda.storage.aws import AwsStorage

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STORAGE_MODE": "aws",
        "SDA_JOBS_TABLE": "jobs",
        "SDA_FILES_BUCKET": "files",
        "AWS_LAMBDA_FUNCTION_VERSION": "12",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage.reset_cache()
    queue.reset_cache()
    try:
        with mock_aws():
            AwsStorage("jobs", "files").create_resources()
            sqs = boto3.client("sqs")
            url = sqs.create_queue(QueueName="security-assistant-processing-test")["QueueUrl"]
            monkeypatch.setenv("PROCESSING_QUEUE_URL", url)
            r = call(upload_event(drawing(), client_name="Acme"))
            assert r["statusCode"] == 202, response_json(r)
            job_id = response_json(r)["job_id"]
            [message] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
            assert json.loads(message["Body"])["job_id"] == job_id
            worker.handler(sqs_event([message["Body"]]), LambdaContext(timeout_s=120))
            status = response_json(call(api_event("GET", f"/status/{job_id}")))
            assert status["status"] == "completed" and status["processed_by"]["version"] == "12"
            health = response_json(call(api_event("GET", "/health/detailed")))
            assert health["status"] == "healthy" and health["storage_mode"] == "aws", health
            sqs.delete_queue(QueueUrl=url)
            health = response_json(r := call(api_event("GET", "/health/detailed")))
            assert r["statusCode"] == 503 and health["failing"] == ["queue"]
    finally:
        storage.reset_cache()
        queue.reset_cache()


def test_the_api_does_not_import_the_worker_libraries() -> None:
    code = "import sys, sda.api; print(sorted(m for m in ('pypdf', 'openpyxl', 'fpdf', 'boto3') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
