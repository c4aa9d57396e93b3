"""`backout runbook`: the procedure's quick reference and emergency contacts for one environment.

rollback-procedures.md ends with the people to call and a quick reference (stack names, region, the
monitoring link). backout's equivalent names the service, the environment and where it runs, what
rolls a deployment back there automatically (this environment's thresholds), the command for each
step of the procedure with `--env` filled in, the contacts, and where notifications go (scheme only:
a target URL can hold a secret). It reads the manifest alone, so it works when the supervisor is the
thing that is down.
"""

from __future__ import annotations

from typing import Any

from backout.manifest import Manifest


def _triggers(m: Manifest, env: str) -> list[str]:
    """What rolls a deployment back automatically in `env`, in this environment's numbers."""
    spec = m.environment(env)
    out = [f"error rate of a new version > {spec.error_rate_threshold:g} % over {spec.alarm_window:g} s "
           f"(after {spec.min_invocations} invocations)"]
    if any(f.http_events for f in m.functions.values()):
        out.append(f"API 5xx served by a new version > {spec.api_5xx_threshold} over {spec.api_5xx_period:g} s")
    out += [f"any message reaching the dead-letter queue {q}"
            for q in sorted({q.dead_letter_queue for q in m.queues.values() if q.dead_letter_queue})]
    out += [f"p99 duration of {fn} > {limit * 1000:g} ms" for fn, limit in sorted(m.duration_p99_limits(env).items())]
    out += [f"age of the oldest message in {q} > {limit:g} s" for q, limit in sorted(spec.queue_age_limits.items())]
    if spec.latency_judge:
        out.append("a new version's p99 latency worse than the stable version's (latency judge)")
    for phase in ("pre_traffic", "post_traffic"):
        hooks = ", ".join(h.name for h in getattr(m.hooks, phase))
        if hooks:
            out.append(f"a {phase.replace('_', '-')} hook failing ({hooks})")
    return out


def quick_reference(m: Manifest, env: str, endpoints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `backout runbook` prints; `endpoints` are the running supervisor's, when it runs."""
    spec = m.environment(env)
    e = f"--env {env}"
    drill = f"backout drill {e}" + (" --allow-prod" if env == "prod" or spec.require_approval else "")
    ep = endpoints or {}

    def url(port: int, key: str) -> str:
        host = spec.control_host if key == "control_url" else spec.host
        return str(ep.get(key) or (f"http://{host}:{port}" if port else "a free port, chosen at start"))

    return {
        "service": m.service.name,
        "env": env,
        "platform": spec.platform,
        "running": bool(ep),
        "gateway_url": url(spec.gateway_port, "gateway_url"),
        "control_url": url(spec.control_port, "control_url"),
        "strategy": spec.strategy,
        "require_approval": spec.require_approval,
        "rollback_window_seconds": spec.rollback_window,
        "automatic_rollback_on": _triggers(m, env),
        "commands": [
            {"step": "status (first thing on call)", "command": f"backout status {e}"},
            {"step": "roll back now (the previous release)", "command": f"backout rollback {e} --reason TEXT"},
            {"step": "roll back to a given release", "command": f"backout rollback {e} --to RELEASE --reason TEXT"},
            {"step": "stop a deployment in progress", "command": f"backout stop DEPLOYMENT {e}"},
            {"step": "emergency stop (API 429, processing paused, roll back)",
             "command": f"backout emergency-stop {e} --reason TEXT"},
            {"step": "emergency stop, API left open",
             "command": f"backout emergency-stop {e} --reason TEXT --keep-api"},
            {"step": "verify after a rollback", "command": f"backout verify {e}"},
            {"step": "smoke tests", "command": f"backout smoke {e}"},
            {"step": "error rate and duration", "command": f"backout metrics FUNCTION {e} --since 10m"},
            {"step": "repair a bad release's jobs", "command": f"backout repair --deployment DEPLOYMENT {e}"},
            {"step": "backups", "command": f"backout backup list {e}"},
            {"step": "resume after an emergency stop", "command": f"backout resume {e}"},
            {"step": "rollback drill", "command": drill},
            {"step": "emergency drill (quarterly)",
             "command": drill.replace("backout drill", "backout drill --emergency")},
            {"step": "incidents", "command": f"backout incident list {e}"},
            {"step": "incident report (status-page update, resolved notice)",
             "command": f"backout incident report INCIDENT {e}"},
            {"step": "close an incident (sends the resolved notice)",
             "command": f"backout incident close INCIDENT --root-cause TEXT {e}"},
        ],
        "contacts": [{"role": role.replace("_", " "), "name": c.name, "channel": c.channel}
                     for role, c in m.contacts_for(env).items()],
        "notify": [t.url.split("://", 1)[0] + "://…" for t in spec.notify],
    }
