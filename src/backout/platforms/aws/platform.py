"""AwsPlatform: the Platform protocols on AWS, composed of one part per concern.

Nothing is created here: the functions (each with its `live` alias), the API, queues, mappings,
tables and buckets exist already (the SAM template, or any stack emitting the outputs in
`config.py`); backout publishes versions and moves aliases, throttles, mappings and data.
Resources are resolved on first use; `check()` resolves them at once (the supervisor calls it at
start, so a wrong name stops `backout up` with one line).

`Hosted` is not implemented (AWS runs by itself), `Capacity` only by `AwsPlatformWithCapacity`,
which `open_platform` returns when the manifest asks for provisioned concurrency.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.aws.config import Clients, Resources, aws_errors, resolve
from backout.platforms.aws.data import AwsData
from backout.platforms.aws.ingress import AwsIngress
from backout.platforms.aws.metrics import MetricReader
from backout.platforms.aws.processing import AwsProcessing
from backout.platforms.aws.queues import AwsQueues
from backout.platforms.aws.releases import AwsReleases
from backout.platforms.aws.routing import AwsRouting
from backout.platforms.aws.stack import AwsStack
from backout.platforms.base import (
    LIVE_ALIAS,
    MAX_QUERIES,
    AliasWeights,
    Backup,
    CheckResult,
    Datapoint,
    FunctionConfig,
    InvokeResult,
    MetricQuery,
    QueueAttributes,
    QueueMessage,
    RedriveTask,
    Release,
    StackStatus,
    StateTable,
    Throttle,
)


class AwsPlatform:
    """One environment of one service on AWS."""

    def __init__(self, manifest: Manifest, env: str, state_dir: Path | None = None) -> None:
        spec = manifest.environment(env)
        if spec.aws is None:
            raise UsageError(f"environment {env!r} has no [aws] table")
        self.manifest = manifest
        self.env = env
        self.spec = spec
        self.aws = spec.aws
        self.state_dir = (state_dir or manifest.state_dir(env)).resolve()
        self.evaluation_interval = self.aws.evaluation_interval
        self.clients = Clients(self.aws)
        self._resources: Resources | None = None
        self._lock = threading.Lock()
        self.releases_ = AwsReleases(manifest, env, self.clients, self.resources, self.state_dir / "build")
        self.routing = AwsRouting(self.clients, self.resources)
        self.ingress = AwsIngress(self.clients, self.resources, Throttle(spec.throttle_rate, spec.throttle_burst))
        self.processing = AwsProcessing(manifest, self.clients, self.resources)
        self.queue_ops = AwsQueues(manifest, self.clients, self.resources)
        self.data = AwsData(self.clients, self.resources, keep=spec.backups_keep)
        self.reader = MetricReader(manifest, env, self.clients, self.resources)
        self.stack = AwsStack(self.clients, self.aws.stack, self.aws.region)

    def resources(self) -> Resources:
        with self._lock:
            if self._resources is None:
                self._resources = resolve(self.manifest, self.env, self.aws, self.clients)
            return self._resources

    def check(self) -> None:
        """Resolve every name now and check the aliases and alarms exist: one UsageError otherwise."""
        if self.aws.alarms:
            self.reader.check_alarms(self.aws.alarms, f"environments.{self.env}.aws")
        for fn in self.functions():
            self.get_weights(fn)

    def state_table(self) -> StateTable | None:
        """The shared control-state table (`state_table`, or the stack's BackoutStateTable), checked to
        exist; None when neither names one (the control state then stays in the local state dir)."""
        res = self.resources()
        if not res.state_table:
            return None
        with aws_errors(f"environments.{self.env}.aws.state_table: DynamoDB table {res.state_table!r}"):
            table = self.clients.resource("dynamodb").Table(res.state_table)
            table.load()  # describe_table: a wrong name stops here, with one line
        return StateTable(res.state_table, table, dict(res.functions), self.aws.lease_renew, self.aws.lease_expiry)

    # --- releases ------------------------------------------------------------------------------
    def functions(self) -> list[str]:
        return self.releases_.functions()

    def publish(self, source: Path, environment: dict[str, str] | None = None, description: str = "",
                configuration: dict[str, FunctionConfig] | None = None) -> Release:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.releases_.publish(source, environment, description, configuration)

    def republish(self, release_id: int, environment: dict[str, str], description: str = "") -> Release:
        return self.releases_.republish(release_id, environment, description)

    def releases(self) -> list[Release]:
        return self.releases_.releases()

    # --- routing -------------------------------------------------------------------------------
    def get_weights(self, fn: str) -> AliasWeights:
        return self.routing.get_weights(fn)

    def set_weights(self, fn: str, stable: str, canary: str | None = None, pct: float = 0.0) -> None:
        self.routing.set_weights(fn, stable, canary, pct)

    def set_weights_many(self, changes: Sequence[AliasWeights]) -> None:
        self.routing.set_weights_many(changes)

    # --- invoke --------------------------------------------------------------------------------
    def invoke(self, fn: str, version: str | None, event: dict[str, Any]) -> InvokeResult:
        """invoke(Qualifier=version or live); a failed call reports the function's state (get_function)."""
        names = self.resources().functions
        if fn not in names:
            raise UsageError(f"no function named {fn!r} (known: {', '.join(names)})")
        lam = self.clients.invoker()
        qualifier = version or LIVE_ALIAS
        t0 = time.perf_counter()
        try:
            r = lam.invoke(FunctionName=names[fn], Qualifier=qualifier, Payload=json.dumps(event).encode())
        except lam.exceptions.TooManyRequestsException as e:
            return InvokeResult(fn, qualifier, "", {"errorType": "TooManyRequestsException", "errorMessage": str(e)},
                                "Throttled", (time.perf_counter() - t0) * 1000, throttled=True)
        except Exception as e:  # noqa: BLE001 - an unreachable or broken function is the check's result
            return InvokeResult(fn, qualifier, "", {"errorType": type(e).__name__,
                                                    "errorMessage": f"{e}; {self._state(names[fn], qualifier)}"},
                                "Unhandled", (time.perf_counter() - t0) * 1000)
        ms = (time.perf_counter() - t0) * 1000
        raw = r["Payload"].read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        executed = str(r.get("ExecutedVersion") or qualifier)  # moto leaves ExecutedVersion out
        return InvokeResult(fn, executed, r.get("ResponseMetadata", {}).get("RequestId", ""), payload,
                            r.get("FunctionError"), ms)

    def _state(self, name: str, qualifier: str) -> str:
        try:
            c = self.clients("lambda").get_function(FunctionName=name, Qualifier=qualifier)["Configuration"]
        except Exception as e:  # noqa: BLE001
            return f"get_function failed: {e}"
        return f"state {c.get('State')} {c.get('StateReason', '')}, last update {c.get('LastUpdateStatus')}".strip()

    # --- metrics -------------------------------------------------------------------------------
    def metrics(self, queries: Sequence[MetricQuery]) -> list[list[Datapoint]]:
        if len(queries) > MAX_QUERIES:
            raise UsageError(f"{len(queries)} metric queries in one call: GetMetricData takes at most {MAX_QUERIES}")
        return self.reader.read(queries)

    # --- ingress / processing --------------------------------------------------------------------
    def endpoint(self) -> str:
        return self.ingress.endpoint()

    def get_throttle(self) -> Throttle:
        return self.ingress.get_throttle()

    def set_throttle(self, rate: float, burst: int) -> None:
        self.ingress.set_throttle(rate, burst)

    def get_processing(self) -> bool:
        return self.processing.get_processing()

    def set_processing(self, enabled: bool) -> None:
        self.processing.set_processing(enabled)

    # --- queues --------------------------------------------------------------------------------
    def queues(self) -> list[str]:
        return self.queue_ops.queues()

    def queue_attributes(self, queue: str) -> QueueAttributes:
        return self.queue_ops.queue_attributes(queue)

    def send_message(self, queue: str, body: str, attributes: dict[str, str] | None = None) -> str:
        return self.queue_ops.send_message(queue, body, attributes)

    def peek_messages(self, queue: str, limit: int = 10) -> list[QueueMessage]:
        return self.queue_ops.peek_messages(queue, limit)

    def purge_queue(self, queue: str) -> int:
        return self.queue_ops.purge_queue(queue)

    def delete_tagged(self, queue: str, attribute: str, value: str) -> int:
        return self.queue_ops.delete_tagged(queue, attribute, value)

    def start_redrive(self, dlq: str) -> RedriveTask:
        return self.queue_ops.start_redrive(dlq)

    def redrive_status(self, dlq: str) -> list[RedriveTask]:
        return self.queue_ops.redrive_status(dlq)

    # --- data ----------------------------------------------------------------------------------
    def backup(self, label: str = "") -> Backup:
        return self.data.backup(label)

    def backups(self) -> list[Backup]:
        return self.data.backups()

    def restore_to_side(self, backup_id: str) -> str:
        return self.data.restore_to_side(backup_id)

    def restore(self, backup_id: str) -> None:
        self.data.restore(backup_id)

    def describe(self) -> list[CheckResult]:
        return self.data.describe()

    # --- the stack (optional Stacks protocol) ---------------------------------------------------
    def stack_status(self) -> StackStatus:
        return self.stack.stack_status()

    def cancel_stack_update(self) -> StackStatus:
        return self.stack.cancel_stack_update()


class AwsPlatformWithCapacity(AwsPlatform):
    """Pre-warming as provisioned concurrency, for environments with `aws.provisioned_concurrency`:
    it takes minutes to be READY and is billed while it exists, so only a manifest that asks gets it."""

    ready_timeout = 900.0

    def prewarm(self, fn: str, version: str, count: int = 1) -> None:
        name = self.resources().functions[fn]
        lam = self.clients("lambda")
        with aws_errors(f"provisioned concurrency of {fn} v{version}"):
            lam.put_provisioned_concurrency_config(FunctionName=name, Qualifier=str(version),
                                                   ProvisionedConcurrentExecutions=max(1, count))
        deadline = time.monotonic() + self.ready_timeout
        while not self.is_warm(fn, version):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fn} v{version}: provisioned concurrency not READY "
                                   f"after {self.ready_timeout:.0f} s")
            time.sleep(5.0)

    def is_warm(self, fn: str, version: str) -> bool:
        name = self.resources().functions[fn]
        lam = self.clients("lambda")
        try:
            c = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier=str(version))
        except lam.exceptions.ProvisionedConcurrencyConfigNotFoundException:
            return False
        if c.get("Status") == "FAILED":
            raise RuntimeError(f"{fn} v{version}: provisioned concurrency FAILED: {c.get('StatusReason')}")
        return c.get("Status") == "READY"

    def retire(self, fn: str, version: str) -> None:
        name = self.resources().functions[fn]
        lam = self.clients("lambda")
        try:
            lam.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=str(version))
        except lam.exceptions.ProvisionedConcurrencyConfigNotFoundException:
            pass
