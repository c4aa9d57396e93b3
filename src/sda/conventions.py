"""The common conventions of access-control drawings, read from positioned words.

Drawings that do not use the full `A-101-DR-B2` tag label a device with a short
id and draw (or write) its symbol next to it:

* ids             `A-101`, `D-12`, `DR-0102`, `101A`, or with a type suffix `A-101-DR`
* symbols         D/DR/DOOR, R/CR/RDR, B/EB/EX/REX/PTE, CAM, PIR, GB, KP, MS, LK/ML/ES — or the
                  words (`card reader`, `exit button` …) on a schedule line
* a legend        (`LEGEND`, `SYMBOL KEY`, or `XX = meaning` anywhere) redefines or adds symbols
* system prefixes A (access: a door), C (CCTV: a camera), I (intrusion)
* qualifiers      `(incomplete)`, `existing`, `by others` mark a device; `not in scope` excludes it

A symbol belongs to the id in its own phrase, else to the nearest id within a
few ems — by position, not reading order, so labels of neighbouring doors do
not swap. A door's reader/exit button/lock/keypad/contact become components of
that door with derived ids (`A-101-CR`). An id with neither symbol, suffix nor
system prefix is not a device (sheet numbers, room numbers, references).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from sda.layout import Phrase, Word, distance, phrases

PRIMARY = ("door", "camera", "motion_detector", "glass_break", "intrusion_device")
ACCESSORY = ("card_reader", "exit_button", "lock", "keypad", "door_contact")
ABBREVIATION = {"card_reader": "CR", "exit_button": "EB", "lock": "LK", "keypad": "KP", "door_contact": "DC"}
COMPONENT_NAME = {
    "card_reader": "Card Reader",
    "exit_button": "Exit Button",
    "keypad": "Keypad",
    "door_contact": "Door Contact",
}
SYMBOLS: dict[str, str] = {
    "D": "door", "DR": "door", "DOOR": "door",
    "R": "card_reader", "CR": "card_reader", "RDR": "card_reader",
    "B": "exit_button", "EB": "exit_button", "EX": "exit_button", "REX": "exit_button", "PTE": "exit_button",
    "CAM": "camera", "CCTV": "camera",
    "PIR": "motion_detector", "GB": "glass_break",
    "KP": "keypad", "MS": "door_contact", "DC": "door_contact",
    "LK": "lock", "ML": "lock", "ES": "lock",
}  # fmt: skip
LOCK_KIND = {"ML": "electromagnetic", "ES": "electric strike"}
PREFIX_SYSTEM = {"A": "door", "D": "door", "DR": "door", "C": "camera", "I": "intrusion_device"}

# a legend description → what the symbol stands for; the first match wins (fire/smoke are not security)
_MEANINGS = [
    (re.compile(r"smoke|fire|heat|sprinkler|luminaire|light|socket|data\s+outlet", re.I), None),
    (re.compile(r"camera|cctv|dome|bullet|ptz", re.I), "camera"),
    (re.compile(r"glass\s*break|break\s*glass\s*detector|acoustic", re.I), "glass_break"),
    (re.compile(r"motion|\bpir\b|passive\s+infra|detector|occupancy", re.I), "motion_detector"),
    (re.compile(r"keypad|pin\s*pad", re.I), "keypad"),
    (re.compile(r"contact|position\s+switch|magnetic\s+switch|reed", re.I), "door_contact"),
    (re.compile(r"reader|credential|card|biometric|proximity|fob", re.I), "card_reader"),
    (re.compile(r"exit|egress|request\s+to|\brex\b|push\s+(?:to|button)|release", re.I), "exit_button"),
    (re.compile(r"lock|strike|latch|maglock|bolt", re.I), "lock"),
    (re.compile(r"door|gate|turnstile|portal|entrance", re.I), "door"),
]
# words on a schedule line that name a device (a line with exactly one id)
_WORDS = [
    (re.compile(r"\bcard\s+readers?\b|\breaders?\b|\bcredential", re.I), "card_reader"),
    (re.compile(r"\bexit\s+(?:buttons?|devices?)\b|\brequest[\s-]+to[\s-]+exit\b|\bpush[\s-]+to[\s-]+exit\b", re.I),
     "exit_button"),
    (re.compile(r"\bkeypads?\b", re.I), "keypad"),
    (re.compile(r"\bdoor\s+contacts?\b", re.I), "door_contact"),
    (re.compile(r"\bmaglocks?\b|\belectric\s+strikes?\b|\blocks?\b", re.I), "lock"),
    (re.compile(r"\bcameras?\b|\bcctv\b", re.I), "camera"),
    (re.compile(r"\bmotion\s+detectors?\b|\bpir\b", re.I), "motion_detector"),
    (re.compile(r"\bglass[\s-]+break", re.I), "glass_break"),
    (re.compile(r"\bdoors?\b", re.I), "door"),
]  # fmt: skip

ID_RE = re.compile(
    r"^(?:(?P<pre>[A-Z]{1,3})-(?P<num>\d{1,4})(?P<let>[A-Z]?)(?:-(?P<suf>[A-Z]{1,4}))?|(?P<bare>\d{2,4}[A-Z]))$"
)
_STRIP = ".,;:()[]{}"
_LEGEND_HEAD = re.compile(r"\b(legend|symbol\s+key|symbols|key\s+to\s+symbols|^key:?$)", re.I)
_LEGEND_ENTRY = re.compile(
    r"(?:^|[,;]\s*|\s{2,})([A-Z]{1,4})\s*(?:=|:|\s[-\u2013\u2014]\s)\s*([^,;=]+?)(?=\s*(?:[,;]|$))"
)
_METADATA = re.compile(
    r"\b(drawing|dwg|sheet|rev(?:ision)?|project|date|scale|refer|ref\.?|see|title|job|page|plot|file|issued?)\b",
    re.I,
)
_NOTES = [
    (re.compile(r"\bnot\s+in\s+scope\b|\bN\.?I\.?C\.?\b|\bto\s+be\s+removed\b|\bfuture\s+phase\b|\bomitted\b", re.I),
     "excluded"),
    (re.compile(r"\bincomplete\b|\bto\s+be\s+confirmed\b|\bTBC\b", re.I), "incomplete"),
    (re.compile(r"\bby\s+others\b", re.I), "by_others"),
    (re.compile(r"\bexisting\b|\(E\)|\bEXG\b", re.I), "existing"),
]  # fmt: skip
_SEPARATORS = {"+", "/", "&", "-", "|", ",", "\u2013", "\u2014"}


def meaning(description: str) -> str | None:
    """What a legend entry's description stands for (None: not a security device)."""
    return next((kind for rx, kind in _MEANINGS if rx.search(description)), None)


