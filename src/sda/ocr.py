"""Optional OCR of scanned pages (the `ocr` extra: pytesseract + the system's `tesseract`).

A scan has no text layer, so without OCR the analysis can only say so. With the
extra installed, the page's largest image is read by Tesseract word by word and
each word is placed back in page coordinates, so the same position-based reading
applies; the analysis lowers the confidence of whatever came from OCR.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from sda.layout import Word

MIN_CONFIDENCE = 40  # Tesseract's per-word confidence (0-100) below which a word is dropped
TARGET_DPI = 250  # Tesseract reads small print best at 250-300 dpi; low-resolution scans are upscaled
# Tesseract often drops the hyphen of a short id (`A-101` → `A101`): restored for the system prefixes
_LOST_HYPHEN = re.compile(r"^(A|C|I|D|DR)(\d{2,4})([.,;:]?)$")


def available() -> bool:
    """pytesseract importable and the tesseract binary on PATH."""
    if shutil.which("tesseract") is None:
        return False
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return True


def read_image(image: Any, page_width: float, page_height: float) -> list[Word]:
    """Words of a PIL image that covers a page of the given size (points), in page coordinates."""
    import pytesseract

    gray = image.convert("L")
    dpi = gray.width / (page_width / 72.0)
    if dpi < TARGET_DPI * 0.8:
        factor = TARGET_DPI / dpi
        gray = gray.resize((int(gray.width * factor), int(gray.height * factor)))
    sx, sy = page_width / gray.width, page_height / gray.height
    data = pytesseract.image_to_data(gray, output_type=pytesseract.Output.DICT, config="--psm 3")
    words = []
    for i, text in enumerate(data["text"]):
        text = (text or "").strip()
        try:
            conf = float(data["conf"][i])
        except (TypeError, ValueError):
            conf = -1.0
        if not text or conf < MIN_CONFIDENCE:
            continue
        text = _LOST_HYPHEN.sub(r"\1-\2\3", text)
        left, top, h = data["left"][i], data["top"][i], data["height"][i]
        size = max(4.0, h * sy * 1.3)
        # image rows grow downwards; the baseline sits at the box's bottom
        words.append(Word(text, left * sx, page_height - (top + h) * sy, size, 0, "ocr"))
    return words


def read_page(page: Any) -> list[Word]:
    """OCR the largest image of a pypdf page (the scan), assuming it fills the page."""
    images = list(page.images)
    if not images:
        return []
    largest = max(images, key=lambda im: im.image.width * im.image.height)
    box = page.mediabox
    return read_image(largest.image, float(box.width), float(box.height))


def as_text(words: list[Word]) -> str:
    """Plain text in reading order (top to bottom, left to right), one line per baseline."""
    lines: list[list[Word]] = []
    for w in sorted(words, key=lambda w: (-w.y, w.x)):
        if lines and abs(lines[-1][0].y - w.y) <= 0.4 * w.size:
            lines[-1].append(w)
        else:
            lines.append([w])
    return "\n".join(" ".join(w.text for w in sorted(line, key=lambda w: w.x)) for line in lines)
