"""Issue 11: how well the analysis reads drawings it was not developed on (the held-out corpus).

Every `examples/drawings/heldout/*.pdf` goes through the worker's own path (pypdf extraction, the
analysis, the flat component list); a component is matched on `(type, id, page)` against the
drawing's expected schedule. Prints precision and recall per drawing and overall, seconds per page,
exclusions and skipped pages. Targets: overall precision and recall ≥ 0.9, ≥ 0.8 on each drawing
with a text layer, ≤ 2 s per page. The scan (no text layer) counts only when OCR is available.

    python -m bench.sda_accuracy            # the table
    python -m bench --only sda_accuracy     # the same figures in the benchmark table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.platform import Figure

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "examples" / "drawings" / "heldout"
BENCHMARKS = ("sda_accuracy",)


def _key(c: dict[str, Any]) -> tuple[str, str, int]:
    return c["type"], c["id"], int(c["page"] or 0)


def measure(folder: Path = HELDOUT) -> dict[str, Any]:
    """Per drawing and overall: tp/fp/fn, precision, recall, seconds per page and what went wrong."""
    from sda import ocr
    from sda.analysis import analyze, components
    from sda.pdf import extract_pages

    rows = []
    drawings = sorted(folder.glob("*.pdf"))
    if drawings:  # warm-up: the first call pays for imports, not for reading a drawing
        analyze(extract_pages(drawings[0].read_bytes(), ocr=False))
    for pdf in drawings:
        truth = json.loads(pdf.with_suffix(".json").read_text())
        t0 = time.perf_counter()
        pages = extract_pages(pdf.read_bytes())
        schedule = analyze(pages)
        elapsed = time.perf_counter() - t0
        got = {_key(c) for c in components(schedule)}
        want = {_key(c) for c in truth["components"]}
        tp, fp, fn = len(got & want), len(got - want), len(want - got)
        rows.append(
            {
                "drawing": pdf.stem,
                "text_layer": truth["text_layer"],
                "counted": truth["text_layer"] or ocr.available(),
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": tp / (tp + fp) if tp + fp else (1.0 if not want else 0.0),
                "recall": tp / (tp + fn) if tp + fn else 1.0,
                "s_per_page": elapsed / max(1, len(pages)),
                "excluded_ok": set(truth["excluded"]) <= set(schedule["excluded"]),
                "skipped_ok": {s["page"] for s in schedule["skipped_pages"]} >= set(truth["skipped_pages"]),
                "warnings": schedule["warnings"],
                "false": sorted(got - want),
                "missed": sorted(want - got),
            }
        )
    counted = [r for r in rows if r["counted"]]
    tp, fp, fn = (sum(r[k] for r in counted) for k in ("tp", "fp", "fn"))
    everything = [sum(r[k] for r in rows) for k in ("tp", "fp", "fn")]
    return {
        "drawings": rows,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "recall_with_scans": everything[0] / max(1, everything[0] + everything[2]),
        "ocr": ocr.available(),
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"{'drawing':<22} {'P':>5} {'R':>5}  tp  fp  fn  s/page  notes"]
    for r in result["drawings"]:
        notes = []
        if not r["counted"]:
            notes.append("not counted (no text layer, no OCR)")
        if not r["excluded_ok"]:
            notes.append("EXCLUSION MISSED")
        if not r["skipped_ok"]:
            notes.append("SKIPPED PAGE NOT REPORTED")
        notes += r["warnings"]
        lines.append(
            f"{r['drawing']:<22} {r['precision']:>5.2f} {r['recall']:>5.2f} {r['tp']:>3} {r['fp']:>3} {r['fn']:>3}"
            f"  {r['s_per_page']:>6.3f}  {'; '.join(notes)}"
        )
    lines.append(
        f"{'overall':<22} {result['precision']:>5.2f} {result['recall']:>5.2f}"
        f"   (recall counting the scan too: {result['recall_with_scans']:.2f}; OCR available: {result['ocr']})"
    )
    return "\n".join(lines)


def run(only: set[str] | None, quick: bool = False) -> list[Figure]:
    """The figures for `python -m bench`."""
    if only is not None and "sda_accuracy" not in only:
        return []
    result = measure()
    print(report(result), flush=True)
    text = [r for r in result["drawings"] if r["text_layer"]]
    worst = min(min(r["precision"], r["recall"]) for r in text)
    slowest = max(r["s_per_page"] for r in result["drawings"])
    return [
        Figure("held-out precision", round(result["precision"], 3), "", "≥ 0.9", result["precision"] >= 0.9),
        Figure("held-out recall", round(result["recall"], 3), "", "≥ 0.9", result["recall"] >= 0.9),
        Figure("held-out worst drawing (P or R)", round(worst, 3), "", "≥ 0.8", worst >= 0.8),
        Figure("held-out slowest drawing", round(slowest, 3), "s/page", "≤ 2", slowest <= 2.0),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sda_accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=HELDOUT)
    p.add_argument("--verbose", action="store_true", help="list the false and missed components")
    a = p.parse_args(argv)
    result = measure(a.folder)
    print(report(result))
    if a.verbose:
        for r in result["drawings"]:
            if r["false"] or r["missed"]:
                print(f"{r['drawing']}: false {r['false']} missed {r['missed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
