"""Where a service runs. `open_platform` is the one place that chooses a platform for an
environment (`platform = "local" | "aws"` in the manifest); everything above `platforms/` gets a
`Platform` from here and never imports a platform's package itself."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: a worker process imports this package and must stay small
    from backout.manifest import Manifest
    from backout.platforms.base import Platform


def open_platform(manifest: Manifest, env: str, state_dir: Path | None = None) -> Platform:
    """The platform of `env`, ready to use (a hosted one still needs its process: see `Hosted`)."""
    from backout.errors import UsageError

    kind = manifest.environment(env).platform
    if kind == "local":
        from backout.platforms.local.platform import LocalPlatform

        return LocalPlatform(manifest, env, state_dir)
    if kind == "aws":
        from backout.platforms.aws.platform import AwsPlatform, AwsPlatformWithCapacity

        spec = manifest.environment(env).aws
        if spec is not None and spec.provisioned_concurrency:
            return AwsPlatformWithCapacity(manifest, env, state_dir)
        return AwsPlatform(manifest, env, state_dir)
    raise UsageError(
        f"environment {env!r} asks for platform {kind!r}, which this version of backout cannot drive yet; "
        f"use platform = \"local\""
    )
