"""The held-out drawings: hand-built PDF content streams, not fpdf2, not sda.samples.

The analysis is developed against `sda.samples`; these drawings are only measured
(`python -m bench.sda_accuracy`). They are written operator by operator (base-14
Type1 fonts Times/Courier/Helvetica-Bold, text matrices for rotated labels,
`/Rotate` pages, vector symbols, a grayscale raster for the scan) in the shapes a
new user brings: short ids, symbols beside labels, legends and symbol keys,
system prefixes, qualifying notes, several floors, clutter (grid bubbles,
dimensions, room numbers, sheet references) and a scan without a text layer.

    python examples/drawings/heldout/make_heldout.py     # rewrite the PDFs and JSONs beside this file

Each `hNN_*.json` is the expected schedule: the components `(type, id, page)`, the
excluded ids, the skipped pages and whether the drawing has a text layer.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FONTS = {"T": "Times-Roman", "C": "Courier", "HB": "Helvetica-Bold", "H": "Helvetica"}


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


@dataclass
class Page:
    width: float = 842.0
    height: float = 595.0
    rotate: int = 0
    ops: list[str] = field(default_factory=list)
    image: tuple[int, int, bytes] | None = None  # (w, h, gray pixels) painted over the whole page

    def text(self, x: float, y: float, s: str, font: str = "T", size: float = 8, angle: float = 0) -> None:
        a = math.radians(angle)
        c, si = round(math.cos(a), 4), round(math.sin(a), 4)
        self.ops.append(f"BT /{font} {size} Tf {c} {si} {-si} {c} {x:.1f} {y:.1f} Tm ({_esc(s)}) Tj ET")

    def rect(self, x: float, y: float, w: float, h: float, width: float = 0.6) -> None:
        self.ops.append(f"{width} w {x:.1f} {y:.1f} {w:.1f} {h:.1f} re S")

    def circle(self, x: float, y: float, r: float) -> None:
        k = 0.5523 * r
        self.ops.append(
            f"0.5 w {x + r:.1f} {y:.1f} m {x + r:.1f} {y + k:.1f} {x + k:.1f} {y + r:.1f} {x:.1f} {y + r:.1f} c "
            f"{x - k:.1f} {y + r:.1f} {x - r:.1f} {y + k:.1f} {x - r:.1f} {y:.1f} c "
            f"{x - r:.1f} {y - k:.1f} {x - k:.1f} {y - r:.1f} {x:.1f} {y - r:.1f} c "
            f"{x + k:.1f} {y - r:.1f} {x + r:.1f} {y - k:.1f} {x + r:.1f} {y:.1f} c S"
        )

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.ops.append(f"0.4 w {x1:.1f} {y1:.1f} m {x2:.1f} {y2:.1f} l S")


def write_pdf(pages: list[Page], title: str) -> bytes:
    """A minimal PDF 1.4: catalog, page tree, base-14 fonts, one Flate content stream per page."""
    objs: list[bytes] = []

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    fonts = {k: add(f"<< /Type /Font /Subtype /Type1 /BaseFont /{v} >>".encode()) for k, v in FONTS.items()}
    font_res = " ".join(f"/{k} {n} 0 R" for k, n in fonts.items())
    pages_id = len(objs) + 1
    objs.append(b"")  # placeholder for the page tree
    kids = []
    for p in pages:
        ops = list(p.ops)
        xobj = ""
        if p.image:
            w, h, pixels = p.image
            data = zlib.compress(pixels, 9)
            img = add(
                f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray "
                f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(data)} >>\nstream\n".encode()
                + data
                + b"\nendstream"
            )
            xobj = f" /XObject << /Im1 {img} 0 R >>"
            ops.insert(0, f"q {p.width} 0 0 {p.height} 0 0 cm /Im1 Do Q")
        stream = zlib.compress("\n".join(ops).encode("latin-1"), 9)
        content = add(f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream")
        rot = f" /Rotate {p.rotate}" if p.rotate else ""
        kids.append(
            add(
                f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 {p.width} {p.height}]{rot} "
                f"/Resources << /Font << {font_res} >>{xobj} >> /Contents {content} 0 R >>".encode()
            )
        )
    objs[pages_id - 1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>".encode()
    info = add(f"<< /Title ({_esc(title)}) /Producer (make_heldout) >>".encode())
    catalog = add(f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode())
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    trailer = f"<< /Size {len(objs) + 1} /Root {catalog} 0 R /Info {info} 0 R >>"
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


class Drawing:
    """Pages plus the expected schedule, built side by side so they cannot drift apart."""

    def __init__(self, name: str, title: str) -> None:
        self.name, self.title = name, title
        self.pages: list[Page] = []
        self.components: list[dict[str, Any]] = []
        self.excluded: list[str] = []
        self.skipped: list[int] = []
        self.text_layer = True

    def page(self, **kw: Any) -> Page:
        p = Page(**kw)
        self.pages.append(p)
        n = len(self.pages)
        p.rect(20, 20, p.width - 40, p.height - 40, 1.2)
        p.rect(p.width - 230, 20, 210, 60)
        p.text(p.width - 224, 66, "SECURITY CONSULTANTS LTD", "HB", 8)
        p.text(p.width - 224, 52, f"{self.title}", "T", 7)
        p.text(p.width - 224, 38, f"SHEET A-{500 + n}  REV B  SCALE 1:50", "T", 7)
        return p

    def expect(self, kind: str, ident: str, *accessories: str) -> None:
        page = len(self.pages)
        self.components.append({"type": kind, "id": ident, "page": page})
        for acc in accessories:
            abbr = {"card_reader": "CR", "exit_button": "EB", "lock": "LK", "keypad": "KP", "door_contact": "DC"}[acc]
            self.components.append({"type": acc, "id": f"{ident}-{abbr}", "page": page})

    def save(self) -> None:
        (HERE / f"{self.name}.pdf").write_bytes(write_pdf(self.pages, self.title))
        truth = {
            "generator": "examples/drawings/heldout/make_heldout.py (hand-built content streams)",
            "text_layer": self.text_layer,
            "pages": len(self.pages),
            "components": self.components,
            "excluded": sorted(self.excluded),
            "skipped_pages": self.skipped,
        }
        (HERE / f"{self.name}.json").write_text(json.dumps(truth, indent=1) + "\n")


def door_cluster(p: Page, x: float, y: float, ident: str, syms: list[str], font: str = "T", size: float = 7) -> None:
    """A door in a wall: swing arc, the id, and each symbol in its own small box around the door."""
    p.line(x - 18, y, x + 18, y)
    p.circle(x, y, 9)
    p.text(x + 12, y + 4, ident, font, size)
    spots = [(-16, -14), (-4, -14), (8, -14), (-16, 10)]
    for s, (dx, dy) in zip(syms, spots, strict=False):
        p.rect(x + dx - 2, y + dy - 2, 10, 10, 0.3)
        p.text(x + dx, y + dy, s, "H", 6)


def h01() -> Drawing:
    d = Drawing("h01_simple_office", "GROUND FLOOR ACCESS CONTROL")
    p = d.page()
    p.text(40, 550, "ACCESS CONTROL - GROUND FLOOR", "HB", 14)
    rooms = ["Reception", "Office 1", "Office 2", "Store", "Comms", "Kitchen", "Meeting", "Plant"]
    for i, room in enumerate(rooms):
        x, y = 90 + (i % 4) * 170, 420 - (i // 4) * 180
        p.rect(x - 60, y - 40, 150, 140)
        p.text(x - 40, y + 70, room.upper(), "T", 9)
        syms = ["D", "R"] + (["B"] if i % 2 == 0 else [])
        door_cluster(p, x, y, f"A-{101 + i}", syms)
        d.expect("door", f"A-{101 + i}", "card_reader", *(["exit_button"] if i % 2 == 0 else []))
    return d


def h02() -> Drawing:
    d = Drawing("h02_rotated_sheets", "LEVEL 1 AND 2 DOORS")
    for floor in (1, 2):
        # portrait paper shown landscape: /Rotate 90 and every label drawn along the long edge
        p = d.page(width=595, height=842, rotate=90)
        p.text(60, 60, f"DOOR LAYOUT LEVEL {floor}", "HB", 13, angle=90)
        for i in range(5):
            x, y = 200 + (i % 2) * 200, 120 + i * 130
            n = floor * 10 + i + 1
            p.rect(x - 40, y - 40, 120, 100)
            p.text(x, y, f"D-{n}", "C", 8, angle=90)
            p.text(x + 12, y, "D", "H", 7, angle=90)
            p.text(x + 12, y + 12, "RDR", "H", 7, angle=90)
            d.expect("door", f"D-{n}", "card_reader")
    return d


def h03() -> Drawing:
    d = Drawing("h03_two_floors", "OFFICE BUILDING DOORS")
    for floor in (1, 2):
        p = d.page()
        p.text(40, 550, f"FLOOR {floor} - SECURITY LAYOUT", "HB", 13)
        for i in range(5):
            ident = f"DR-{floor:02d}{i + 1:02d}"
            x, y = 100 + i * 140, 350
            p.rect(x - 50, y - 60, 130, 180)
            p.text(x - 40, y + 100, f"ROOM {floor}{i + 1:02d}", "T", 8)
            exit_button = i in (0, 4)
            door_cluster(p, x, y, ident, ["DR", "CR"] + (["EX"] if exit_button else []), "HB", 6)
            d.expect("door", ident, "card_reader", *(["exit_button"] if exit_button else []))
    p = d.page()
    p.text(40, 520, "GENERAL NOTES", "HB", 11)
    for i, line in enumerate(
        [
            "1. All containment to be concealed where possible.",
            "2. Cable type CAT6A unless noted otherwise.",
            "3. Contractor to verify all dimensions on site before installation.",
        ]
    ):
        p.text(40, 500 - 14 * i, line, "T", 9)
    d.skipped.append(3)
    return d


def h04() -> Drawing:
    d = Drawing("h04_legend", "LABORATORY WING")
    p = d.page()
    p.text(40, 550, "LAB WING - ACCESS CONTROL", "HB", 13)
    p.text(560, 200, "LEGEND:", "HB", 8)
    p.text(560, 188, "DR = Secured Door, CR = Credential Reader, EX = Exit Device", "T", 7)
    for i in range(6):
        ident = f"{110 + i}A"
        x, y = 90 + (i % 3) * 160, 430 - (i // 3) * 170
        p.rect(x - 50, y - 50, 140, 130)
        p.text(x - 40, y + 60, f"LAB {i + 1}", "T", 8)
        syms = ["DR", "CR"] + (["EX"] if i in (1, 3, 5) else [])
        door_cluster(p, x, y, ident, syms, "C", 7)
        d.expect("door", ident, "card_reader", *(["exit_button"] if i in (1, 3, 5) else []))
    return d


def h05() -> Drawing:
    d = Drawing("h05_mixed_systems", "RETAIL UNIT SECURITY")
    p = d.page()
    p.text(40, 550, "RETAIL UNIT - ACCESS, CCTV AND INTRUSION", "HB", 12)
    for i in range(4):
        x, y = 100 + i * 170, 420
        p.rect(x - 50, y - 50, 150, 120)
        door_cluster(p, x, y, f"A-{i + 1:02d}", ["D", "R"], "T", 7)
        d.expect("door", f"A-{i + 1:02d}", "card_reader")
    for i in range(4):
        x, y = 90 + i * 170, 250
        p.circle(x, y, 5)
        p.line(x + 5, y, x + 14, y + 5)
        p.text(x + 10, y - 10, f"C-{i + 1:02d}", "T", 7)
        p.text(x - 4, y - 2, "CAM", "H", 4)
        d.expect("camera", f"C-{i + 1:02d}")
    for i, sym in enumerate(["PIR", "PIR", "GB", "PIR", "GB"]):
        x, y = 80 + i * 140, 130
        p.rect(x - 6, y - 6, 14, 14, 0.3)
        p.text(x - 4, y - 2, sym, "H", 5)
        p.text(x + 12, y, f"I-{i + 1:02d}", "T", 7)
        d.expect("motion_detector" if sym == "PIR" else "glass_break", f"I-{i + 1:02d}")
    return d


def h06() -> Drawing:
    d = Drawing("h06_qualified", "CLINIC REFURBISHMENT")
    p = d.page()
    p.text(40, 550, "CLINIC - ACCESS CONTROL (REFURBISHMENT)", "HB", 12)
    notes = [None, "(incomplete)", "existing", None, "by others", "NOT IN SCOPE", None, "(incomplete)"]
    for i, note in enumerate(notes):
        ident = f"A-{201 + i}"
        x, y = 90 + (i % 4) * 170, 420 - (i // 4) * 190
        p.rect(x - 50, y - 50, 150, 140)
        door_cluster(p, x, y, ident, ["D", "R", "B"] if i % 3 == 0 else ["D", "R"])
        if note:
            p.text(x + 12, y - 8, note, "T", 6)
        if note == "NOT IN SCOPE":
            d.excluded.append(ident)
            continue
        d.expect("door", ident, "card_reader", *(["exit_button"] if i % 3 == 0 else []))
    return d


def h07() -> Drawing:
    d = Drawing("h07_symbol_key", "WAREHOUSE OFFICES")
    p = d.page()
    p.text(40, 550, "WAREHOUSE OFFICES - SECURITY PLAN", "HB", 12)
    p.text(600, 230, "SYMBOL KEY", "HB", 9)
    for i, (sym, desc) in enumerate(
        [("SDR", "Controlled door"), ("PRX", "Proximity card reader"), ("PB", "Push button exit"),
         ("KP", "Keypad"), ("FA", "Fire alarm call point")]  # fmt: skip
    ):
        p.text(600, 214 - 12 * i, sym, "HB", 7)
        p.text(640, 214 - 12 * i, desc, "T", 7)
    for i in range(7):
        ident = f"D-{i + 1}"
        x, y = 90 + (i % 4) * 130, 420 - (i // 4) * 180
        p.rect(x - 45, y - 50, 120, 130)
        syms = ["SDR", "PRX"] + (["PB"] if i % 2 else []) + (["KP"] if i == 0 else [])
        door_cluster(p, x, y, ident, syms, "T", 8)
        accs = ["card_reader"] + (["exit_button"] if i % 2 else []) + (["keypad"] if i == 0 else [])
        d.expect("door", ident, *accs)
    p.text(100, 120, "FA", "HB", 6)  # a fire alarm call point: on the key, not security
    return d


def h08() -> Drawing:
    d = Drawing("h08_door_schedule", "SCHOOL BLOCK B")
    p = d.page()
    p.text(40, 550, "BLOCK B - DOOR SCHEDULE", "HB", 13)
    cols = (50, 130, 290, 470)
    for x, head in zip(cols, ("DOOR", "LOCATION", "ACCESS CONTROL", "REMARKS"), strict=True):
        p.text(x, 510, head, "HB", 8)
    rows = [
        ("B-12", "Main Entrance", "Card Reader + Exit Button", ""),
        ("B-14", "Staff Room", "Card Reader", ""),
        ("B-15", "Server Room", "Card Reader + Keypad", ""),
        ("B-16", "Head Office", "Card Reader", "existing"),
        ("B-17", "Store", "Exit Button", ""),
        ("B-18", "Library", "Card Reader + Exit Button", ""),
        ("B-19", "Old Kitchen", "Card Reader", "NOT IN SCOPE"),
        ("B-20", "Hall", "Card Reader + Exit Button", ""),
    ]
    for i, (ident, loc, access, remark) in enumerate(rows):
        y = 490 - 18 * i
        for x, cell in zip(cols, (ident, loc, access, remark), strict=True):
            if cell:
                p.text(x, y, cell, "C", 8)
        if remark == "NOT IN SCOPE":
            d.excluded.append(ident)
            continue
        accs = [a for a, word in (("card_reader", "Reader"), ("exit_button", "Exit"), ("keypad", "Keypad"))
                if word in access]  # fmt: skip
        d.expect("door", ident, *accs)
    return d


def h09() -> Drawing:
    d = Drawing("h09_clutter", "HOTEL BACK OF HOUSE")
    p = d.page()
    p.text(40, 550, "BACK OF HOUSE - ACCESS CONTROL", "HB", 12)
    # structural grid bubbles along the edges: letters and numbers that are not devices
    for i, g in enumerate("ABCDEF"):
        p.circle(80 + i * 120, 515, 8)
        p.text(77 + i * 120, 512, g, "H", 8)
    for i in range(1, 5):
        p.circle(35, 90 + i * 90, 8)
        p.text(32, 87 + i * 90, str(i), "H", 8)
    for i in range(9):
        ident = f"A-{301 + i}"
        x, y = 110 + (i % 5) * 135, 400 - (i // 5) * 170
        p.rect(x - 45, y - 45, 125, 125)
        p.text(x - 35, y + 65, f"RM {301 + i}", "T", 7)
        p.text(x - 35, y + 55, "3600 x 2400", "T", 5)
        syms = ["D", "R"] + (["B"] if i in (0, 4, 8) else [])
        door_cluster(p, x, y, ident, syms, "T", 6)
        d.expect("door", ident, "card_reader", *(["exit_button"] if i in (0, 4, 8) else []))
    # two labels that overlap their neighbours' space: the nearest id wins
    p.text(700, 120, "A-390", "T", 6)
    p.text(712, 128, "D", "H", 6)
    p.text(735, 120, "A-391", "T", 6)
    p.text(748, 128, "D", "H", 6)
    p.text(748, 112, "R", "H", 6)
    d.expect("door", "A-390")
    d.expect("door", "A-391", "card_reader")
    p.text(60, 60, "REFER TO A-201 FOR DOOR HARDWARE. DIMENSIONS IN MM.", "T", 7)
    return d


def h10() -> Drawing:
    """A scan: the drawing as a grayscale raster, no text layer at all."""
    from PIL import Image, ImageDraw, ImageFont

    d = Drawing("h10_scan", "SCANNED DRAWING")
    d.text_layer = False
    w, h = 842, 595
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((40, 30), "ACCESS CONTROL - SCANNED", fill=0, font=font)
    p = Page(width=w, height=h)
    d.pages.append(p)
    for i in range(4):
        x, y = 80 + i * 180, 200
        draw.rectangle((x - 40, y - 40, x + 120, y + 120), outline=0, width=2)
        draw.text((x, y), f"A-{101 + i}  D  R", fill=0, font=font)
        d.expect("door", f"A-{101 + i}", "card_reader")
    p.image = (w, h, img.tobytes())
    return d


def main() -> int:
    total = 0
    for make in (h01, h02, h03, h04, h05, h06, h07, h08, h09, h10):
        drawing = make()
        drawing.save()
        size = (HERE / f"{drawing.name}.pdf").stat().st_size
        total += size
        print(f"{drawing.name}.pdf  {size} bytes, {len(drawing.pages)} page(s), {len(drawing.components)} components")
    print(f"{total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
