"""The local platform's pre-deployment backup: a data dir of `--files` job files (`--kb` each) and a
jobs database, backed up once in full, then again after `--changed` % of the files were rewritten
and as many added — the backup before each deployment of a busy service. Figures: seconds and bytes
written for each (the timings include the child process each backup runs in), and the peak of
Python allocations of a backup's work.

`python -m bench.backup [--files 5000] [--kb 20] [--changed 1]`; `python -m bench --only backup`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from backout.manifest import load_manifest
from backout.platforms.local.platform import LocalPlatform
from bench.platform import Figure

BENCHMARKS = ("backup",)
MANIFEST = """
[service]
name = "svc"
source = "code"

[functions.api]
handler = "app.handler"

[environments.local]
gateway_port = 0
control_port = 0
"""


def local_platform(root: Path) -> LocalPlatform:
    """The local platform of a one-function service in `root` (its data dir is what gets backed up)."""
    (root / "code").mkdir(exist_ok=True)
    (root / "code" / "app.py").write_text("def handler(event, context):\n    return {}\n")
    (root / "backout.toml").write_text(MANIFEST)
    return LocalPlatform(load_manifest(root / "backout.toml"), "local")


def _bytes_in(root: Path) -> int:
    """Bytes of the files under `root` whose inode is not also in an earlier snapshot (real cost)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def measure(files: int, kb: int, changed: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="backout-bench-backup-") as d:
        root = Path(d)
        platform = local_platform(root)
        try:
            data = platform.data_dir
            blob = os.urandom(kb * 1024)
            for i in range(files):
                sub = data / "jobs" / f"{i % 100:02d}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"job-{i}.xlsx").write_bytes(blob)
            con = sqlite3.connect(data / "jobs.db")
            con.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT)")
            con.executemany("INSERT INTO jobs VALUES (?, 'completed')", ((i,) for i in range(files)))
            con.commit()
            con.close()

            t0 = time.perf_counter()
            first = platform.backup("first")
            full_s = time.perf_counter() - t0

            n = max(1, int(files * changed / 100))
            for i in range(n):
                (data / "jobs" / f"{i % 100:02d}" / f"job-{i}.xlsx").write_bytes(os.urandom(kb * 1024))
                (data / "jobs" / "new").mkdir(exist_ok=True)
                (data / "jobs" / "new" / f"job-{files + i}.xlsx").write_bytes(blob)
            t0 = time.perf_counter()
            second = platform.backup("second")
            incr_s = time.perf_counter() - t0
            incr_mb = _bytes_in(platform.snapshot_dir / second.id) / 2**20
            # a third backup's work traced in this process (tracing slows it): the peak of Python allocations
            # of the child process `backup` runs it in
            tracemalloc.start()
            platform.snapshots.take_here("third")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            snaps = platform.snapshot_dir
            return {
                "files": files, "kb_each": kb, "changed_and_added_each": n,
                "full_seconds": round(full_s, 3), "incremental_seconds": round(incr_s, 3),
                "full_mb_written": round(sum(p.stat().st_size for p in (snaps / first.id).rglob("*")
                                             if p.is_file()) / 2**20, 1),
                "incremental_mb_written": round(incr_mb, 1),
                "unchanged_linked": second.detail["unchanged"],
                "python_peak_mb": round(peak / 2**20, 1),
            }
        finally:
            platform.close()
            shutil.rmtree(root / "state", ignore_errors=True)


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "backup" not in only:
        return []
    f = measure(500 if quick else 5000, 20, 1.0)
    return [Figure(f"backup before a deployment: {f['files']:,} files, 1 % changed (full: {f['full_seconds']} s)",
                   f["incremental_seconds"], "s", detail=f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--kb", type=int, default=20)
    ap.add_argument("--changed", type=float, default=1.0, help="percent of the files rewritten (and as many added)")
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.files, a.kb, a.changed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
