"""The Excel schedule (openpyxl): a Schedule sheet, one row per component, and a Summary sheet.

Every string cell is written as text, never as a formula: a client name such as
`=HYPERLINK("http://…","x")` would otherwise run when the schedule is opened. As OWASP's
CSV-injection advice says, a text that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
is prefixed with `'`, so it stays inert even after the sheet is saved as CSV and opened again.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
SCHEDULE_COLUMNS = ("Component ID", "Type", "Location", "Page", "Attributes", "Confidence", "Evidence")


def _evidence(ev: dict[str, Any] | None) -> str:
    """`p1 (120, 455) "A-101 D R B"`: where a reviewer finds the component on the drawing."""
    if not ev:
        return ""
    where = f"p{ev.get('page')}"
    if ev.get("x") is not None:
        where += f" ({ev['x']:.0f}, {ev['y']:.0f})"
    if ev.get("source") == "ocr":
        where += " OCR"
    return f'{where} "{ev["text"]}"' if ev.get("text") else where


def _attributes(attrs: dict[str, Any]) -> str:
    parts = []
    for key, value in attrs.items():
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = " + ".join(str(v) for v in value)
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(parts)


def _inert(value: Any) -> Any:
    """A cell value that no spreadsheet evaluates: text that could start a formula gets a `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _append(ws: Any, values: list[Any]) -> None:
    """One row, every string as a text cell (openpyxl takes a str starting with `=` for a formula)."""
    ws.append([_inert(v) for v in values])
    for cell in ws[ws.max_row]:
        if isinstance(cell.value, str):
            cell.data_type = "s"


def build(
    job: dict[str, Any],
    schedule: dict[str, Any],
    components: list[dict[str, Any]],
    created: datetime | None = None,
) -> bytes:
    """The .xlsx bytes. `created` pins the document timestamp so a re-run writes the same content."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    if created is not None:
        wb.properties.created = created.replace(tzinfo=None)
        wb.properties.modified = created.replace(tzinfo=None)
    wb.properties.title = f"Security schedule {job.get('job_id', '')}"
    wb.properties.creator = "Security Design Assistant"

    bold = Font(bold=True, color="FFFFFF")
    fill = PatternFill("solid", fgColor="1F4E78")
    ws = wb.active
    ws.title = "Schedule"
    ws.append(list(SCHEDULE_COLUMNS))
    for cell in ws[1]:
        cell.font, cell.fill = bold, fill
    for c in components:
        _append(
            ws,
            [
                c["id"],
                c["type"].replace("_", " ").title(),
                c.get("location") or "",
                c.get("page"),
                _attributes(c.get("attributes") or {}),
                round(float(c.get("confidence") or 0), 2),
                _evidence(c.get("evidence")),
            ]
        )
    for col, width in zip(range(1, 8), (18, 14, 26, 7, 70, 11, 60), strict=True):
        ws.column_dimensions[get_column_letter(col)].width = width
    ws.freeze_panes = "A2"
    ws.auto_filter.ref = f"A1:G{max(1, len(components) + 1)}"

    summary = wb.create_sheet("Summary")
    meta = schedule.get("metadata", {})
    rows: list[tuple[str, Any]] = [
        ("Job", job.get("job_id")),
        ("Client", job.get("client_name")),
        ("Project", job.get("project_name")),
        ("Drawing number", meta.get("drawing_number")),
        ("Drawing project", meta.get("project")),
        ("Drawing date", meta.get("date")),
        ("Building", meta.get("building")),
        ("Level", meta.get("level")),
        ("Pages", meta.get("pages")),
        ("Doors", meta.get("total_doors")),
        ("Card readers", meta.get("total_card_readers")),
        ("Exit buttons", meta.get("total_exit_buttons")),
        ("Locks", meta.get("total_locks")),
        ("Cameras", meta.get("total_cameras")),
        ("Lock type", (schedule.get("locks") or {}).get("type")),
        ("Lock holding force", (schedule.get("locks") or {}).get("holding_force")),
    ]
    rows += [(f"Locks: {kind}", n) for kind, n in (schedule.get("lock_types") or {}).items()]
    if meta.get("total_other_devices"):
        rows.append(("Other devices", meta.get("total_other_devices")))
    # honest results: an empty or partial reading says so where the reader looks first
    rows += [("Skipped page", f"page {s['page']}: {s['reason']}") for s in schedule.get("skipped_pages") or []]
    rows += [("WARNING", w) for w in schedule.get("warnings") or []]
    summary.append(["Item", "Value"])
    for cell in summary[1]:
        cell.font, cell.fill = bold, fill
    for label, value in rows:
        _append(summary, [label, "" if value is None else value])
    summary.column_dimensions["A"].width = 24
    summary.column_dimensions["B"].width = 48
    for row in summary.iter_rows(min_row=2):
        row[1].alignment = Alignment(horizontal="left")

    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
