"""Test support: the environment of a local SDA, as the local platform sets it — a data directory and
the manifest's queues (`processing` → `processing-dlq` after 3 receives) behind the platform's
SQS-compatible endpoint, which the SDA reaches with plain boto3.

One endpoint serves the whole test process (started on first use, on a real 127.0.0.1 socket); each
call of `prepare_local` points it at a fresh queue database, so tests stay isolated without paying
for a server start each."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backout.platforms.local.queues import QueueStore
from backout.platforms.local.sqs import REGION, SqsEndpoint
from served import serve

QUEUES = ("processing", "processing-dlq")
_lock = threading.Lock()
_endpoint: SqsEndpoint | None = None
_keep = contextlib.ExitStack()


def _served(store: QueueStore) -> SqsEndpoint:
    global _endpoint
    with _lock:
        if _endpoint is None:
            _endpoint = SqsEndpoint(store, QUEUES)
            _endpoint.base_url = _keep.enter_context(serve(_endpoint.app))
        else:
            old, _endpoint.store = _endpoint.store, store
            if old is not store:
                old.close()
        return _endpoint


def prepare_local(base: Path, *, version: str = "1", visibility_timeout: float = 130.0) -> dict[str, str]:
    """Environment variables of a local SDA under `base` (its data dir and queue database)."""
    base.mkdir(parents=True, exist_ok=True)
    platform_db = base / "platform.db"
    store = QueueStore(platform_db)
    store.ensure_queue("processing-dlq", visibility_timeout=60.0, retention=14 * 86400.0)
    store.ensure_queue(
        "processing", visibility_timeout=visibility_timeout, max_receive_count=3, dead_letter_queue="processing-dlq"
    )
    endpoint = _served(store)
    return {
        "STORAGE_MODE": "local",
        "BACKOUT_DATA_DIR": str(base / "data"),
        "BACKOUT_PLATFORM_DB": str(platform_db),  # for the tests' own look into the queues
        "PROCESSING_QUEUE_URL": endpoint.queue_url("processing"),
        "AWS_ENDPOINT_URL_SQS": endpoint.base_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "BACKOUT_ENV": "test",
    }


def local_sda(base: Path, monkeypatch: Any, function_name: str | None = None) -> Iterator[dict[str, str]]:
    """A fixture's body: the environment of `prepare_local` set through pytest's monkeypatch (with the
    function's name when the code under test reads it), none of the caller's AWS profile, session or
    fault settings, and the SDA's cached storage and queue clients dropped before and after."""
    from sda import queue, storage

    values = prepare_local(base, version="7")
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    if function_name is not None:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function_name)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SDA_FAULTS", "SDA_MAX_UPLOAD_MB"):
        monkeypatch.delenv(key, raising=False)
    storage.reset_cache()
    queue.reset_cache()
    yield values
    storage.reset_cache()
    queue.reset_cache()


def call_api(event: dict[str, Any]) -> dict[str, Any]:
    """The SDA's API handler, invoked as Lambda would."""
    from sda import api
    from sda.events import LambdaContext

    return api.handler(event, LambdaContext(function_name="sda-api"))


def sda_store() -> Any:
    """The storage the SDA's settings name."""
    from sda import config, storage

    return storage.get_storage(config.load())
