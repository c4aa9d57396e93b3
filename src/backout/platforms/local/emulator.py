"""The opt-in DynamoDB/S3 emulator: moto's server in the supervisor, its state kept in a journal.

For a service written against AWS alone (tables and buckets through boto3) that should run on the
local platform unchanged. moto keeps its state in memory; its recorder appends every request it
receives to a file *before* handling it. That file is the emulator's journal: at start the
supervisor replays it into a fresh moto, so the state survives a restart and a `kill -9` of the
supervisor (an acknowledged write was appended to the file before it was answered). The journal
lives in the data directory, so `backout backup` copies it with the service's other files and
`backup restore` puts it back, after which the emulator is reset and the restored journal
replayed.

What it does not promise: the journal is written without fsync (an OS crash or power loss can
lose its last writes), requests are replayed as they were recorded (a request that failed then
fails again; time-dependent values such as TTL expiry or generated ids may differ), and replay
takes time in proportion to the writes ever made (reads are dropped from the journal at each
start). It is a development and drill aid, not a database: DynamoDB's or S3's own durability,
consistency and limits are not emulated beyond what moto does.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx

from backout.errors import UsageError

log = logging.getLogger(__name__)

SERVICES = ("dynamodb", "s3")
# DynamoDB actions that change nothing: not worth replaying
_DYNAMODB_READS = (
    "GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems", "DescribeTable", "ListTables",
    "DescribeTimeToLive", "ListTagsOfResource", "DescribeContinuousBackups", "DescribeEndpoints",
)


class Emulator:
    """moto's server on 127.0.0.1 (a free port), journaled to `journal`."""

    def __init__(self, journal: Path, region: str, tables: dict[str, str], buckets: list[str]) -> None:
        self.journal = Path(journal)
        self.region = region
        self.tables = dict(tables)
        self.buckets = list(buckets)
        self.url = ""
        self._server: Any = None

    def start(self) -> str:
        """Start the server, replay the journal, record from now on, create missing tables and buckets."""
        try:
            from moto.moto_api import recorder
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise UsageError("backout.toml's [emulator] needs moto's server: pip install 'backout[emulator]'") from None
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        recorder._location = str(self.journal)  # noqa: SLF001 - moto reads its path only from the env at import
        self._replay()
        recorder.start_recording()
        self._ensure_resources()
        return self.url

    def reload(self) -> None:
        """After `backup restore` replaced the journal: reset moto and replay the restored journal."""
        from moto.moto_api import recorder

        recorder.stop_recording()
        try:
            httpx.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()
            self._replay()
        finally:
            recorder.start_recording()
        self._ensure_resources()

    def stop(self) -> None:
        if self._server is not None:
            from moto.moto_api import recorder

            recorder.stop_recording()
            self._server.stop()
            self._server = None

    def _replay(self) -> None:
        """Compact the journal (reads and a torn last line dropped), then replay it into moto."""
        from moto.moto_api import recorder

        if not self.journal.exists():
            self.journal.touch()
            return
        kept = [line for line in self.journal.read_text(errors="replace").splitlines() if _is_write(line)]
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.journal)
        if kept:
            recorder.replay_recording(target_host=self.url)
            log.warning("emulator: replayed %d journaled writes", len(kept))

    def _ensure_resources(self) -> None:
        """The manifest's tables (string partition key, on demand) and buckets, created when missing."""
        import boto3

        session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                         region_name=self.region)
        if self.tables:
            ddb = session.client("dynamodb", endpoint_url=self.url)
            existing = set(ddb.list_tables()["TableNames"])
            for name, key in self.tables.items():
                if name not in existing:
                    ddb.create_table(
                        TableName=name,
                        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST",
                    )
        if self.buckets:
            s3 = session.client("s3", endpoint_url=self.url)
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            for name in self.buckets:
                if name not in existing:
                    s3.create_bucket(Bucket=name)


def _is_write(line: str) -> bool:
    """A complete journal entry that may change state (a torn or unreadable line is dropped)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    if not isinstance(entry, dict) or "url" not in entry:
        return False
    headers = {str(k).lower(): str(v) for k, v in (entry.get("headers") or {}).items()}
    target = headers.get("x-amz-target", "")
    if target.startswith("DynamoDB_"):
        return target.split(".", 1)[-1] not in _DYNAMODB_READS
    return str(entry.get("method", "")).upper() not in ("GET", "HEAD", "OPTIONS")
