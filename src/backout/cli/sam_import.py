"""`backout init --from-sam template.yaml`: adopt an existing SAM application.

The template's functions, their Api/HttpApi and SQS events, its queues and redrive policies, each
function's `DeploymentPreference` (Type → the environments' strategy, Alarms, Hooks) and
`AutoPublishAlias` become a `backout.toml` that loads. What has no place in the manifest is kept as a
comment where it was found, so the operator sees every gap:

- `AWS::Serverless::Function` (Globals.Function merged in) → `[functions.<name>]`: handler (the CodeUri
  as a package under `source`), timeout, memory, environment, reserved_concurrency;
- its `Events` of `Type: Api` / `HttpApi` → `{ http = "METHOD /path" }`; of `Type: SQS` →
  `{ queue = "<name>", batch_size = … }`;
- `AWS::SQS::Queue` with a `RedrivePolicy` → `[queues.<name>]` with `dead_letter_queue`, `max_receive_count`;
- `DeploymentPreference.Type` → every environment's `strategy` (SAM's names are backout's built-ins);
  its `Hooks` → `[hooks]` `{ function = "<hook>" }` (the hook function gets `deploy = false`);
- its `Alarms`, each an `AWS::CloudWatch::Alarm` of the template → `[environments.<env>.alarms.<name>]`
  in every environment (namespace, metric, dimensions, statistic, period, evaluation periods,
  datapoints, missing data, threshold, comparison): a dimension `!Ref <function>` becomes `{function}`
  (with `function = "<name>"`), `!GetAtt <function>.Version.Version` `{version}`, `!Sub
  "${<function>}:live"` `{function}:{alias}`, `!GetAtt <queue>.QueueName` the queue's name (backout
  maps its names to the stack's on AWS). An alarm defined elsewhere (a name, `!ImportValue`), metric
  math, an anomaly band or an intrinsic that cannot be resolved → a comment saying what it watched;
- `!Ref` of a parameter with a Default, `!Sub`/`!Join` of such → the default (named at the top); a
  Globals variable that depends on a parameter whose default is an environment's name (`Stage:
  staging`) → each environment's own `environment`, with that environment's name;
- anything else (other intrinsics, Layers, custom resources, Conditions, other event types) →
  `# not translated: …` in the section it belongs to.

Names: a function's logical id without its `Function` suffix in snake_case (`DlqProcessorFunction` →
`dlq_processor`), a queue's without `Queue` in kebab-case (`ProcessingDlqQueue` → `processing-dlq`): the
names of the template's outputs contract (docs/aws.md). The TOML is written with tomlkit, which keeps the
comments; the result is validated by the manifest's own model before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import yaml
from pydantic import ValidationError
from tomlkit.items import Array, InlineTable, Table

from backout.errors import UsageError
from backout.manifest import ALARM_COMPARISONS, RESERVED_ALARM_NAMES, Manifest

FUNCTION = "AWS::Serverless::Function"
QUEUE = "AWS::SQS::Queue"
APIS = ("AWS::Serverless::Api", "AWS::Serverless::HttpApi")
ALARM = "AWS::CloudWatch::Alarm"
BACKOUT_SETS = {"BACKOUT_ENV", "BACKOUT_SERVICE", "BACKOUT_FUNCTION"}  # every platform sets them per function
ALIAS = "live"  # the alias backout moves (AutoPublishAlias of every deployable function)
NOT = "not translated: "
# CloudFormation's short forms → their long names (`!GetAtt A.B` is also `Fn::GetAtt: [A, B]`)
_TAGS = {"Ref": "Ref", "Condition": "Condition"} | {
    t: f"Fn::{t}" for t in ("GetAtt", "Sub", "Join", "If", "Select", "Split", "FindInMap", "ImportValue",
                            "GetAZs", "Base64", "Cidr", "Equals", "And", "Or", "Not", "Transform", "Length",
                            "ToJsonString")
}
# properties that matter only on AWS, where the stack keeps them: listed once per resource
_AWS_ONLY_FUNCTION = {"FunctionName", "Description", "Role", "Policies", "LoggingConfig", "Tracing", "Tags",
                      "Architectures", "VpcConfig", "PermissionsBoundary", "KmsKeyArn", "EphemeralStorage",
                      "PackageType", "AssumeRolePolicyDocument", "RolePath", "FunctionUrlConfig", "SnapStart",
                      "RuntimeManagementConfig", "DeadLetterQueue", "EventInvokeConfig"}
_AWS_ONLY_QUEUE = {"QueueName", "SqsManagedSseEnabled", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds",
                   "RedriveAllowPolicy", "Tags", "MaximumMessageSize", "ReceiveMessageWaitTimeSeconds"}



def _backout_own(resource: dict[str, Any]) -> bool:
    """backout's own function in a stack it made (the guard: `backout_lambda.*`): not the service's to deploy."""
    props = resource.get("Properties") if isinstance(resource.get("Properties"), dict) else {}
    return resource.get("Type") == FUNCTION and str(props.get("Handler", "")).startswith("backout_lambda.")

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that reads CloudFormation's short forms as the long ones (`!Ref X` →
    `{"Ref": "X"}`), as CloudFormation itself does."""


