"""Storage for jobs and their files, chosen by `STORAGE_MODE` (`local` or `aws`)."""

from __future__ import annotations

import threading

from sda.config import Settings
from sda.storage.base import Check, Storage, check_file_name, job_prefix

__all__ = ["Check", "Storage", "check_file_name", "get_storage", "job_prefix"]

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
