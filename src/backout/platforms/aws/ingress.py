"""The API stage's throttle: `get_stage` / `update_stage`.

The procedure writes `/throttle/rateLimit`, which API Gateway rejects; the stage-wide method
setting is `/*/*/throttling/rateLimit` and `/*/*/throttling/burstLimit` (API Gateway's
UpdateStage patch paths), and rate 0 answers every request with 429.
"""

from __future__ import annotations

from collections.abc import Callable

from backout.errors import UsageError
from backout.platforms.aws.config import Clients, Resources, aws_errors
from backout.platforms.base import Throttle

RATE_PATH = "/*/*/throttling/rateLimit"
BURST_PATH = "/*/*/throttling/burstLimit"


class AwsIngress:
    def __init__(self, clients: Clients, resources: Callable[[], Resources], default: Throttle) -> None:
        self.clients = clients
        self.resources = resources
        self.default = default  # what a stage without method settings allows (the account's limits)

    def endpoint(self) -> str:
        return self.resources().api_url

    def _stage(self) -> tuple[str, str]:
        r = self.resources()
        if r.api_id is None or r.stage is None:
            raise UsageError("this environment has no API (aws.api_id and aws.stage, or the stack's BackoutApiId)")
        return r.api_id, r.stage

    def get_throttle(self) -> Throttle:
        api, stage = self._stage()
        with aws_errors(f"API {api} stage {stage}"):
            s = self.clients("apigateway").get_stage(restApiId=api, stageName=stage)
        m = (s.get("methodSettings") or {}).get("*/*") or {}
        if "throttlingRateLimit" not in m:
            return self.default
        return Throttle(float(m["throttlingRateLimit"]), int(m.get("throttlingBurstLimit", self.default.burst)))

    def set_throttle(self, rate: float, burst: int) -> None:
        if rate < 0 or burst < 0:
            raise UsageError("throttle rate and burst must be ≥ 0")
        api, stage = self._stage()
        ops = [{"op": "replace", "path": RATE_PATH, "value": f"{float(rate):g}"},
               {"op": "replace", "path": BURST_PATH, "value": str(int(burst))}]
        with aws_errors(f"API {api} stage {stage}"):
            self.clients("apigateway").update_stage(restApiId=api, stageName=stage, patchOperations=ops)