def _clean(text: str) -> str:
    return text.strip(_STRIP)


@dataclass
class Found:
    """One device read from the positioned words, with the evidence it came from."""

    id: str
    type: str
    page: int
    x: float
    y: float
    text: str
    source: str  # "text" | "ocr"
    how: str  # "phrase" (symbol beside the id) | "near" | "line" (schedule words) | "suffix" | "prefix"
    symbols: dict[str, str] = field(default_factory=dict)  # accessory type → the symbol seen
    location: str | None = None
    status: str | None = None  # incomplete | existing | by_others | excluded
    lock_kind: str | None = None
    line: int = -1  # the baseline the id is on (qualifiers on the same line belong to it)
    _loc_d: float = 1e9  # distance to the location phrase chosen so far

    def evidence(self) -> dict[str, Any]:
        return {"page": self.page, "text": self.text, "x": round(self.x, 1), "y": round(self.y, 1),
                "source": self.source}  # fmt: skip


@dataclass
class PageReading:
    devices: list[Found]
    legend: dict[str, str | None]  # symbol → type (None: not security), as the page's legend defines it
    symbols_seen: int


def legend_entries(parts: list[Phrase]) -> tuple[dict[str, tuple[str | None, str]], set[int]]:
    """The legend's `symbol → (type, description)` and the ids of the phrases it occupies."""
    entries: dict[str, tuple[str | None, str]] = {}
    used: set[int] = set()
    heads = [p for p in parts if _LEGEND_HEAD.search(p.text)]
    by_line: dict[int, list[Phrase]] = {}
    for p in parts:
        by_line.setdefault(p.line, []).append(p)
    for p in parts:
        for m in _LEGEND_ENTRY.finditer(p.text):
            symbol, desc = m.group(1), m.group(2).strip()
            if ID_RE.match(symbol) or not re.search(r"[a-z]{3}", desc, re.I):
                continue
            entries[symbol] = (meaning(desc), desc)
            used.add(id(p))
    # `SYM   description` in two phrases, below a legend heading
    for head in heads:
        hx, hy = head.center()
        for line in by_line.values():
            if len(line) < 2 or any(id(p) in used for p in line):
                continue
            first, rest = line[0], line[1:]
            fx, fy = first.center()
            below = 0 < hy - fy < 30 * head.words[0].size and abs(fx - hx) < 40 * head.words[0].size
            sym = _clean(first.text)
            if below and len(first.words) == 1 and re.fullmatch(r"[A-Z]{1,4}", sym) and not ID_RE.match(sym):
                desc = " ".join(p.text for p in rest)
                has_id = any(ID_RE.match(_clean(w.text)) for r in rest for w in r.words)
                if re.search(r"[a-z]{3}", desc, re.I) and not has_id:
                    entries[sym] = (meaning(desc), desc)
                    used.update(id(p) for p in line)
    return entries, used


