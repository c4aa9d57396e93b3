"""Realistic sample security drawings with known ground truth (fpdf2).

Each sample is a PDF a security consultant would recognise — title block,
floor plan with tagged doors and cameras, a door schedule as a list (like the
reference drawing B2) or as a table, reader and exit-button lists, lock and
CCTV schedules, notes with items that are *not* in scope — and a JSON file
with what a correct analysis finds. The generator is seeded: the same seed
gives byte-identical PDFs, so the corpus under `examples/drawings/` can be
regenerated and diffed:

    python -m sda.samples                 # rewrite examples/drawings/
    python -m sda.samples --out /tmp/x --count 20 --seed 7
    python -m sda.samples --pad-to 2000000 --out /tmp/big   # one ~2 MB drawing (benchmarks)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sda.analysis import DEFAULT_HOLDING_FORCE, normalize_lock

READER_TYPES = [
    "HID iCLASS SE R10",
    "HID Signo 20",
    "Paxton Proximity P50",
    "Salto XS4 Wall Reader",
    "Gallagher T11 Multi Tech",
]
LOCK_TYPES = [
    "Electromagnetic 1200 lbs",
    "Electromagnetic 600 lbs",
    "Electric Strike",
    "Mortise Lock",
    "Electrified Mortise",
]
CAMERA_TYPES = ["Fixed Dome 4MP", "PTZ 30x", "Bullet 8MP", "Fisheye 360", "Mini Dome 2MP"]
ROOMS = [
    "Reception",
    "Lobby",
    "Conference Room A",
    "Conference Room B",
    "Conference Room C",
    "Server Room",
    "IT Room",
    "Comms Room",
    "Storage Room",
    "Break Room",
    "Kitchen",
    "Plant Room",
    "Records Room",
    "Training Room",
    "Meeting Room 3",
    "Pharmacy",
    "Nurse Station",
    "Laboratory 1",
    "Laboratory 2",
    "Loading Dock",
    "Lift Lobby",
    "Stairwell 1",
    "Stairwell 2",
    "Cleaner's Cupboard",
    "Mail Room",
    "Security Office",
    "First Aid Room",
    "Print Room",
    "Archive",
    "Quiet Room",
]
EXITS = ["Emergency Exit North", "Emergency Exit South", "Emergency Exit East", "Emergency Exit West"]
SECURE_ROOMS = {"Server Room", "IT Room", "Comms Room", "Pharmacy", "Security Office"}
PROJECTS = [
    "St Mary's Hospital Emergency Wing",
    "Harbour Point Offices Fit-out",
    "Riverside Campus Block C",
    "Northgate Data Centre Phase 2",
    "City Library Refurbishment",
    "Westfield School Science Wing",
]
EXCLUDE_NOTES = ["TO BE REMOVED", "NOT IN SCOPE", "FUTURE PHASE - NOT IN SCOPE"]
FIXED_DATE = datetime(2025, 1, 1, tzinfo=UTC)  # PDF creation date: fixed so output is reproducible


@dataclass
class Door:
    id: str
    location: str
    components: list[str]
    reader_type: str | None
    lock: str  # as written on the drawing, e.g. "Electromagnetic 1200 lbs"
    exit_tag: str | None
    reader_tag: str | None


@dataclass
class Camera:
    id: str
    location: str | None  # None: only tagged on the plan
    camera_type: str | None


@dataclass
class DrawingSpec:
    name: str
    seed: int
    building: str
    level: str
    zone: str
    project: str
    drawing_number: str
    issued: str
    style: str  # "list" (schedule lines, like the reference drawing) or "table"
    uniform_lock: str | None  # list style: "All doors equipped with … locks"
    doors: list[Door]
    cameras: list[Camera]
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (tag, note)
    plan: bool = True
    pad_to: int = 0


def _tag(zone: str, number: int, kind: str, building: str) -> str:
    return f"{zone}-{number}-{kind}-{building}"


def random_spec(
    seed: int,
    name: str | None = None,
    *,
    doors: int | None = None,
    style: str | None = None,
    cameras: int | None = None,
) -> DrawingSpec:
    """A plausible drawing: building, level, 5-40 doors, readers, exit buttons, locks, maybe cameras."""
    rnd = random.Random(seed)
    building = rnd.choice(["B1", "B3", "B4", "B5", "C1", "C2", "HQ", "N7"])
    level = str(rnd.randint(0, 5))
    zone = rnd.choice(["A", "B", "C", "D"])
    style = style or rnd.choice(["list", "table"])
    n_doors = doors if doors is not None else rnd.randint(5, 32)
    base = (int(level) or 0) * 100 + 1
    rooms = rnd.sample(ROOMS, k=min(len(ROOMS), n_doors))
    offices = iter(range(int(level) * 100 + 1, int(level) * 100 + 99))
    uniform = rnd.choice([None, rnd.choice(LOCK_TYPES[:3])]) if style == "list" else None
    default_reader = rnd.choice(READER_TYPES)
    out_doors = []
    for i in range(n_doors):
        number = base + i
        if i == 0:
            location = "Main Entrance"
        elif i % 7 == 4:
            location = EXITS[(i // 7) % len(EXITS)]
        elif rooms and rnd.random() < 0.6:
            location = rooms.pop()
        else:
            location = f"Office {next(offices)}"
        if location.startswith("Emergency Exit"):
            comps = ["Exit Button Only"]
        elif location in SECURE_ROOMS:
            comps = ["Card Reader", "Biometric"]
        elif location == "Main Entrance" or rnd.random() < 0.35:
            comps = ["Card Reader", "Exit Button"]
        elif rnd.random() < 0.15:
            comps = []  # key only
        else:
            comps = ["Card Reader"]
        has_reader = "Card Reader" in comps
        has_exit = any(c.startswith("Exit Button") for c in comps)
        reader_type = (default_reader if rnd.random() < 0.8 else rnd.choice(READER_TYPES)) if has_reader else None
        if style == "table" and "Biometric" in comps:
            comps = ["Card Reader"]  # a table has one reader column; biometrics show as the reader type
            reader_type = "Biometric Fingerprint Reader"
        lock = uniform or rnd.choice(LOCK_TYPES)
        out_doors.append(
            Door(
                id=_tag(zone, number, "DR", building),
                location=location,
                components=comps,
                reader_type=reader_type,
                lock=lock,
                exit_tag=_tag(zone, number, "EB", building) if has_exit else None,
                reader_tag=_tag(zone, number, "CR", building) if has_reader else None,
            )
        )
    n_cams = cameras if cameras is not None else rnd.choice([0, 0, rnd.randint(2, 8)])
    out_cams = []
    for j in range(n_cams):
        cam_id = _tag(zone, 900 + j + 1, "CAM", building)
        if rnd.random() < 0.25:
            out_cams.append(Camera(cam_id, None, None))
        else:
            where = rnd.choice([d.location for d in out_doors] + ["Car Park", "Corridor 1", "Corridor 2"])
            out_cams.append(Camera(cam_id, where, rnd.choice(CAMERA_TYPES)))
    excluded = []
    for k in range(rnd.randint(0, 2)):
        number = base + n_doors + 10 + k
        kind = rnd.choice(["DR", "CR", "CAM"])
        excluded.append((_tag(zone, number, kind, building), rnd.choice(EXCLUDE_NOTES)))
    issued = (date(2025, 1, 6) + timedelta(days=rnd.randint(0, 300))).isoformat()
    return DrawingSpec(
        name=name or f"sample_{seed:03d}",
        seed=seed,
        building=building,
        level=level,
        zone=zone,
        project=rnd.choice(PROJECTS),
        drawing_number=f"SEC-{building}-L{level}-{rnd.randint(1, 40):03d}",
        issued=issued,
        style=style,
        uniform_lock=uniform,
        doors=out_doors,
        cameras=out_cams,
        excluded=excluded,
        # a camera without a schedule entry exists only as a plan label: such drawings have a plan
        plan=rnd.random() < 0.8 or n_doors > 12 or any(c.location is None for c in out_cams),
    )


# -- rendering ---------------------------------------------------------------------------------------


class _Sheet:
    """An A3 landscape drawing sheet with a title block on every page."""

    def __init__(self, spec: DrawingSpec) -> None:
        from fpdf import FPDF

        self.spec = spec
        self.pdf = FPDF(orientation="L", unit="mm", format="A3")
        self.pdf.set_creation_date(FIXED_DATE)
        self.pdf.set_auto_page_break(False)
        self.pdf.set_title(f"{spec.drawing_number} {spec.project}")
        self.pdf.set_author("7central security design")
        self.sheet = 0

    def page(self, title: str) -> None:
        pdf, spec = self.pdf, self.spec
        pdf.add_page()
        self.sheet += 1
        pdf.set_draw_color(0)
        pdf.set_line_width(0.6)
        pdf.rect(10, 10, 400, 277)
        pdf.set_font("Helvetica", "B", 14)
        pdf.text(18, 22, f"SECURITY DRAWING - BUILDING {spec.building} - LEVEL {spec.level}")
        pdf.set_font("Helvetica", "", 10)
        pdf.text(18, 29, title)
        # title block, bottom right
        pdf.set_line_width(0.3)
        pdf.rect(290, 245, 120, 42)
        pdf.set_font("Helvetica", "", 8)
        lines = [
            f"Project: {spec.project}",
            f"Drawing No: {spec.drawing_number}",
            f"Date: {spec.issued}",
            f"Sheet {self.sheet}   Scale 1:100 @ A3",
            "REV A  ISSUED FOR CONSTRUCTION",
        ]
        for i, line in enumerate(lines):
            pdf.text(293, 252 + 7 * i, line)

    def y_text(self, x: float, y: float, text: str, size: int = 9, style: str = "") -> None:
        self.pdf.set_font("Helvetica", style, size)
        self.pdf.text(x, y, text)


def _plan(sheet: _Sheet, spec: DrawingSpec, rnd: random.Random) -> None:
    pdf = sheet.pdf
    sheet.page("FLOOR PLAN - ACCESS CONTROL AND CCTV LAYOUT")
    cols = 6
    w, h = 60.0, 42.0
    shown = spec.doors[: cols * 4]
    for i, door in enumerate(shown):
        x = 20 + (i % cols) * (w + 4)
        y = 40 + (i // cols) * (h + 6)
        pdf.set_line_width(0.4)
        pdf.rect(x, y, w, h)
        pdf.set_font("Helvetica", "", 7)
        pdf.text(x + 3, y + 6, door.location.upper())
        # the door: a gap and a swing arc on the bottom wall
        pdf.set_draw_color(255)
        pdf.line(x + 20, y + h, x + 29, y + h)
        pdf.set_draw_color(0)
        pdf.set_line_width(0.2)
        pdf.arc(x + 11, y + h - 9, 18, 0, 90)
        pdf.set_font("Helvetica", "", 6)
        pdf.text(x + 31, y + h - 8, door.id)
        if door.reader_tag:
            pdf.rect(x + 15, y + h - 4, 3, 2, style="F")
            pdf.text(x + 31, y + h - 4.5, door.reader_tag)
        if door.exit_tag:
            pdf.circle(x + 24, y + h - 3, 1.2, style="D")
            pdf.text(x + 31, y + h - 1.5, door.exit_tag)
    for j, cam in enumerate(spec.cameras):
        x = 30 + (j * 47) % 360
        y = 236 - (j // 8) * 8
        pdf.set_line_width(0.3)
        pdf.circle(x, y, 2, style="D")
        pdf.line(x + 2, y, x + 6, y - 2)
        pdf.line(x + 2, y, x + 6, y + 2)
        sheet.y_text(x + 7, y + 1, cam.id, 6)
    sheet.y_text(20, 250, "LEGEND:", 8, "B")
    sheet.y_text(20, 256, "Filled box = card reader   Circle = exit button   Circle with cone = CCTV camera", 7)
    sheet.y_text(
        20,
        262,
        f"Refer to {spec.drawing_number[:-3]}{int(spec.drawing_number[-3:]) + 1:03d} for containment and cable routes.",
        7,
    )


def _list_schedule(sheet: _Sheet, spec: DrawingSpec) -> None:
    """The reference drawing's format: one line per door, then reader and exit-button lists."""
    y = 40.0

    def line(text: str, size: int = 9, style: str = "", gap: float = 6.0) -> None:
        nonlocal y
        if y > 268:
            sheet.page("DOOR SCHEDULE (CONTINUED)")
            y = 40.0
        sheet.y_text(18, y, text, size, style)
        y += gap

    sheet.page("DOOR SCHEDULE")
    line("DOOR SCHEDULE:", 10, "B", 7)
    uniform_reader = _uniform_reader(spec)
    for door in spec.doors:
        comps = [
            f"{c} ({door.reader_type})"
            if c == "Card Reader" and door.reader_type and door.reader_type != uniform_reader
            else c
            for c in door.components
        ]
        parts = [door.id, door.location] + ([" + ".join(comps)] if comps else ["Key Only"])
        if not spec.uniform_lock:
            parts.append(door.lock)
        line(" - ".join(parts))
    y += 6
    readers = [d.reader_tag for d in spec.doors if d.reader_tag]
    exits = [d.exit_tag for d in spec.doors if d.exit_tag]
    for title, tags in (("CARD READERS:", readers), ("EXIT BUTTONS:", exits)):
        line(title, 10, "B", 7)
        for i in range(0, len(tags), 4):
            line(", ".join(t for t in tags[i : i + 4] if t))
        y += 4
    if uniform_reader:
        line(f"All card readers: {uniform_reader}", gap=8)
    line("LOCKS:", 10, "B", 7)
    if spec.uniform_lock:
        kind, force = normalize_lock(spec.uniform_lock)
        line(f"All doors equipped with {kind} locks" + (f" ({force} holding force)" if force else ""))
    else:
        line("Lock type per door as scheduled above.")


