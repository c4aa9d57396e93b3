"""backout's handler wrapper: fast per-version metrics from inside a Lambda function.

Decorate every handler of a backout service:

    from backout_lambda import instrument

    @instrument
    def handler(event, context): ...

Each invocation prints one CloudWatch Embedded Metric Format line (namespace `Backout`, 1-second
resolution) keyed by function and version; backout reads those metrics to judge a canary in
seconds on AWS. Standard library only, and it never imports `backout`, so it can be copied into a
function's package alone. `wrapper.py` has the metrics, their dimensions and the environment
variables it reads; `docs/aws-signals.md` the design behind them.
"""

from backout_lambda.emf import metric_data
from backout_lambda.wrapper import instrument, invocation_line

__all__ = ["instrument", "invocation_line", "metric_data"]
