"""`make demo`: the Security Design Assistant on the local platform, then backout's main job.

1. start staging (unless it already runs), submit a real security drawing, follow the job to
   `completed`, download the Excel schedule and print its summary;
2. under live traffic, deploy a version with an injected fault (half its invocations fail) and
   watch the automatic rollback, with its evidence, on screen;
3. deploy a healthy version through the canary → Succeeded;
4. print the commands that show the history and the incident, and stop what the demo started.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "drawings" / "example_b2_drawing.pdf"
SAMPLE = ROOT / "examples" / "drawings" / "sample_01.pdf"
ENV = "staging"
console = Console()


def cli(*args: str, check: bool = True) -> int:
    """Run a real `backout` command so the demo shows exactly what an operator sees."""
    r = subprocess.run([sys.executable, "-m", "backout.cli.main", "--manifest", str(ROOT / "backout.toml"), *args],
                       cwd=ROOT, env=dict(os.environ, BACKOUT_ENV=ENV))
    if check and r.returncode not in (0,):
        raise SystemExit(f"demo: `backout {' '.join(args)}` exited {r.returncode}")
    return r.returncode


class Traffic:
    """Steady open-loop traffic: health checks and status reads, ~30 requests a second."""

    def __init__(self, base: str, job_id: str) -> None:
        self.base, self.job_id = base, job_id
        self.stop_event = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        paths = ["/health", f"/status/{self.job_id}", "/health/detailed"]

        def one(c: httpx.Client, path: str) -> None:
            try:
                r = c.get(path)
                self.sent += 1
                self.failed += r.status_code >= 500
            except httpx.HTTPError:
                self.failed += 1

        with httpx.Client(base_url=self.base, timeout=10) as c, ThreadPoolExecutor(16) as pool:
            i = 0
            while not self.stop_event.wait(1 / 30):
                pool.submit(one, c, paths[i % len(paths)])
                i += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def process_drawing(base: str) -> str:
    drawing = SHARED if SHARED.exists() else SAMPLE
    console.print(f"submitting [bold]{drawing.name}[/] to {base}/process-drawing")
    with drawing.open("rb") as f:
        r = httpx.post(f"{base}/process-drawing", files={"drawing_file": (drawing.name, f, "application/pdf")},
                       data={"client_name": "demo", "project_name": "b2-level-2"}, timeout=30)
    r.raise_for_status()
    job = r.json()
    console.print(f"202 accepted: job [bold]{job['job_id']}[/] ({job['message']})")
    status: dict = {}
    last = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/status/{job['job_id']}", timeout=10).json()
        step = (status["status"], status["progress"]["percentage"], status["progress"]["current_step"])
        if step != last:
            console.print(f"  {status['status']:<10} {status['progress']['percentage']:>3} %  {step[2]}")
            last = step
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    if status.get("status") != "completed":
        raise SystemExit(f"demo: the job ended {status.get('status')}: {status.get('error')}")
    xlsx = httpx.get(f"{base}/download/{job['job_id']}/excel", timeout=30)
    out = ROOT / ".backout" / "demo-schedule.xlsx"
    out.write_bytes(xlsx.content)
    from openpyxl import load_workbook

    wb = load_workbook(io.BytesIO(xlsx.content), read_only=True)
    s = status["summary"]
    t = Table(title=f"component schedule of {s.get('drawing_number')} (building {s.get('building')}, "
                    f"level {s.get('level')}) — {out.relative_to(ROOT)}", title_justify="left")
    for col in ("doors", "card readers", "exit buttons", "locks", "lock type", "assessment"):
        t.add_column(col)
    t.add_row(str(s["doors"]), str(s["card_readers"]), str(s["exit_buttons"]), str(s["locks"]),
              str(s.get("lock_type")), str(s.get("overall_assessment")))
    console.print(t)
    sheet = wb[wb.sheetnames[0]]
    rows = list(sheet.iter_rows(values_only=True))
    console.print(f"sheets {wb.sheetnames}; first rows of '{wb.sheetnames[0]}':")
    for row in rows[:6]:
        console.print("  " + " | ".join("" if v is None else str(v) for v in row[:6]))
    return job["job_id"]


def main() -> None:
    from backout.manifest import load_manifest
    from backout.server.endpoints import read_endpoints

    manifest = load_manifest(ROOT / "backout.toml")
    state = manifest.state_dir(ENV)
    started_here = read_endpoints(state) is None
    console.print(Rule("1. the Security Design Assistant on the local platform"))
    if started_here:
        cli("up", "--detach")
    base = str(read_endpoints(state)["gateway_url"])  # type: ignore[index]
    try:
        job_id = process_drawing(base)
        console.print(Rule("2. a faulty version under live traffic → automatic rollback"))
        with Traffic(base, job_id) as traffic:
            time.sleep(2)
            code = cli("deploy", "--set-env", "BACKOUT_FAULT=errors=0.5", "--set-env", f"DEMO_RELEASE={time.time_ns()}",
                       "--strategy", "Canary10Percent30Seconds", "--description", "demo: half of its requests fail",
                       check=False)
            console.print(f"[bold]deploy exited {code}[/] (1 = rolled back); client requests so far: "
                          f"{traffic.sent}, failed: {traffic.failed}")
            console.print(Rule("3. a healthy version → Succeeded"))
            code = cli("deploy", "--set-env", f"DEMO_RELEASE={time.time_ns()}", "--strategy",
                       "Canary10Percent30Seconds", "--description", "demo: a healthy release", check=False)
            console.print(f"[bold]deploy exited {code}[/] (0 = succeeded); client requests: {traffic.sent}, "
                          f"failed: {traffic.failed}")
        console.print(Rule("4. what happened"))
        cli("deployments", "--limit", "5")
        console.print("\nlook further with:\n"
                      "  .venv/bin/backout deployments                 # history\n"
                      "  .venv/bin/backout incident list               # the rollback's incident\n"
                      "  .venv/bin/backout incident report INC-… --out incident.html\n"
                      "  .venv/bin/backout status                      # (after `backout up --detach`)")
    finally:
        if started_here:
            cli("down", check=False)


if __name__ == "__main__":
    main()
