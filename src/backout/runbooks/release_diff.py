"""What changed between two releases (`backout releases --diff A B`): code files, each function's
configuration, the release's extra environment.

A release holds its functions' configuration as a Lambda version does, so a configuration-only change
is a release of its own, and this is where an operator sees it before (or after) rolling back to it.
Code files are compared by content where the platform lists them (`ReleaseFiles`: local); elsewhere
(aws) only the digests are compared, and the diff says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from backout.errors import UsageError
from backout.platforms.base import FunctionConfig, Platform, Release, ReleaseFiles
from backout.redact import MASK, redact, secret_name

Change = tuple[Any, Any]  # (in A, in B); None where the key is absent


@dataclass(frozen=True)
class ReleaseDiff:
    a: int
    b: int
    files_listed: bool  # False: the platform does not list a release's files (digests only)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    digests: Change = (None, None)
    versions: dict[str, Change] = field(default_factory=dict)  # function → its version in A and B
    configuration: dict[str, dict[str, Change]] = field(default_factory=dict)  # fn → key → change
    environment: dict[str, Change] = field(default_factory=dict)  # the releases' extra variables

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.configuration or self.environment
                    or (not self.files_listed and self.digests[0] != self.digests[1]))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "same": self.same}


def diff_releases(platform: Platform, a: int, b: int) -> ReleaseDiff:
    """Compare release `a` with release `b` (either order: B is "what it becomes")."""
    releases = {r.id: r for r in platform.releases()}
    for rid in (a, b):
        if rid not in releases:
            known = ", ".join(str(r) for r in sorted(releases)) or "none"
            raise UsageError(f"unknown release {rid} (published: {known})")
    ra, rb = releases[a], releases[b]
    out: dict[str, Any] = {"a": a, "b": b, "digests": (ra.digest, rb.digest)}
    if isinstance(platform, ReleaseFiles):
        fa, fb = platform.release_files(a), platform.release_files(b)
        out |= {"files_listed": True, "added": sorted(set(fb) - set(fa)), "removed": sorted(set(fa) - set(fb)),
                "changed": sorted(p for p in set(fa) & set(fb) if fa[p] != fb[p])}
    else:
        out["files_listed"] = False
    out["versions"] = {fn: (ra.versions.get(fn), rb.versions.get(fn))
                       for fn in sorted(set(ra.versions) | set(rb.versions))
                       if ra.versions.get(fn) != rb.versions.get(fn)}
    out["configuration"] = config_changes(ra, rb)
    out["environment"] = _changes(ra.environment, rb.environment)
    return ReleaseDiff(**out)


def config_changes(a: Release, b: Release) -> dict[str, dict[str, Change]]:
    """Function → configuration key → (A, B), only what differs; variables as `environment.NAME`."""
    out: dict[str, dict[str, Change]] = {}
    for fn in sorted(set(a.configuration) | set(b.configuration)):
        changes = _changes(_flat(a.configuration.get(fn)), _flat(b.configuration.get(fn)))
        if changes:
            out[fn] = changes
    return out


def _flat(c: FunctionConfig | None) -> dict[str, Any]:
    if c is None:
        return {}
    return {"handler": c.handler, "timeout": c.timeout, "memory": c.memory,
            **{f"environment.{k}": v for k, v in c.environment.items()}}


def _changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Change]:
    """What differs; a secret-named variable shows that it changed (or appeared, or went), never its value."""
    return {k: (_shown(k, a.get(k)), _shown(k, b.get(k))) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _shown(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return MASK if value and secret_name(key.removeprefix("environment.")) else redact(value)
    return value
