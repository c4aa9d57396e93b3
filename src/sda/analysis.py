"""Deterministic drawing analysis: the access-control components named in a drawing's text.

Security drawings tag every device as `{zone}-{number}-{type}-{building}`,
e.g. `A-101-DR-B2` (door), `A-101-CR-B2` (card reader), `A-101-EB-B2` (exit
button), `A-301-CAM-B2` (camera), `A-101-LK-B2` (lock). The analysis reads:

* schedule lines      `A-101-DR-B2 - Main Entrance - Card Reader (HID Signo 20) + Exit Button`
                      (optionally `- Electric Strike`), `A-301-CAM-B2 - Lobby - Fixed Dome 4MP`
* schedule tables     (layout text) a header with DOOR/CAMERA and LOCATION columns, one tagged row per device
* statements          `All doors equipped with electromagnetic locks`, `All card readers: HID iCLASS SE R10`
* any other tag       (floor-plan labels, reader/exit-button lists), attributed to its first page
* exclusions          tags on lines marked NOT IN SCOPE / TO BE REMOVED / FUTURE PHASE … are left out

Pages without such tags are read by `sda.conventions` from the words' positions
(short ids, symbols, legends, system prefixes, qualifying notes). Every device
keeps its evidence (page, text, position) and a confidence; pages with nothing
security-related are listed as skipped, scans without OCR are said to be scans,
and an empty result carries a warning instead of passing for an empty drawing.

No network and no model: the same text always gives the same schedule.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TAG_TYPES = {"DR": "door", "CR": "card_reader", "EB": "exit_button", "CAM": "camera", "LK": "lock"}
TAG_RE = re.compile(r"(?<![A-Za-z0-9-])([A-Z]{1,3})-(\d{1,4})-(DR|CR|EB|CAM|LK)-([A-Z0-9]{1,4})(?![A-Za-z0-9-])")
_SEP = re.compile(r"\s+[-\u2013\u2014]\s+")
_LINE_ITEM = re.compile(r"^\s*(?P<tag>" + TAG_RE.pattern + r")\s*(?:[-\u2013\u2014:]\s+)(?P<rest>.+?)\s*$")
_EXCLUDE = re.compile(
    r"\b(NOT\s+IN\s+SCOPE|TO\s+BE\s+REMOVED|REMOVED|DEMOLISHED|DELETED|OMITTED|N\.I\.C\.?|"
    r"FUTURE\s+(?:PHASE|PROVISION|WORKS?))\b",
    re.I,
)
_ALL_LOCKS = re.compile(
    r"all\s+doors\s+(?:are\s+)?(?:equipped|fitted|provided|supplied)\s+with\s+(?:an?\s+)?(.+?)\s+locks?\b"
    r"(?:.*?\b(\d[\d,]*\s*(?:lbs?|kg|N))\b)?",
    re.I,
)
_ALL_READERS = re.compile(r"^\s*all\s+(?:card\s+)?readers?\s*(?::|-|are)\s*(.+?)\.?\s*$", re.I)
_FORCE = re.compile(r"\b(\d[\d,]*)\s*(lbs?|kg|N)\b", re.I)
_TITLE = re.compile(r"BUILDING\s+([A-Z0-9]+)\s*[-\u2013\u2014,]\s*LEVEL\s+([A-Z0-9]+)", re.I)
_PROJECT = re.compile(r"^\s*Project\s*[:\-]\s*(.+?)\s*$", re.I | re.M)
_DRAWING_NO = re.compile(r"Drawing\s*(?:No\.?|Number|#)\s*[:\-]?\s*([A-Z0-9][A-Z0-9._/-]*)", re.I)
_DATE = re.compile(r"^\s*Date\s*[:\-]\s*(\d{4}-\d{2}-\d{2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})", re.I | re.M)
_CELLS = re.compile(r"\S+(?: \S+)*")
_EMPTY = {"", "-", "\u2013", "\u2014", "n/a", "na", "none", "--"}

# header words → field; the first matching rule wins
_HEADER_FIELDS = [
    (re.compile(r"^(door|camera|device)?\s*(id|no\.?|tag|ref)$|^(door|camera)$", re.I), "id"),
    (re.compile(r"^(location|room|area|space)", re.I), "location"),
    (re.compile(r"reader\s*type|reader\s*model|credential", re.I), "reader_type"),
    (re.compile(r"^(card\s*)?reader(\s*(id|tag))?$", re.I), "reader"),
    (re.compile(r"lock|hardware", re.I), "lock"),
    (re.compile(r"exit|rex|request\s*to\s*exit", re.I), "exit_button"),
    (re.compile(r"^(camera\s*)?(type|model|lens)$", re.I), "camera_type"),
    (re.compile(r"note|remark|comment", re.I), "notes"),
]
_COMPONENT_NAMES = {
    "card reader": "Card Reader",
    "reader": "Card Reader",
    "exit button": "Exit Button",
    "exit button only": "Exit Button Only",
    "rex": "Exit Button",
    "biometric": "Biometric",
    "biometric reader": "Biometric",
    "keypad": "Keypad",
    "intercom": "Intercom",
    "door contact": "Door Contact",
}
_NO_DEVICES = {"key only", "key override", "no access control", "none", "mechanical only"}
_LOCK_SYNONYMS = {"maglock": "electromagnetic", "magnetic": "electromagnetic", "mag lock": "electromagnetic"}
DEFAULT_HOLDING_FORCE = {"electromagnetic": "1200 lbs"}  # the standard maglock rating, when unstated


def _convention_score(f: Any) -> float:
    """How sure: a symbol in the id's own label beats one nearby, a bare system prefix is a guess."""
    base = {"phrase": 0.92, "suffix": 0.92, "line": 0.88, "near": 0.82, "prefix": 0.55}.get(f.how, 0.6)
    if f.source == "ocr":
        base *= 0.7
    if f.status == "incomplete":
        base *= 0.9
    return round(base, 2)


