"""Storage for jobs and their files, chosen by `STORAGE_MODE` (`local` or `aws`), and the side
copies of a backup that the data-repair function reads."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from sda.config import ConfigError, Settings
from sda.storage.base import Check, SideCopy, Storage, check_file_name, job_prefix

__all__ = ["Check", "SideCopy", "Storage", "check_file_name", "get_storage", "job_prefix", "open_side_copy"]

_cache: dict[tuple[str, ...], Storage] = {}
_lock = threading.Lock()


def get_storage(settings: Settings) -> Storage:
    """One instance per configuration and process (a warm function reuses it across invocations)."""
    if settings.storage_mode == "aws":
        key: tuple[str, ...] = ("aws", settings.jobs_table, settings.files_bucket)
    else:
        key = ("local", str(settings.require_data_dir()), str(settings.db_busy_timeout_s))
    with _lock:
        storage = _cache.get(key)
        if storage is None:
            if settings.storage_mode == "aws":
                from sda.storage.aws import AwsStorage

                storage = AwsStorage(settings.jobs_table, settings.files_bucket)
            else:
                from sda.storage.local import LocalStorage

                storage = LocalStorage(settings.require_data_dir(), settings.db_busy_timeout_s)
            _cache[key] = storage
    return storage


def reset_cache() -> None:
    """Forget cached instances (tests switch settings between cases)."""
    with _lock:
        _cache.clear()


def open_side_copy(settings: Settings, location: str | dict[str, Any]) -> SideCopy:
    """The side copy at `location`, as the platform's `restore_to_side` names it.

    local: the snapshot's directory. aws: a JSON object `{"tables": {name: side table},
    "live_tables": {name: live table}, "buckets": {name: bucket}, "as_of": epoch seconds}`; the side
    table read is the one restored from this function's own jobs table (`SDA_JOBS_TABLE`)."""
    if settings.storage_mode != "aws":
        if not isinstance(location, str) or not location:
            raise ValueError(f"a local side copy is a snapshot directory, not {location!r}")
        from sda.storage.local import LocalSideCopy

        return LocalSideCopy(Path(location))
    try:
        where = json.loads(location) if isinstance(location, str) else dict(location)
        live, sides, as_of = dict(where["live_tables"]), dict(where["tables"]), float(where["as_of"])
        buckets = set(dict(where.get("buckets") or {}).values())
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"an AWS side copy is a JSON object with tables, live_tables and as_of, not {location!r}") \
            from exc
    name = next((n for n, table in live.items() if table == settings.jobs_table and n in sides), None)
    if name is None:
        raise ConfigError(f"the side copy restores {sorted(live.values())}, not this function's jobs table "
                          f"{settings.jobs_table!r}")
    if settings.files_bucket not in buckets:
        raise ConfigError(f"the side copy names buckets {sorted(buckets)}, not this function's files bucket "
                          f"{settings.files_bucket!r}")
    from sda.storage.aws import AwsSideCopy

    return AwsSideCopy(sides[name], settings.files_bucket, as_of)
