"""examples/ci/github-actions.yml run as GitHub Actions would run its `backout` steps, against the local
platform: the workflow is parsed with PyYAML, and each job's `run:` steps that call backout are run in
order with bash (`-eo pipefail`, as the runner does) in a checkout of a service (`backout init`'s),
with the runner's files: GITHUB_ENV carries values from one step to the next, GITHUB_STEP_SUMMARY
receives each step's summary. `if:` conditions are honoured (`always()`, `failure()`). One supervisor
at a time (each job starts and stops its environment's); a short strategy comes in through the
workflow's own BACKOUT_STRATEGY variable.

Checked: staging deploys (exit 0) and drills green (exit 0: an automatic rollback within the target),
prod's deployment waits for approval, is approved and followed to Succeeded; the incident-report
step is skipped; every step's exit code and summary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from backout.cli.scaffold import new_service
from support import ROOT

pytestmark = pytest.mark.slow

WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
QUICK = """
[strategies.Quick]
steps = [{ weight = 50, hold = "1s" }, { weight = 100 }]
"""
BACKOUT_COMMAND = re.compile(r"(^|[;&|(]|\$\()\s*backout\s", re.M)  # backout as a command, not `pip install backout`
SHA = "3f2c9e1d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"


@dataclass
class Step:
    name: str
    code: int | None  # None: skipped by its `if:`
    out: str
    summary: str
    seconds: float = 0.0


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """The service's repository as a job checks it out: `backout init`'s service, on free ports."""
    root = tmp_path / "shop"
    new_service("shop").write(root)
    manifest = root / "backout.toml"
    text = manifest.read_text()
    for port in ("8700", "8701", "8710", "8711"):  # free ports on a shared machine
        text = text.replace(f"_port = {port}", "_port = 0")
    manifest.write_text(text + QUICK)
    yield root
    for env in ("staging", "prod"):  # a supervisor the workflow failed to stop does not outlive the test
        ep = root / ".backout" / env / "endpoints.json"
        if ep.exists():
            try:
                os.killpg(int(json.loads(ep.read_text())["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError, KeyError):
                pass


def run_job(workflow: dict[str, Any], job: str, root: Path, overrides: dict[str, str]) -> list[Step]:
    """The job's steps as the runner would run them; `uses:` steps and those that do not call backout
    (installing it) are left out — this environment has backout already."""
    spec = workflow["jobs"][job]
    runner = root.parent / f"runner-{job}"
    runner.mkdir()
    github_env = runner / "env"
    github_env.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "BACKOUT_"))}
    env |= {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    env |= {k: str(v) for k, v in (spec.get("env") or {}).items()}
    env |= overrides
    # the backout under test (this repository's) on the steps' PATH and PYTHONPATH, whatever their cwd
    inherited = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *inherited]),
            "GITHUB_SHA": SHA, "GITHUB_REF_NAME": "main", "GITHUB_ENV": str(github_env), "CI": "true",
            "COLUMNS": "200"}
    failed = False
    steps: list[Step] = []
    for i, step in enumerate(spec["steps"]):
        script = step.get("run")
        if script is None or not BACKOUT_COMMAND.search(script):
            continue
        assert "${{" not in script, f"{step['name']}: a run script must be plain shell (expressions go in env)"
        condition = step.get("if", "success()")
        assert condition in ("success()", "failure()", "always()"), f"{step['name']}: if: {condition}"
        if {"success()": failed, "failure()": not failed, "always()": False}[condition]:
            steps.append(Step(step["name"], None, "", ""))
            continue
        summary = runner / f"summary-{i}.md"
        summary.touch()
        for line in github_env.read_text().splitlines():  # what earlier steps exported
            k, _, v = line.partition("=")
            env[k] = v
        started = time.monotonic()
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=root,
                           env=env | {"GITHUB_STEP_SUMMARY": str(summary)}, capture_output=True, text=True,
                           timeout=300)
        steps.append(Step(step["name"], r.returncode, r.stdout + r.stderr, summary.read_text(),
                          time.monotonic() - started))
        failed = failed or r.returncode != 0
    return steps


def report(steps: list[Step]) -> str:
    """What each step printed, for a failure's message."""
    return "\n".join(f"--- {s.name}: exit {s.code} after {s.seconds:.1f} s\n{s.out}" for s in steps)


def test_the_workflow_deploys_staging_drills_then_deploys_prod_through_the_approval(checkout: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert list(workflow["jobs"]) == ["staging", "prod"] and workflow["jobs"]["prod"]["needs"] == "staging"
    assert workflow["jobs"]["prod"]["environment"] == "production"  # GitHub's reviewers gate the prod job
    overrides = {"BACKOUT_STRATEGY": "Quick"}

    staging = run_job(workflow, "staging", checkout, overrides)
    assert [(s.name, s.code) for s in staging] == [
        ("Start staging", 0), ("Deploy to staging", 0), ("Rollback drill", 0), ("Stop staging", 0)], report(staging)
    deploy, drill = staging[1], staging[2]
    assert f"deployed {SHA} to staging" in deploy.out
    assert re.match(r"### ✅ backout deploy: `d-\d+` Succeeded in staging\n", deploy.summary), deploy.summary
    assert "with Quick, " in deploy.summary and f"— {SHA}" in deploy.summary
    assert "**Decision**: deployment d-0001 succeeded" in deploy.summary
    assert "<details><summary>Timeline" in deploy.summary and "| `step_reached` | step 1/2: 50 %" in deploy.summary
    # the drill: its verdict against the target, the faulty deployment's decision, alarms and incident
    assert re.match(r"### ✅ backout drill: `[^`]+` PASSED in staging\n", drill.summary), drill.summary
    assert "| `errors=0.5` |" in drill.summary and "| 60.0 s |" in drill.summary
    assert re.search(r"\*\*Decision\*\*: rolled back \((alarm|judge)\): ", drill.summary), drill.summary
    assert "**Alarms** (new version, last evaluation)" in drill.summary and "| **ALARM** |" in drill.summary
    assert re.search(r"`backout incident report INC-\d+ --env staging -o INC-\d+\.md`", drill.summary)

    prod = run_job(workflow, "prod", checkout, overrides)
    assert [(s.name, s.code) for s in prod] == [
        ("Start prod", 0), ("Publish and hold for approval", 0), ("Approve", 0),
        ("Follow the deployment to its end", 0), ("Incident report", None), ("Stop prod", 0)], report(prod)
    held, follow = prod[1], prod[3]
    assert re.search(r"^d-\d+ is AwaitingApproval$", held.out, re.M), held.out
    assert held.summary == ""  # it has not ended yet: the follow step writes its summary
    assert re.match(r"### ✅ backout deploy: `d-\d+` Succeeded in prod\n", follow.summary), follow.summary
    assert "| `approved` | approved by " in follow.summary
