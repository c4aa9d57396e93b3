"""The environment's CloudFormation stack: `describe_stacks` and `cancel_update_stack`.

Cancelling applies only while an update is in progress (UPDATE_IN_PROGRESS): CloudFormation then
rolls the stack back to its previous template. After an update has finished there is nothing to
cancel — the procedure's `aws cloudformation cancel-update-stack` does nothing after a completed
deploy — and backout's own rollback (the live aliases back to the stable versions) is the way back.
"""

from __future__ import annotations

from datetime import datetime

from backout.errors import UsageError
from backout.platforms.aws.config import Clients, aws_errors
from backout.platforms.base import StackStatus


class AwsStack:
    def __init__(self, clients: Clients, name: str | None, region: str) -> None:
        self.clients = clients
        self.name = name
        self.region = region

    def _name(self) -> str:
        if self.name is None:
            raise UsageError("this environment names its resources explicitly: there is no stack "
                             "(set aws.stack = \"NAME\" to read them from a CloudFormation stack)")
        return self.name

    def stack_status(self) -> StackStatus:
        name = self._name()
        with aws_errors(f"CloudFormation stack {name!r} in {self.region}"):
            s = self.clients("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
        last = s.get("LastUpdatedTime") or s.get("CreationTime")
        return StackStatus(
            name=s["StackName"], status=s["StackStatus"], reason=s.get("StackStatusReason", ""),
            last_updated=last.timestamp() if isinstance(last, datetime) else None,
            outputs={o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])},
        )

    def cancel_stack_update(self) -> StackStatus:
        before = self.stack_status()
        if not before.updating:
            raise UsageError(
                f"stack {before.name} is {before.status}: cancel applies only while an update is in progress "
                f"(UPDATE_IN_PROGRESS); a finished deploy cannot be cancelled — roll back the live aliases "
                f"with `backout rollback` instead")
        with aws_errors(f"CloudFormation stack {before.name!r}"):
            self.clients("cloudformation").cancel_update_stack(StackName=before.name)
        return self.stack_status()