def _uniform_reader(spec: DrawingSpec) -> str | None:
    """The reader type most doors use, stated once (list style only)."""
    types = [d.reader_type for d in spec.doors if d.reader_type]
    if spec.style != "list" or not types:
        return None
    common = max(set(types), key=types.count)
    return common if types.count(common) >= len(types) / 2 else None


def _table_schedule(sheet: _Sheet, spec: DrawingSpec) -> None:
    pdf = sheet.pdf
    header = ("DOOR ID", "LOCATION", "READER", "READER TYPE", "LOCK TYPE", "EXIT BUTTON", "NOTES")
    widths = (34, 52, 34, 58, 50, 34, 46)
    per_page = 22
    for n in range(0, max(1, len(spec.doors)), per_page):
        chunk = spec.doors[n : n + per_page]
        sheet.page("DOOR SCHEDULE" + (" (CONTINUED)" if n else ""))
        pdf.set_font("Helvetica", "", 8)
        pdf.set_xy(18, 38)
        with pdf.table(col_widths=widths, width=sum(widths), align="LEFT", text_align="LEFT", line_height=6) as table:
            row = table.row()
            for cell in header:
                row.cell(cell)
            for door in chunk:
                note = (
                    "Fire door"
                    if door.location.startswith(("Stair", "Emergency"))
                    else ("Key override" if not door.reader_tag else "-")
                )
                values = (
                    door.id,
                    door.location,
                    door.reader_tag or "-",
                    door.reader_type or "-",
                    door.lock,
                    door.exit_tag or "-",
                    note,
                )
                row = table.row()
                for cell in values:
                    row.cell(cell)


