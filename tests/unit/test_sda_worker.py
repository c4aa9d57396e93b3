"""The worker function: stages, checkpoints, permanent vs transient failures, idempotency, metrics."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.platforms.local.mappings import batch_item_failures
from sda import api, config, worker
from sda.errors import StorageUnavailable
from sda.events import LambdaContext, api_event, response_json, sqs_event, upload_event
from sda.jobs import new_job, new_job_id, queue_message, reset_for_reprocessing
from sda_local import local_sda
from sda_local import sda_store as store

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "examples" / "drawings"
SHARED = REPO.parent / "shared" / "drawings"
ALL_STAGES = ["pdf_processing", "drawing_analysis", "excel_generation", "evaluation"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    yield from local_sda(tmp_path / "env", monkeypatch, function_name="security-assistant-worker-test")


def submit(data: bytes, **kwargs: Any) -> tuple[str, str]:
    """Upload through the api; (job_id, the queue message body)."""
    r = api.handler(upload_event(data, **kwargs), LambdaContext())
    assert r["statusCode"] == 202, response_json(r)
    job_id = response_json(r)["job_id"]
    job = store().get_job(job_id)
    body = json.dumps(
        {"job_id": job_id, "company_client_job": job["company_client_job"], "correlation_id": job["correlation_id"]}
    )
    return job_id, body


def run(body: str | list[str], receive_count: int = 1, timeout_s: float = 120) -> dict[str, Any]:
    bodies = [body] if isinstance(body, str) else body
    return worker.handler(
        sqs_event(bodies, receive_count=receive_count),
        LambdaContext(function_name="security-assistant-worker-test", timeout_s=timeout_s),
    )


def emf(output: str) -> dict[str, float]:
    """Totals of every EMF metric printed to stdout."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        doc = json.loads(line)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = doc[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(
                    values if isinstance(values, list) else [values]
                )
    return totals


