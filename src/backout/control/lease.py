"""The lease on a deployment: which process drives it, when another one may take it over, and the
fence that stops a process that lost it.

Only a shared store (DynamoDB, `shared_store.py`) has leases: on one machine the supervisor's flock
already makes one process the driver. A store with leases implements `Leases`; the deployer asks
`isinstance(store, Leases)` as it asks a platform for `Capacity`.

- The process that creates a deployment holds its lease from the first write (`holder`,
  host:pid:uuid) and renews it every `renew` seconds (10 by default); it expires `expiry` seconds
  (60) after the last renewal.
- While the lease is live, a second `deploy` anywhere is refused naming the holder, and
  `take_over` is refused; once it expired, `take_over` (a conditional write) makes the caller the
  holder and raises the fence by one.
- Every write of a holder is conditioned on its fence: a process that lost the lease (it paused
  past the expiry, or an operator's machine took over) gets `LeaseLost` and stops driving.
- Another machine cannot write a driven deployment, so it *asks*: `request(id, "stop" | "approve")`;
  the holder reads the requests at every evaluation and acts on them.

Expiry compares the holder's clock with the reader's: machines must keep their clocks in sync
(NTP); a skew of a few seconds is small against a 60 s expiry.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from backout.errors import OperationFailed, UsageError

RENEW = 10.0  # seconds between renewals (manifest: aws.lease_renew)
EXPIRY = 60.0  # seconds after the last renewal (manifest: aws.lease_expiry)


def holder_id() -> str:
    """This process, as a lease names it: `host:pid:uuid` (the uuid tells a restarted pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Lease:
    deployment_id: str
    holder: str
    expires: float  # epoch seconds
    fence: int

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires

    def describe(self, now: float | None = None) -> str:
        left = self.expires - (time.time() if now is None else now)
        when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        return f"held by {self.holder} (fence {self.fence}, {when})"


class LeaseLost(OperationFailed):
    """This process's write was refused: another process holds the deployment's lease now."""


class LeaseHeld(UsageError):
    """A takeover refused: the lease is live (its holder still renews it)."""


@runtime_checkable
class Leases(Protocol):
    """The optional lease capability of a shared control store."""

    holder: str
    renew_seconds: float
    expiry_seconds: float

    def lease(self, deployment_id: str) -> Lease: ...

    def holds(self, deployment_id: str) -> bool:
        """True when this process took or created the lease (whether it is still valid or not)."""
        ...

    def renew(self, deployment_id: str) -> Lease:
        """Push the expiry out; LeaseLost when another process took it over."""
        ...

    def take_over(self, deployment_id: str) -> Lease:
        """Become the holder of an expired lease (fence + 1); LeaseHeld while it is live."""
        ...

    def release(self, deployment_id: str) -> None:
        """Let the lease expire now (a process shutting down): another may take over at once."""
        ...

    def request(self, deployment_id: str, kind: str, data: dict[str, Any]) -> None:
        """Ask the holder to act (`stop`, `approve`): written beside the lease, read by the holder."""
        ...

    def requests(self, deployment_id: str) -> dict[str, Any]: ...
