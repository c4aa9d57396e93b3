"""`POST /process-drawing`: the multipart body → a validated submission, or an HTTP error.

Multipart parsing is python-multipart's streaming parser; each part's
Content-Disposition is read by the standard library's `email` package, which
knows RFC 2231/5987 (`filename*=UTF-8''%E5%9B%B3.pdf`, as RFC 6266 asks, and
preferred when both forms are present) as well as raw UTF-8 in `filename=`
(what curl and browsers send). Nothing here trusts a client-supplied file name:
it is reduced to a plain base name for display, and files are stored under
fixed names in the job's folder. Text fields with control characters (a NUL,
an escape) are refused here with one line: they are the client's mistake,
never something the worker should retry.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from sda.errors import PermanentError, UploadError

MAX_NAME_LEN = 200
MAX_CONTEXT_TEXT = 200_000  # characters
_LINE_BREAKS = frozenset("\t\n\r")  # the only control characters a free-text field may hold


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Submission:
    drawing: Part
    client_name: str
    project_name: str
    context: Part | None
    context_kind: str | None
    context_text: str | None


def safe_filename(name: str | None, fallback: str = "drawing.pdf") -> str:
    """`../../etc/x.pdf`, `C:\\x\\y.pdf` → `x.pdf`, `y.pdf`: the last path component, plain characters."""
    if not name:
        return fallback
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFKC", base)
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '<>:"|?*')
    base = re.sub(r"\s+", " ", base).strip().lstrip(".").strip()
    return base[:120] or fallback


def _header_text(raw: bytes) -> str:
    """A part header's value: UTF-8 as clients send it today, Latin-1 (HTTP's old default) otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def disposition(value: str) -> tuple[str, str | None]:
    """(name, filename) of a part's Content-Disposition; `filename*` (RFC 2231/5987) wins over
    `filename`, as RFC 6266 §4.3 says; undecodable bytes become U+FFFD, never an error."""
    msg = Message()
    try:
        msg["content-disposition"] = value
        params = msg.get_params(header="content-disposition") or []
    except (ValueError, TypeError, LookupError):  # a header the email package cannot split
        return "", None
    name, plain, extended = "", None, None
    for key, val in params[1:]:
        key = key.lower()
        if isinstance(val, tuple):  # RFC 2231: (charset, language, value)
            try:
                text = collapse_rfc2231_value(val, errors="replace")
            except LookupError:  # an unknown charset
                text = collapse_rfc2231_value(("utf-8", val[1], val[2]), errors="replace")
        else:
            text = collapse_rfc2231_value(val)
        if key == "name" and not name:
            name = text
        elif key == "filename":
            if isinstance(val, tuple):
                extended = extended if extended is not None else text
            elif plain is None:
                plain = text
    return name, extended if extended is not None else plain


def check_text(label: str, value: str, multiline: bool = False) -> None:
    """400 for a control character (NUL, ESC, …) in a text field: it cannot be shown, stored in a
    spreadsheet or logged faithfully, and no retry would change that."""
    for ch in value:
        if unicodedata.category(ch) == "Cc" and not (multiline and ch in _LINE_BREAKS):
            raise UploadError(
                400, "INVALID_FIELD", f"{label} contains the control character U+{ord(ch):04X}; send printable text"
            )


def body_bytes(event: dict[str, Any], max_bytes: int) -> bytes:
    """The request body as bytes; 413 before decoding when it is certainly too large."""
    raw = event.get("body")
    if raw is None:
        return b""
    if event.get("isBase64Encoded"):
        if len(raw) * 3 // 4 - 2 > max_bytes:
            raise UploadError(413, "PAYLOAD_TOO_LARGE", f"the upload exceeds the {max_bytes // (1024 * 1024)} MB limit")
        try:
            data = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise UploadError(400, "BAD_ENCODING", "the body is not valid base64") from exc
    else:
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise UploadError(413, "PAYLOAD_TOO_LARGE", f"the upload exceeds the {max_bytes // (1024 * 1024)} MB limit")
    return data


