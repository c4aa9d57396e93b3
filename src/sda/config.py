"""Settings read from the environment on every invocation.

The platform (local or aws) configures a function only through environment
variables, so this is the one place that knows their names and defaults.
pydantic-settings does the reading, typing and validation; `load()` turns a
validation failure into one ConfigError that names each bad variable and its
value. Reading per invocation keeps tests simple (monkeypatch.setenv); validated settings are
cached by the variables' values, so a warm function pays microseconds.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sda import __version__

DEFAULT_MAX_UPLOAD_MB = 100.0
COMPANY_ID = "7central"


class ConfigError(Exception):
    """A required setting is missing or invalid (a deployment fault, not a user error)."""


def _suffix(data: dict[str, Any]) -> str:
    """Resource-name suffix of an environment: none for `dev`, `-<env>` otherwise."""
    env = data.get("environment", "dev")
    return f"-{env}" if env not in ("", "dev") else ""


class Settings(BaseSettings):
    """One function's configuration. Every field names its variable explicitly (case-sensitive,
    as os.environ is); a field without one would be read from a variable of its own name."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

    storage_mode: Literal["local", "aws"] = Field("local", validation_alias="STORAGE_MODE")
    data_dir: Path | None = Field(None, validation_alias="BACKOUT_DATA_DIR")  # local: jobs.db and files/
    platform_db: Path | None = Field(None, validation_alias="BACKOUT_PLATFORM_DB")  # local: the queues' db
    processing_queue: str = Field("processing", validation_alias="PROCESSING_QUEUE")  # queue name (local)
    # aws: SQS queue URL; when set, messages go to SQS
    processing_queue_url: str | None = Field(None, validation_alias="PROCESSING_QUEUE_URL")
    # declared before the resource names: their defaults are derived from it
    environment: str = Field("dev", validation_alias=AliasChoices("BACKOUT_ENV", "ENVIRONMENT"))
    jobs_table: str = Field(  # aws: DynamoDB table
        default_factory=lambda d: f"security-assistant-jobs{_suffix(d)}", validation_alias="SDA_JOBS_TABLE"
    )
    files_bucket: str = Field(  # aws: S3 bucket
        default_factory=lambda d: f"security-assistant-files{_suffix(d)}", validation_alias="SDA_FILES_BUCKET"
    )
    max_upload_mb: float = Field(DEFAULT_MAX_UPLOAD_MB, gt=0, allow_inf_nan=False,
                                 validation_alias="SDA_MAX_UPLOAD_MB")
    # recorded as processed_by.version
    function_version: str = Field("$LATEST", validation_alias="AWS_LAMBDA_FUNCTION_VERSION")
    function_name: str = Field(
        "sda", validation_alias=AliasChoices("AWS_LAMBDA_FUNCTION_NAME", "POWERTOOLS_SERVICE_NAME")
    )
    db_busy_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False, validation_alias="SDA_DB_BUSY_TIMEOUT_S")

    @field_validator("storage_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return (value.strip().lower() or "local") if isinstance(value, str) else value

    @field_validator("data_dir", "platform_db", "processing_queue_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("processing_queue", mode="before")
    @classmethod
    def _queue(cls, value: Any) -> Any:
        return (value.strip() or "processing") if isinstance(value, str) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        return (value.strip() or "dev") if isinstance(value, str) else value

    @field_validator("max_upload_mb", "db_busy_timeout_s", mode="before")
    @classmethod
    def _blank_number_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[str(info.field_name)].default
        return value.strip() if isinstance(value, str) else value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def service_version(self) -> str:
        """The code's version, never the environment's (a property, so no variable can set it)."""
        return __version__

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


def _describe(exc: ValidationError) -> str:
    """`NAME='value': why` for each bad variable (pydantic's locations are the variable names)."""
    parts = []
    for err in exc.errors(include_url=False):
        if err["type"] == "default_factory_not_called":  # a derived default, not a bad value
            continue
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{name}={err['input']!r}: {err['msg']}")
    return "; ".join(parts)


def _variables() -> tuple[str, ...]:
    """Every variable Settings reads (the cache key of `load`)."""
    names: list[str] = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.extend(str(choice) for choice in alias.choices)
        else:
            names.append(str(alias))
    return tuple(names)


_VARIABLES = _variables()


@functools.lru_cache(maxsize=16)
def _settings(values: tuple[str | None, ...]) -> Settings:
    """Settings for one set of variable values: validating costs ~0.5 ms, the cache lookup ~1 µs."""
    return Settings()


def load() -> Settings:
    """The current settings; raises ConfigError for values that cannot work."""
    try:
        return _settings(tuple(os.environ.get(name) for name in _VARIABLES))
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from exc