def _cameras(sheet: _Sheet, spec: DrawingSpec) -> None:
    scheduled = [c for c in spec.cameras if c.location]
    if not scheduled:
        return
    sheet.page("CCTV SCHEDULE")
    sheet.y_text(18, 40, "CCTV SCHEDULE:", 10, "B")
    y = 47.0
    for cam in scheduled:
        sheet.y_text(18, y, f"{cam.id} - {cam.location} - {cam.camera_type}", 9)
        y += 6


def _notes(sheet: _Sheet, spec: DrawingSpec) -> None:
    """General notes: beside a list schedule, below a table (a new sheet when there is no room)."""
    notes = [
        "All cabling Cat6A LSZH unless noted otherwise.",
        "Door hardware to fail safe on fire alarm activation (EN 14637).",
        "Contractor to verify door ids on site before installation.",
    ]
    notes += [f"{tag} {note}" for tag, note in spec.excluded]
    if spec.style == "list":
        x, y = 250.0, 40.0
    else:
        x, y = 18.0, sheet.pdf.get_y() + 10
        if y + 6 * len(notes) > 240:
            sheet.page("GENERAL NOTES")
            y = 40.0
    sheet.y_text(x, y, "GENERAL NOTES:", 9, "B")
    for i, note in enumerate(notes, start=1):
        sheet.y_text(x, y + 6 * i, f"{i}. {note}", 8)


