"""Where text sits on a page: positioned words and phrases (pypdf's text visitor).

A drawing's meaning is in its geometry: the `D` beside `A-101` is that door's
symbol, the `R` a few points away its reader. Reading order (plain text) loses
that, so the analysis works on words with page coordinates. Coordinates are the
PDF's user space (points, y up), after the text and graphics matrices, so text
drawn rotated — or a page shown rotated through `/Rotate` — keeps its true
neighbours. Word positions inside a text run are estimated from the character
offset (half an em per character): good enough to tell neighbours apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

CHAR_EM = 0.5  # average advance of a character, in ems (Helvetica ~0.5, Courier 0.6)
PHRASE_GAP_EM = 1.2  # a wider gap between two words on a line starts a new phrase
_WORD = re.compile(r"\S+")


@dataclass
class Word:
    text: str
    x: float  # start of the word on its baseline (user space)
    y: float
    size: float  # effective font size in points
    angle: int  # text direction, rounded to 0 / 90 / 180 / 270 degrees
    source: str = "text"  # "text" (the PDF's text layer) | "ocr"
    advance: float = 0.0  # the word's width in points from the font's metrics (0: unknown, estimated)

    def direction(self) -> tuple[float, float]:
        a = math.radians(self.angle)
        return math.cos(a), math.sin(a)

    @property
    def width(self) -> float:
        return self.advance or len(self.text) * CHAR_EM * self.size

    def center(self) -> tuple[float, float]:
        dx, dy = self.direction()
        half, up = self.width / 2, self.size * 0.35
        return self.x + dx * half - dy * up, self.y + dy * half + dx * up

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "x": round(self.x, 1),
            "y": round(self.y, 1),
            "size": round(self.size, 1),
            "angle": self.angle,
            "source": self.source,
            "advance": round(self.advance, 2),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Word:
        return cls(
            d["text"], float(d["x"]), float(d["y"]), float(d["size"]), int(d["angle"]), d.get("source", "text"),
            float(d.get("advance") or 0.0),
        )  # fmt: skip


@dataclass
class Phrase:
    """Words on one baseline without a wide gap: one label, one legend entry, one table cell."""

    words: list[Word] = field(default_factory=list)
    line: int = 0  # index of the baseline this phrase is on (phrases of one line share it)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    def center(self) -> tuple[float, float]:
        xs = [w.center() for w in self.words]
        return sum(c[0] for c in xs) / len(xs), sum(c[1] for c in xs) / len(xs)


def _mul(a: list[float], b: list[float]) -> list[float]:
    """Product of two PDF matrices [a b c d e f] (row-vector convention)."""
    return [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
        a[4] * b[0] + a[5] * b[2] + b[4],
        a[4] * b[1] + a[5] * b[3] + b[5],
    ]


def _metrics(font_dict: Any, cache: dict[int, Any]) -> Any:
    """`text → width in ems` from the font's widths (pypdf's Font, base-14 metrics included), or None.

    pypdf keeps this class private; when it moves, positions fall back to the half-em estimate.
    """
    key = id(font_dict)
    if key not in cache:
        try:
            from pypdf.generic._font import Font

            font = Font.from_font_resource(font_dict)
            font.get_text_width("A")
            cache[key] = lambda t: font.get_text_width(t) / 1000.0
        except Exception:  # noqa: BLE001 - any failure: estimate instead
            cache[key] = None
    return cache[key]


def words_from_page(page: Any) -> list[Word]:
    """Positioned words of a pypdf page, from the text visitor (one extraction pass)."""
    words: list[Word] = []
    fonts: dict[int, Any] = {}

    def visit(text: str, cm: Any, tm: Any, font_dict: Any, font_size: Any) -> None:
        if not text or not text.strip():
            return
        try:
            m = _mul([float(v) for v in tm], [float(v) for v in cm])
            scale = math.hypot(m[0], m[1]) or 1.0
            size = max(1.0, float(font_size or 1.0) * scale)
        except (TypeError, ValueError):
            return
        angle = int(round(math.degrees(math.atan2(m[1], m[0])) / 90.0)) % 4 * 90
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        ems = _metrics(font_dict, fonts) if font_dict is not None else None
        for n, line in enumerate(text.split("\n")):
            # a run spanning lines (rare with the visitor): later lines sit one leading further down
            ox, oy = m[4] + dy * 1.2 * size * n, m[5] - dx * 1.2 * size * n
            # leading blanks are pypdf's own (a gap since the previous text object): the text matrix
            # is where the first glyph sits
            lead = len(line) - len(line.lstrip())
            for w in _WORD.finditer(line):
                before = line[lead : w.start()]
                off = (ems(before) if ems else len(before) * CHAR_EM) * size
                advance = ems(w.group()) * size if ems else 0.0
                words.append(Word(w.group(), ox + dx * off, oy + dy * off, size, angle, "text", advance))

    page.extract_text(visitor_text=visit)
    return join_glyphs(words)


def join_glyphs(words: list[Word]) -> list[Word]:
    """Glue text placed glyph by glyph (CAD exports: one text object per character) back into words.

    A one-character text object that starts where the previous one-character object on its baseline
    ends (by the font's widths, within 0.12 em) continues it: `A` `-` `1` `0` `1` → `A-101`. Words
    are separated by at least a space (~0.25 em); a symbol squeezed against a whole label (`RDR` `B`)
    stays apart. Without the font's widths nothing is joined.
    """
    out: list[Word] = []
    glued: set[int] = set()  # words in `out` made only of one-glyph text objects
    for w in words:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.advance
            and w.advance
            and prev.angle == w.angle
            and abs(prev.size - w.size) <= 0.1 * w.size
            and len(w.text) == 1
            and (len(prev.text) == 1 or id(prev) in glued)
        ):
            dx, dy = w.direction()
            gap = (w.x * dx + w.y * dy) - (prev.x * dx + prev.y * dy + prev.advance)
            v_gap = abs((-w.x * dy + w.y * dx) - (-prev.x * dy + prev.y * dx))
            if v_gap < 0.2 * w.size and abs(gap) < 0.12 * w.size:
                prev.text += w.text
                prev.advance += w.advance + gap
                glued.add(id(prev))
                continue
        out.append(w)
    return out


def phrases(words: list[Word]) -> list[Phrase]:
    """Group words into baselines (per text direction), then split each baseline at wide gaps."""
    out: list[Phrase] = []
    line_no = 0
    for angle in sorted({w.angle for w in words}):
        group = [w for w in words if w.angle == angle]
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))

        def u(w: Word, dx: float = dx, dy: float = dy) -> float:
            return w.x * dx + w.y * dy

        def v(w: Word, dx: float = dx, dy: float = dy) -> float:
            return -w.x * dy + w.y * dx

        group.sort(key=lambda w: (-v(w), u(w)))
        lines: list[list[Word]] = []
        for w in group:
            if lines and abs(v(lines[-1][0]) - v(w)) <= 0.4 * max(w.size, lines[-1][0].size):
                lines[-1].append(w)
            else:
                lines.append([w])
        for line in lines:
            line.sort(key=u)
            current = Phrase([line[0]], line_no)
            for prev, w in zip(line, line[1:], strict=False):
                gap = u(w) - (u(prev) + prev.width)
                if gap > PHRASE_GAP_EM * max(w.size, prev.size):
                    out.append(current)
                    current = Phrase([], line_no)
                current.words.append(w)
            out.append(current)
            line_no += 1
    return out


def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])
