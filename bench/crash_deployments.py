"""Crash schedule for deployments (issue 12, point 1): the supervisor SIGKILLed once in every deployment.

A staging environment of the SDA under steady HTTP traffic runs `n` deployments one after the other,
healthy and faulty alternating (faulty: `--set-env BACKOUT_FAULT=errors=1.0`, every invocation of the
new version raises), each on a short custom strategy (two or three steps, holds of seconds), with a
pre- and a post-traffic command hook that take a second (so a kill can land inside a hook). In each
deployment the supervisor is SIGKILLed once, at an instant drawn from the seeded schedule: either a
random delay after `deploy --no-wait` returned, or right after (0–300 ms) a chosen event reached the
store (`created`, `pre_traffic_started`, `snapshot`, `step_reached`, `alarm_state`,
`post_traffic_started`, …) — so kills land during store writes, weight changes, hooks and rollbacks.
Then `backout up --detach` again, and the new supervisor resumes or rolls back by itself.

Checked for each deployment (a deployment is *consistent* when all hold):

* it ends `Succeeded` or `RolledBack` (never stuck `InProgress`, never `Failed`/`Stopped`);
* every function's live alias is 100 % on the release the store says won: the target after
  `Succeeded`, the stable one after `RolledBack`;
* no request sent after the deployment ended (until the next one starts) was answered by the
  release the store says is gone (the `X-Backout-Version` header of the gateway's answers).

Also reported: where each kill landed (the last event the store held before it, and whether a
rollback was under way), and how many faulty versions got through (a detection figure, not a
consistency one: the analysis of bench/deploy.py is the reference for detection).

`python -m bench.crash_deployments [--deployments 50] [--seed 12] [--rate 15] [--json PATH]`;
`python -m bench --only crash_deployments` with the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.deploy import OpenLoad
from bench.faultenv import FaultEnv, wait_for
from bench.platform import Figure

BENCHMARKS = ("crash_deployments",)
FAULT = "BACKOUT_FAULT=errors=1.0"

STRATEGIES = """
[strategies.CrashTwoSteps]
steps = [{ weight = 20, hold = "4s" }, { weight = 100 }]

