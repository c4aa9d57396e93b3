"""Traffic: the one path for every change of alias weights, API throttle and processing.

The Deployer owns one. Whoever changes traffic writes the store first and applies second, so a
process killed in between leaves a record that `reconcile` can act on:
- a deployment's weights follow its record (the Deployer commits the step, then calls `route`);
- an operator's alias override is refused while a deployment runs, and is recorded as an event
  before it is applied;
- the API throttle and processing switches are stored as the operator's wanted state
  (`Store.set_switch`) before the platform is touched, and `reconcile_switches` re-applies them
  after a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from backout.control.store import ControlStore
from backout.errors import UsageError
from backout.platforms.base import AliasWeights, Capacity, ParallelRouting, Platform, Release, Throttle


class Traffic:
    def __init__(self, platform: Platform, store: ControlStore, env: str) -> None:
        self.platform = platform
        self.store = store
        self.env = env
        # held while a status change and its alias writes are applied: a stop that takes over from a
        # busy runner and the runner itself never interleave their weights
        self.lock = threading.RLock()

    # --- weights ----------------------------------------------------------------------------------
    def route(self, stable: dict[str, str], target: dict[str, str], weight: float) -> None:
        """Every function: `weight` percent on its target version, the rest on its stable one
        (0 → all stable; no stable → all target)."""
        changes = []
        for fn in self.platform.functions():
            if weight <= 0 and fn in stable:
                changes.append(AliasWeights(fn, stable[fn]))
            elif weight >= 100 or fn not in stable:
                changes.append(AliasWeights(fn, target[fn]))
            else:
                changes.append(AliasWeights(fn, stable[fn], target[fn], min(weight, 100.0)))
        self._apply(changes)

    def point_all(self, release: Release) -> None:
        self._apply([AliasWeights(fn, release.version(fn)) for fn in self.platform.functions()])

    def _apply(self, changes: list[AliasWeights]) -> None:
        """All at once where the platform can (a network round trip per alias), else one by one."""
        if isinstance(self.platform, ParallelRouting) and len(changes) > 1:
            self.platform.set_weights_many(changes)
            return
        for w in changes:
            self.platform.set_weights(w.function, w.stable, w.canary, w.canary_weight)

    def live_release(self) -> Release | None:
        """The release every live alias sends all its traffic to (None while traffic is split or the
        functions point at versions of different releases)."""
        return self._newest_release(lambda w, v: w.versions == {v: 100.0})

    def stable_release(self) -> Release | None:
        """The release every alias's stable (primary) version belongs to, split or not."""
        return self._newest_release(lambda w, v: w.stable == v)

    def _newest_release(self, matches: Callable[[AliasWeights, str], bool]) -> Release | None:
        """The newest release whose version of every function `matches` that function's alias."""
        fns = self.platform.functions()
        weights = {fn: self.platform.get_weights(fn) for fn in fns}
        return next((r for r in reversed(self.platform.releases())
                     if all(matches(weights[fn], r.version(fn)) for fn in fns)), None)

    def override(self, fn: str, stable: str, canary: str | None, pct: float, who: str) -> None:
        """An operator points one alias by hand (`backout alias`): refused while a deployment runs
        (it owns the weights), recorded before it is applied."""
        self.store.refuse_if_active(self.env)
        if fn not in self.platform.functions():
            raise UsageError(f"no function named {fn!r} (known: {', '.join(self.platform.functions())})")
        if isinstance(self.platform, Capacity):  # the switch meets warm instances, as a deployment's does
            for v in (stable, canary):
                if v is not None:
                    self.platform.prewarm(fn, v)
        what = f"{fn}:live → v{stable}" + (f" + {pct:g} % v{canary}" if canary is not None and pct > 0 else "")
        with self.lock:
            self.store.add_event("alias_override", f"{who or 'an operator'} set {what}", severity="warning",
                                 data={"function": fn, "stable": stable, "canary": canary, "weight": pct, "who": who})
            self.platform.set_weights(fn, stable, canary, pct if canary is not None else 0.0)

    # --- switches ---------------------------------------------------------------------------------
    def set_throttle(self, rate: float, burst: int, who: str = "", reason: str = "") -> Throttle:
        if rate < 0 or burst < 0:
            raise UsageError("throttle rate and burst must be ≥ 0")
        with self.lock:
            self.store.set_switch(self.env, "throttle", {"rate": rate, "burst": burst}, who, reason)
            self.platform.set_throttle(rate, burst)
        return self.platform.get_throttle()

    def set_processing(self, enabled: bool, who: str = "", reason: str = "") -> None:
        with self.lock:
            self.store.set_switch(self.env, "processing", enabled, who, reason)
            self.platform.set_processing(enabled)

    def reconcile_switches(self) -> list[str]:
        """Apply the stored wanted switches the platform disagrees with (after a kill between the
        write and the apply, or a platform that forgot them); returns what was changed."""
        changed: list[str] = []
        wanted: dict[str, Any] = self.store.switches(self.env)
        with self.lock:
            t = wanted.get("throttle")
            if t is not None:
                now = self.platform.get_throttle()
                if (now.rate, now.burst) != (float(t["rate"]), int(t["burst"])):
                    self.platform.set_throttle(float(t["rate"]), int(t["burst"]))
                    changed.append(f"API throttle → rate {t['rate']:g}, burst {t['burst']}")
            p = wanted.get("processing")
            if p is not None and self.platform.get_processing() != bool(p):
                self.platform.set_processing(bool(p))
                changed.append(f"processing → {'on' if p else 'paused'}")
        return changed
