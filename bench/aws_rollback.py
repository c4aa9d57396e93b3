"""Decision → every alias 100 % stable on the AWS platform, against moto in server mode.

`python -m bench.aws_rollback [--functions 8] [--runs 7]`: N Lambda functions (zip files; moto runs
no code), each with a `live` alias split 90/10 between versions 1 and 2; each run times the
control plane's rollback apply — `Traffic.route(stable, target, 0)`, which hands every alias to
`set_weights_many` (one update_alias per function on a thread pool) — until the call returns, and
then checks every alias with get_alias. The same with one update_alias after another, for comparison.
Against moto on 127.0.0.1 this measures backout's own cost and the parallelism, not AWS's latency
(one update_alias takes ~50–150 ms on AWS: the parallel path costs about one of them).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import tempfile
import time
import uuid
import zipfile
from pathlib import Path


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("svc/handler.py", "def handler(e, c):\n    return e\n")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.aws_rollback")
    p.add_argument("--functions", type=int, default=8)
    p.add_argument("--runs", type=int, default=7)
    a = p.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    from backout.control.store import Store
    from backout.control.traffic import Traffic
    from backout.manifest import load_manifest
    from backout.platforms import open_platform

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        lam = boto3.client("lambda", region_name="us-east-1", endpoint_url=url)
        role = boto3.client("iam", region_name="us-east-1", endpoint_url=url).create_role(
            RoleName="bench", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        tag = uuid.uuid4().hex[:6]
        names = {f"fn{i}": f"bench-{tag}-{i}" for i in range(a.functions)}
        for real in names.values():
            lam.create_function(FunctionName=real, Runtime="python3.11", Role=role, Handler="svc.handler.handler",
                                Code={"ZipFile": _zip()})
            for _ in range(2):
                lam.publish_version(FunctionName=real)
            lam.create_alias(FunctionName=real, Name="live", FunctionVersion="1")
        root = Path(tempfile.mkdtemp(prefix="backout-bench-"))
        (root / "src" / "svc").mkdir(parents=True)
        fns = "".join(f'[functions.{fn}]\nhandler = "svc.handler.handler"\n\n' for fn in names)
        table = ", ".join(f'{fn} = "{real}"' for fn, real in names.items())
        (root / "backout.toml").write_text(
            f'[service]\nname = "bench"\nsource = "src"\n\n{fns}[environments.bench]\ncontrol_port = 0\n'
            f'platform = "aws"\n\n[environments.bench.aws]\nregion = "us-east-1"\nendpoint_url = "{url}"\n'
            f"functions = {{ {table} }}\n")
        m = load_manifest(root / "backout.toml")
        platform = open_platform(m, "bench", root / "state")
        traffic = Traffic(platform, Store(root / "state" / "control.db"), "bench")
        stable, target = {fn: "1" for fn in names}, {fn: "2" for fn in names}

        def run(parallel: bool) -> float:
            traffic.route(stable, target, 10)
            t0 = time.perf_counter()
            if parallel:
                traffic.route(stable, target, 0)
            else:
                for fn in names:
                    platform.set_weights(fn, "1")
            took = time.perf_counter() - t0
            assert all(platform.get_weights(fn).versions == {"1": 100.0} for fn in names)
            return took

        print(f"{a.functions} functions, {a.runs} runs each, moto server on 127.0.0.1")
        for label, parallel in (("parallel (set_weights_many)", True), ("one after another", False)):
            run(parallel)  # warm the connection pool
            times = sorted(run(parallel) for _ in range(a.runs))
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"  {label:28s} median {1000 * statistics.median(times):6.1f} ms   p95 {1000 * p95:6.1f} ms")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