def _read_conventions(col: _Collector, pages: list[dict[str, Any]], skip: set[int]) -> set[int]:
    """Pages without full tags, read by position (sda.conventions); returns the pages with devices."""
    from sda import conventions
    from sda.layout import Word, phrases

    todo = [(int(p["page"]), [Word.from_dict(w) for w in p.get("words") or []]) for p in pages]
    todo = [(n, ws) for n, ws in todo if n not in skip and ws]
    legend: dict[str, str | None] = {}
    for _, ws in todo:  # a legend on one sheet applies to the whole set (a page's own legend wins)
        entries, _used = conventions.legend_entries(phrases(ws))
        legend.update({k: v for k, (v, _d) in entries.items()})
    col.legend.update(legend)
    with_devices: set[int] = set()
    for number, ws in todo:
        reading = conventions.read_page(number, ws, legend)
        col.legend.update(reading.legend)
        doors = {conventions.base_id(f.id): f for f in reading.devices if f.type == "door"}
        for f in reading.devices:
            with_devices.add(number)
            if f.status == "excluded":
                col.excluded.add(f.id)
                col.excluded.update(conventions.accessory_id(f.id, k) for k in f.symbols)
                continue
            known = f.id in col.devices
            dev = col.device(f.id, number)
            if known and dev.source != "convention":
                continue
            dev.type, dev.source, dev.declared = f.type, "convention", True
            dev.evidence = dev.evidence or f.evidence()
            dev.status = dev.status or f.status
            dev.location = dev.location or f.location
            dev.score = max(dev.score or 0.0, _convention_score(f))
            if f.type in conventions.ACCESSORY:  # a separately labelled reader (`A-101-CR`, `R-12`)
                owner = doors.get(conventions.base_id(f.id).rsplit("-", 1)[0]) if f.how == "suffix" else None
                dev.door_id = owner.id if owner else None
                continue
            if f.type != "door":
                continue
            names = [conventions.COMPONENT_NAME[k] for k in ("card_reader", "exit_button", "keypad", "door_contact")
                     if k in f.symbols]
            if "Exit Button" in names and "Card Reader" not in names:
                names[names.index("Exit Button")] = "Exit Button Only"
            dev.components = list(dict.fromkeys(dev.components + names))
            if "lock" in f.symbols and not dev.lock_type:
                dev.lock_type = f.lock_kind or "lock"
            for kind in f.symbols:
                aid = conventions.accessory_id(f.id, kind)
                acc = col.device(aid, number)
                acc.type, acc.source, acc.declared, acc.door_id = kind, "convention", True, f.id
                acc.evidence, acc.status, acc.score = dev.evidence, dev.status, dev.score
    return with_devices


