"""Deployment statuses and the transitions between them (CodeDeploy's lifecycle, plus approval).

Kept apart from the store so that the deployer, the runbooks and the CLI reason about a
deployment's life without a database in sight."""

from __future__ import annotations

from backout.errors import UsageError

CREATED = "Created"
AWAITING_APPROVAL = "AwaitingApproval"
PRE_TRAFFIC = "PreTraffic"
IN_PROGRESS = "InProgress"
POST_TRAFFIC = "PostTraffic"
SUCCEEDED = "Succeeded"
ROLLED_BACK = "RolledBack"
STOPPED = "Stopped"
FAILED = "Failed"

ACTIVE_STATUSES = (CREATED, AWAITING_APPROVAL, PRE_TRAFFIC, IN_PROGRESS, POST_TRAFFIC)  # in forward order
TERMINAL_STATUSES = (SUCCEEDED, ROLLED_BACK, STOPPED, FAILED)
STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES
SEVERITIES = ("info", "warning", "critical")  # of events and notifications
INCIDENT_SEVERITIES = ("low", "warning", "high", "critical")  # of incidents: by impact (deployer.incident_severity)
ALARM_STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")


class InvalidTransition(UsageError):
    """A deployment cannot move from its current status to the one asked (e.g. approving a finished one)."""


def can_transition(current: str, new: str) -> bool:
    """Active statuses only move forward (skipping is fine: no approval, no hooks) or end;
    terminal statuses never change."""
    if current not in ACTIVE_STATUSES or new not in STATUSES:
        return False
    return new in TERMINAL_STATUSES or ACTIVE_STATUSES.index(new) >= ACTIVE_STATUSES.index(current)


class AlreadyActive(UsageError):
    """A second deployment (or a traffic change) while one is active in the environment."""
