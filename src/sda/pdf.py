"""PDF checks (api) and text extraction (worker), both with pypdf.

The api refuses what the worker could never process (not a PDF, corrupt,
password-protected) with a 422 instead of a failed job later. pypdf is
imported inside the functions so the api's cold start does not pay for it
until the first upload.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from sda.errors import PermanentError

PDF_MAGIC = b"%PDF-"
logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns loudly about harmless quirks


@dataclass(frozen=True)
class PdfInfo:
    pages: int
    encrypted: bool  # encrypted but openable with the empty password (owner restrictions only)


def looks_like_pdf(data: bytes) -> bool:
    """The header may follow up to 1 KB of junk (as readers tolerate)."""
    return PDF_MAGIC in data[:1024]


def _open(data: bytes) -> Any:
    from pypdf import PdfReader

    if not looks_like_pdf(data):
        raise PermanentError("the file is not a PDF (no %PDF- header)", "NOT_A_PDF")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:  # pypdf raises many types for broken files
        raise PermanentError(f"the PDF is corrupt: {exc}", "CORRUPT_PDF") from exc
    if reader.is_encrypted:
        try:
            ok = reader.decrypt("")
        except Exception as exc:  # noqa: BLE001 - unsupported crypto counts as protected
            raise PermanentError(f"the PDF is password-protected: {exc}", "PASSWORD_PROTECTED") from exc
        if not ok:
            raise PermanentError("the PDF is password-protected", "PASSWORD_PROTECTED")
    return reader


def inspect(data: bytes) -> PdfInfo:
    """Open the PDF and its first page; `PermanentError` (NOT_A_PDF, CORRUPT_PDF, PASSWORD_PROTECTED)."""
    reader = _open(data)
    try:
        pages = len(reader.pages)
        if pages == 0:
            raise PermanentError("the PDF has no pages", "CORRUPT_PDF")
        reader.pages[0].get("/Contents")
    except PermanentError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PermanentError(f"the PDF is corrupt: {exc}", "CORRUPT_PDF") from exc
    return PdfInfo(pages=pages, encrypted=bool(reader.is_encrypted))


def _has_images(page: Any) -> bool:
    """Whether the page paints an image XObject (a scan is one big image and no text)."""
    try:
        xobjects = (page.get("/Resources") or {}).get_object().get("/XObject") or {}
        xobjects = xobjects.get_object()
        return any(xobjects[k].get_object().get("/Subtype") == "/Image" for k in xobjects)
    except Exception:  # noqa: BLE001 - a malformed resource dictionary is not a scan
        return False


def extract_pages(data: bytes, ocr: bool = True) -> list[dict[str, Any]]:
    """Per page: plain text (reading order), layout text (columns kept, for tables) and positioned words.

    A page without a text layer but with an image is marked `scanned`; when the optional OCR
    (Tesseract) is installed its words are read from the image instead, marked `source: ocr`.
    """
    from sda import layout
    from sda import ocr as ocr_mod

    reader = _open(data)
    pages = []
    try:
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            try:
                layout_text = page.extract_text(extraction_mode="layout") or ""
            except Exception:  # noqa: BLE001 - layout mode is a bonus; plain text is enough
                layout_text = ""
            try:
                words = [w.to_dict() for w in layout.words_from_page(page)]
            except Exception:  # noqa: BLE001 - positions are a bonus too
                words = []
            scanned = not text.strip() and _has_images(page)
            entry: dict[str, Any] = {"page": number, "text": text, "layout": layout_text, "words": words}
            if scanned:
                entry["scanned"] = True
                if ocr and ocr_mod.available():
                    try:
                        ocr_words = ocr_mod.read_page(page)
                    except Exception as exc:  # noqa: BLE001 - an OCR failure leaves a scan, not a corrupt PDF
                        entry["ocr_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    else:
                        entry["words"] = [w.to_dict() for w in ocr_words]
                        entry["text"] = ocr_mod.as_text(ocr_words)
                        entry["ocr"] = True
            pages.append(entry)
    except Exception as exc:  # noqa: BLE001
        raise PermanentError(f"the PDF is corrupt: {exc}", "CORRUPT_PDF") from exc
    if not pages:
        raise PermanentError("the PDF has no pages", "CORRUPT_PDF")
    return pages
