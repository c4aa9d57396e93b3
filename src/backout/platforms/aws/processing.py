"""Queue processing on/off: the event source mappings of the service's queue consumers.

The mappings are found per consumed queue (`list_event_source_mappings(EventSourceArn=…)`) and kept
when they feed one of the service's functions, whatever qualifier they name. `set_processing`
updates every mapping with `Enabled=…`, then waits for each one's `State` to settle (Enabling →
Enabled takes seconds on AWS): paused messages wait in their queue, none is dead-lettered for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backout.manifest import Manifest
from backout.platforms.aws.config import Clients, Resources, aws_errors, function_name

SETTLE_TIMEOUT = 300.0


class AwsProcessing:
    def __init__(self, manifest: Manifest, clients: Clients, resources: Callable[[], Resources],
                 settle_timeout: float = SETTLE_TIMEOUT) -> None:
        self.manifest = manifest
        self.clients = clients
        self.resources = resources
        self.settle_timeout = settle_timeout

    def mappings(self) -> list[dict[str, Any]]:
        """Every event source mapping from a manifest queue to the function that consumes it."""
        r = self.resources()
        lam, sqs = self.clients("lambda"), self.clients("sqs")
        out: list[dict[str, Any]] = []
        for fn, spec in self.manifest.functions.items():
            if fn not in r.functions:
                continue
            want = function_name(r.functions[fn])
            for ev in spec.queue_events:
                url = r.queues[ev.queue]
                with aws_errors(f"queue {ev.queue} ({url})"):
                    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                    pages = lam.get_paginator("list_event_source_mappings").paginate(EventSourceArn=arn)
                    for page in pages:
                        out += [m for m in page["EventSourceMappings"]
                                if m["FunctionArn"].split(":")[6] == want]
        return out

    def get_processing(self) -> bool:
        return all(m["State"] in ("Enabled", "Enabling") for m in self.mappings())

    def set_processing(self, enabled: bool) -> None:
        lam = self.clients("lambda")
        ids = [m["UUID"] for m in self.mappings()]
        for uuid in ids:
            with aws_errors(f"event source mapping {uuid}"):
                lam.update_event_source_mapping(UUID=uuid, Enabled=enabled)
        want = "Enabled" if enabled else "Disabled"
        deadline = time.monotonic() + self.settle_timeout
        pending = list(ids)
        while pending:
            pending = [u for u in pending if lam.get_event_source_mapping(UUID=u)["State"] != want]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"event source mapping(s) {', '.join(pending)} not {want} after "
                                   f"{self.settle_timeout:.0f} s")
            time.sleep(0.25)
