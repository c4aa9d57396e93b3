"""Strategy name → the steps of a deployment (canary weight, hold time).

The built-in names are SAM's `DeploymentPreference.Type` values, with CodeDeploy's
meaning: `Canary10Percent5Minutes` is 10 % for 5 minutes, then 100 %;
`Linear10PercentEvery1Minute` is 10, 20, … 90 % each held one minute, then 100 %.
The final 100 % step holds 0 s, as in CodeDeploy: after it come the post-traffic hooks.
Custom strategies come from the manifest (`[strategies.NAME] steps = [...]`) and
shadow a built-in of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backout.errors import UsageError
from backout.manifest import Manifest, StrategySpec


@dataclass(frozen=True)
class Step:
    """Send `weight` percent of invocations to the new version, then wait `hold` seconds."""

    weight: float
    hold: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"weight": self.weight, "hold": self.hold}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Step:
        return Step(float(d["weight"]), float(d.get("hold", 0.0)))


@dataclass(frozen=True)
class Strategy:
    name: str
    steps: tuple[Step, ...]

    @property
    def total_seconds(self) -> float:
        """Time spent holding across all steps: the nominal length of a deployment."""
        return sum(s.hold for s in self.steps)

    def remaining_seconds(self, step_index: int, elapsed_in_step: float = 0.0) -> float:
        """Hold time left from inside step `step_index`, `elapsed_in_step` seconds into it."""
        if step_index >= len(self.steps):
            return 0.0
        left = max(0.0, self.steps[step_index].hold - elapsed_in_step)
        return left + sum(s.hold for s in self.steps[step_index + 1 :])

    def as_json(self) -> list[dict[str, float]]:
        return [s.as_dict() for s in self.steps]

    @staticmethod
    def from_json(name: str, steps: Iterable[Mapping[str, Any] | Step]) -> Strategy:
        return Strategy(name, tuple(s if isinstance(s, Step) else Step.from_dict(s) for s in steps))


def _canary(minutes: int) -> tuple[Step, ...]:
    return (Step(10.0, minutes * 60.0), Step(100.0, 0.0))


def _linear(minutes: int) -> tuple[Step, ...]:
    return tuple(Step(float(w), minutes * 60.0) for w in range(10, 100, 10)) + (Step(100.0, 0.0),)


BUILTIN: dict[str, tuple[Step, ...]] = {
    "Canary10Percent5Minutes": _canary(5),
    "Canary10Percent10Minutes": _canary(10),
    "Canary10Percent15Minutes": _canary(15),
    "Canary10Percent30Minutes": _canary(30),
    "Linear10PercentEvery1Minute": _linear(1),
    "Linear10PercentEvery2Minutes": _linear(2),
    "Linear10PercentEvery3Minutes": _linear(3),
    "Linear10PercentEvery10Minutes": _linear(10),
    "AllAtOnce": (Step(100.0, 0.0),),
}


def known_names(manifest: Manifest | None = None) -> list[str]:
    """Built-in names in SAM's order, then the manifest's custom ones."""
    custom = sorted(n for n in (manifest.strategies if manifest else {}) if n not in BUILTIN)
    return list(BUILTIN) + custom


def _custom(name: str, spec: StrategySpec) -> Strategy:
    steps = tuple(Step(float(s.weight), float(s.hold)) for s in spec.steps)
    weights = [s.weight for s in steps]
    if any(b < a for a, b in zip(weights, weights[1:], strict=False)):
        raise UsageError(f"strategy {name!r}: step weights must not decrease ({weights})")
    if weights[-1] != 100:
        raise UsageError(f"strategy {name!r}: the last step must have weight 100, not {weights[-1]:g}")
    return Strategy(name, steps)


def resolve(name: str, manifest: Manifest | None = None) -> Strategy:
    """The strategy called `name`: the manifest's custom one if defined, else the built-in."""
    if manifest is not None and name in manifest.strategies:
        return _custom(name, manifest.strategies[name])
    if name in BUILTIN:
        return Strategy(name, BUILTIN[name])
    known = known_names(manifest)
    import difflib

    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    did_you_mean = f" (did you mean {by_lower[close[0]]}?)" if close else ""
    raise UsageError(f"unknown strategy {name!r}{did_you_mean}; known: {', '.join(known)}")


def progress_deadline(strategy: Strategy, margin: float = 120.0) -> float:
    """Seconds after which a deployment that has not finished is rolled back: its holds plus `margin`
    (time for hooks, publishing and warm-up)."""
    return strategy.total_seconds + margin
