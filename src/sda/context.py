"""Context documents (specifications sent with a drawing): PDF, DOCX or TXT → text and defaults.

The analysis uses the defaults a specification states ("Reader type: HID
Signo 20", "Lock type: electric strike") for doors whose drawing entry does
not say. DOCX is a zip of XML: its paragraphs are read with the standard
library, which is all a plain-text extraction needs.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any
from xml.etree import ElementTree

from sda.errors import PermanentError

KINDS = ("pdf", "docx", "txt")
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_DEFAULT_PATTERNS = {
    "reader_type": re.compile(r"^\s*(?:card\s+)?reader(?:\s+type)?s?\s*[:=]\s*(.+?)\s*$", re.I | re.M),
    "lock_type": re.compile(r"^\s*lock(?:\s+type)?s?\s*[:=]\s*(.+?)\s*$", re.I | re.M),
    "camera_type": re.compile(r"^\s*camera(?:\s+type)?s?\s*[:=]\s*(.+?)\s*$", re.I | re.M),
}


def detect_kind(filename: str, data: bytes) -> str:
    """The context file's kind from its content (the name only breaks ties); PermanentError if none."""
    name = filename.lower()
    if data.startswith(b"%PDF-") or b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if "word/document.xml" in zf.namelist():
                    return "docx"
        except zipfile.BadZipFile:
            pass
        raise PermanentError("the context file is a zip but not a DOCX document", "UNSUPPORTED_CONTEXT_FILE")
    if name.endswith((".pdf", ".docx")):
        raise PermanentError(
            f"the context file {filename!r} is not a valid {name.rsplit('.', 1)[-1]}",
            "UNSUPPORTED_CONTEXT_FILE",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError("the context file must be PDF, DOCX or UTF-8 text", "UNSUPPORTED_CONTEXT_FILE") from exc
    if "\x00" in text:
        raise PermanentError("the context file must be PDF, DOCX or UTF-8 text", "UNSUPPORTED_CONTEXT_FILE")
    return "txt"


def docx_text(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            root = ElementTree.fromstring(zf.read("word/document.xml"))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as exc:
        raise PermanentError(f"the DOCX context file is corrupt: {exc}", "CORRUPT_CONTEXT_FILE") from exc
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        paragraphs.append("".join(t.text or "" for t in p.iter(f"{_W}t")))
    return "\n".join(paragraphs)


def extract_text(kind: str, data: bytes) -> str:
    if kind == "pdf":
        from sda.pdf import extract_pages

        return "\n".join(p["text"] for p in extract_pages(data))
    if kind == "docx":
        return docx_text(data)
    if kind == "txt":
        return data.decode("utf-8", errors="replace")
    raise PermanentError(f"unsupported context kind {kind!r}", "UNSUPPORTED_CONTEXT_FILE")


def defaults_from(text: str) -> dict[str, str]:
    """Specification defaults stated in the context ("Reader type: …", "Lock type: …")."""
    out = {}
    for key, pattern in _DEFAULT_PATTERNS.items():
        m = pattern.search(text)
        if m:
            out[key] = m.group(1).strip().rstrip(".")
    return out


def process(sources: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    """`sources`: (label, kind, bytes) → {text, sources, defaults}."""
    texts, labels = [], []
    for label, kind, data in sources:
        texts.append(extract_text(kind, data))
        labels.append({"source": label, "kind": kind, "chars": len(texts[-1])})
    text = "\n".join(texts)
    return {"text": text, "sources": labels, "defaults": defaults_from(text)}