def _padding(sheet: _Sheet, missing: int, rnd: random.Random) -> None:
    """A 'site survey photo' page of incompressible noise, to reach a target file size."""
    from PIL import Image

    side = max(8, int(missing**0.5))
    image = Image.frombytes("L", (side, side), rnd.randbytes(side * side))
    sheet.page("SITE SURVEY PHOTOGRAPHS")
    sheet.pdf.image(image, x=20, y=40, w=180)


def render(spec: DrawingSpec) -> bytes:
    """The drawing as PDF bytes (deterministic for a given spec)."""
    if not spec.pad_to:
        return _render(spec, 0)
    unpadded = len(_render(spec, 0))
    return _render(spec, max(0, spec.pad_to - unpadded - 1500))


def _render(spec: DrawingSpec, padding: int) -> bytes:
    rnd = random.Random(spec.seed + 1)
    sheet = _Sheet(spec)
    if spec.plan:
        _plan(sheet, spec, rnd)
    if spec.style == "table":
        _table_schedule(sheet, spec)
    else:
        _list_schedule(sheet, spec)
    _notes(sheet, spec)
    _cameras(sheet, spec)
    if padding > 0:
        _padding(sheet, padding, rnd)
    return bytes(sheet.pdf.output())


def truth(spec: DrawingSpec, pages: int) -> dict[str, Any]:
    """What a correct analysis of `render(spec)` finds (the schedule's format, without confidences)."""
    doors = []
    for d in spec.doors:
        kind, force = normalize_lock(d.lock)
        doors.append(
            {
                "id": d.id,
                "location": d.location,
                "components": d.components,
                "reader_type": d.reader_type,
                "lock_type": kind,
                "holding_force": force or DEFAULT_HOLDING_FORCE.get(kind or ""),
            }
        )
    kinds = sorted({d["lock_type"] for d in doors})
    forces = {d["holding_force"] for d in doors}
    readers = [d.reader_tag for d in spec.doors if d.reader_tag]
    exits = [d.exit_tag for d in spec.doors if d.exit_tag]
    return {
        "generator": {"module": "sda.samples", "seed": spec.seed, "style": spec.style},
        "metadata": {
            "drawing_number": spec.drawing_number,
            "project": spec.project,
            "date": spec.issued,
            "building": spec.building,
            "level": spec.level,
            "total_doors": len(doors),
            "total_card_readers": len(readers),
            "total_exit_buttons": len(exits),
            "total_locks": len(doors),
            "total_cameras": len(spec.cameras),
            "pages": pages,
        },
        "doors": doors,
        "card_readers": readers,
        "exit_buttons": exits,
        "cameras": [{"id": c.id, "location": c.location, "camera_type": c.camera_type} for c in spec.cameras],
        "locks": {
            "type": kinds[0] if len(kinds) == 1 else ("mixed" if kinds else None),
            "holding_force": forces.pop() if len(forces) == 1 else None,
            "quantity": len(doors),
        },
        "excluded": sorted(tag for tag, _ in spec.excluded),
    }