def tag_type(tag: str) -> str:
    m = TAG_RE.fullmatch(tag)
    return TAG_TYPES[m.group(3)] if m else "unknown"


def door_of(tag: str) -> str | None:
    """The door a device tag belongs to: same zone, number and building."""
    m = TAG_RE.fullmatch(tag)
    return f"{m.group(1)}-{m.group(2)}-DR-{m.group(4)}" if m else None


def normalize_lock(text: str) -> tuple[str | None, str | None]:
    """`Electromagnetic 1200 lbs` → (`electromagnetic`, `1200 lbs`); `Mortise Lock` → (`mortise`, None)."""
    raw = text.strip()
    if raw.lower() in _EMPTY:
        return None, None
    force = None
    m = _FORCE.search(raw)
    if m:
        force = f"{m.group(1).replace(',', '')} {m.group(2).lower().replace('lb', 'lbs').replace('lbss', 'lbs')}"
        raw = (raw[: m.start()] + raw[m.end() :]).strip()
    kind = re.sub(r"\s+", " ", re.sub(r"\blocks?\b|[(),]", " ", raw, flags=re.I)).strip().lower()
    kind = _LOCK_SYNONYMS.get(kind, kind)
    return (kind or None), force


def _component(text: str) -> tuple[str, str | None]:
    """`Card Reader (HID Signo 20)` → (`Card Reader`, `HID Signo 20`)."""
    detail = None
    m = re.match(r"^(.*?)\s*\((.+)\)\s*$", text.strip())
    if m:
        text, detail = m.group(1), m.group(2).strip()
    key = re.sub(r"\s+", " ", text.strip()).lower()
    return _COMPONENT_NAMES.get(key, text.strip().title()), detail


def _is_component_text(text: str) -> bool:
    if text.strip().lower() in _NO_DEVICES:
        return True
    parts = [p for p in re.split(r"\s*\+\s*|\s*,\s*", text) if p]
    return bool(parts) and all(
        _component(p)[0].lower() in {v.lower() for v in _COMPONENT_NAMES.values()} for p in parts
    )


@dataclass
class _Device:
    id: str
    type: str
    page: int
    location: str | None = None
    components: list[str] = field(default_factory=list)
    reader_type: str | None = None
    lock_type: str | None = None
    holding_force: str | None = None
    camera_type: str | None = None
    source: str = "tag"  # "list" | "table" | "tag" | "convention"
    declared: bool = False  # the door's own entry was found (list or table)
    evidence: dict[str, Any] | None = None  # page, text, x, y (and source: text | ocr)
    status: str | None = None  # incomplete | existing | by_others (qualifying notes)
    door_id: str | None = None  # for a door's reader, exit button, lock, keypad, contact
    score: float | None = None  # the confidence, when the convention reader set it


class _Collector:
    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}
        self.order: list[str] = []
        self.excluded: set[str] = set()
        self.default_lock: tuple[str | None, str | None] = (None, None)
        self.default_reader: str | None = None
        self.legend: dict[str, str | None] = {}

    def device(self, tag: str, page: int) -> _Device:
        if tag not in self.devices:
            self.devices[tag] = _Device(id=tag, type=tag_type(tag), page=page)
            self.order.append(tag)
        return self.devices[tag]


def _parse_list_line(col: _Collector, line: str, page: int) -> None:
    m = _LINE_ITEM.match(line)
    if not m:
        return
    tag = m.group("tag")
    segments = [s.strip() for s in _SEP.split(m.group("rest")) if s.strip()]
    dev = col.device(tag, page)
    if dev.type == "door":
        if segments and not _is_component_text(segments[0]):
            dev.location = segments.pop(0)
        if segments and _is_component_text(segments[0]):
            text = segments.pop(0)
            parts = [] if text.strip().lower() in _NO_DEVICES else re.split(r"\s*\+\s*|\s*,\s*", text)
            comps = [_component(p) for p in parts if p]
            dev.components = [c for c, _ in comps]
            for name, detail in comps:
                if name == "Card Reader" and detail:
                    dev.reader_type = detail
        if segments:
            dev.lock_type, dev.holding_force = normalize_lock(segments.pop(0))
        dev.source, dev.declared = "list", True
    elif dev.type == "camera":
        if segments:
            dev.location = segments.pop(0)
        if segments:
            dev.camera_type = segments.pop(0)
        dev.source, dev.declared = "list", True


