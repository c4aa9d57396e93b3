"""Crash schedule for jobs (issue 12, point 2): SDA jobs under random SIGKILLs of the processes that run them.

A staging environment of the SDA takes `n` drawings through `POST /process-drawing` (the sample
corpus of examples/drawings plus drawings freshly made by `python -m sda.samples` with the run's
seed). While they are submitted and processed, a killer SIGKILLs, every 0.5–3 s (seeded), one live
worker process: mostly the `worker` function's (mid-job), sometimes the API's (mid-upload) or the
DLQ processor's. The supervisor — which also runs the queue pollers (they are its threads, so
killing it is how a poller dies) — is SIGKILLed twice, at a third and at two thirds of the
submissions, and started again with `backout up --detach`. A submission that got no 202 (the
gateway was down or its worker died) is retried: a job counts once it is acknowledged.

When the kills stop and the queues are empty, every acknowledged job is read from the jobs table:

* **lost**: acknowledged, but no record (must be 0);
* **stuck**: still `queued` or `processing` (must be 0);
* **dead-lettered**: `failed` with the DLQ processor's classification and reason (allowed: a job
  whose worker was killed on each of its 3 receives goes to the DLQ, as on SQS);
* **duplicate results**: the same drawing processed to two different results — two jobs of one
  drawing whose component counts differ, or one job with two completed attempts that disagree
  (must be 0). Completed twice with the same result is at-least-once delivery and is counted apart.

`python -m bench.crash_jobs [--jobs 1000] [--seed 12] [--json PATH]`; `python -m bench --only crash_jobs`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.faultenv import FaultEnv, wait_for
from bench.platform import Figure

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("crash_jobs",)
TERMINAL = ("completed", "failed")


def drawings(tmp: Path, seed: int, extra: int) -> list[tuple[str, bytes]]:
    """The sample corpus plus `extra` fresh ones from the seeded generator: (name, PDF bytes)."""
    out = [(p.name, p.read_bytes()) for p in sorted((ROOT / "examples" / "drawings").glob("*.pdf"))]
    if extra:
        gen = tmp / "generated"
        subprocess.run([sys.executable, "-m", "sda.samples", "--out", str(gen), "--count", str(extra),
                        "--seed", str(seed)], check=True, capture_output=True, timeout=600)
        out += [(f"gen-{p.name}", p.read_bytes()) for p in sorted(gen.glob("*.pdf"))]
    return out


class Killer:
    """SIGKILLs a random worker process every 0.5–3 s, and the supervisor when asked."""

    def __init__(self, env: FaultEnv, rng: random.Random) -> None:
        self.env, self.rng = env, rng
        self.kills: Counter[str] = Counter()
        self.supervisor_down = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="killer")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def kill_supervisor(self) -> None:
        with self._lock:
            self.supervisor_down.set()
            try:
                self.env.kill_supervisor()
                self.kills["supervisor"] += 1
                # orphaned workers finish their invocation and exit; the new supervisor starts its own
                self.env.restart()
            finally:
                self.supervisor_down.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.5, 3.0)):
            with self._lock:
                function = self.rng.choices(("worker", "api", "dlq_processor"), weights=(8, 3, 1))[0]
                pids = self.env.worker_pids(function)
                if not pids:
                    continue
                victim = self.rng.choice(sorted(pids))
                try:
                    psutil.Process(victim).kill()
                    self.kills[function] += 1
                except psutil.NoSuchProcess:
                    pass


def submit_all(env: FaultEnv, killer: Killer, corpus: list[tuple[str, bytes]], n: int,
               rng: random.Random) -> tuple[dict[str, str], int]:
    """Submit n drawings (retrying until each is acknowledged); job id → drawing name, retries."""
    plan = [rng.randrange(len(corpus)) for _ in range(n)]
    acked: dict[str, str] = {}
    retries = 0
    lock = threading.Lock()
    local = threading.local()
    supervisor_kills = {n // 3, (2 * n) // 3}

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=env.gateway_url, timeout=60)
        return local.c

    def one(i: int) -> None:
        nonlocal retries
        name, pdf = corpus[plan[i]]
        while True:
            try:
                r = client().post("/process-drawing", files={"drawing_file": (name, pdf, "application/pdf")},
                                  data={"client_name": "crash", "project_name": f"job-{i}"})
                if r.status_code == 202:
                    break
            except httpx.HTTPError:
                pass
            with lock:
                retries += 1
            time.sleep(0.5)
        with lock:
            acked[r.json()["job_id"]] = name
            count = len(acked)
        if count in supervisor_kills:
            supervisor_kills.discard(count)
            killer.kill_supervisor()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))
    return acked, retries


def jobs_table(env: FaultEnv) -> dict[str, dict[str, Any]]:
    rows = env.store_rows("SELECT data FROM jobs", db="data/jobs.db")
    return {j["job_id"]: j for j in (json.loads(r["data"]) for r in rows)}


def result_of(job: dict[str, Any]) -> str:
    """What a completed job produced, as a comparable digest (component count and summary counts)."""
    summary = {k: v for k, v in (job.get("summary") or {}).items() if k != "processing_time_seconds"}
    raw = json.dumps({"components": job.get("components_count"), "summary": summary}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check(acked: dict[str, str], table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures of the run from the acknowledged ids and the jobs table."""
    lost = [j for j in acked if j not in table]
    statuses = Counter(table[j]["status"] for j in acked if j in table)
    stuck = [j for j in acked if j in table and table[j]["status"] not in TERMINAL]
    dead = [table[j] for j in acked if j in table and (table[j].get("error") or {}).get("kind") == "dead_letter"]
    no_reason = [j["job_id"] for j in dead if not (j.get("dead_letter") or {}).get("reason")]
    other_failed = [j for j in acked if j in table and table[j]["status"] == "failed"
                    and (table[j].get("error") or {}).get("kind") != "dead_letter"]
    results: dict[str, set[str]] = defaultdict(set)
    completed_twice = 0
    for j, name in acked.items():
        job = table.get(j)
        if job and job["status"] == "completed":
            results[name].add(result_of(job))
            done = [a for a in job.get("attempts") or [] if a.get("outcome") == "completed"]
            completed_twice += len(done) > 1
    different = {name: sorted(r) for name, r in results.items() if len(r) > 1}
    attempts = [len(table[j].get("attempts") or []) for j in acked if j in table]
    return {
        "acknowledged": len(acked),
        "completed": statuses.get("completed", 0),
        "dead_lettered": len(dead),
        "dead_letter_reasons": dict(Counter((j.get("dead_letter") or {}).get("classification") for j in dead)),
        "dead_lettered_without_reason": len(no_reason),
        "failed_otherwise": len(other_failed),
        "lost": len(lost),
        "stuck": len(stuck),
        "duplicate_results": len(different),
        "different_results_by_drawing": different,
        "completed_twice_same_result": completed_twice,
        "attempts_total": sum(attempts),
        "jobs_with_retries": sum(1 for a in attempts if a > 1),
        # a record whose 202 never reached the client (the API worker or the gateway died after the
        # write): the client retried, so the drawing has a second, acknowledged job
        "records_not_acknowledged": len(set(table) - set(acked)),
        "records_not_acknowledged_by_status": dict(Counter(table[j]["status"] for j in set(table) - set(acked))),
        "stuck_ids": stuck[:10],
        "lost_ids": lost[:10],
    }


