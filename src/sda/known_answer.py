"""A drawing with a known answer, run through the live API: the post-traffic hook that catches a
version which answers 200 but writes wrong schedules (the data-corruption scenario).

    python -m sda.known_answer [--api URL] [--drawing PDF --truth JSON] [--timeout 60]

Submits the drawing, follows the job to `completed`, downloads the components and compares every
door (id, location, components) with the ground truth. Exit 0 on a match, 1 with the differences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

DEFAULT = Path("examples/drawings/sample_01")
if not DEFAULT.with_suffix(".pdf").exists():  # run from elsewhere: the repository's corpus
    DEFAULT = Path(__file__).resolve().parents[2] / DEFAULT


def _doors(schedule: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d["id"]: (d.get("location") or "", tuple(sorted(d.get("components") or []))) for d in schedule["doors"]}


THROTTLED = (429, 503)  # the function's concurrency is in use: try again, as the AWS SDKs do


def _send(c: httpx.Client, deadline: float, method: str, path: str, **kw: object) -> httpx.Response:
    """One request, repeated with exponential backoff while the API throttles it (until the deadline):
    a busy service at 100 % of the new version is not a wrong answer."""
    delay = 0.1
    while True:
        r = c.request(method, path, **kw)  # type: ignore[arg-type]
        if r.status_code not in THROTTLED or time.monotonic() + delay > deadline:
            return r
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def check(api: str, drawing: Path, truth: Path, timeout: float) -> list[str]:
    expected = json.loads(truth.read_text())
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api.rstrip("/"), timeout=30) as c:
        r = _send(c, deadline, "POST", "/process-drawing",
                  files={"drawing_file": (drawing.name, drawing.read_bytes(), "application/pdf")},
                  data={"client_name": "backout-hook", "project_name": "known-answer"})
        if r.status_code != 202:
            return [f"upload → {r.status_code}: {r.text[:300]}"]
        job_id = r.json()["job_id"]
        status: dict = {}
        while time.monotonic() < deadline:
            status = _send(c, deadline, "GET", f"/status/{job_id}").json()
            if status.get("status") in ("completed", "failed"):
                break
            time.sleep(0.2)
        if status.get("status") != "completed":
            return [f"job {job_id} ended {status.get('status')!r}: {status.get('error')}"]
        got = _send(c, deadline + 30, "GET", f"/download/{job_id}/components").json()["schedule"]
    want_doors, got_doors = _doors(expected), _doors(got)
    problems = [f"missing door {d}" for d in sorted(set(want_doors) - set(got_doors))]
    problems += [f"unexpected door {d}" for d in sorted(set(got_doors) - set(want_doors))]
    problems += [f"door {d}: expected {want_doors[d]}, got {got_doors[d]}"
                 for d in sorted(set(want_doors) & set(got_doors)) if want_doors[d] != got_doors[d]]
    processed_by = status.get("processed_by") or {}
    return [f"job {job_id} (v{processed_by.get('version')}): {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", default=os.environ.get("API_BASE_URL", "http://127.0.0.1:8300"))
    ap.add_argument("--drawing", type=Path, default=DEFAULT.with_suffix(".pdf"))
    ap.add_argument("--truth", type=Path, default=DEFAULT.with_suffix(".json"))
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    problems = check(args.api, args.drawing, args.truth, args.timeout)
    if problems:
        print(f"known answer FAILED ({len(problems)} difference(s)):")
        for p in problems[:20]:
            print(f"  {p}")
        return 1
    print(f"known answer ok: {args.drawing.name} matches {args.truth.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