def generate(spec: DrawingSpec) -> tuple[bytes, dict[str, Any]]:
    """(pdf bytes, ground truth)."""
    import io

    from pypdf import PdfReader

    data = render(spec)
    pages = len(PdfReader(io.BytesIO(data)).pages)
    return data, truth(spec, pages)


# The shipped corpus: varied on purpose (styles, sizes, cameras, multi-page, exclusions).
CORPUS = [
    {"seed": 101, "doors": 8, "style": "list", "cameras": 0},
    {"seed": 102, "doors": 12, "style": "table", "cameras": 3},
    {"seed": 103, "doors": 24, "style": "list", "cameras": 6},
    {"seed": 104, "doors": 6, "style": "table", "cameras": 0},
    {"seed": 105, "doors": 36, "style": "table", "cameras": 8},
    {"seed": 106, "doors": 18, "style": "list", "cameras": 4},
    {"seed": 107, "doors": 40, "style": "list", "cameras": 2},
    {"seed": 108, "doors": 10, "style": "table", "cameras": 5},
]


def corpus_specs(count: int | None = None, seed: int | None = None) -> list[DrawingSpec]:
    if seed is None and (count is None or count <= len(CORPUS)):
        chosen = CORPUS[: count or len(CORPUS)]
        return [
            random_spec(c["seed"], f"sample_{i + 1:02d}", doors=c["doors"], style=c["style"], cameras=c["cameras"])
            for i, c in enumerate(chosen)
        ]
    base = seed if seed is not None else 1000
    return [random_spec(base + i, f"sample_{i + 1:02d}") for i in range(count or len(CORPUS))]