def _pdf(lines: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    for i, line in enumerate(lines):
        pdf.text(15, 20 + 7 * i, line)
    return bytes(pdf.output())


def _folder(env: dict[str, str], job: dict[str, Any]) -> Path:
    return Path(env["BACKOUT_DATA_DIR"]) / "files" / job["client_slug"] / job["project_slug"] / job["job_id"]


@pytest.mark.skipif(
    not (SHARED / "example_b2_drawing.pdf").is_file(),
    reason=f"reference drawings not found at {SHARED} (they live outside the repository)",
)
def test_reference_drawing_end_to_end(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    job_id, body = submit((SHARED / "example_b2_drawing.pdf").read_bytes())
    capsys.readouterr()
    assert run(body) == {"batchItemFailures": []}
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["current_stage"] is None
    assert job["stages_completed"] == ALL_STAGES
    assert all(job["stages"][s]["duration_ms"] >= 0 for s in ALL_STAGES)
    assert job["processed_by"]["version"] == "7"
    assert job["processed_by"]["function"] == "security-assistant-worker-test" and job["processed_by"]["at"]
    assert [a["outcome"] for a in job["attempts"]] == ["completed"]
    folder = _folder(env, job)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == sorted(f"{s}.json" for s in ALL_STAGES)
    document = json.loads((folder / "components.json").read_text())
    baseline = json.loads((SHARED / "baseline_schedule.json").read_text())
    schedule = document["schedule"]
    assert [{k: d[k] for k in ("id", "location", "components")} for d in schedule["doors"]] == baseline["doors"]
    assert schedule["card_readers"] == baseline["card_readers"]
    assert schedule["exit_buttons"] == baseline["exit_buttons"]
    assert schedule["locks"] == baseline["locks"]
    assert job["summary"]["overall_assessment"] == "Good" and job["components_count"] == 35
    metrics = emf(capsys.readouterr().out)
    assert metrics["JobsCompleted"] == 1 and metrics["StageSuccess"] == 4 and metrics["ProcessingDuration"] > 0
    assert store().jobs_processed_by("7")[0]["job_id"] == job_id


def test_context_stage_runs_and_its_defaults_reach_the_schedule(env: dict[str, str]) -> None:
    import zipfile

    lines = ["SECURITY DRAWING - BUILDING K1 - LEVEL 1", "E-101-DR-K1 - Lab - Card Reader", "E-101-CR-K1"]
    job_id, body = submit(_pdf(lines), context_text="Lock type: Electric Strike")
    run(body)
    job = store().get_job(job_id)
    assert job["status"] == "completed"
    assert job["stages_completed"] == ["pdf_processing", "context_processing", *ALL_STAGES[1:]]
    assert job["summary"]["lock_type"] == "electric strike"

    docx = io.BytesIO()
    with zipfile.ZipFile(docx, "w") as zf:
        zf.writestr(
            "word/document.xml",
            (
                '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
                "<w:p><w:r><w:t>Lock type: Mortise</w:t></w:r></w:p></w:body></w:document>"
            ),
        )
    job_id, body = submit(_pdf(lines), context=("spec.docx", docx.getvalue(), "application/octet-stream"))
    run(body)
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["summary"]["lock_type"] == "mortise"


def test_permanent_input_problems_fail_the_job_and_acknowledge(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # a corrupt drawing that got past the api (e.g. damaged in storage)
    job = new_job(new_job_id(), "Acme", "Tower")
    job["input_files"] = {"drawing": {"name": "drawing.pdf"}}
    store().create_job(job)
    store().put_file(job, "drawing.pdf", b"%PDF-1.4\nthis is not a valid PDF body\n%%EOF")
    body = json.dumps({"job_id": job["job_id"]})
    capsys.readouterr()
    assert run(body) == {"batchItemFailures": []}  # acknowledged, no raise
    failed = store().get_job(job["job_id"])
    assert failed["status"] == "failed"
    assert failed["error"]["stage"] == "pdf_processing" and failed["error"]["code"] == "CORRUPT_PDF"
    assert failed["error"]["failed_at"] and failed["attempts"][-1]["outcome"] == "failed"
    assert emf(capsys.readouterr().out)["JobsFailed"] == 1
    # redelivery of a permanently failed job is acknowledged without another attempt
    run(body, receive_count=2)
    assert len(store().get_job(job["job_id"])["attempts"]) == 1

    status = response_json(api.handler(api_event("GET", f"/status/{job['job_id']}"), LambdaContext()))
    assert status["error"]["stage"] == "pdf_processing" and status["progress"]["current_step"].startswith("Failed")

    # a valid PDF without a text layer (a scan)
    job_id, body = submit(_pdf([]))
    run(body)
    failed = store().get_job(job_id)
    assert failed["status"] == "failed" and failed["error"]["code"] == "NO_TEXT_LAYER"

    # messages that name no job, or an unknown one, are acknowledged too
    assert run("not json") == {"batchItemFailures": []}
    assert run(json.dumps({"job_id": "job_20250101000000000_none"})) == {"batchItemFailures": []}


def _block(env: dict[str, str], job_id: str, name: str) -> Path:
    """A directory where the worker must write a file: a real I/O fault, like a broken disk."""
    path = _folder(env, store().get_job(job_id)) / name
    path.mkdir(parents=True)
    return path


def test_transient_fault_raises_then_a_retry_resumes_from_checkpoints(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    job_id, body = submit((SAMPLES / "sample_02.pdf").read_bytes())
    blocker = _block(env, job_id, "schedule.xlsx")
    capsys.readouterr()
    with pytest.raises(StorageUnavailable):
        run(body)
    assert emf(capsys.readouterr().out)["StageFailure"] == 1
    job = store().get_job(job_id)
    assert job["status"] == "processing" and job["current_stage"] == "excel_generation"
    assert job["stages_completed"] == ["pdf_processing", "drawing_analysis"]
    attempt = job["attempts"][-1]
    assert attempt["outcome"] == "transient_error" and attempt["stage"] == "excel_generation"
    assert "schedule.xlsx" in attempt["error"]
    status = response_json(api.handler(api_event("GET", f"/status/{job_id}"), LambdaContext()))
    assert status["status"] == "processing" and 10 <= status["progress"]["percentage"] <= 90

    checkpoints = _folder(env, job) / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    blocker.rmdir()
    assert run(body, receive_count=2) == {"batchItemFailures": []}
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["stages_completed"] == ALL_STAGES
    assert [a["outcome"] for a in job["attempts"]] == ["transient_error", "completed"]
    after = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    assert after["pdf_processing.json"] == before["pdf_processing.json"]  # not re-run
    assert after["drawing_analysis.json"] == before["drawing_analysis.json"]


def test_the_same_message_twice_gives_one_result(env: dict[str, str]) -> None:
    from openpyxl import load_workbook

    job_id, body = submit((SAMPLES / "sample_03.pdf").read_bytes())
    run(body)
    folder = _folder(env, store().get_job(job_id))
    first = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert run(body, receive_count=2) == {"batchItemFailures": []}
    job = store().get_job(job_id)
    assert len(job["attempts"]) == 1 and job["stages_completed"] == ALL_STAGES
    second = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert second == first

    # two deliveries processed at the same moment (visibility timeout expired mid-job)
    job_id, body = submit((SAMPLES / "sample_05.pdf").read_bytes())
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            run(body)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["stages_completed"] == ALL_STAGES
    folder = _folder(env, job)
    truth = json.loads((SAMPLES / "sample_05.json").read_text())
    rows = list(load_workbook(folder / "schedule.xlsx")["Schedule"].iter_rows(values_only=True))
    assert len({r[0] for r in rows[1:]}) == len(rows) - 1  # no duplicated component
    assert json.loads((folder / "components.json").read_text())["schedule"]["metadata"]["total_doors"] == len(
        truth["doors"]
    )


def test_progress_while_processing(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, body = submit((SAMPLES / "sample_01.pdf").read_bytes())
    monkeypatch.setenv("SDA_FAULTS", "worker_latency_ms=1500")
    thread = threading.Thread(target=run, args=(body,))
    thread.start()
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        seen.append(response_json(api.handler(api_event("GET", f"/status/{job_id}"), LambdaContext())))
        time.sleep(0.05)
    thread.join(30)
    final = response_json(api.handler(api_event("GET", f"/status/{job_id}"), LambdaContext()))
    analysing = [s for s in seen if s["status"] == "processing" and s["current_stage"] == "drawing_analysis"]
    assert analysing, [s["status"] for s in seen]
    assert all(10 <= s["progress"]["percentage"] <= 90 for s in seen if s["status"] == "processing")
    assert analysing[-1]["progress"]["current_step"] == "Analysing the drawing"
    assert analysing[-1]["stages_completed"] == ["pdf_processing"]
    assert final["progress"]["percentage"] == 100


def test_a_partial_batch_reports_only_the_failed_record(env: dict[str, str]) -> None:
    ok_id, ok_body = submit((SAMPLES / "sample_04.pdf").read_bytes())
    bad_id, bad_body = submit((SAMPLES / "sample_04.pdf").read_bytes())
    _block(env, bad_id, "schedule.xlsx")
    event = sqs_event([ok_body, bad_body])
    result = worker.handler(event, LambdaContext(timeout_s=120))
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    assert store().get_job(ok_id)["status"] == "completed"
    assert store().get_job(bad_id)["status"] == "processing"


@pytest.fixture
def worker_logs() -> Iterator[io.StringIO]:
    """The worker logger's JSON lines, through its own powertools formatter (its stream handler
    holds the stdout of import time, which capsys does not see)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(worker.logger.registered_formatter)
    worker.logger.addHandler(handler)
    yield out
    worker.logger.removeHandler(handler)


def test_a_mixed_batch_acknowledges_done_and_unprocessable_and_reports_only_the_transient(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], worker_logs: io.StringIO
) -> None:
    ok_id, ok_body = submit((SAMPLES / "sample_04.pdf").read_bytes())
    bad_id, bad_body = submit((SAMPLES / "sample_04.pdf").read_bytes())
    _block(env, bad_id, "schedule.xlsx")
    event = sqs_event([ok_body, "not json", bad_body])
    ids = [r["messageId"] for r in event["Records"]]
    capsys.readouterr()
    result = worker.handler(event, LambdaContext(timeout_s=120))
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[2]}]}
    # the local platform's event source mapping reads exactly that record as failed
    assert batch_item_failures(result, set(ids)) == {ids[2]}
    assert batch_item_failures(json.dumps(result), set(ids)) == {ids[2]}
    logs = [json.loads(line) for line in worker_logs.getvalue().splitlines()]
    (unprocessable,) = [d for d in logs if d["message"] == "unprocessable message acknowledged"]
    assert unprocessable["level"] == "ERROR" and unprocessable["message_id"] == ids[1]
    assert unprocessable["reason"].startswith("message body is not JSON")
    (done,) = [d for d in logs if d["message"] == "message done"]
    assert done["job_id"] == ok_id and done["level"] == "INFO"
    assert [d["message"] for d in logs if d["level"] in ("WARNING", "ERROR")] == [
        "unprocessable message acknowledged", "stage failed: the message will be retried"
    ]
    metrics = emf(capsys.readouterr().out)
    assert metrics["JobsCompleted"] == 1 and metrics["StageFailure"] == 1
    assert store().get_job(ok_id)["status"] == "completed"
    assert store().get_job(bad_id)["status"] == "processing"


def test_a_batch_whose_records_all_fail_raises_the_first_records_error(env: dict[str, str]) -> None:
    first_id, first_body = submit((SAMPLES / "sample_01.pdf").read_bytes())
    second_id, second_body = submit((SAMPLES / "sample_02.pdf").read_bytes())
    _block(env, first_id, "schedule.xlsx")
    _block(env, second_id, "schedule.xlsx")
    with pytest.raises(StorageUnavailable) as raised:
        run([first_body, second_body])
    assert "schedule.xlsx" in str(raised.value) and first_id in str(raised.value)
    # both records were attempted before the raise
    for job_id in (first_id, second_id):
        attempt = store().get_job(job_id)["attempts"][-1]
        assert attempt["outcome"] == "transient_error" and attempt["stage"] == "excel_generation"


def test_an_unprocessable_record_counts_as_done_so_its_failing_neighbour_is_reported_not_raised(
    env: dict[str, str],
) -> None:
    bad_id, bad_body = submit((SAMPLES / "sample_01.pdf").read_bytes())
    _block(env, bad_id, "schedule.xlsx")
    event = sqs_event(["not json", bad_body])
    result = worker.handler(event, LambdaContext(timeout_s=120))
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}


def test_a_bad_setting_is_a_config_error_that_names_the_variable_and_value(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, body = submit((SAMPLES / "sample_01.pdf").read_bytes())
    monkeypatch.setenv("SDA_DB_BUSY_TIMEOUT_S", "soon")
    monkeypatch.setenv("STORAGE_MODE", "s3")
    with pytest.raises(config.ConfigError) as raised:
        run(body)
    assert str(raised.value) == "STORAGE_MODE='s3' is not one of: local, aws"
    monkeypatch.setenv("STORAGE_MODE", " LOCAL ")
    with pytest.raises(config.ConfigError, match=r"^SDA_DB_BUSY_TIMEOUT_S='soon' is not a number$"):
        config.load()
    for bad in ("0", "nan", "inf"):
        monkeypatch.setenv("SDA_DB_BUSY_TIMEOUT_S", bad)
        with pytest.raises(config.ConfigError, match=rf"^SDA_DB_BUSY_TIMEOUT_S='{bad}' must be a positive number$"):
            config.load()
    monkeypatch.setenv("SDA_DB_BUSY_TIMEOUT_S", " ")  # blank: the default, as when unset
    settings = config.load()
    assert settings.storage_mode == "local" and settings.db_busy_timeout_s == 30.0


def test_settings_keep_their_variable_names_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STORAGE_MODE", "BACKOUT_DATA_DIR", "PROCESSING_QUEUE_URL", "SDA_JOBS_TABLE", "SDA_FILES_BUCKET",
                 "SDA_MAX_UPLOAD_MB", "AWS_LAMBDA_FUNCTION_VERSION",
                 "AWS_LAMBDA_FUNCTION_NAME", "POWERTOOLS_SERVICE_NAME", "BACKOUT_ENV", "ENVIRONMENT",
                 "SDA_DB_BUSY_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    s = config.load()
    assert (s.storage_mode, s.data_dir, s.processing_queue_url) == ("local", None, None)
    assert (s.jobs_table, s.files_bucket, s.environment) == (
        "security-assistant-jobs", "security-assistant-files", "dev"
    )
    assert (s.max_upload_bytes, s.function_version, s.function_name, s.db_busy_timeout_s) == (
        100 * 1024 * 1024, "$LATEST", "sda", 30.0
    )
    with pytest.raises(config.ConfigError, match="BACKOUT_DATA_DIR is not set"):
        s.require_data_dir()
    monkeypatch.setenv("ENVIRONMENT", "prod")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "sda-svc")
    monkeypatch.setenv("SDA_MAX_UPLOAD_MB", "0.5")
    monkeypatch.setenv("BACKOUT_DATA_DIR", " /srv/sda ")
    monkeypatch.setenv("storage_mode", "aws")  # names are case-sensitive, like os.environ
    monkeypatch.setenv("SERVICE_VERSION", "9.9")  # not a setting: the code's version
    s = config.load()
    assert (s.jobs_table, s.files_bucket, s.environment, s.function_name) == (
        "security-assistant-jobs-prod", "security-assistant-files-prod", "prod", "sda-svc"
    )
    assert s.max_upload_bytes == 512 * 1024 and s.jobs_db == Path("/srv/sda/jobs.db")
    assert s.storage_mode == "local" and s.service_version == __import__("sda").__version__
    monkeypatch.setenv("BACKOUT_ENV", "staging")  # wins over ENVIRONMENT
    monkeypatch.setenv("SDA_JOBS_TABLE", "jobs-x")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "security-assistant-worker-staging")
    s = config.load()
    assert (s.jobs_table, s.files_bucket, s.function_name) == (
        "jobs-x", "security-assistant-files-staging", "security-assistant-worker-staging"
    )


def test_a_dead_lettered_job_is_reprocessed_when_redriven(env: dict[str, str]) -> None:
    job_id, body = submit((SAMPLES / "sample_01.pdf").read_bytes())
    store().update_job(job_id, {"status": "failed", "error": {"kind": "dead_letter", "reason": "timeout"}})
    run(body)
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["error"] is None


def test_injected_result_corruption_is_traceable_to_its_version(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good_id, good_body = submit((SAMPLES / "sample_03.pdf").read_bytes())
    run(good_body)
    monkeypatch.setenv("SDA_FAULTS", "corrupt_results")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "8")
    bad_id, bad_body = submit((SAMPLES / "sample_03.pdf").read_bytes())
    run(bad_body)
    good, bad = store().get_job(good_id), store().get_job(bad_id)
    assert bad["status"] == "completed" and bad["summary"]["doors"] < good["summary"]["doors"]
    assert [j["job_id"] for j in store().jobs_processed_by("8")] == [bad_id]

    # the data-repair runbook: reset the bad version's jobs and reprocess them with a good version
    monkeypatch.delenv("SDA_FAULTS")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "7")
    for job in store().jobs_processed_by("8"):
        store().put_job(reset_for_reprocessing(job, "version 8 dropped doors", by="runbook"))
        run(queue_message(job))
    repaired = store().get_job(bad_id)
    assert repaired["status"] == "completed" and repaired["summary"]["doors"] == good["summary"]["doors"]
    assert repaired["processed_by"]["version"] == "7" and store().jobs_processed_by("8") == []
    assert repaired["repairs"][0]["previous_processed_by"]["version"] == "8"
    folder = _folder(env, repaired)
    assert json.loads((folder / "components.json").read_text())["count"] == good["components_count"]


def test_direct_invocation_is_a_no_op(env: dict[str, str]) -> None:
    assert worker.handler({"test": True}, LambdaContext())["status"] == "ok"


def test_a_scan_completes_with_a_warning_instead_of_an_empty_schedule(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    from sda import ocr

    monkeypatch.setattr(ocr, "available", lambda: False)  # the default install: no OCR extra
    image = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(image).rectangle((20, 20, 120, 120), outline=0)
    pdf = FPDF()
    pdf.add_page()
    pdf.image(image, x=0, y=0, w=210, h=297)
    job_id, body = submit(bytes(pdf.output()))
    assert run(body) == {"batchItemFailures": []}
    job = store().get_job(job_id)
    assert job["status"] == "completed" and job["components_count"] == 0
    status = response_json(api.handler(api_event("GET", f"/status/{job_id}"), LambdaContext()))
    assert status["summary"]["warnings"] == [
        "page 1: no text layer (scanned)",
        "nothing security-related was read from this drawing: the schedule is empty",
    ]
    assert status["summary"]["skipped_pages"] == [{"page": 1, "reason": "no text layer (scanned)"}]
    assert status["summary"]["overall_assessment"] == "Poor"
