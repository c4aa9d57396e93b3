"""Issue 4's benchmark: how fast a bad version is backed out under real traffic.

A fresh `prod` environment of the SDA (its real manifest: prod thresholds, error rate > 5 %, at
least `min_invocations` = 20 invocations before the error-rate alarm decides, API 5xx > 5, approval
gate) gets a steady, open-loop 50 req/s — requests start on a fixed schedule whatever the latency:
48 % GET /status/{a job}, 48 % GET /health, 4 % POST /process-drawing. After a warm-up, `backout
deploy --no-wait --set-env BACKOUT_FAULT=errors=0.5` (every invocation of the new version raises
with p = 0.5, no code change) with prod's strategy, Canary10Percent10Minutes (10 %), then
`backout approve`. Measured, per run:

* first failure → decision: from the client's receipt of the first 5xx the new version served
  (client timestamps and the X-Backout-Version header) to `rollback_decided_at`;
* decision → 100 % stable: `rollback_completed_at − rollback_decided_at` (the store's timestamps,
  `backout deployment show --json`);
* first failure → 100 % stable;
* failed client requests: every request sent from the deployment's creation to the end of the run
  (2 s after the rollback) that got a 5xx, a 429 or no answer at all. (The first second of the
  warm-up can see 429s while the stable version's workers cold-start; reported apart.)

Client and supervisor run on the same machine, so their wall clocks are the same clock.
`python -m bench.deploy [--runs 3] [--rate 50] [--json PATH]` runs it alone; `python -m bench` runs
it with the others.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.platform import Figure, machine

ROOT = Path(__file__).resolve().parents[1]
DRAWING = ROOT / "examples" / "drawings" / "sample_01.pdf"
ENV = "prod"
FAULT = "BACKOUT_FAULT=errors=0.5"
TARGETS = {"decision_to_stable_ms": 100.0, "first_failure_to_stable_s": 10.0, "failed_requests": 30}


def manifest_text(state_dir: Path) -> str:
    """The repository's backout.toml with free ports, a private state dir and absolute paths."""
    text = (ROOT / "backout.toml").read_text()
    text = text.replace('source = "src"', f'source = "{ROOT / "src"}"')
    text = text.replace('pytest = "tests/', f'pytest = "{ROOT}/tests/')
    for env, ports in (("staging", (8300, 8301)), ("prod", (8400, 8401))):
        block = f"gateway_port = {ports[0]}\ncontrol_port = {ports[1]}"
        assert block in text, f"backout.toml: the {env} ports moved; update bench/deploy.py"
        text = text.replace(block, f'gateway_port = 0\ncontrol_port = 0\nstate_dir = "{state_dir / env}"')
    return text


