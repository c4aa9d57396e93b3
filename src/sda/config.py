"""Settings read from the environment on every invocation.

The platform (local or aws) configures a function only through environment
variables, so this is the one place that knows their names and defaults.
Reading them per invocation keeps tests simple (monkeypatch.setenv) and costs
microseconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from sda import __version__

DEFAULT_MAX_UPLOAD_MB = 100.0
COMPANY_ID = "7central"


class ConfigError(Exception):
    """A required setting is missing or invalid (a deployment fault, not a user error)."""


@dataclass(frozen=True)
class Settings:
    storage_mode: str  # "local" | "aws"
    data_dir: Path | None  # local: jobs.db and files/ live here
    processing_queue_url: str | None  # the SQS queue URL (AWS, or the local platform's SQS endpoint)
    jobs_table: str  # aws: DynamoDB table
    files_bucket: str  # aws: S3 bucket
    max_upload_bytes: int
    function_version: str  # AWS_LAMBDA_FUNCTION_VERSION, recorded as processed_by.version
    function_name: str  # the service's name for this function, recorded as processed_by.function
    environment: str
    db_busy_timeout_s: float
    service_version: str = __version__

    @property
    def jobs_db(self) -> Path:
        return self.require_data_dir() / "jobs.db"

    @property
    def files_dir(self) -> Path:
        return self.require_data_dir() / "files"

    def require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise ConfigError("BACKOUT_DATA_DIR is not set (STORAGE_MODE=local needs a data directory)")
        return self.data_dir


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive number")
    return value


def load() -> Settings:
    """The current settings; raises ConfigError for values that cannot work."""
    env = os.environ
    mode = env.get("STORAGE_MODE", "local").strip().lower() or "local"
    if mode not in ("local", "aws"):
        raise ConfigError(f"STORAGE_MODE={mode!r} is not one of: local, aws")
    data_dir = env.get("BACKOUT_DATA_DIR", "").strip()
    backout_env = env.get("BACKOUT_ENV", env.get("ENVIRONMENT", "dev")).strip() or "dev"
    suffix = f"-{backout_env}" if backout_env not in ("", "dev") else ""
    return Settings(
        storage_mode=mode,
        data_dir=Path(data_dir) if data_dir else None,
        processing_queue_url=env.get("PROCESSING_QUEUE_URL", "").strip() or None,
        jobs_table=env.get("SDA_JOBS_TABLE", f"security-assistant-jobs{suffix}"),
        files_bucket=env.get("SDA_FILES_BUCKET", f"security-assistant-files{suffix}"),
        max_upload_bytes=int(_float("SDA_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024),
        function_version=env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        # BACKOUT_FUNCTION: the manifest's name, which backout sets on AWS (where the Lambda name is
        # the stack's) and which its repair request keys the bad versions by
        function_name=env.get("BACKOUT_FUNCTION")
        or env.get("AWS_LAMBDA_FUNCTION_NAME", env.get("POWERTOOLS_SERVICE_NAME", "sda")),
        environment=backout_env,
        db_busy_timeout_s=_float("SDA_DB_BUSY_TIMEOUT_S", 30.0),
    )