[strategies.CrashThreeSteps]
steps = [{ weight = 10, hold = "2s" }, { weight = 50, hold = "2s" }, { weight = 100 }]
"""
# One alarm decides (the error rate, after 5 invocations): the judges and the API 5xx count are the
# subject of other benchmarks, and on a loaded machine a latency judge could roll back a healthy one.
ENV_EXTRA = "min_invocations = 5\napi_5xx_threshold = 100000\nlatency_judge = false\nerror_judge = false"
HOOKS = {
    'pre_traffic = [{ builtin = "checks" }]':
        'pre_traffic = [{ builtin = "checks" }, { command = "sleep 1", name = "settle", timeout = "20s" }]',
    """post_traffic = [
  { builtin = "checks" },
  { command = "python -m sda.known_answer", timeout = "90s", name = "known-answer drawing" },
  { builtin = "smoke" },
]""": 'post_traffic = [{ builtin = "checks" }, { command = "sleep 1", name = "settle", timeout = "20s" }]',
}
HEALTHY_EVENTS = ("created", "pre_traffic_started", "snapshot", "step_reached", "post_traffic_started", "succeeded")
FAULTY_EVENTS = ("created", "pre_traffic_started", "snapshot", "step_reached", "alarm_state", "rolled_back")


@dataclass
class Outcome:
    """One deployment of the schedule and what the checks found."""

    index: int
    deployment: str
    faulty: bool
    strategy: str
    kill_plan: str  # "after 3.2 s" or "at step_reached +0.12 s"
    killed_at: float = 0.0
    landed_in: str = ""  # the last event stored before the kill
    during_rollback: bool = False
    status: str = ""
    winner: int | None = None
    aliases_agree: bool = False
    stale_answers: int = 0  # answers after the end by the release the store says is gone
    restart_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # not consistency problems: slowness seen
    problems: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


def build_env(root: Path) -> FaultEnv:
    return FaultEnv(root, env_extra=ENV_EXTRA, manifest_extra=STRATEGIES, replace=HOOKS)


def _plan(rng: random.Random, faulty: bool) -> tuple[str, str | None, float]:
    """(description, event kind to wait for or None, delay in s)."""
    if rng.random() < 0.4:
        delay = round(rng.uniform(0.0, 12.0), 2)
        return f"after {delay} s", None, delay
    kind = rng.choice(FAULTY_EVENTS if faulty else HEALTHY_EVENTS)
    delay = round(rng.uniform(0.0, 0.3), 3)
    return f"at {kind} +{delay} s", kind, delay


def _kill_when(env: FaultEnv, deployment_id: str, kind: str | None, delay: float) -> None:
    """Wait for the stored event `kind` of the deployment (or not at all), then `delay`, then kill.
    If the deployment ends before the event, the kill lands after its end."""
    if kind is not None:
        def seen() -> bool:
            rows = env.store_rows("SELECT kind FROM events WHERE deployment_id = ? AND kind IN (?, 'succeeded',"
                                  " 'rolled_back')", (deployment_id, kind))
            return bool(rows)

        wait_for(seen, timeout=120, what=f"{kind} of {deployment_id}", interval=0.01)
    time.sleep(delay)
    env.kill_supervisor()


def one(env: FaultEnv, i: int, rng: random.Random) -> Outcome:
    faulty = i % 2 == 1
    strategy = rng.choice(("CrashTwoSteps", "CrashThreeSteps"))
    plan, kind, delay = _plan(rng, faulty)
    args = ["deploy", "--no-wait", "--json", "--strategy", strategy, "--set-env", f"CRASH_RUN={i}",
            "--description", f"crash schedule {i}"]
    if faulty:
        args += ["--set-env", FAULT]
    notes = []
    t_deploy = time.monotonic()
    try:
        dep_id = json.loads(env.cli(*args).stdout)["deployment"]["id"]
    except subprocess.TimeoutExpired:
        # the CLI gave up waiting for the supervisor: did the deployment start all the same?
        mine = [d for d in env.api("GET", "/deployments", params={"limit": 3})
                if d["description"] == f"crash schedule {i}"]
        if not mine:
            raise
        dep_id = mine[0]["id"]
        notes.append("deploy --no-wait did not answer within 600 s")
    if time.monotonic() - t_deploy > 60:
        notes.append(f"deploy --no-wait took {time.monotonic() - t_deploy:.0f} s")
    out = Outcome(i, dep_id, faulty, strategy, plan, notes=notes)
    _kill_when(env, dep_id, kind, delay)
    out.killed_at = time.time()
    t0 = time.monotonic()
    env.restart()
    out.restart_s = round(time.monotonic() - t0, 2)
    if env.slow_starts:
        out.notes.append(f"{env.slow_starts} start(s) of the supervisor took over 60 s so far")
    view = env.wait_terminal(dep_id)
    d = view["deployment"]
    before = [e for e in view["events"] if e["ts"] <= out.killed_at]
    out.landed_in = before[-1]["kind"] if before else "before any event"
    decided, completed = d["rollback_decided_at"], d["rollback_completed_at"]
    out.during_rollback = bool(decided and decided <= out.killed_at and (completed or 0) > out.killed_at)
    out.status = d["status"]
    if out.status not in ("Succeeded", "RolledBack"):
        out.problems.append(f"ended {out.status}")
    out.winner = d["target_release"] if out.status == "Succeeded" else d["stable_release"]
    weights = env.weights()
    out.aliases_agree = all(w == {str(out.winner): 100.0} for w in weights.values())
    if not out.aliases_agree:
        out.problems.append(f"live aliases {weights} but the store says r{out.winner} ({out.status})")
    return out


def stale(load: OpenLoad, views: list[dict[str, Any]], outcomes: list[Outcome]) -> None:
    """Count, per deployment, the answers sent after it ended (until the next one was created) that
    came from the release the store says is gone."""
    answers = sorted(load.answers, key=lambda a: a.sent)
    for k, (v, o) in enumerate(zip(views, outcomes, strict=True)):
        d = v["deployment"]
        ended = d["rollback_completed_at"] if d["status"] == "RolledBack" else d["finished_at"]
        until = views[k + 1]["deployment"]["created_at"] if k + 1 < len(views) else float("inf")
        if not ended:
            continue
        gone = d["stable_release"] if o.status == "Succeeded" else d["target_release"]
        o.stale_answers = sum(1 for a in answers if ended < a.sent < until and a.version == str(gone))
        if o.stale_answers:
            o.problems.append(f"{o.stale_answers} answer(s) by r{gone} after the store said it was gone")


def run_schedule(env: FaultEnv, n: int, seed: int, rate: float, log: Any = None,
                 until_min: float = 0.0) -> tuple[list[Outcome], dict[str, Any]]:
    """Run the schedule on a started environment; the outcomes and a summary. With `until_min`, no
    deployment starts after that many minutes (the summary says how many ran)."""
    rng = random.Random(seed)
    load = OpenLoad(env.gateway_url, rate=rate, post_share=0.02)
    outcomes: list[Outcome] = []
    views: list[dict[str, Any]] = []
    t0 = time.monotonic()
    load.start()
    try:
        time.sleep(2.0)  # warm workers of the stable release
        for i in range(n):
            if until_min and time.monotonic() - t0 > until_min * 60:
                break
            o = one(env, i, rng)
            outcomes.append(o)
            views.append(env.deployment(o.deployment))
            if log:
                print(f"[{i + 1}/{n}] {o.deployment} {'faulty ' if o.faulty else 'healthy'} {o.strategy:<16}"
                      f" kill {o.kill_plan:<28} landed in {o.landed_in:<21}{' (rollback)' if o.during_rollback else ''}"
                      f" → {o.status} r{o.winner}{'' if o.consistent else '  PROBLEMS: ' + '; '.join(o.problems)}",
                      file=log, flush=True)
        time.sleep(2.0)  # answers after the last deployment ended
    finally:
        load.stop()
    stale(load, views, outcomes)
    summary = {
        "deployments": len(outcomes),
        "planned": n,
        "seed": seed,
        "consistent": sum(o.consistent for o in outcomes),
        "succeeded": sum(o.status == "Succeeded" for o in outcomes),
        "rolled_back": sum(o.status == "RolledBack" for o in outcomes),
        "faulty_succeeded": sum(o.faulty and o.status == "Succeeded" for o in outcomes),
        "healthy_rolled_back": sum(not o.faulty and o.status == "RolledBack" for o in outcomes),
        "kills": len(outcomes),
        "kills_landed_in": dict(Counter(o.landed_in for o in outcomes).most_common()),
        "kills_during_rollback": sum(o.during_rollback for o in outcomes),
        "stale_answers": sum(o.stale_answers for o in outcomes),
        "requests": len(load.answers),
        "requests_5xx": sum(1 for a in load.answers if a.status >= 500),
        "requests_unanswered": sum(1 for a in load.answers if a.status == 0),
        "notes": [f"{o.deployment}: {n}" for o in outcomes for n in o.notes],
        "restart_s_max": max((o.restart_s for o in outcomes), default=0.0),
        "minutes": round((time.monotonic() - t0) / 60, 1),
    }
    return outcomes, summary


def run(only: set[str] | None = None, quick: bool = False) -> list[Figure]:
    if only is not None and "crash_deployments" not in only:
        return []
    n = 4 if quick else 50
    with tempfile.TemporaryDirectory(prefix="backout-crash-deploy-") as d:
        env = build_env(Path(d))
        try:
            _, s = run_schedule(env, n, 12, 15.0, log=sys.stdout)
        finally:
            env.close()
    return [Figure(f"deployments consistent after a supervisor SIGKILL each (of {n})", s["consistent"],
                   "deployments", target=f"= {n}", ok=s["consistent"] == n, detail=s)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crash_deployments", description=__doc__.splitlines()[0])
    ap.add_argument("--deployments", type=int, default=50)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--rate", type=float, default=15.0, help="HTTP requests per second during the schedule")
    ap.add_argument("--json", dest="json_path", default="")
    ap.add_argument("--keep", default="", help="run in this directory and keep it (state, logs)")
    ap.add_argument("--until", type=float, default=0.0, help="start no deployment after this many minutes")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backout-crash-deploy-") as tmp:
        env = build_env(Path(a.keep) if a.keep else Path(tmp))
        try:
            outcomes, summary = run_schedule(env, a.deployments, a.seed, a.rate, log=sys.stdout,
                                             until_min=a.until)
        finally:
            env.close()
    print(json.dumps(summary, indent=2))
    if a.json_path:
        Path(a.json_path).write_text(json.dumps({"summary": summary, "deployments": [asdict(o) for o in outcomes]},
                                                indent=2))
    return 0 if summary["consistent"] == summary["deployments"] else 1


if __name__ == "__main__":
    sys.exit(main())