def write(spec: DrawingSpec, out: Path) -> tuple[Path, Path]:
    data, gt = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    pdf_path = out / f"{spec.name}.pdf"
    json_path = out / f"{spec.name}.json"
    pdf_path.write_bytes(data)
    json_path.write_text(json.dumps(gt, indent=2) + "\n")
    return pdf_path, json_path


def default_out() -> Path:
    repo = Path(__file__).resolve().parents[2]
    return (repo if (repo / "backout.toml").is_file() else Path.cwd()) / "examples" / "drawings"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: examples/drawings)")
    parser.add_argument("--count", type=int, default=None, help="how many drawings (default: the corpus)")
    parser.add_argument("--seed", type=int, default=None, help="random drawings from this seed")
    parser.add_argument("--pad-to", type=int, default=0, help="make one drawing of about this many bytes")
    args = parser.parse_args(argv)
    out = args.out or default_out()
    if args.pad_to:
        spec = random_spec(args.seed or 4242, "padded", doors=20, cameras=4)
        spec.pad_to = args.pad_to
        specs = [spec]
    else:
        specs = corpus_specs(args.count, args.seed)
    total = 0
    for spec in specs:
        pdf_path, json_path = write(spec, out)
        total += pdf_path.stat().st_size + json_path.stat().st_size
        print(
            f"{pdf_path}  ({pdf_path.stat().st_size} bytes, {len(spec.doors)} doors, "
            f"{len(spec.cameras)} cameras, {spec.style})"
        )
    print(f"{len(specs)} drawings, {total} bytes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- convention drawings (the development set of the position-based reader) ------------------------
#
# Drawings in the common conventions rather than the full-tag format: short ids, symbols beside
# them, legends, system prefixes, qualifying notes, several pages, rotated labels, clutter. The
# analysis is developed against these (seeded, endless); the held-out corpus under
# examples/drawings/heldout/ is made by a different generator and only measured.

CONVENTION_SYMBOLS = {
    "card_reader": ["R", "CR", "RDR"],
    "exit_button": ["B", "EB", "EX", "REX", "PTE"],
    "door": ["D", "DR", "DOOR"],
}


def _conv_id(rnd: random.Random, style: str, n: int) -> str:
    return {"A": f"A-{n}", "D": f"D-{n % 100}", "DR": f"DR-{n:04d}", "bare": f"{n}{rnd.choice('ABC')}"}[style]


def convention_drawing(seed: int, pages: int = 2) -> tuple[bytes, dict[str, Any]]:
    """A seeded convention-style drawing (fpdf2) and its expected components `(type, id, page)`."""
    from fpdf import FPDF

    rnd = random.Random(seed)
    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_auto_page_break(False)
    expected: list[dict[str, Any]] = []
    excluded: list[str] = []
    skipped: list[int] = []
    style = rnd.choice(["A", "D", "DR", "bare"])
    legend = rnd.random() < 0.5
    symbol = {k: rnd.choice(v) for k, v in CONVENTION_SYMBOLS.items()}
    if legend:  # the legend introduces symbols the defaults do not know
        symbol = {"door": "SD", "card_reader": "PX", "exit_button": "RQ"}
    used: set[str] = set()
    blank = rnd.randrange(pages + 1) if pages > 1 else -1
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 13)
        pdf.text(12, 14, f"ACCESS CONTROL LAYOUT - FLOOR {page}")
        pdf.set_font("Helvetica", "", 7)
        pdf.text(230, 195, f"Drawing No: A-{100 + page}   Rev C   Sheet {page} of {pages}")
        if page - 1 == blank:
            pdf.text(20, 40, "GENERAL NOTES: all cabling in accordance with the specification.")
            pdf.text(20, 46, "Coordinate containment with the electrical contractor.")
            skipped.append(page)
            continue
        if legend and page == (2 if blank == 0 else 1):
            pdf.set_font("Helvetica", "B", 8)
            pdf.text(225, 150, "LEGEND")
            pdf.set_font("Helvetica", "", 7)
            pdf.text(225, 156, "SD = Secured Door, PX = Proximity Reader, RQ = Request to Exit")
        for i in range(rnd.randint(4, 9)):
            n = page * 100 + i + 1
            tag = _conv_id(rnd, style, n)
            if tag in used:
                continue
            used.add(tag)
            x, y = 20 + (i % 4) * 50, 35 + (i // 4) * 45
            pdf.set_draw_color(0)
            pdf.rect(x - 5, y - 10, 45, 38)
            pdf.set_font("Helvetica", "", 6)
            pdf.text(x - 3, y - 6, rnd.choice(ROOMS).upper())
            size = rnd.choice([6, 7, 8])
            pdf.set_font(rnd.choice(["Helvetica", "Courier", "Times"]), "", size)
            has_reader, has_exit = rnd.random() < 0.75, rnd.random() < 0.5
            note = rnd.choice([None, None, None, "(incomplete)", "existing", "by others", "NOT IN SCOPE"])
            parts = [symbol["door"]] + ([symbol["card_reader"]] if has_reader else [])
            parts += [symbol["exit_button"]] if has_exit else []
            form = rnd.choice(["phrase", "near", "rotated", "glyphs"])
            if form == "phrase":
                pdf.text(x, y + 10, " ".join([tag, *parts]))
            elif form == "glyphs":  # as CAD exports write text: one text object per character
                gx = x
                for ch in " ".join([tag, *parts]):
                    if ch != " ":
                        pdf.text(gx, y + 10, ch)
                    gx += pdf.get_string_width(ch)
            elif form == "near":
                pdf.text(x, y + 10, tag)
                for j, s in enumerate(parts):
                    pdf.text(x + 2 + j * 5, y + 15, s)
            else:
                with pdf.rotation(90, x + 30, y + 20):
                    pdf.text(x + 30, y + 20, " ".join([tag, *parts]))
            if note:
                pdf.set_font("Helvetica", "I", 6)
                pdf.text(x, y + 20, note)
            if note == "NOT IN SCOPE":
                excluded.append(tag)
                continue
            expected.append({"type": "door", "id": tag, "page": page})
            if has_reader:
                expected.append({"type": "card_reader", "id": f"{tag}-CR", "page": page})
            if has_exit:
                expected.append({"type": "exit_button", "id": f"{tag}-EB", "page": page})
        pdf.set_font("Helvetica", "", 7)
        for j in range(rnd.randint(0, 3)):
            kind, sym, pre = rnd.choice(
                [("camera", "CAM", "C"), ("motion_detector", "PIR", "I"), ("glass_break", "GB", "I")]
            )
            tag = f"{pre}-{page}{j + 1:02d}"
            x, y = 30 + j * 60, 150
            pdf.circle(x, y, 2, style="D")
            pdf.text(x + 3, y + 1, tag)
            pdf.text(x + 3, y + 5, sym)
            expected.append({"type": kind, "id": tag, "page": page})
        if rnd.random() < 0.4:  # a door schedule in columns, ids with a building letter
            letter = rnd.choice("BEFGHLMN")
            pdf.set_font("Courier", "", 7)
            wide = rnd.random() < 0.5
            pdf.text(*((150, 154) if wide else (225, 40)), "DOOR    ROOM          HARDWARE")
            for k in range(rnd.randint(2, 5)):
                tag = f"{letter}-{page}{k:02d}"
                kit = rnd.choice(["Card Reader", "Card Reader + Exit Button", "Exit Button", "Reader + Keypad"])
                if wide:  # columns far apart, as a table drawn across the sheet
                    for x, cell in zip((150, 190, 245), (tag, rnd.choice(ROOMS), kit), strict=True):
                        pdf.text(x, 160 + 5 * k, cell)
                else:
                    pdf.text(225, 46 + 5 * k, f"{tag:<8}{rnd.choice(ROOMS)[:12]:<14}{kit}")
                expected.append({"type": "door", "id": tag, "page": page})
                for word, kind, abbr in (("Reader", "card_reader", "CR"), ("Exit", "exit_button", "EB"),
                                         ("Keypad", "keypad", "KP")):  # fmt: skip
                    if word in kit:
                        expected.append({"type": kind, "id": f"{tag}-{abbr}", "page": page})
            pdf.set_font("Helvetica", "", 7)
        pdf.text(20, 185, f"Ref: A-{200 + page}  Scale 1:100  3600  2400  Room {page}01")
    data = bytes(pdf.output())
    return data, {"components": expected, "excluded": sorted(excluded), "skipped_pages": skipped}


def convention_scan(seed: int, dpi: int = 100) -> tuple[bytes, dict[str, Any]]:
    """A scanned convention drawing: one grayscale raster page, no text layer (develops the OCR path)."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw, ImageFont

    rnd = random.Random(seed)
    w, h = int(297 / 25.4 * dpi), int(210 / 25.4 * dpi)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    px = max(10, int(dpi * 0.14))
    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    draw.text((w * 0.05, h * 0.05), "SECURITY LAYOUT", fill=0, font=font)
    expected: list[dict[str, Any]] = []
    for i in range(rnd.randint(3, 6)):
        tag = f"A-{rnd.randint(1, 9)}{i:02d}"
        x, y = w * (0.08 + 0.3 * (i % 3)), h * (0.25 + 0.35 * (i // 3))
        draw.rectangle((x - px, y - px, x + 12 * px, y + 5 * px), outline=0, width=2)
        syms = ["D"] + (["R"] if rnd.random() < 0.7 else [])
        draw.text((x, y), "  ".join([tag, *syms]), fill=0, font=font)
        expected.append({"type": "door", "id": tag, "page": 1})
        if "R" in syms:
            expected.append({"type": "card_reader", "id": f"{tag}-CR", "page": 1})
    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.add_page()
    pdf.image(img, x=0, y=0, w=297, h=210)
    return bytes(pdf.output()), {"components": expected, "excluded": [], "skipped_pages": []}