def _intrinsic(long: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if long == "Fn::GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {long: value}

    return construct


for _short, _long in _TAGS.items():
    _Loader.add_constructor(f"!{_short}", _intrinsic(_long))


def load_template(path: Path) -> dict[str, Any]:
    """The template as CloudFormation reads it; a missing or malformed file is a UsageError."""
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise UsageError(f"--from-sam {path}: no such file") from None
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--from-sam {path}: not a readable YAML template: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Resources"), dict):
        raise UsageError(f"--from-sam {path}: not a CloudFormation template (no Resources)")
    return doc


def _words(logical_id: str, suffixes: tuple[str, ...]) -> list[str]:
    """`DlqProcessorFunction` → ["dlq", "processor"]; `NotesDLQ` → ["notes", "dlq"]."""
    for s in suffixes:
        if logical_id.endswith(s) and len(logical_id) > len(s):
            logical_id = logical_id[: -len(s)]
            break
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", logical_id)] or [logical_id.lower()]


def shorthand(v: Any) -> str:
    """An intrinsic as the template wrote it, for a comment: `!GetAtt Queue.Arn`, `!Sub 'a-${Stage}'`."""
    if isinstance(v, dict) and len(v) == 1:
        (k, arg), = v.items()
        if k == "Ref":
            return f"!Ref {arg}"
        if k == "Fn::GetAtt" and isinstance(arg, list):
            return "!GetAtt " + ".".join(map(str, arg))
        if k == "Fn::Sub" and isinstance(arg, str):
            return f"!Sub '{arg}'"
        if k.startswith("Fn::"):
            return f"!{k[4:]} {json.dumps(arg, default=str)}"
    return json.dumps(v, default=str)


def duration(seconds: Any) -> str:
    """`345600` → `"4d"`, `720` → `"12m"`, `30` → `"30s"`: the manifest's duration syntax."""
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


@dataclass
class _Resolver:
    """Resolves what can be known from the template alone: literals, parameters with a Default, `!Sub` and
    `!Join` over those. Everything else (pseudo parameters, attributes of resources, conditions) is None."""

    parameters: dict[str, Any]
    used: dict[str, str] = field(default_factory=dict)  # parameter → the default it was resolved to
    overrides: dict[str, str] = field(default_factory=dict)  # parameter → the value one environment gives it
    _trace: set[str] | None = None

    def traced(self, v: Any) -> tuple[str | int | float | bool | None, set[str]]:
        """The value and the parameters it was resolved through."""
        self._trace = set()
        try:
            return self.value(v), self._trace
        finally:
            self._trace = None

    def value(self, v: Any) -> str | int | float | bool | None:
        if isinstance(v, str | int | float | bool):
            return v
        if not isinstance(v, dict) or len(v) != 1:
            return None
        (k, arg), = v.items()
        if k == "Ref" and isinstance(arg, str):
            return self._param(arg)
        if k == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1]) if isinstance(arg, list) else ("", {})
            return self._sub(str(text), extra if isinstance(extra, dict) else {})
        if k == "Fn::Join" and isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], list):
            parts = [self.value(p) for p in arg[1]]
            return None if any(p is None for p in parts) else str(arg[0]).join(str(p) for p in parts)
        return None

    def _param(self, name: str) -> str | None:
        p = self.parameters.get(name)
        if name in self.overrides and isinstance(p, dict):
            if self._trace is not None:
                self._trace.add(name)
            return self.overrides[name]
        if not isinstance(p, dict) or "Default" not in p or isinstance(p["Default"], dict | list):
            return None
        self.used[name] = str(p["Default"])
        if self._trace is not None:
            self._trace.add(name)
        return str(p["Default"])

    def _sub(self, text: str, extra: dict[str, Any]) -> str | None:
        unresolved = False

        def one(m: re.Match[str]) -> str:
            nonlocal unresolved
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal} is the text ${Literal}
            got = self.value(extra[name]) if name in extra else self._param(name)
            if got is None:
                unresolved = True
                return ""
            return str(got)

        out = re.sub(r"\$\{([^}]+)\}", one, text)
        return None if unresolved else out