def _header_columns(line: str) -> list[tuple[int, str]] | None:
    cells = [(m.start(), m.group()) for m in _CELLS.finditer(line)]
    if len(cells) < 3:
        return None
    fields = []
    for start, text in cells:
        name = next((f for rx, f in _HEADER_FIELDS if rx.search(text.strip())), "other")
        fields.append((start, name))
    names = [f for _, f in fields]
    if "id" in names and "location" in names:
        return fields
    return None


def _parse_tables(col: _Collector, layout: str, page: int) -> None:
    columns: list[tuple[int, str]] | None = None
    for line in layout.splitlines():
        header = _header_columns(line)
        if header:
            columns = header
            continue
        if columns is None or not line.strip():
            continue
        cells = [(m.start(), m.group()) for m in _CELLS.finditer(line)]
        first = TAG_RE.fullmatch(cells[0][1]) if cells else None
        if not first:
            continue
        row: dict[str, str] = {}
        for start, text in cells:
            candidates = [c for c in columns if c[0] <= start + 2]
            name = (candidates[-1] if candidates else columns[0])[1]
            row[name] = (row[name] + " " + text) if name in row else text
        if _EXCLUDE.search(line):
            continue
        _apply_row(col, row, page)


def _value(row: dict[str, str], key: str) -> str | None:
    v = row.get(key, "").strip()
    return None if v.lower() in _EMPTY else v


def _apply_row(col: _Collector, row: dict[str, str], page: int) -> None:
    tag = row.get("id", "").strip()
    dev = col.device(tag, page)
    dev.location = _value(row, "location") or dev.location
    if dev.type == "door":
        reader = _value(row, "reader")
        exit_button = _value(row, "exit_button")
        comps = []
        if reader:
            comps.append("Card Reader")
        if exit_button:
            comps.append("Exit Button" if reader else "Exit Button Only")
        dev.components = comps
        dev.reader_type = _value(row, "reader_type") if reader else None
        lock = _value(row, "lock")
        if lock:
            dev.lock_type, dev.holding_force = normalize_lock(lock)
        for value in (reader, exit_button):
            for m in TAG_RE.finditer(value or ""):
                col.device(m.group(0), page)
    elif dev.type == "camera":
        dev.camera_type = _value(row, "camera_type") or dev.camera_type
    dev.source, dev.declared = "table", True


def _parse_statements(col: _Collector, line: str) -> None:
    m = _ALL_LOCKS.search(line)
    if m:
        kind, force = normalize_lock(m.group(1))
        stated = m.group(2)
        if stated:
            force = normalize_lock(stated)[1] or force
        col.default_lock = (kind, force)
    m = _ALL_READERS.match(line)
    if m and not TAG_RE.search(line):
        col.default_reader = m.group(1).strip()


def _metadata(text: str) -> dict[str, Any]:
    title = _TITLE.search(text)
    project = _PROJECT.search(text)
    number = _DRAWING_NO.search(text)
    date = _DATE.search(text)
    return {
        "drawing_number": number.group(1) if number else None,
        "project": project.group(1) if project else None,
        "date": date.group(1) if date else None,
        "building": title.group(1) if title else None,
        "level": title.group(2) if title else None,
    }


