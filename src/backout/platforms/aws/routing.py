"""Live alias weights on Lambda: `get_alias` / `update_alias(Name="live")`.

A split is `FunctionVersion=stable` plus `RoutingConfig={"AdditionalVersionWeights": {canary: w}}`
(w in 0..1); 100 % on one version is the same call with an empty `AdditionalVersionWeights`
(leaving RoutingConfig out would keep the old split in place). A rollback changes every function
at once: one update_alias per function on a thread pool, so N functions cost one round trip.
Event source mappings point at the alias, so queue work shifts with the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from backout.errors import UsageError
from backout.platforms.aws.config import Clients, Resources, aws_errors
from backout.platforms.base import LIVE_ALIAS, AliasWeights


class AwsRouting:
    def __init__(self, clients: Clients, resources: Callable[[], Resources]) -> None:
        self.clients = clients
        self.resources = resources

    def _name(self, fn: str) -> str:
        names = self.resources().functions
        if fn not in names:
            raise UsageError(f"no function named {fn!r} (known: {', '.join(names)})")
        return names[fn]

    def get_weights(self, fn: str) -> AliasWeights:
        name = self._name(fn)
        with aws_errors(f"alias {LIVE_ALIAS} of {fn} ({name})"):
            a = self.clients("lambda").get_alias(FunctionName=name, Name=LIVE_ALIAS)
        extra = (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        if not extra:
            return AliasWeights(fn, str(a["FunctionVersion"]))
        canary, w = next(iter(extra.items()))
        return AliasWeights(fn, str(a["FunctionVersion"]), str(canary), round(float(w) * 100.0, 6))

    def set_weights(self, fn: str, stable: str, canary: str | None = None, pct: float = 0.0) -> None:
        name = self._name(fn)
        if canary is not None and pct >= 100:
            stable, canary = canary, None
        weights = {str(canary): round(pct / 100.0, 6)} if canary is not None and canary != stable and pct > 0 else {}
        with aws_errors(f"alias {LIVE_ALIAS} of {fn} ({name}) → v{stable}"):
            self.clients("lambda").update_alias(FunctionName=name, Name=LIVE_ALIAS, FunctionVersion=str(stable),
                                                RoutingConfig={"AdditionalVersionWeights": weights})

    def set_weights_many(self, changes: Sequence[AliasWeights]) -> None:
        """Every update_alias at once; each is tried, then the first failure is raised."""
        with ThreadPoolExecutor(max_workers=max(1, len(changes)), thread_name_prefix="update-alias") as pool:
            futures = [pool.submit(self.set_weights, w.function, w.stable, w.canary, w.canary_weight)
                       for w in changes]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
