"""Hostile and odd input to the SDA service, called in-process with real API Gateway events, real
multipart bodies, real storage and the real worker: file names outside Latin-1, control characters
in text fields, spreadsheet formula injection, what an unauthenticated health check reveals, and the
file modes of the data it keeps."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from sda import config, queue, worker
from sda.events import LambdaContext, api_event, response_body, response_json, sqs_event, upload_event
from sda.jobs import new_job, new_job_id
from sda_local import call_api as call
from sda_local import local_sda
from sda_local import sda_store as store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "drawings" / "sample_01.pdf"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    yield from local_sda(tmp_path / "env", monkeypatch, function_name="security-assistant-worker-test")


def raw_upload(disposition: bytes, **fields: str) -> dict[str, Any]:
    """A multipart body whose drawing part has exactly this Content-Disposition header (bytes as sent)."""
    boundary = b"----hostile-boundary-7d1c"
    out = io.BytesIO()
    for name, value in {"client_name": "Acme", "project_name": "Tower", **fields}.items():
        out.write(b"--" + boundary + b"\r\n")
        out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    out.write(b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n")
    out.write(b"Content-Type: application/pdf\r\n\r\n" + SAMPLE.read_bytes() + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    ctype = f"multipart/form-data; boundary={boundary.decode()}"
    return api_event("POST", "/process-drawing", body=out.getvalue(), headers={"Content-Type": ctype})


def accepted_name(response: dict[str, Any]) -> str:
    body = response_json(response)
    assert response["statusCode"] == 202, body
    return store().get_job(body["job_id"])["input_files"]["drawing"]["original_name"]


@pytest.mark.parametrize(
    ("disposition", "stored"),
    [
        ('form-data; name="drawing_file"; filename="図面.pdf"'.encode(), "図面.pdf"),  # raw UTF-8, as curl
        ('form-data; name="drawing_file"; filename="Zeichnung_é.pdf"'.encode(), "Zeichnung_é.pdf"),
        # RFC 5987/6266: the extended form wins over the ASCII fallback
        (b"form-data; name=\"drawing_file\"; filename=\"zeichnung.pdf\"; filename*=UTF-8''%E5%9B%B3%E9%9D%A2.pdf",
         "図面.pdf"),
        ("form-data; name=\"drawing_file\"; filename=\"Zeichnung_\xe9.pdf\"".encode("latin-1"), "Zeichnung_é.pdf"),
        (b"form-data; name=\"drawing_file\"; filename=\"../../etc/passwd.pdf\"", "passwd.pdf"),
    ],
)
def test_file_names_outside_latin1_are_decoded_and_stored_as_sent(
    env: dict[str, str], disposition: bytes, stored: str
) -> None:
    assert accepted_name(call(raw_upload(disposition))) == stored


def test_an_undecodable_file_name_is_replaced_never_a_codec_error_in_the_reply(env: dict[str, str]) -> None:
    r = call(raw_upload(b"form-data; name=\"drawing_file\"; filename*=UTF-8''%FF%FE.pdf"))
    assert accepted_name(r) == "\ufffd\ufffd.pdf"
    odd_type = {"Content-Type": "multipart/form-data; b=\u56f3"}
    r = call(api_event("POST", "/process-drawing", body=b"x", headers=odd_type))
    assert r["statusCode"] == 400 and "codec" not in response_body(r).decode()


@pytest.mark.parametrize(
    ("field", "char"), [("client_name", "\x00"), ("project_name", "\x1b"), ("context_text", "\x07")]
)
def test_control_characters_in_text_fields_are_a_400_with_one_line_and_nothing_is_queued(
    env: dict[str, str], field: str, char: str
) -> None:
    kwargs = {field: f"Acme{char}Corp"}
    r = call(upload_event(SAMPLE.read_bytes(), **kwargs))  # type: ignore[arg-type]
    body = response_json(r)
    assert (r["statusCode"], body["error_code"]) == (400, "INVALID_FIELD"), body
    assert body["error"] == f"{field} contains the control character U+{ord(char):04X}; send printable text"
    assert "(0 visible)" in queue.get_queue(config.load()).check().detail  # nothing reached the worker


def test_line_breaks_stay_allowed_in_context_text(env: dict[str, str]) -> None:
    r = call(upload_event(SAMPLE.read_bytes(), context_text="doors: A-101\n\tlocks: maglock\r\n"))
    assert r["statusCode"] == 202, response_json(r)


def run_worker(job_id: str, receive_count: int = 1) -> dict[str, Any]:
    body = json.dumps({"job_id": job_id})
    return worker.handler(
        sqs_event([body], receive_count=receive_count),
        LambdaContext(function_name="security-assistant-worker-test", timeout_s=120),
    )


def test_a_control_character_that_reached_the_worker_fails_the_job_permanently_on_the_first_receive(
    env: dict[str, str],
) -> None:
    # a job written before the api refused such names (or by another writer): the Excel step cannot
    # hold a NUL; that is the input's fault, so the job fails at once and the message is acknowledged
    job = new_job(new_job_id(), "Acme\x00Corp", "Tower")
    job["input_files"] = {"drawing": {"name": "drawing.pdf"}}
    store().create_job(job)
    store().put_file(job, "drawing.pdf", SAMPLE.read_bytes())
    assert run_worker(job["job_id"]) == {"batchItemFailures": []}  # acknowledged: no retry, no DLQ
    failed = store().get_job(job["job_id"])
    assert failed["status"] == "failed"
    assert failed["error"]["kind"] == "permanent" and failed["error"]["code"] == "INVALID_TEXT"
    assert failed["error"]["stage"] == "excel_generation"
    assert "\x00" not in failed["error"]["message"]
    assert [a["outcome"] for a in failed["attempts"]] == ["failed"]


HOSTILE = ['=HYPERLINK("http://evil.example/x","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)", "\t=1+1", "\r=1+1"]


def test_formula_injection_is_written_as_inert_text_in_every_cell() -> None:
    from sda import excel

    job = {"job_id": "job_x", "client_name": HOSTILE[0], "project_name": HOSTILE[1]}
    schedule = {"metadata": {"building": HOSTILE[2], "level": HOSTILE[3]}, "warnings": HOSTILE[4:]}
    components = [{"id": h, "type": "door", "location": h, "page": 1, "attributes": {}, "confidence": 0.5}
                  for h in HOSTILE]
    wb = load_workbook(io.BytesIO(excel.build(job, schedule, components)))
    cells = [c for ws in wb.worksheets for row in ws.iter_rows() for c in row]
    assert not [c.coordinate for c in cells if c.data_type == "f"]  # not a single formula anywhere
    texts = {c.value.replace("\r", "\n") for c in cells if isinstance(c.value, str)}  # XML reads CR as LF
    expected = {("'" + h).replace("\r", "\n") for h in HOSTILE}
    assert expected <= texts and not texts & {h.replace("\r", "\n") for h in HOSTILE}
    summary = {row[0].value: row[1].value for row in wb["Summary"].iter_rows(min_row=2)}
    assert summary["Client"] == "'" + HOSTILE[0] and summary["Project"] == "'" + HOSTILE[1]


def test_a_hyperlink_client_name_reaches_the_schedule_as_text(env: dict[str, str]) -> None:
    r = call(upload_event(SAMPLE.read_bytes(), client_name=HOSTILE[0]))
    assert r["statusCode"] == 202, response_json(r)
    job_id = response_json(r)["job_id"]
    run_worker(job_id)
    done = store().get_job(job_id)
    assert done["status"] == "completed", done.get("error")
    wb = load_workbook(io.BytesIO(store().get_file(done, "schedule.xlsx")))
    client = next(row[1] for row in wb["Summary"].iter_rows(min_row=2) if row[0].value == "Client")
    assert (client.value, client.data_type) == ("'" + HOSTILE[0], "s")


def test_detailed_health_names_no_absolute_path(env: dict[str, str], tmp_path: Path) -> None:
    r = call(api_event("GET", "/health/detailed"))
    assert r["statusCode"] == 200, response_body(r)
    text = response_body(r).decode()
    assert str(tmp_path) not in text and "/env/" not in text
    checks = response_json(r)["checks"]
    assert checks["table"]["detail"].startswith("jobs.db (")


def test_the_jobs_table_and_files_are_private_to_their_owner(env: dict[str, str]) -> None:
    r = call(upload_event(SAMPLE.read_bytes()))
    assert r["statusCode"] == 202
    data = Path(env["BACKOUT_DATA_DIR"])
    db = data / "jobs.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    files = [p for p in (data / "files").rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE((data / "files").stat().st_mode) == 0o700