def run_schedule(env: FaultEnv, corpus: list[tuple[str, bytes]], n: int, seed: int,
                 settle_timeout: float = 900.0, log: Any = None) -> dict[str, Any]:
    rng = random.Random(seed)
    killer = Killer(env, random.Random(seed + 1))
    t0 = time.monotonic()
    killer.start()
    try:
        acked, retries = submit_all(env, killer, corpus, n, rng)
        if log:
            print(f"{len(acked)} jobs acknowledged ({retries} retried submissions) in "
                  f"{time.monotonic() - t0:.0f} s; kills so far {dict(killer.kills)}", file=log, flush=True)

        def mostly_done() -> bool:
            t = jobs_table(env)
            return sum(1 for j in acked if j in t and t[j]["status"] in TERMINAL) >= 0.9 * len(acked)

        try:
            wait_for(mostly_done, timeout=settle_timeout, what="90 % of the jobs to finish", interval=1.0)
        except RuntimeError as e:  # reported as stuck jobs below, with the figures
            if log:
                print(str(e)[:500], file=log, flush=True)
    finally:
        killer.stop()

    def drained() -> bool:
        q = {name: env.api("GET", f"/queues/{name}") for name in ("processing", "processing-dlq")}
        t = jobs_table(env)
        return all(s["visible"] + s["in_flight"] == 0 for s in q.values()) and all(
            t.get(j, {}).get("status") in TERMINAL for j in acked)

    try:
        wait_for(drained, timeout=settle_timeout, what="every job to finish and the queues to drain", interval=1.0)
    except RuntimeError as e:  # reported as stuck jobs below, with the figures
        if log:
            print(str(e)[:500], file=log, flush=True)
    figures = check(acked, jobs_table(env))
    figures.update(seed=seed, kills=dict(killer.kills), kills_total=sum(killer.kills.values()),
                   retried_submissions=retries, drawings=len(corpus), minutes=round((time.monotonic() - t0) / 60, 1))
    return figures


def build_env(root: Path) -> FaultEnv:
    return FaultEnv(root)


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "crash_jobs" not in only:
        return []
    n = 60 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="backout-crash-jobs-") as d:
        corpus = drawings(Path(d), 12, 0 if quick else 8)
        env = build_env(Path(d) / "env")
        try:
            f = run_schedule(env, corpus, n, 12, log=sys.stdout)
        finally:
            env.close()
    ok = f["lost"] == 0 and f["stuck"] == 0 and f["duplicate_results"] == 0
    return [Figure(f"jobs lost under kill -9 (of {n})", f["lost"], "jobs", target="= 0", ok=ok, detail=f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crash_jobs", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--generated", type=int, default=8, help="drawings made by sda.samples besides the corpus")
    ap.add_argument("--json", dest="json_path", default="")
    ap.add_argument("--settle", type=float, default=900.0, help="seconds to wait for the jobs to finish")
    ap.add_argument("--keep", default="", help="run in this directory and keep it (state, logs)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backout-crash-jobs-") as d:
        root = Path(a.keep) if a.keep else Path(d)
        corpus = drawings(root, a.seed, a.generated)
        env = build_env(root / "env")
        try:
            figures = run_schedule(env, corpus, a.jobs, a.seed, settle_timeout=a.settle, log=sys.stdout)
        finally:
            env.close()
    print(json.dumps(figures, indent=2))
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(figures, indent=2))
    ok = figures["lost"] == 0 and figures["stuck"] == 0 and figures["duplicate_results"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
