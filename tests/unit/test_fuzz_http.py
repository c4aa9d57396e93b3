"""Fuzzing both HTTP APIs in-process (ASGI, no sockets): schemathesis generates valid and malformed
requests from an OpenAPI description — the control API's own, with and without its token; the SDA's
written here — and hand-made hostile uploads hit the SDA through the real gateway. The bar: no 5xx and
no traceback for any input; without the token, 401 on every control route but /healthz."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.testclient import TestClient

from backout.manifest import load_manifest
from backout.platforms.base import InvokeResult, Throttle
from backout.platforms.local.gateway import Gateway, routes_from_manifest
from backout.platforms.local.metrics import MetricStore
from backout.server.app import build_app
from backout.server.controller import Controller
from fakes import FakeClock, FakePlatform, write_manifest
from fuzzing import examples

REPO = Path(__file__).resolve().parents[2]
SAMPLE = (REPO / "examples" / "drawings" / "sample_01.pdf").read_bytes()
TOKEN = "fuzz-token"


def no_server_error(status: int, body: bytes, what: str) -> None:
    assert status < 500, f"{what} → {status}: {body[:300]!r}"
    assert b"Traceback" not in body, f"{what}: a traceback reached the client"


# --- the control API ---------------------------------------------------------------------------------


@pytest.fixture
def control(tmp_path: Path, fast_evaluations: None) -> Iterator[Any]:
    manifest = write_manifest(tmp_path)
    fake = FakePlatform(manifest, "staging", clock=FakeClock())
    controller = Controller(manifest, "staging", fake, tmp_path / "state" / "staging")
    controller.deployer.clock = fake.clock.now
    app = build_app(controller, TOKEN)
    try:
        yield app
    finally:
        controller.close()
        fake.close()


def _cases(raw: dict[str, Any], app: Any) -> st.SearchStrategy[Any]:
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = app
    return st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))


@pytest.mark.parametrize("auth", ["token", "none", "wrong"])
def test_control_api_fuzzed_from_its_openapi(control: Any, auth: str) -> None:
    headers = {"token": {"Authorization": f"Bearer {TOKEN}"}, "none": {},
               "wrong": {"Authorization": f"Bearer {TOKEN}x"}}[auth]

    @examples(10)
    @given(case=_cases(control.openapi(), control))
    def one(case: Any) -> None:
        if auth == "token" and (case.path == "/shutdown" or (case.method, case.path) == ("POST", "/drills")):
            return  # stops the process (a no-op here) / runs a whole drill, minutes of real waiting
        r = case.call(headers=headers)
        what = f"{case.method} {case.formatted_path} ({auth})"
        no_server_error(r.status_code, r.content, what)
        if auth != "token" and case.path != "/healthz":
            assert r.status_code == 401, what  # whatever is wrong with the body: the token comes first

    one()


# --- the SDA API through the gateway ------------------------------------------------------------------

SDA_OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Security Design Assistant", "version": "1"},
    "paths": {
        "/process-drawing": {"post": {
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object",
                "required": ["drawing_file", "client_name", "project_name"],
                "properties": {
                    "drawing_file": {"type": "string", "format": "binary"},
                    "client_name": {"type": "string"},
                    "project_name": {"type": "string"},
                    "context_text": {"type": "string"},
                    "context_file": {"type": "string", "format": "binary"},
                }}}}},
            "responses": {"202": {"description": "queued"}, "400": {"description": "bad request"},
                          "413": {"description": "too large"}, "422": {"description": "not a drawing"}}}},
        "/status/{job_id}": {"get": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the job"}, "404": {"description": "no such job"}}}},
        "/download/{job_id}/{file_type}": {"get": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "file_type", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["excel", "components"]}}],
            "responses": {"200": {"description": "the file"}, "404": {"description": "no such job"},
                          "409": {"description": "not completed"}}}},
        "/health": {"get": {"responses": {"200": {"description": "up"}}}},
        # /health/detailed takes no input (nothing to fuzz) and probes the queue over HTTP: left out
    },
}


@pytest.fixture
def sda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The real gateway (routes of the repository's manifest) over the SDA's api handler, in-process."""
    from sda import api, queue, storage
    from sda.events import LambdaContext
    from sda_local import prepare_local

    for key, value in prepare_local(tmp_path / "env", version="3").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SDA_MAX_UPLOAD_MB", "1")
    monkeypatch.delenv("SDA_FAULTS", raising=False)
    storage.reset_cache()
    queue.reset_cache()

    def invoke(function: str, event: dict[str, Any]) -> InvokeResult:
        try:
            return InvokeResult(function, "3", "r", api.handler(event, LambdaContext(function_name="sda-api")))
        except Exception as e:  # what a worker process reports: the gateway makes it a 502, the test a failure
            return InvokeResult(function, "3", "r", {"errorType": type(e).__name__, "errorMessage": str(e)},
                                error="Unhandled")

    routes = [r for r in routes_from_manifest(load_manifest(REPO / "backout.toml")) if r.function == "api"]
    yield Gateway(routes, invoke, MetricStore(), "sda", "staging", 2 * 1024 * 1024, Throttle(10000, 10000))
    storage.reset_cache()
    queue.reset_cache()