class _Translator:
    """One template → one manifest document. `notes` of a resource become comments where it is written."""

    def __init__(self, template: dict[str, Any], template_path: Path, out: Path, name: str | None) -> None:
        self.t = template
        self.path = template_path.resolve()
        self.out = out.resolve()
        self.name = name
        self.resources: dict[str, dict[str, Any]] = {
            k: v for k, v in template["Resources"].items() if isinstance(v, dict) and not _backout_own(v)
        }
        self.r = _Resolver(template.get("Parameters") or {})
        g = (template.get("Globals") or {}).get("Function") or {}
        self.globals: dict[str, Any] = g if isinstance(g, dict) else {}
        self.functions = self._names(FUNCTION, ("Function",), "_")
        self.queues = self._names(QUEUE, ("Queue",), "-")
        self.hook_functions: set[str] = set()
        self.per_environment: dict[str, Any] = {}  # Globals variable → as the template writes it
        self.alarm_specs: dict[str, tuple[str, dict[str, Any]]] = {}  # alarm name → (logical id, its keys)

    def _names(self, kind: str, suffixes: tuple[str, ...], sep: str) -> dict[str, str]:
        """logical id → backout name, unique (a clash keeps the whole logical id)."""
        ids = [k for k, v in self.resources.items() if v.get("Type") == kind]
        names = {k: sep.join(_words(k, suffixes)) for k in ids}
        clashes = Counter(names.values())
        return {k: (n if clashes[n] == 1 else sep.join(_words(k, ()))) for k, n in names.items()}

    # --- helpers ---------------------------------------------------------------------------------
    def props(self, logical_id: str) -> dict[str, Any]:
        p = self.resources[logical_id].get("Properties") or {}
        return p if isinstance(p, dict) else {}

    def function_props(self, logical_id: str) -> dict[str, Any]:
        """A function's properties with Globals.Function merged in as the SAM transform does: its own
        values win, environment variables and layers are merged."""
        own = self.props(logical_id)
        merged = {**self.globals, **own}
        g_env = ((self.globals.get("Environment") or {}).get("Variables")) or {}
        o_env = ((own.get("Environment") or {}).get("Variables")) or {}
        if g_env or o_env:
            merged["Environment"] = {"Variables": {**g_env, **o_env}}
        if "Layers" in self.globals and "Layers" in own:
            merged["Layers"] = list(self.globals["Layers"]) + list(own["Layers"])
        if isinstance(self.globals.get("DeploymentPreference"), dict) and isinstance(
                own.get("DeploymentPreference"), dict):
            merged["DeploymentPreference"] = {**self.globals["DeploymentPreference"], **own["DeploymentPreference"]}
        return merged

    def target(self, v: Any) -> str | None:
        """The logical id a `!Ref X` / `!GetAtt X.Attr` names (None for anything else)."""
        if isinstance(v, dict) and len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref" and isinstance(arg, str):
                return arg
            if k == "Fn::GetAtt" and isinstance(arg, list) and arg:
                return str(arg[0])
        return None

    def queue_of(self, v: Any) -> str | None:
        t = self.target(v)
        return self.queues.get(t) if t else None

    # --- the document --------------------------------------------------------------------------
    def translate(self) -> tomlkit.TOMLDocument:
        if not self.functions:
            raise UsageError(f"--from-sam {self.path}: no {FUNCTION} in the template: nothing to deploy")
        preferences = {lid: self.function_props(lid).get("DeploymentPreference") for lid in self.functions}
        for pref in preferences.values():
            if isinstance(pref, dict):
                for hook in (pref.get("Hooks") or {}).values():
                    t = self.target(hook)
                    if t in self.functions:
                        self.hook_functions.add(t)
        functions = tomlkit.table(is_super_table=True)
        code_dirs = {lid: self._code_dir(lid) for lid in self.functions}
        source = self._source(code_dirs)
        for lid, name in self.functions.items():
            functions.add(name, self._function(lid, code_dirs[lid], source))
        queues = tomlkit.table(is_super_table=True)
        for lid, name in self.queues.items():
            queues.add(name, self._queue(lid))
        service = self._service(source, code_dirs)
        hooks = self._hooks(preferences)
        strategy, deployment_notes = self._strategy(preferences)
        deployment_notes += self._alarms(preferences)
        environments = self._environments(strategy)
        # everything is resolved by now: the header can name the parameters that were used
        doc = tomlkit.document()
        self._header(doc)
        doc.add("service", service)
        doc.add(tomlkit.nl())
        doc.add("functions", functions)
        if self.queues:
            doc.add("queues", queues)
        if any(tuple(e.get("http", "").split()) == ("GET", "/health")
               for f in functions.values() for e in f.get("events", [])):
            smoke = tomlkit.aot()
            smoke.append(tomlkit.table().add("http", "GET /health"))
            doc.add("smoke", smoke)
        if hooks is not None:
            doc.add("hooks", hooks)
        for line in deployment_notes:
            doc.add(tomlkit.comment(line))
        if deployment_notes:
            doc.add(tomlkit.nl())
        doc.add("environments", environments)
        return doc

    def _header(self, doc: tomlkit.TOMLDocument) -> None:
        rel = os.path.relpath(self.path, self.out.parent)
        doc.add(tomlkit.comment(f"Translated from {rel} by `backout init --from-sam`. Every key: docs/manifest.md"))
        doc.add(tomlkit.comment("in backout's repository; adopting a SAM application: docs/guide.md."))
        doc.add(tomlkit.comment("Lines starting `# not translated:` name what the template has and this manifest "
                                "does not."))
        if self.r.used:
            used = ", ".join(f"{k} = {v!r}" for k, v in sorted(self.r.used.items()))
            doc.add(tomlkit.comment(f"parameters taken at their Default: {used}"))
        if "Conditions" in self.t:
            doc.add(tomlkit.comment(f"{NOT}Conditions ({', '.join(self.t['Conditions'])}): every resource is "
                                    "taken as if its condition held"))
        other_globals = sorted(k for k in (self.t.get("Globals") or {}) if k != "Function")
        if other_globals:
            doc.add(tomlkit.comment(f"{NOT}Globals of {', '.join(other_globals)} (AWS-side settings)"))
        aws_only, custom = [], []
        for lid, res in self.resources.items():
            kind = str(res.get("Type", ""))
            if kind.startswith("Custom::") or kind == "AWS::CloudFormation::CustomResource":
                custom.append(f"{lid} ({kind})")
            elif kind not in (FUNCTION, QUEUE, ALARM, *APIS):
                aws_only.append(f"{lid} ({kind})")
        for c in custom:
            doc.add(tomlkit.comment(f"{NOT}custom resource {c}: backout cannot run it; it stays in the stack"))
        if aws_only:
            doc.add(tomlkit.comment("on AWS only (the stack keeps them; backout backs up tables and buckets the "
                                    "stack's outputs name, docs/aws.md):"))
            for line in _wrap(", ".join(aws_only), 110):
                doc.add(tomlkit.comment(f"  {line}"))
        doc.add(tomlkit.nl())

    def _service(self, source: str, code_dirs: dict[str, Path | None]) -> Table:
        t = tomlkit.table()
        name = self.name or self._api_name() or self.out.parent.name
        name = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_") or "service"
        if not name[0].isalpha():
            name = f"service-{name}"
        t.add("name", name)
        t.add("source", source)
        t["source"].comment("the functions' CodeUri: on every function's sys.path, what a release publishes")
        dirs = {d for d in code_dirs.values() if d is not None}
        if len(dirs) > 1:
            base = Path(self.out.parent, source).resolve()
            tops = sorted({d.relative_to(base).parts[0] for d in dirs if d != base})
            if tops and all(d != base for d in dirs):
                t.add("packages", tops)
        return t

    def _api_name(self) -> str | None:
        for res in self.resources.values():
            if res.get("Type") in APIS:
                got = self.r.value((res.get("Properties") or {}).get("Name"))
                if isinstance(got, str):
                    return got
        return None

    def _code_dir(self, lid: str) -> Path | None:
        uri = self.function_props(lid).get("CodeUri")
        if uri is None:
            return None if "InlineCode" in self.function_props(lid) else self.path.parent
        if isinstance(uri, str) and not uri.startswith("s3://"):
            return (self.path.parent / uri).resolve()
        return None

    def _source(self, code_dirs: dict[str, Path | None]) -> str:
        dirs = [d for d in code_dirs.values() if d is not None] or [self.path.parent]
        common = Path(os.path.commonpath([str(d) for d in dirs]))
        return Path(os.path.relpath(common, self.out.parent)).as_posix()

    def _function(self, lid: str, code_dir: Path | None, source: str) -> Table:
        p = self.function_props(lid)
        t = tomlkit.table()
        notes: list[str] = []
        handler = str(self.r.value(p.get("Handler")) or "")
        if code_dir is None:
            what = "InlineCode" if "InlineCode" in p else f"CodeUri {shorthand(p.get('CodeUri'))}"
            notes.append(f"{NOT}{what}: put the code under source, as a module {handler!r} names")
        else:
            prefix = code_dir.relative_to(Path(self.out.parent, source).resolve())
            if prefix.parts:
                package = ".".join(prefix.parts)
                if prefix.parts[0] in sys.stdlib_module_names:
                    notes.append(f"{NOT}CodeUri {prefix.as_posix()}/ would be the package {package}, which the "
                                 "standard library has: rename the directory")
                elif all(part.isidentifier() for part in prefix.parts):
                    handler = f"{package}.{handler}"
                    notes.append(f"CodeUri {prefix.as_posix()}/ is the package {package} under source: "
                                 "its own imports of sibling modules need `from . import …`")
                else:
                    notes.append(f"{NOT}CodeUri {prefix.as_posix()}/ is no Python package name: rename it so "
                                 f"the handler can be imported from source")
        if not re.match(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$", handler):
            notes.append(f"{NOT}Handler {shorthand(p.get('Handler'))}: not a module.function backout can call")
            handler = "handler.handler"
        t.add("handler", handler)
        runtime = self.r.value(p.get("Runtime"))
        if isinstance(runtime, str) and not runtime.startswith("python"):
            notes.append(f"{NOT}Runtime {runtime}: backout runs Python functions (a pre-traffic `command` or "
                         "`http` hook can still check it)")
        for key, out, conv in (("Timeout", "timeout", duration), ("MemorySize", "memory", int),
                               ("ReservedConcurrentExecutions", "reserved_concurrency", int)):
            if key in p:
                v = self.r.value(p[key])
                if v is None or isinstance(v, bool):
                    notes.append(f"{NOT}{key} {shorthand(p[key])}")
                else:
                    t.add(out, conv(v))
        if lid in self.hook_functions:
            t.add("deploy", tomlkit.item(False).comment("a DeploymentPreference hook: keeps running the same code"))
        env, env_notes = self._environment(lid, p)
        events, event_notes = self._events(lid, p)
        if events:
            t.add("events", events)
        notes += event_notes
        alias = self.r.value(p.get("AutoPublishAlias"))
        if lid not in self.hook_functions:
            if alias is None:
                notes.append("no AutoPublishAlias: on AWS backout moves the alias `live`; add "
                             "`AutoPublishAlias: live` to the template")
            elif alias != ALIAS:
                notes.append(f"{NOT}AutoPublishAlias {alias}: backout moves the alias `live` (rename it)")
        if "Layers" in p:
            layers = ", ".join(shorthand(x) for x in p["Layers"]) if isinstance(p["Layers"], list) else "?"
            notes.append(f"{NOT}Layers {layers}: put the layer's packages under source or in requirements.txt")
        self._last_notes(t, lid, p, notes, "the function is always deployed", _AWS_ONLY_FUNCTION)
        if env or env_notes:
            variables = tomlkit.table()
            variables.update(env)
            for n in env_notes:
                variables.add(tomlkit.comment(n))
            t.add("environment", variables)
        return t

    def _environment(self, lid: str, p: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
        """The function's variables. backout sets BACKOUT_* and `<QUEUE>_QUEUE_URL` itself; a Globals
        variable that depends on a parameter (the stage, say) differs per stack, so it goes to every
        environment's own `environment` (see `per_environment`)."""
        env: dict[str, str] = {}
        notes = []
        own = ((self.props(lid).get("Environment") or {}).get("Variables")) or {}
        ours = sorted(k for k in (((p.get("Environment") or {}).get("Variables")) or {}) if k in BACKOUT_SETS)
        if ours:
            notes.append(f"{', '.join(ours)}: set by backout")
        for k, v in (((p.get("Environment") or {}).get("Variables")) or {}).items():
            if k in BACKOUT_SETS:
                continue
            ref = self.target(v) if isinstance(v, dict) and "Ref" in v else None
            q = self.queues.get(ref or "")
            if q is not None and k == f"{q.upper().replace('-', '_')}_QUEUE_URL":
                notes.append(f"{k} (!Ref {ref}): backout sets it to the URL of queue {q}")
                continue
            got, params = self.r.traced(v)
            if got is None:
                notes.append(f"{NOT}{k} = {shorthand(v)}: unknown outside the stack (on AWS its value stays; "
                             "locally set it here)")
                continue
            text = str(got).lower() if isinstance(got, bool) else str(got)
            if params and k not in own:
                self.per_environment[k] = v
                continue
            env[k] = text
            if params:
                notes.append(f"{k}: from parameter {', '.join(sorted(params))}'s default; it may differ per stack")
        return env, notes

    def _events(self, lid: str, p: dict[str, Any]) -> tuple[Array, list[str]]:
        events = tomlkit.array()
        events.multiline(True)
        notes: list[str] = []
        apis = set()
        for ename, ev in (p.get("Events") or {}).items():
            kind = ev.get("Type") if isinstance(ev, dict) else None
            props = (ev.get("Properties") or {}) if isinstance(ev, dict) else {}
            if kind in ("Api", "HttpApi"):
                path, method = self.r.value(props.get("Path")), self.r.value(props.get("Method"))
                if kind == "HttpApi" and path is None and method is None and "Path" not in props:
                    path, method = "/{proxy+}", "ANY"  # an HttpApi event without a route catches everything
                if not isinstance(path, str) or not isinstance(method, str):
                    notes.append(f"{NOT}event {ename} ({kind}): route {shorthand(props.get('Path'))} "
                                 f"{shorthand(props.get('Method'))}")
                    continue
                method = method.upper().replace("X-AMAZON-APIGATEWAY-ANY-METHOD", "ANY")
                events.append(_inline(http=f"{method} {path}"))
                api = props.get("RestApiId") or props.get("ApiId")
                apis.add(self.target(api) or shorthand(api) if api is not None else f"implicit {kind}")
                if kind == "HttpApi" and not any("(HttpApi)" in n for n in notes):
                    notes.append(f"events of type HttpApi ({ename} …): backout's gateway sends REST proxy events "
                                 "(payload format 1.0); an HTTP API sends 2.0 unless PayloadFormatVersion is 1.0")
                if "Auth" in props:
                    notes.append(f"{NOT}event {ename}: Auth (backout's gateway has no authorizers)")
            elif kind == "SQS":
                q = self.queue_of(props.get("Queue"))
                if q is None:
                    notes.append(f"{NOT}event {ename} (SQS): queue {shorthand(props.get('Queue'))} is not in the "
                                 "template")
                    continue
                e = _inline(queue=q)
                for key, out in (("BatchSize", "batch_size"), ("Enabled", "enabled")):
                    if key in props:
                        v = self.r.value(props[key])
                        if v is None:
                            notes.append(f"{NOT}event {ename}: {key} {shorthand(props[key])}")
                        else:
                            e[out] = bool(v) if key == "Enabled" else int(v)
                events.append(e)
                rest = sorted(set(props) - {"Queue", "BatchSize", "Enabled", "FunctionResponseTypes"})
                if rest:
                    notes.append(f"{NOT}event {ename}: {', '.join(rest)} (the local platform polls with up to "
                                 "reserved_concurrency workers)")
            else:
                notes.append(f"{NOT}event {ename} of type {kind}: backout invokes functions through HTTP routes "
                             "and queues only")
        if len(apis) > 1:
            notes.append(f"{NOT}the routes come from {len(apis)} APIs ({', '.join(sorted(apis))}): backout serves "
                         "them on one gateway")
        return events, notes

    def _queue(self, lid: str) -> Table:
        p = self.props(lid)
        t = tomlkit.table()
        notes: list[str] = []
        for key, out in (("VisibilityTimeout", "visibility_timeout"), ("MessageRetentionPeriod", "retention"),
                         ("DelaySeconds", "delay")):
            if key in p:
                v = self.r.value(p[key])
                if v is None or isinstance(v, bool):
                    notes.append(f"{NOT}{key} {shorthand(p[key])}")
                else:
                    t.add(out, duration(v))
        redrive = p.get("RedrivePolicy")
        if isinstance(redrive, dict):
            dlq = self.queue_of(redrive.get("deadLetterTargetArn"))
            receives = self.r.value(redrive.get("maxReceiveCount"))
            if dlq is None or receives is None:
                notes.append(f"{NOT}RedrivePolicy to {shorthand(redrive.get('deadLetterTargetArn'))} after "
                             f"{shorthand(redrive.get('maxReceiveCount'))} receives (not a queue of this template)")
            else:
                t.add("max_receive_count", int(receives))
                t.add("dead_letter_queue", dlq)
        elif redrive is not None:
            notes.append(f"{NOT}RedrivePolicy {shorthand(redrive)}")
        if self.r.value(p.get("FifoQueue")) is True:
            notes.append(f"{NOT}FifoQueue: backout's queues are standard queues (no ordering, no deduplication)")
        self._last_notes(t, lid, p, notes, "the queue is always created", _AWS_ONLY_QUEUE)
        return t

    def _last_notes(self, t: Table, lid: str, props: dict[str, Any], notes: list[str], always: str,
                    aws_only: Collection[str]) -> None:
        """What every translated resource ends with — its Condition (ignored: `always`), the properties
        only the AWS stack keeps — and then all of its notes, written into its table as comments."""
        if "Condition" in self.resources[lid]:
            notes.append(f"{NOT}Condition {self.resources[lid]['Condition']}: {always}")
        kept = sorted(k for k in props if k in aws_only)
        if kept:
            notes.append(f"on AWS only (the stack keeps them): {', '.join(kept)}")
        for n in notes:
            t.add(tomlkit.comment(n))

    def _hooks(self, preferences: dict[str, Any]) -> Table | None:
        phases: dict[str, list[str]] = {"PreTraffic": [], "PostTraffic": []}
        notes: list[str] = []
        for lid, pref in preferences.items():
            if not isinstance(pref, dict):
                continue
            for phase, hook in (pref.get("Hooks") or {}).items():
                t = self.target(hook)
                if phase in phases and t in self.functions:
                    if self.functions[t] not in phases[phase]:
                        phases[phase].append(self.functions[t])
                else:
                    notes.append(f"{NOT}{self.functions[lid]}'s {phase} hook {shorthand(hook)}")
        if not any(phases.values()) and not notes:
            return None
        t = tomlkit.table()
        t.add(tomlkit.comment("DeploymentPreference.Hooks: backout invokes each with the deployment's ids and "
                              "expects {\"status\": \"Succeeded\"} or \"Failed\""))
        t.add(tomlkit.comment("(a CodeDeploy hook reports through put_lifecycle_event_hook_execution_status "
                              "instead: return the status too)"))
        defaults = {"PreTraffic": [_inline(builtin="checks")],
                    "PostTraffic": [_inline(builtin="checks"), _inline(builtin="smoke")]}
        for phase, key in (("PreTraffic", "pre_traffic"), ("PostTraffic", "post_traffic")):
            arr = tomlkit.array()
            arr.multiline(True)
            for h in defaults[phase]:
                arr.append(h)
            for fn in phases[phase]:
                arr.append(_inline(function=fn))
            t.add(key, arr)
        for n in notes:
            t.add(tomlkit.comment(n))
        return t

    def _strategy(self, preferences: dict[str, Any]) -> tuple[str | None, list[str]]:
        """The environments' strategy: the DeploymentPreference Type most functions have (a backout
        deployment moves every function together), and comments for the rest."""
        from backout.control.strategies import BUILTIN

        types: dict[str, list[str]] = {}
        notes: list[str] = []
        for lid, pref in preferences.items():
            if lid in self.hook_functions or not isinstance(pref, dict):
                continue
            if self.r.value(pref.get("Enabled", True)) is False:
                notes.append(f"{NOT}{self.functions[lid]}'s DeploymentPreference is disabled: backout shifts "
                             "every deployable function together")
                continue
            kind = self.r.value(pref.get("Type"))
            if not isinstance(kind, str) or kind not in BUILTIN:
                notes.append(f"{NOT}{self.functions[lid]}'s DeploymentPreference Type {shorthand(pref.get('Type'))}"
                             ": not one of SAM's names; define it as [strategies.NAME] steps")
                continue
            types.setdefault(kind, []).append(self.functions[lid])
        if not types:
            return None, notes
        chosen = max(types, key=lambda k: len(types[k]))
        if len(types) > 1:
            others = "; ".join(f"{k} for {', '.join(v)}" for k, v in types.items() if k != chosen)
            notes.append(f"{NOT}per-function DeploymentPreference Types ({others}): a backout deployment moves "
                         f"every function together, with {chosen}")
        return chosen, notes

    def _alarms(self, preferences: dict[str, Any]) -> list[str]:
        """DeploymentPreference.Alarms: each alarm of this template becomes an alarm of every environment
        (`self.alarm_specs`, written by `_environments`); the notes say where each one went, and what the
        others watched."""
        seen: set[str] = set()
        lines: list[str] = []
        names: set[str] = set()
        for pref in preferences.values():
            for a in (pref.get("Alarms") or []) if isinstance(pref, dict) else []:
                if shorthand(a) in seen:
                    continue
                seen.add(shorthand(a))
                lid = self.target(a)
                spec, why = self._alarm_spec(lid) if lid in self.resources else (None, None)
                if spec is None:
                    wrapped = _wrap(f"{NOT}alarm {self._alarm_line(a)}" + (f" — {why}" if why else ""), 108)
                    lines += [f"  {wrapped[0]}", *(f"    {w}" for w in wrapped[1:])]
                    continue
                name = self._alarm_name(str(lid), names)
                self.alarm_specs[name] = (str(lid), spec)
                lines.append(f"  {lid} → [environments.*.alarms.{name}]")
        if not lines:
            return []
        return ["DeploymentPreference.Alarms: CodeDeploy rolled back when one of these was in ALARM; backout "
                "evaluates those", "of this template itself, beside its own alarms and judges (an alarm of "
                "another stack: on AWS, name it", "in [environments.NAME.aws] alarms = [...]):", *lines]

    def _alarm_name(self, lid: str, taken: set[str]) -> str:
        """The manifest's name of an alarm: its logical id without `Alarm`, in kebab-case, unique."""
        name = "-".join(_words(lid, ("Alarm",)))
        if name in taken or name in RESERVED_ALARM_NAMES:
            name = "-".join(_words(lid, ()))
        if not name[:1].isalpha():
            name = f"alarm-{name}"
        while name in taken:
            name += "-2"
        taken.add(name)
        return name

    def _alarm_spec(self, lid: str) -> tuple[dict[str, Any] | None, str | None]:
        """The `[environments.NAME.alarms.…]` keys of the template's alarm `lid`, or None and why not."""
        res = self.resources[lid]
        if res.get("Type") != ALARM:
            return None, f"a {res.get('Type')}, not an {ALARM}"
        p = self.props(lid)
        if "Metrics" in p:
            return None, "metric math (Metrics): an alarm here watches one metric"
        if "ThresholdMetricId" in p:
            return None, "an anomaly detection band (ThresholdMetricId)"
        out: dict[str, Any] = {}
        for key, to in (("Namespace", "namespace"), ("MetricName", "metric")):
            v = self.r.value(p.get(key))
            if not isinstance(v, str) or not v:
                return None, f"{key} {shorthand(p.get(key))}"
            out[to] = v
        dims: list[tuple[str, str, str | None]] = []  # name, value (with placeholders), the function it names
        for d in p.get("Dimensions") or []:
            got = self._alarm_dimension(d.get("Value")) if isinstance(d, dict) else None
            if got is None or not isinstance(d.get("Name"), str):
                what = d.get("Name") if isinstance(d, dict) else shorthand(d)
                return None, f"its dimension {what} cannot be resolved from the template"
            dims.append((d["Name"], *got))
        fns = {fn for _, _, fn in dims if fn is not None}
        if len(fns) > 1 and any("{version}" in v for _, v, _ in dims):
            return None, "the versions of several functions"
        if len(fns) > 1:  # one function per alarm has the placeholders: the others by name
            out["dimensions"] = {k: v.replace("{function}", self.functions[fn]) if fn else v for k, v, fn in dims}
        else:
            out["dimensions"] = {k: v for k, v, _ in dims}
        if len(fns) == 1:
            out["function"] = self.functions[fns.pop()]
        stat = self.r.value(p.get("Statistic")) if "Statistic" in p else self.r.value(p.get("ExtendedStatistic"))
        if not isinstance(stat, str) or not re.fullmatch(r"Sum|Average|Maximum|Minimum|SampleCount|"
                                                         r"p\d{1,2}(\.\d+)?", stat):
            return None, f"statistic {shorthand(p.get('Statistic', p.get('ExtendedStatistic')))}"
        out["statistic"] = stat
        threshold = self.r.value(p.get("Threshold"))
        comparison = self.r.value(p.get("ComparisonOperator"))
        if not isinstance(threshold, int | float) or isinstance(threshold, bool):
            return None, f"Threshold {shorthand(p.get('Threshold'))}"
        if comparison not in ALARM_COMPARISONS:
            return None, f"ComparisonOperator {shorthand(p.get('ComparisonOperator'))}"
        out["threshold"], out["comparison"] = threshold, comparison
        period = self.r.value(p.get("Period", 60))
        if not isinstance(period, int) or isinstance(period, bool) or not (
                period in (1, 5, 10, 30) or (period >= 60 and period % 60 == 0)):
            return None, f"Period {shorthand(p.get('Period'))}"
        out["period"] = duration(period)
        for key, to in (("EvaluationPeriods", "evaluation_periods"), ("DatapointsToAlarm", "datapoints_to_alarm")):
            if key in p:
                v = self.r.value(p[key])
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    return None, f"{key} {shorthand(p[key])}"
                out[to] = v
        if "TreatMissingData" in p:
            v = self.r.value(p["TreatMissingData"])
            if v not in ("missing", "ignore", "breaching", "notBreaching"):
                return None, f"TreatMissingData {shorthand(p['TreatMissingData'])}"
            out["treat_missing_data"] = v
        return out, None

    def _alarm_dimension(self, v: Any) -> tuple[str, str | None] | None:
        """A dimension's value in the manifest's terms, and the function it names (None: no function;
        the whole None: it cannot be known from the template)."""
        if isinstance(v, dict) and len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref" and arg in self.functions:
                return "{function}", str(arg)
            if k == "Fn::GetAtt" and isinstance(arg, list) and len(arg) == 2:
                if arg[0] in self.functions and arg[1] == "Version.Version":
                    return "{version}", str(arg[0])
                if arg[0] in self.queues and arg[1] == "QueueName":
                    return self.queues[str(arg[0])], None
                return None
            if k == "Fn::Sub" and isinstance(arg, str):
                fns: set[str] = set()

                def one(m: re.Match[str]) -> str:
                    if m.group(1) in self.functions:
                        fns.add(m.group(1))
                        return "{function}"
                    got = self.r.value({"Ref": m.group(1)})
                    return "\0" if got is None else str(got)  # \0: unresolved

                text = re.sub(r"\$\{([A-Za-z0-9:.]+)\}", one, arg)
                if "\0" in text or len(fns) > 1 or "{" in text.replace("{function}", ""):
                    return None
                fn = fns.pop() if fns else None
                aliases = {ALIAS} | ({str(self.r.value(self.function_props(fn).get("AutoPublishAlias")))}
                                     if fn else set())
                base, sep, qualifier = text.rpartition(":")
                if fn and sep and base.endswith("{function}") and qualifier in aliases:
                    text = f"{base}:{{alias}}"
                return text, fn
        got = self.r.value(v)
        return None if got is None or isinstance(got, bool) else (str(got), None)

    def _alarm_line(self, ref: Any) -> str:
        lid = self.target(ref)
        res = self.resources.get(lid or "")
        if res is None or res.get("Type") != ALARM:
            return f"{shorthand(ref)} (not defined in this template)"
        p = res.get("Properties") or {}
        if "Metrics" in p:
            exprs = [str(m["Expression"]) for m in p["Metrics"] if isinstance(m, dict) and "Expression" in m]
            return (f"{lid}: metric math ({'; '.join(exprs) or '?'}) {self._op(p)} {p.get('Threshold')} "
                    f"(EvaluationPeriods {p.get('EvaluationPeriods', '?')})")
        dims = {d.get("Name"): d.get("Value") for d in (p.get("Dimensions") or []) if isinstance(d, dict)}
        about = ", ".join(f"{k}={self._dimension(v)}" for k, v in dims.items())
        stat = p.get("Statistic") or p.get("ExtendedStatistic") or "?"
        name = self._alarm_title(str(lid))
        return (f"{lid}{f' ({name})' if name else ''}: {stat} of {p.get('Namespace', '?')} "
                f"{p.get('MetricName', '?')}{f' [{about}]' if about else ''} {self._op(p)} {p.get('Threshold')} for "
                f"{p.get('EvaluationPeriods', '?')} × {p.get('Period', '?')} s")

    @staticmethod
    def _op(props: dict[str, Any]) -> str:
        op = props.get("ComparisonOperator")
        return {"GreaterThanThreshold": ">", "GreaterThanOrEqualToThreshold": ">=", "LessThanThreshold": "<",
                "LessThanOrEqualToThreshold": "<="}.get(str(op), str(op))

    def _alarm_title(self, lid: str) -> str | None:
        """The alarm's AlarmName as the template writes it (a parameter's default is one environment's)."""
        name = self.props(lid).get("AlarmName")
        return None if name is None else name if isinstance(name, str) else shorthand(name)

    def _dimension(self, v: Any) -> str:
        """A dimension's value with the template's functions and queues by their backout names
        (`!Sub "${OrdersFunction}:live"` → `orders:live`)."""
        names = self.functions | self.queues
        t = self.target(v)
        if t in names:
            return names[t]
        if isinstance(v, dict) and isinstance(v.get("Fn::Sub"), str):
            return re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: names.get(m.group(1), str(self.r.value(
                {"Ref": m.group(1)}) or m.group(0))), v["Fn::Sub"])
        got = self.r.value(v)
        return str(got) if got is not None else shorthand(v)

    def _environments(self, strategy: str | None) -> Table:
        envs = tomlkit.table(is_super_table=True)
        throttle = self._throttle()
        for name, ports, approval in (("staging", (8700, 8701), False), ("prod", (8710, 8711), True)):
            e = tomlkit.table()
            e.add("gateway_port", ports[0])
            e["gateway_port"].comment("the service's API on the local platform")
            e.add("control_port", ports[1])
            e["control_port"].comment("the control API the CLI talks to")
            if strategy is not None:
                e.add("strategy", strategy)
                e["strategy"].comment("DeploymentPreference.Type")
            if approval:
                e.add("require_approval", True)
            for k, v in throttle.items():
                e.add(k, v)
            if name == "prod":
                e.add(tomlkit.comment("on AWS (docs/aws.md): platform = \"aws\", then [environments.prod.aws] "
                                      "region = \"…\", stack = \"<the stack's name>\""))
            if self.per_environment:
                e.add("environment", self._variables_of(name))
            if self.alarm_specs:
                e.add("alarms", self._alarm_tables())
            envs.add(name, e)
        return envs

    def _alarm_tables(self) -> Table:
        """`[environments.NAME.alarms.*]`: one environment's copy of the template's deployment alarms."""
        alarms = tomlkit.table(is_super_table=True)
        for name, (lid, spec) in self.alarm_specs.items():
            t = tomlkit.table()
            title = self._alarm_title(lid)
            t.add(tomlkit.comment(f"DeploymentPreference.Alarms: {lid}" + (f" ({title})" if title else "")))
            for k, v in spec.items():
                t.add(k, _inline(**v) if k == "dimensions" else v)
            values = " ".join(spec["dimensions"].values())
            if spec["namespace"] == "AWS/Lambda" and "{function}" in values and "{version}" not in values:
                t.add(tomlkit.comment("it watches every version of the function, as the template's alarm did; "
                                      "ExecutedVersion = \"{version}\" watches only the new one"))
            alarms.add(name, t)
        return alarms

    def _variables_of(self, env: str) -> Table:
        """The Globals variables that depend on parameters, for one environment: a parameter whose default
        is an environment's name (`Stage: staging`) takes each environment's own name."""
        t = tomlkit.table()
        params = self.t.get("Parameters") or {}
        staged = {k for k, p in params.items() if isinstance(p, dict) and p.get("Default") in ("staging", "prod")}
        self.r.overrides = {k: env for k in staged}
        try:
            for k, v in self.per_environment.items():
                got = self.r.value(v)
                t.add(k, str(got).lower() if isinstance(got, bool) else str(got))
        finally:
            self.r.overrides = {}
        t.add(tomlkit.comment("every function's, from " + ", ".join(f"{k} = {shorthand(v)}"
                                                                    for k, v in self.per_environment.items())
                              + (f" ({', '.join(sorted(staged))}: the environment's name)" if staged else "")))
        return t

    def _throttle(self) -> dict[str, Any]:
        """The API stage's method throttling (`MethodSettings` of `/*` `*`), which an emergency stop sets."""
        for res in self.resources.values():
            if res.get("Type") != "AWS::Serverless::Api":
                continue
            for s in (res.get("Properties") or {}).get("MethodSettings") or []:
                if isinstance(s, dict) and s.get("ResourcePath") == "/*" and s.get("HttpMethod") == "*":
                    rate = self.r.value(s.get("ThrottlingRateLimit"))
                    burst = self.r.value(s.get("ThrottlingBurstLimit"))
                    out: dict[str, Any] = {}
                    if isinstance(rate, int | float) and not isinstance(rate, bool):
                        out["throttle_rate"] = float(rate)
                    if isinstance(burst, int) and not isinstance(burst, bool):
                        out["throttle_burst"] = burst
                    return out
        return {}


def _inline(**kv: Any) -> InlineTable:
    t = tomlkit.inline_table()
    t.update(kv)
    return t


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def from_sam(template: Path, out: Path, name: str | None = None) -> str:
    """The manifest text for the SAM `template`, to be written at `out` (paths in it are relative to
    `out`'s directory). It is checked against backout's manifest model first: what is returned loads."""
    tr = _Translator(load_template(template), template, out, name)
    doc = tr.translate()
    text = tomlkit.dumps(doc)
    try:
        Manifest.model_validate(tomllib.loads(text))
    except (ValidationError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"--from-sam {template}: the translation does not load as a manifest: "
                         f"{' '.join(str(e).split())[:300]}") from None
    return text


def write_manifest(template: Path, out: Path, name: str | None = None) -> Path:
    """Translate and write, as a scaffold of one file: never over an existing manifest."""
    from backout.cli.scaffold import Scaffold

    text = from_sam(template, out, name)
    service = tomllib.loads(text)["service"]["name"]
    return Scaffold(service, {out.name: text}).write(out.parent)[0]
