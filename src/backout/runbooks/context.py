"""The one object every runbook takes: what an operator procedure needs to act on one environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backout.control.deployer import Deployer
from backout.control.notify import Notifier
from backout.control.store import ControlStore
from backout.control.traffic import Traffic
from backout.manifest import EnvironmentSpec, Manifest
from backout.platforms.base import Platform


@dataclass
class RunbookContext:
    manifest: Manifest
    env: str
    platform: Platform
    store: ControlStore
    deployer: Deployer
    notifier: Notifier
    # the running deployment's latest alarm evaluations (verify uses them instead of evaluating anew)
    live_alarms: Callable[[], dict[str, Any]] = field(default=dict)

    @property
    def spec(self) -> EnvironmentSpec:
        return self.manifest.environment(self.env)

    @property
    def service(self) -> str:
        return self.manifest.service.name

    @property
    def traffic(self) -> Traffic:
        return self.deployer.traffic

    @property
    def gateway_url(self) -> str:
        return self.platform.endpoint()
