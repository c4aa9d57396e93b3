"""Driver death → every live alias back on stable, on AWS with shared state, against moto in server mode.

`python -m bench.lease [--functions 4] [--runs 3] [--scale 0.1]` (or `python -m bench --only lease`):
N Lambda functions (zip files; moto runs no code) with releases r1 and r2 published by backout, a
shared state table, and a *driver*: a process of its own running backout's Deployer, which starts a
canary (50 % on r2, held for an hour) and renews its lease. Once every alias is split the driver is
SIGKILLed, and the time until every alias routes 100 % to r1 again is measured, two ways:

- **guard**: the guard's `sweep` (what its Lambda handler runs) called on a schedule in this process,
  with grace 0 (the template's default): bounded by the lease expiry plus one schedule period;
- **takeover**: an operator on another machine runs `backout stop` (rollback) at the moment of the
  death: their process asks the driver, sees the lease expire, takes it over (conditional write) and
  rolls back: bounded by the lease expiry.

The real settings — renew 10 s, expiry 60 s, a schedule every 60 s — make one run last minutes;
`--scale 0.1` (the default) divides all three by 10 and `--scale 1` runs them as they are. The
figures are reported as measured and as ratios to their bound, which do not depend on the scale.
moto answers on 127.0.0.1, so AWS's own latency (≈ 50–150 ms per update_alias) is not in them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from bench.platform import Figure

BENCHMARKS = ("lease",)
REAL = {"renew": 10.0, "expiry": 60.0, "period": 60.0}
HOLD = 3600.0  # the canary step the driver holds: it never gets further by itself


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("svc/handler.py", "def handler(e, c):\n    return e\n")
    return buf.getvalue()


class Setup:
    """A moto server, N functions with r1 live and r2 published, a state table and the manifest."""

    def __init__(self, functions: int, renew: float, expiry: float) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        from backout.manifest import load_manifest
        from backout.platforms import open_platform
        from backout_lambda import state_table

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("backout").setLevel(logging.CRITICAL)  # the takeover's incident logs what moto lacks
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.lam = boto3.client("lambda", region_name="us-east-1", endpoint_url=self.url)
        role = boto3.client("iam", region_name="us-east-1", endpoint_url=self.url).create_role(
            RoleName="bench", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        tag = uuid.uuid4().hex[:6]
        self.names = {f"fn{i}": f"bench-{tag}-{i}" for i in range(functions)}
        for real in self.names.values():
            self.lam.create_function(FunctionName=real, Runtime="python3.11", Role=role,
                                     Handler="svc.handler.handler", Code={"ZipFile": _zip()})
        self.table_name = f"bench-state-{tag}"
        state_table.create_table(boto3.client("dynamodb", region_name="us-east-1", endpoint_url=self.url),
                                 self.table_name)
        self.table = boto3.resource("dynamodb", region_name="us-east-1", endpoint_url=self.url).Table(
            self.table_name)
        self.root = Path(tempfile.mkdtemp(prefix="backout-bench-lease-"))
        fns = "".join(f'[functions.{fn}]\nhandler = "svc.handler.handler"\n\n' for fn in self.names)
        names = ", ".join(f'{fn} = "{real}"' for fn, real in self.names.items())
        self.manifest_path = self.root / "backout.toml"
        self.manifest_path.write_text(
            f'[service]\nname = "bench"\nsource = "src"\npackages = ["svc"]\n\n{fns}[hooks]\npre_traffic = []\n'
            f'post_traffic = []\n\n[environments.bench]\ncontrol_port = 0\nplatform = "aws"\n\n'
            f'[environments.bench.aws]\nregion = "us-east-1"\nendpoint_url = "{self.url}"\n'
            f'evaluation_interval = "1s"\nfunctions = {{ {names} }}\nstate_table = "{self.table_name}"\n'
            f'lease_renew = "{renew}s"\nlease_expiry = "{expiry}s"\n')
        platform = open_platform(load_manifest(self.manifest_path), "bench", self.root / "state")
        self.r1 = platform.publish(self._source("r1"), description="r1")
        for fn, real in self.names.items():
            self.lam.create_alias(FunctionName=real, Name="live", FunctionVersion=self.r1.version(fn))
        self.r2 = platform.publish(self._source("r2"), description="r2")

    def _source(self, marker: str) -> Path:
        src = self.root / "src"
        (src / "svc").mkdir(parents=True, exist_ok=True)
        (src / "svc" / "__init__.py").write_text(f"MARKER = {marker!r}\n")
        (src / "svc" / "handler.py").write_text("def handler(event, context):\n    return event\n")
        return src

    def on_stable(self) -> bool:
        for fn, real in self.names.items():
            a = self.lam.get_alias(FunctionName=real, Name="live")
            if a["FunctionVersion"] != self.r1.version(fn) or (a.get("RoutingConfig") or {}).get(
                    "AdditionalVersionWeights"):
                return False
        return True

    def close(self) -> None:
        self.server.stop()


def drive(manifest: str) -> None:
    """The driver process: start the canary, say when every alias is split, then hold until killed."""
    logging.basicConfig(level=logging.CRITICAL)
    from backout.control.deployer import Deployer
    from backout.control.notify import Notifier
    from backout.control.shared_store import open_store
    from backout.control.strategies import Step, Strategy
    from backout.manifest import load_manifest
    from backout.platforms import open_platform

    m = load_manifest(Path(manifest))
    platform = open_platform(m, "bench", Path(manifest).parent / "driver")
    store = open_store(m, "bench", platform, Path(manifest).parent / "driver")
    deployer = Deployer(m, "bench", platform, store, Notifier([]))
    release = max(r.id for r in platform.releases())
    d = deployer.create(release=release, strategy_obj=Strategy("Bench", (Step(50.0, HOLD), Step(100.0, 0.0))))
    while not any(e.kind == "step_reached" for e in store.events(deployment_id=d.id)):
        time.sleep(0.05)
    print(json.dumps({"deployment": d.id}), flush=True)
    threading.Event().wait()


def one_run(s: Setup, how: str, period: float) -> dict[str, float]:
    """Start a driver, kill it once the canary is split, time until every alias is on stable."""
    from backout.control.deployer import Deployer
    from backout.control.notify import Notifier
    from backout.control.shared_store import open_store
    from backout.manifest import load_manifest
    from backout.platforms import open_platform
    from backout_lambda import guard

    proc = subprocess.Popen([sys.executable, "-m", "bench.lease", "--drive", str(s.manifest_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    did = json.loads(line)["deployment"]
    killed = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lease = s.table.get_item(Key={"pk": f"DEP#{did}", "sk": "DEP"}, ConsistentRead=True)["Item"]
    left = float(lease["expires"]) - killed
    stop = threading.Event()
    acted: list[tuple[float, float]] = []  # (tick − expiry, the sweep's seconds) of the sweep that rolled back
    expires = killed + left
    if how == "guard":
        def schedule() -> None:  # EventBridge's rate(): ticks at a fixed period, whatever the phase of the death
            n = 0
            while not stop.wait(period - (time.time() % period)):
                n += 1
                tick = time.time()
                out = guard.sweep(s.table, s.lam, grace=0.0, holder=f"guard:bench-{n}", notify=lambda _: None,
                                  emit=lambda _: None)  # no EMF line (CloudWatch Logs on Lambda)
                if out["rolled_back"]:
                    acted.append((tick - expires, time.time() - tick))

        threading.Thread(target=schedule, daemon=True).start()
    else:
        m = load_manifest(s.manifest_path)
        platform = open_platform(m, "bench", s.root / "operator")
        operator = Deployer(m, "bench", platform, open_store(m, "bench", platform, s.root / "operator"), Notifier([]))
        threading.Thread(target=operator.stop, args=(did,), kwargs={"reason": "driver died", "who": "bench"},
                         daemon=True).start()
    while not s.on_stable():
        time.sleep(0.05)
    took = time.time() - killed
    stop.set()
    out = {"seconds": took, "lease_left": left, "after_expiry": took - left}
    if acted:
        out.update(tick_after_expiry=acted[0][0], sweep=acted[0][1])
    return out


def measure(functions: int, runs: int, scale: float) -> dict[str, Any]:
    renew, expiry, period = (REAL[k] * scale for k in ("renew", "expiry", "period"))
    s = Setup(functions, renew, expiry)
    out: dict[str, Any] = {"renew": renew, "expiry": expiry, "period": period, "functions": functions}
    try:
        for how, bound in (("takeover", expiry), ("guard", expiry + period)):
            results = []
            for _ in range(runs):
                results.append(one_run(s, how, period))
                print(f"  {how}: {json.dumps({k: round(v, 2) for k, v in results[-1].items()})}", flush=True)
            times = [r["seconds"] for r in results]
            out[how] = {"median": statistics.median(times), "max": max(times), "bound": bound,
                        "after_expiry": statistics.median(r["after_expiry"] for r in results),
                        "runs": [{k: round(v, 2) for k, v in r.items()} for r in results]}
    finally:
        s.close()
    return out


def run(only: set[str] | None, quick: bool = False) -> list[Figure]:
    """The figures for `python -m bench`."""
    if only is not None and "lease" not in only:
        return []
    r = measure(functions=4, runs=1 if quick else 3, scale=0.1)
    guard_ = r["guard"]
    return [Figure("driver death → stable, by a takeover (scale 0.1)", r["takeover"]["median"], "s",
                   detail=r["takeover"]),
            Figure("driver death → stable, by the guard (scale 0.1)", guard_["median"], "s",
                   f"≤ lease + one period = {guard_['bound']:g} s", guard_["max"] <= guard_["bound"], guard_)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lease")
    p.add_argument("--functions", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.1, help="renew, expiry and schedule period × this")
    p.add_argument("--drive", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.drive:
        drive(a.drive)
        return 0
    r = measure(a.functions, a.runs, a.scale)
    print(f"{a.functions} functions, renew {r['renew']:g} s, expiry {r['expiry']:g} s, guard every "
          f"{r['period']:g} s; moto server on 127.0.0.1")
    for how in ("takeover", "guard"):
        x = r[how]
        print(f"  {how:9s} median {x['median']:6.2f} s (after the expiry {x['after_expiry']:5.2f} s)   "
              f"max {x['max']:6.2f} s   bound {x['bound']:g} s\n            runs {x['runs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