def analyze(pages: list[dict[str, Any]], defaults: dict[str, str] | None = None) -> dict[str, Any]:
    """Pages (`{page, text, layout}`) and context defaults → the schedule (see module doc)."""
    defaults = defaults or {}
    col = _Collector()
    tagged: set[int] = set()
    for p in pages:
        number, text = int(p["page"]), p.get("text") or ""
        if TAG_RE.search(text):
            tagged.add(number)
        for line in text.splitlines():
            if _EXCLUDE.search(line):
                col.excluded.update(m.group(0) for m in TAG_RE.finditer(line))
                continue
            _parse_statements(col, line)
            _parse_list_line(col, line, number)
        if p.get("layout"):
            _parse_tables(col, p["layout"], number)
        for line in text.splitlines():
            if not _EXCLUDE.search(line):
                for m in TAG_RE.finditer(line):
                    col.device(m.group(0), number)
        _tag_evidence(col, p)
    with_devices = tagged | _read_conventions(col, pages, tagged)

    default_lock, default_force = col.default_lock
    if default_lock is None and defaults.get("lock_type"):
        default_lock, default_force = normalize_lock(defaults["lock_type"])
    default_reader = col.default_reader or defaults.get("reader_type")

    devices = [col.devices[t] for t in col.order if t not in col.excluded]
    doors = [d for d in devices if d.type == "door"]
    for d in doors:
        if d.lock_type is None and default_lock:
            d.lock_type, d.holding_force = default_lock, d.holding_force or default_force
        if d.lock_type and not d.holding_force:
            d.holding_force = DEFAULT_HOLDING_FORCE.get(d.lock_type)
        if d.reader_type is None and default_reader and "Card Reader" in d.components:
            d.reader_type = default_reader
    cameras = [d for d in devices if d.type == "camera"]
    for c in cameras:
        if c.camera_type is None and defaults.get("camera_type"):
            c.camera_type = defaults["camera_type"]

    lock_types = Counter(d.lock_type for d in doors if d.lock_type)
    forces = {d.holding_force for d in doors if d.lock_type}
    if len(lock_types) == 1:
        kind = next(iter(lock_types))
        locks = {
            "type": kind,
            "holding_force": forces.pop() if len(forces) == 1 else None,
            "quantity": lock_types[kind],
        }
    else:
        locks = {
            "type": "mixed" if lock_types else None,
            "holding_force": forces.pop() if len(forces) == 1 else None,
            "quantity": sum(lock_types.values()),
        }
    readers = [d.id for d in devices if d.type == "card_reader"]
    exits = [d.id for d in devices if d.type == "exit_button"]
    tagged_locks = [d.id for d in devices if d.type == "lock"]
    others = [d for d in devices if d.type not in ("door", "camera", "card_reader", "exit_button", "lock")]
    skipped, warnings = [], []
    for p in pages:
        number = int(p["page"])
        if p.get("scanned") and not p.get("ocr"):
            skipped.append({"page": number, "reason": "no text layer (scanned)"})
            failed = f"; OCR failed ({p['ocr_error']})" if p.get("ocr_error") else ""
            warnings.append(f"page {number}: no text layer (scanned){failed}")
        elif p.get("scanned"):
            warnings.append(f"page {number}: no text layer (scanned), read by OCR at lower confidence")
            if number not in with_devices:
                skipped.append({"page": number, "reason": "nothing security-related read by OCR"})
        elif number not in with_devices:
            skipped.append({"page": number, "reason": "no security content"})
    if not devices:
        warnings.append("nothing security-related was read from this drawing: the schedule is empty")
    all_text = "\n".join(p.get("text") or "" for p in pages)
    metadata = _metadata(all_text)
    metadata.update(
        total_doors=len(doors),
        total_card_readers=len(readers),
        total_exit_buttons=len(exits),
        total_locks=locks["quantity"],
        total_cameras=len(cameras),
        total_other_devices=len(others),
        pages=len(pages),
    )
    return {
        "metadata": metadata,
        "doors": [
            {
                "id": d.id,
                "location": d.location,
                "components": d.components,
                "reader_type": d.reader_type,
                "lock_type": d.lock_type,
                "holding_force": d.holding_force,
                "page": d.page,
                "confidence": _confidence(d, col),
            }
            for d in doors
        ],
        "card_readers": readers,
        "exit_buttons": exits,
        "cameras": [
            {
                "id": c.id,
                "location": c.location,
                "camera_type": c.camera_type,
                "page": c.page,
                "confidence": _confidence(c, col),
            }
            for c in cameras
        ],
        "locks": locks,
        "lock_types": dict(sorted(lock_types.items())),
        "tagged_locks": tagged_locks,
        "devices": [
            {
                "id": d.id,
                "type": d.type,
                "location": d.location,
                "door_id": d.door_id,
                "page": d.page,
                "confidence": _confidence(d, col),
            }
            for d in others
        ],
        "excluded": sorted(col.excluded),
        "warnings": warnings,
        "skipped_pages": skipped,
        "legend": {k: v for k, v in sorted(col.legend.items())},
        "_devices": {
            d.id: {
                "page": d.page,
                "confidence": _confidence(d, col),
                "evidence": d.evidence or {"page": d.page},
                "status": d.status,
                "door_id": d.door_id or (door_of(d.id) if d.type != "door" else None),
            }
            for d in devices
        },
    }