def test_sda_api_fuzzed_from_its_openapi(sda: Gateway) -> None:
    @examples(20)
    @given(case=_cases(SDA_OPENAPI, sda.app))
    def one(case: Any) -> None:
        r = case.call()
        no_server_error(r.status_code, r.content, f"{case.method} {case.formatted_path}")

    one()


def _pdf_with_pages(n: int) -> bytes:
    from pypdf import PdfWriter

    w = PdfWriter()
    for _ in range(n):
        w.add_blank_page(72, 72)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def _deeply_nested_pdf(depth: int) -> bytes:
    """A PDF whose catalog hangs off `depth` nested arrays (a parser that recurses runs out of stack)."""
    nested = "[" * depth + "]" * depth
    objs = [
        "<< /Type /Catalog /Pages 2 0 R /Deep " + nested + " >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>",
    ]
    body, offsets = b"%PDF-1.7\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(body))
        body += f"{i} 0 obj\n{o}\nendobj\n".encode()
    xref = len(body)
    body += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    body += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    body += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return body


HOSTILE_NAMES = ["../../etc/passwd", "..\\..\\x.pdf", "/abs.pdf", "a\x00b.pdf", "CON", "x" * 5000 + ".pdf", "",
                 ".pdf", "drawing.pdf.exe", "%2e%2e%2fx.pdf", "name\r\nX-Injected: 1.pdf", "🙂.pdf"]
CONTENT_TYPES = ["text/plain", "application/octet-stream", "image/png", "", "multipart/form-data",
                 "application/pdf; charset=../../x"]


def _upload(client: TestClient, pdf: bytes, name: str = "d.pdf", ctype: str = "application/pdf") -> Any:
    return client.post("/process-drawing", files={"drawing_file": (name, pdf, ctype)},
                       data={"client_name": "fuzz", "project_name": "p"})


def test_hostile_uploads_get_4xx_never_5xx(sda: Gateway) -> None:
    with TestClient(sda.app) as c:
        answers: list[tuple[str, int]] = []

        def check(what: str, r: Any) -> None:
            no_server_error(r.status_code, r.content, what)
            answers.append((what, r.status_code))

        for name in HOSTILE_NAMES:
            check(f"filename {name[:30]!r}", _upload(c, SAMPLE, name=name))
        for ctype in CONTENT_TYPES:
            check(f"file content type {ctype!r}", _upload(c, SAMPLE, ctype=ctype))
        check("zero-byte drawing", _upload(c, b""))
        check("PDF bomb: 1000 pages", _upload(c, _pdf_with_pages(1000)))
        check("PDF bomb: 5000 nested arrays", _upload(c, _deeply_nested_pdf(5000)))
        check("over the API's limit", _upload(c, SAMPLE + b"0" * (1024 * 1024)))
        check("over the gateway's limit", _upload(c, b"%PDF-" + b"0" * (3 * 1024 * 1024)))
        body = _upload_body()
        for cut in (10, len(body) // 3, len(body) - 5):
            check(f"multipart cut at {cut}", c.post("/process-drawing", content=body[:cut],
                                                    headers={"Content-Type": "multipart/form-data; boundary=XyZ"}))
        check("no boundary", c.post("/process-drawing", content=body, headers={"Content-Type": "multipart/form-data"}))
        check("JSON body", c.post("/process-drawing", json={"drawing_file": "x"}))
        check("a form, no file", c.post("/process-drawing", data={"client_name": "x", "project_name": "y"}))
    expected_4xx = {w for w, s in answers if not 400 <= s < 500 and s != 202}
    assert not expected_4xx, f"neither accepted nor a 4xx: {expected_4xx}"
    statuses = dict(answers)
    assert statuses["zero-byte drawing"] == 400 and statuses["over the gateway's limit"] == 413
    assert statuses["over the API's limit"] == 413 and statuses["PDF bomb: 5000 nested arrays"] in (202, 422)


def _upload_body() -> bytes:
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"client_name\"\r\n\r\nfuzz\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"project_name\"\r\n\r\np\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"drawing_file\"; filename=\"d.pdf\"\r\n"
            b"Content-Type: application/pdf\r\n\r\n" + SAMPLE + b"\r\n--XyZ--\r\n")