def parse_multipart(body: bytes, content_type: str | None) -> dict[str, Part]:
    """The first part of each name; 400 for anything that is not a complete multipart/form-data body."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    if not content_type:
        raise UploadError(400, "NOT_MULTIPART", "Content-Type must be multipart/form-data")
    try:
        ctype, params = parse_options_header(content_type)
    except UnicodeError:
        raise UploadError(400, "NOT_MULTIPART", "the Content-Type header is not ASCII") from None
    if ctype != b"multipart/form-data":
        raise UploadError(400, "NOT_MULTIPART", f"Content-Type must be multipart/form-data, not {ctype.decode()!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "NOT_MULTIPART", "the multipart Content-Type has no boundary")

    parts: dict[str, Part] = {}
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": [], "ended": False}

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = _header_text(state["value"])
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        name, filename = disposition(state["headers"].get("content-disposition", ""))
        if name and name not in parts:
            parts[name] = Part(
                name=name,
                filename=filename,
                content_type=state["headers"].get("content-type"),
                data=b"".join(state["data"]),
            )

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:  # its messages name the offending byte, never client data
        raise UploadError(400, "MALFORMED_MULTIPART", f"the multipart body is malformed: {exc}") from exc
    except Exception as exc:  # anything else (a codec error, …): its text is not for the client
        raise UploadError(400, "MALFORMED_MULTIPART", "the multipart body is malformed") from exc
    if not state["ended"]:
        raise UploadError(400, "MALFORMED_MULTIPART", "the multipart body is incomplete (no closing boundary)")
    return parts


def _text_field(parts: dict[str, Part], name: str, required: bool) -> str | None:
    part = parts.get(name)
    if part is None:
        if required:
            raise UploadError(400, "MISSING_FIELD", f"the form field {name!r} is required")
        return None
    try:
        value = part.data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UploadError(400, "INVALID_FIELD", f"the form field {name!r} is not UTF-8 text") from exc
    if required and not value:
        raise UploadError(400, "MISSING_FIELD", f"the form field {name!r} must not be empty")
    return value or None


def parse_submission(event: dict[str, Any], headers: Any, max_bytes: int) -> Submission:
    """Validate everything the worker relies on; raises UploadError (400, 413, 422)."""
    body = body_bytes(event, max_bytes)
    parts = parse_multipart(body, headers.get("content-type"))
    drawing = parts.get("drawing_file")
    if drawing is None:
        raise UploadError(400, "MISSING_FIELD", "the file field 'drawing_file' is required")
    if not drawing.data:
        raise UploadError(400, "EMPTY_FILE", "the drawing file is empty")
    client_name = _text_field(parts, "client_name", True) or ""
    project_name = _text_field(parts, "project_name", True) or ""
    for label, value in (("client_name", client_name), ("project_name", project_name)):
        if len(value) > MAX_NAME_LEN:
            raise UploadError(400, "INVALID_FIELD", f"{label} is longer than {MAX_NAME_LEN} characters")
        check_text(label, value)
    context_text = _text_field(parts, "context_text", False)
    if context_text and len(context_text) > MAX_CONTEXT_TEXT:
        raise UploadError(400, "INVALID_FIELD", f"context_text is longer than {MAX_CONTEXT_TEXT} characters")
    if context_text:
        check_text("context_text", context_text, multiline=True)

    context = parts.get("context_file")
    kind = None
    if context is not None and not context.data and not context.filename:
        context = None  # an empty file input in a browser form
    if context is not None:
        if not context.data:
            raise UploadError(400, "EMPTY_FILE", "the context file is empty")
        from sda.context import detect_kind

        try:
            kind = detect_kind(context.filename or "", context.data)
        except PermanentError as exc:
            raise UploadError(422, exc.code, str(exc)) from exc
    return Submission(drawing, client_name, project_name, context, kind, context_text)