def _note(text: str) -> str | None:
    return next((status for rx, status in _NOTES if rx.search(text)), None)


def read_page(number: int, words: list[Word], legend: dict[str, str | None]) -> PageReading:
    """The devices on one page. `legend` (symbol → type) overrides the default symbols."""
    parts = phrases(words)
    local, legend_phrases = legend_entries(parts)
    symbols: dict[str, str | None] = {**SYMBOLS, **legend, **{k: v for k, (v, _) in local.items()}}

    ids: list[tuple[Word, Phrase, re.Match[str]]] = []
    syms: list[tuple[Word, Phrase, str, str]] = []  # word, phrase, type, symbol
    notes: list[tuple[Phrase, str]] = []
    plain: list[Phrase] = []
    for p in parts:
        if id(p) in legend_phrases:
            continue
        status = _note(p.text)
        if status:
            notes.append((p, status))
        if _METADATA.search(p.text):
            continue
        tokens = [_clean(w.text) for w in p.words]
        kinds = []
        for w, t in zip(p.words, tokens, strict=True):
            m = ID_RE.match(t)
            if m:
                ids.append((w, p, m))
                kinds.append("id")
            elif t in symbols:
                kinds.append("symbol")
            elif not t or t in _SEPARATORS or _note(w.text) or t.lower() in {"by", "others", "not", "in", "scope"}:
                kinds.append("punct")
            else:
                kinds.append("word")
        # symbols count only in phrases made of ids and symbols: `Conference Room B` has no exit button
        if "word" not in kinds:
            for w, t, k in zip(p.words, tokens, kinds, strict=True):
                if k == "symbol" and symbols.get(t):
                    syms.append((w, p, symbols[t] or "", t))
        elif "id" not in kinds and not status and re.search(r"[A-Za-z]{3}", p.text):
            plain.append(p)

    found: dict[str, Found] = {}
    owners: list[Found] = []
    for w, p, m in ids:
        t = _clean(w.text)
        cx, cy = w.center()
        f = Found(t, "", number, cx, cy, p.text, w.source, "", line=p.line)
        suf = m.group("suf")
        if suf and SYMBOLS.get(suf):
            f.type, f.how = SYMBOLS[suf], "suffix"
        owners.append(f)

    def nearest(pos: tuple[float, float], limit: float, phrase: Phrase | None = None) -> Found | None:
        cands = owners
        if phrase is not None:
            same = [o for o, (_, op, _) in zip(owners, ids, strict=True) if op is phrase]
            if same:
                cands = same
                limit = float("inf")
        best = min(cands, key=lambda o: distance(pos, (o.x, o.y)), default=None)
        return best if best is not None and distance(pos, (best.x, best.y)) <= limit else None

    seen: dict[int, list[tuple[str, str, str]]] = {}  # owner index → (type, symbol, how)
    for w, p, kind, sym in syms:
        o = nearest(w.center(), 6 * w.size + 12, p)
        if o is not None:
            how = "phrase" if any(op is p for _w, op, _m in ids) else "near"
            seen.setdefault(owners.index(o), []).append((kind, sym, how))
    # schedule rows: the phrases on an id's baseline that run on from it without a wide break
    # (a table row, not the whole width of the sheet), holding that one id and words naming devices
    on_line: dict[int, list[Phrase]] = {}
    for p in parts:
        if id(p) not in legend_phrases:
            on_line.setdefault(p.line, []).append(p)
    id_phrases = {id(p) for _, p, _ in ids}
    for i, (w, p, _) in enumerate(ids):
        row = _row(on_line.get(p.line, [p]), p, 40 * w.size, id_phrases)
        if sum(1 for q in row for x in ids if x[1] is q) != 1:
            continue
        text = "  ".join(q.text for q in row)
        if _METADATA.search(text):
            continue
        for rx, kind in _WORDS:
            for m in rx.finditer(text):
                if kind == "door" and re.search(r"door\s+(contact|schedule|type)", text[m.start():], re.I):
                    continue
                seen.setdefault(i, []).append((kind, m.group(0), "line"))
                break

    for i, o in enumerate(owners):
        m = ids[i][2]
        prefix = m.group("pre") or ""
        kinds = seen.get(i, [])
        drawn = [k for k in kinds if k[2] != "line"]
        if prefix in ("C", "I") and not drawn:  # a system prefix outranks words that merely share its row
            kinds = []
        primary = [k for k, _, _ in kinds if k in PRIMARY]
        system = {"C": ("camera",), "I": ("motion_detector", "glass_break", "intrusion_device")}.get(prefix)
        if system and any(k in system for k in primary):  # the prefix's own system first
            primary = [k for k in primary if k in system]
        if not o.type:
            if primary:
                o.type = primary[0]
                o.how = kinds[[k for k, _, _ in kinds].index(primary[0])][2]
            elif kinds and (
                prefix in ("A", "D", "DR")
                or m.group("bare")
                or any(how == "line" for _, _, how in kinds)  # a schedule row describes a door
                or len({k for k, _, _ in kinds if k in ACCESSORY}) > 1  # a reader and a button: their door
            ):
                o.type, o.how = "door", kinds[0][2]
            elif kinds and prefix == "C":
                o.type, o.how = "camera", kinds[0][2]
            elif kinds:
                o.type, o.how = kinds[0][0], kinds[0][2]
                if prefix == "I" and o.type not in ("keypad", "door_contact"):
                    o.type = "intrusion_device"
            elif prefix in PREFIX_SYSTEM and len(m.group("num")) >= 2:  # `A-1` is a grid or detail reference
                o.type, o.how = PREFIX_SYSTEM[prefix], "prefix"
            else:
                continue
        if o.type == "door":
            for k, sym, _ in kinds:
                if k in ACCESSORY and k not in o.symbols:
                    o.symbols[k] = sym
                    if k == "lock":
                        o.lock_kind = LOCK_KIND.get(sym) or _lock_from_legend(sym, local)
        if o.id in found:  # the same id twice on a page (plan and schedule): merge what each says
            prev = found[o.id]
            for k, sym in o.symbols.items():
                prev.symbols.setdefault(k, sym)
            prev.lock_kind = prev.lock_kind or o.lock_kind
            continue
        found[o.id] = o

    devices = list(found.values())
    if all(d.how == "prefix" for d in devices):  # a bare prefix counts only beside confirmed devices
        devices = []
    # qualifiers: the note's own phrase first, else the nearest id on its line, else the nearest nearby
    for p, status in notes:
        pos = p.center()
        size = p.words[0].size
        same = [d for d in devices if d.text == p.text and abs(d.y - pos[1]) < 2 * size + 1 and d.page == number]
        on_line = [d for d in devices if d.line == p.line]
        pool = same or on_line or [d for d in devices if distance(pos, (d.x, d.y)) <= 8 * size + 20]
        target = min(pool, key=lambda d: distance(pos, (d.x, d.y)), default=None)
        if target is not None and (target.status is None or status == "excluded"):
            target.status = status
    # locations: the nearest plain phrase (room name) whose nearest id is this device
    for p in plain:
        pos = p.center()
        size = p.words[0].size
        d = min(devices, key=lambda d: distance(pos, (d.x, d.y)), default=None)
        if d is None or d.type not in ("door", "camera") or distance(pos, (d.x, d.y)) > 10 * size + 20:
            continue
        if _LEGEND_HEAD.search(p.text) or p.text.rstrip().endswith(":"):
            continue
        if distance(pos, (d.x, d.y)) < d._loc_d:
            d.location = _clean(p.text).strip(" -\u2013")
            d._loc_d = distance(pos, (d.x, d.y))
    legend_types = {k: v for k, (v, _) in local.items()}
    return PageReading(devices, legend_types, len(syms))