def _tag_evidence(col: _Collector, page: dict[str, Any]) -> None:
    """Where each full tag first appears on the page: its word's position and its text line."""
    number = int(page["page"])
    todo = {t for t, d in col.devices.items() if d.page == number and d.evidence is None}
    if not todo:
        return
    for line in (page.get("text") or "").splitlines():
        for m in TAG_RE.finditer(line):
            dev = col.devices.get(m.group(0))
            if dev is not None and dev.evidence is None and m.group(0) in todo:
                dev.evidence = {"page": number, "text": line.strip()[:200], "x": None, "y": None, "source": "text"}
    for w in page.get("words") or []:
        dev = col.devices.get(w["text"].strip(",;:"))
        if dev is not None and dev.evidence is not None and dev.evidence.get("x") is None and dev.page == number:
            dev.evidence.update(x=w["x"], y=w["y"])


def _confidence(dev: _Device, col: _Collector) -> float:
    """How sure the analysis is, from how the device was found (declared entries beat bare tags)."""
    if dev.score is not None:
        return dev.score
    if dev.type in ("door", "camera"):
        if dev.declared:
            return 0.98 if dev.location else 0.85
        return 0.6
    door = col.devices.get(door_of(dev.id) or "")
    if door is None or door.id in col.excluded:
        return 0.7
    wanted = {"card_reader": "Card Reader", "exit_button": "Exit Button"}.get(dev.type)
    if wanted and any(c.startswith(wanted) for c in door.components):
        return 0.97
    return 0.8


def components(schedule: dict[str, Any]) -> list[dict[str, Any]]:
    """The flat component list (Excel's schedule sheet, the components download), each with its evidence."""
    doors = {d["id"]: d for d in schedule["doors"]}
    info = schedule.get("_devices", {})
    out: list[dict[str, Any]] = []

    def add(tag: str, kind: str, location: Any, page: Any, attrs: dict[str, Any], confidence: Any) -> None:
        meta = info.get(tag, {})
        if meta.get("status"):
            attrs["status"] = meta["status"]
        out.append(
            {
                "id": tag,
                "type": kind,
                "location": location,
                "page": page,
                "attributes": attrs,
                "confidence": confidence,
                "evidence": meta.get("evidence") or {"page": page},
            }
        )

    for d in schedule["doors"]:
        attrs = {
            "components": d["components"],
            "reader_type": d["reader_type"],
            "lock_type": d["lock_type"],
            "holding_force": d["holding_force"],
        }
        add(d["id"], "door", d["location"], d["page"], attrs, d["confidence"])
    for kind, ids in (
        ("card_reader", schedule["card_readers"]),
        ("exit_button", schedule["exit_buttons"]),
        ("lock", schedule.get("tagged_locks", [])),
    ):
        for tag in ids:
            meta = info.get(tag, {})
            door = doors.get(meta.get("door_id") or door_of(tag) or "")
            attrs: dict[str, Any] = {"door_id": door["id"] if door else None}
            if kind == "card_reader":
                attrs["reader_type"] = door["reader_type"] if door else None
            if kind == "lock":
                attrs["lock_type"] = door["lock_type"] if door else None
            add(tag, kind, door["location"] if door else None, meta.get("page"), attrs, meta.get("confidence", 0.7))
    for c in schedule["cameras"]:
        add(c["id"], "camera", c["location"], c["page"], {"camera_type": c["camera_type"]}, c["confidence"])
    for d in schedule.get("devices", []):
        door = doors.get(d.get("door_id") or "")
        location = d["location"] or (door["location"] if door else None)
        add(d["id"], d["type"], location, d["page"], {"door_id": d.get("door_id")}, d["confidence"])
    return out


def public_schedule(schedule: dict[str, Any]) -> dict[str, Any]:
    """The schedule without internal bookkeeping (what the components download contains)."""
    return {k: v for k, v in schedule.items() if not k.startswith("_")}
