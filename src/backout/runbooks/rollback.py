"""Manual rollback ("2. Manual Rollback" of the procedure, without GitHub Actions or CloudFormation).

The switch itself is a Deployer operation (`Deployer.manual_rollback`: recorded as a deployment
before the aliases move, so history, `verify` and a restarted process agree on what should be
live); this runbook adds what the procedure asks after it: validate, and keep the result with the
incident.
"""

from __future__ import annotations

from typing import Any

from backout.runbooks.context import RunbookContext
from backout.runbooks.verify import verify


def manual_rollback(ctx: RunbookContext, reason: str, who: str, to: int | None = None) -> dict[str, Any]:
    out = ctx.deployer.manual_rollback(reason, who, to)
    report = verify(ctx)
    ctx.store.add_event("verify", report.summary(), deployment_id=out["deployment"],
                        incident_id=out.get("incident"), severity="info" if report.ok else "critical",
                        data=report.as_dict())
    out["verify"] = report.as_dict()
    return out