def _row(line: list[Phrase], start: Phrase, gap: float, stops: set[int]) -> list[Phrase]:
    """The phrases of `line` from `start` up to (not into) the next phrase holding another id, through
    gaps narrower than `gap`: a table row, however wide its columns, but not the next label's."""
    ordered = sorted(line, key=lambda q: q.words[0].x * math.cos(math.radians(q.words[0].angle))
                     + q.words[0].y * math.sin(math.radians(q.words[0].angle)))  # fmt: skip
    i = next(k for k, q in enumerate(ordered) if q is start)
    lo = hi = i
    def near(a: Phrase, b: Phrase) -> bool:
        return id(b) not in stops and distance(a.words[-1].center(), b.words[0].center()) < gap

    while lo > 0 and near(ordered[lo], ordered[lo - 1]):
        lo -= 1
    while hi + 1 < len(ordered) and near(ordered[hi], ordered[hi + 1]):
        hi += 1
    return ordered[lo : hi + 1]


def _lock_from_legend(sym: str, local: dict[str, tuple[str | None, str]]) -> str | None:
    from sda.analysis import normalize_lock

    if sym in local:
        return normalize_lock(local[sym][1])[0]
    return None


def base_id(door_id: str) -> str:
    """`A-101-DR` → `A-101`: the part the door's accessories are named after."""
    m = ID_RE.match(door_id)
    if m and m.group("suf") and SYMBOLS.get(m.group("suf")) == "door":
        return door_id[: -len(m.group("suf")) - 1]
    return door_id


def accessory_id(door_id: str, kind: str) -> str:
    return f"{base_id(door_id)}-{ABBREVIATION[kind]}"