class Env:
    """`backout up --detach --env prod` in a temporary directory, `down` at the end."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.manifest = root / "backout.toml"
        self.manifest.write_text(manifest_text(root / "state"))
        self.state = root / "state" / ENV
        self.proc_env = dict(os.environ, BACKOUT_MANIFEST=str(self.manifest), BACKOUT_ENV=ENV, COLUMNS="200")
        self.cli("up", "--detach")
        ep = json.loads((self.state / "endpoints.json").read_text())
        self.pid = int(ep["pid"])
        self.gateway_url = str(ep["gateway_url"])

    def cli(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "backout.cli.main", *args],
            env=self.proc_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if r.returncode != 0:
            raise RuntimeError(f"backout {' '.join(args)} → {r.returncode}: {r.stdout}{r.stderr}")
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def close(self) -> None:
        try:
            self.cli("down", timeout=90)
        except (RuntimeError, subprocess.SubprocessError):
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass


@dataclass
class Answer:
    sent: float  # wall clock (time.time), comparable with the supervisor's timestamps
    done: float
    kind: str
    status: int  # 0: no answer (connection error, timeout)
    version: str


@dataclass
class OpenLoad:
    """Open-loop traffic: request i starts at t0 + i / rate, whatever the answers before it, sent by
    `threads` threads each on its own kept-alive `http.client` connection (a slot late because every
    thread is waiting for an answer is sent as soon as one is free, and records when it was due).

    Threads and the standard library's client rather than one asyncio loop with httpx: at 50 req/s on a
    loaded machine the httpx pool spent a core on its own bookkeeping and then stalled (the 12- and
    30-minute soaks recorded no answers); a blocking client per thread costs a fraction of that."""

    base_url: str
    rate: float = 50.0
    post_share: float = 0.04
    threads: int = 16
    answers: list[Answer] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._slots = itertools.count()
        self._workers = [threading.Thread(target=self._run, args=(k,), daemon=True, name=f"open-load-{k}")
                         for k in range(self.threads)]
        drawing = DRAWING.read_bytes()
        b = "backout-bench-boundary"
        self._upload = ((f"--{b}\r\nContent-Disposition: form-data; name=\"drawing_file\"; filename=\"drawing.pdf\"\r\n"
                         "Content-Type: application/pdf\r\n\r\n").encode() + drawing
                        + (f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"client_name\"\r\n\r\nbench"
                           f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"project_name\"\r\n\r\np\r\n--{b}--\r\n"
                           ).encode())
        self._upload_type = f"multipart/form-data; boundary={b}"
        parts = urlsplit(self.base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._t0 = 0.0
        self.started = 0.0
        self.scheduled = 0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.started = time.time()
        for t in self._workers:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)
        self.scheduled = len(self.answers)

    def _run(self, k: int) -> None:
        rng = random.Random(4 + k)
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            i = next(self._slots)  # one slot per request, whichever thread is free
            delay = self._t0 + i / self.rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            x = rng.random()
            kind = "post" if x < self.post_share else ("status" if x < 0.52 and self.jobs else "health")
            sent = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
                if kind == "post":
                    conn.request("POST", "/process-drawing", self._upload, {"Content-Type": self._upload_type})
                elif kind == "status":
                    conn.request("GET", f"/status/{rng.choice(self.jobs)}")
                else:
                    conn.request("GET", "/health")
                r = conn.getresponse()
                body = r.read()
                status, version = r.status, r.getheader("x-backout-version", "") or ""
                if kind == "post" and status == 202:
                    self.jobs.append(json.loads(body)["job_id"])
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError):
                status, version = 0, ""
                if conn is not None:
                    conn.close()
                    conn = None
            self.answers.append(Answer(sent, time.time(), kind, status, version))
        if conn is not None:
            conn.close()


def one_run(root: Path, rate: float, warmup: float, after: float) -> dict[str, Any]:
    env = Env(root)
    load = OpenLoad(env.gateway_url, rate=rate)
    try:
        load.start()
        time.sleep(warmup)  # warm workers of the stable version, jobs to ask about, a stable baseline
        started = env.json("deploy", "--no-wait", "--set-env", FAULT, "--description", "bench: errors=0.5")
        dep = started["deployment"]
        env.cli("approve", dep["id"])
        deadline = time.monotonic() + 180
        while True:
            view = env.json("deployment", "show", dep["id"])
            d = view["deployment"]
            if d["status"] in ("Succeeded", "RolledBack", "Stopped", "Failed") and (
                d["status"] != "RolledBack" or d["rollback_completed_at"]
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dep['id']} still {d['status']} after 180 s")
            time.sleep(0.2)
        time.sleep(after)  # traffic after the rollback: what still fails?
    finally:
        load.stop()
        env.close()
    return analyse(load, view, rate)


def _failed(a: Answer) -> bool:
    return a.status >= 500 or a.status in (0, 429)


def analyse(load: OpenLoad, view: dict[str, Any], rate: float) -> dict[str, Any]:
    d = view["deployment"]
    new = str(d["target_release"])
    answers = sorted(load.answers, key=lambda a: a.done)
    bad = [a for a in answers if a.version == new and a.status >= 500]
    during = [a for a in answers if a.sent >= d["created_at"]]
    failed = [a for a in during if _failed(a)]
    elapsed = (answers[-1].sent - answers[0].sent) if answers else 0.0
    ev = next((e for e in view["events"] if e["kind"] == "rolled_back"), None)
    out: dict[str, Any] = {
        "deployment": d["id"],
        "status": d["status"],
        "reason": d["reason"],
        "trigger": (ev or {}).get("data", {}).get("trigger"),
        "evidence": (ev or {}).get("data", {}).get("evidence"),
        "requests": len(answers),
        "requests_since_deploy": len(during),
        "sent_rate": round(len(answers) / elapsed, 1) if elapsed else 0.0,
        "served_by_new_version": sum(1 for a in answers if a.version == new),
        "failed_requests": len(failed),
        "failed_by_new_version": len(bad),
        "failed_by_stable_version": sum(1 for a in failed if a.version not in (new, "")),
        "no_answer": sum(1 for a in during if a.status == 0),
        "throttled_429": sum(1 for a in during if a.status == 429),
        "warmup_failures": sum(1 for a in answers if a.sent < d["created_at"] and _failed(a)),
        "jobs_accepted": len(load.jobs),
    }
    if d["status"] != "RolledBack" or not bad:
        out["error"] = "no automatic rollback after a failure of the new version"
        return out
    first = bad[0].done
    decided, completed = d["rollback_decided_at"], d["rollback_completed_at"]
    out.update(
        first_failure_to_decision_s=round(decided - first, 3),
        decision_to_stable_ms=round(1000.0 * (completed - decided), 2),
        first_failure_to_stable_s=round(completed - first, 3),
        new_version_answers_sent_after_stable=sum(1 for a in answers if a.version == new and a.sent > completed),
        failures_before_decision=sum(1 for a in bad if a.done <= decided),
    )
    return out


def figures(runs: list[dict[str, Any]], rate: float) -> list[Figure]:
    ok = [r for r in runs if "error" not in r]
    if len(ok) != len(runs):
        return [Figure("deploy rollback: runs without an automatic rollback", len(runs) - len(ok), "runs",
                       "0", False, {"runs": runs})]
    d2s = [r["decision_to_stable_ms"] for r in ok]
    f2s = [r["first_failure_to_stable_s"] for r in ok]
    f2d = [r["first_failure_to_decision_s"] for r in ok]
    failed = [r["failed_requests"] for r in ok]
    each = [
        {k: r[k] for k in ("first_failure_to_decision_s", "decision_to_stable_ms", "first_failure_to_stable_s",
                           "failed_requests", "requests", "sent_rate", "served_by_new_version", "reason")}
        for r in ok
    ]
    at = f"at {rate:g} req/s, 10 % canary, errors=0.5"
    return [
        Figure(f"first failure → rollback decision ({at})", max(f2d), "s (max of runs)",
               detail={"runs": f2d, "median": statistics.median(f2d)}),
        Figure("rollback decision → 100 % stable", max(d2s), "ms (max of runs)", "≤ 100 ms",
               max(d2s) <= TARGETS["decision_to_stable_ms"], {"runs": d2s}),
        Figure("first failure → 100 % stable", max(f2s), "s (max of runs)", "≤ 10 s",
               max(f2s) <= TARGETS["first_failure_to_stable_s"], {"runs": f2s}),
        Figure("failed client requests per bad deployment", max(failed), "requests (max of runs)", "≤ 30",
               max(failed) <= TARGETS["failed_requests"], {"runs": each}),
    ]


def run(only: set[str] | None = None, quick: bool = False, runs: int = 3, rate: float = 50.0) -> list[Figure]:
    """`runs` bad deployments, each on a fresh environment; the figures are the worst of them."""
    if only is not None and "deploy" not in only:
        return []
    results = []
    with tempfile.TemporaryDirectory(prefix="backout-bench-deploy-") as d:
        for i in range(1 if quick else runs):
            r = one_run(Path(d) / f"run{i + 1}", rate, warmup=3.0 if quick else 5.0, after=2.0)
            print(f"deploy run {i + 1}: {json.dumps(r)}", flush=True)
            results.append(r)
    return figures(results, rate)


BENCHMARKS = ("deploy",)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--json", dest="json_path", default="")
    a = p.parse_args(argv)
    info = machine()
    print(f"{info['date']}, {info['cores']} cores, {info['cpu']}, load before {info['load_before']}", flush=True)
    figs = run(runs=a.runs, rate=a.rate)
    for f in figs:
        verdict = "" if f.ok is None else ("  ok" if f.ok else "  MISS")
        print(f"{f.name}: {f.value:,.3f} {f.unit}" + (f"  (target {f.target})" if f.target else "") + verdict)
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"machine": info, "figures": [asdict(f) for f in figs]}, indent=2))
    return 0 if all(f.ok is not False for f in figs) else 1


if __name__ == "__main__":
    sys.exit(main())
