"""Releases on Lambda: packaging as `sam build` does, and publishing every function's version.

Packaging: the service's packages (manifest `service.packages`, or everything under the source
directory), the `backout_lambda` handler wrapper, and the dependencies of `requirements.txt` in the
source directory as Linux wheels for the functions' architecture (`pip install --platform
manylinux2014_<arch> --only-binary=:all: --target`, cached by the requirements' hash). The zip is
deterministic (sorted entries, fixed timestamps), so its SHA-256 is Lambda's `CodeSha256` and an
unchanged package is never uploaded again. Packages over the direct-upload limit go through S3.

Publishing, per function and all functions in parallel: `update_function_code` (when the code
changed) → wait for `LastUpdateStatus` Successful → `update_function_configuration` (environment,
timeout, memory: the configuration the deploying operator's manifest states, which each version
then holds) → wait → `publish_version(CodeSha256=…, RevisionId=…)`. A release reports each version's
configuration as `list_versions_by_function` returns it (no extra call), without the names backout
itself sets. The handler stays the stack's (the template wraps it).

The release index lives in each version's `Description` (`backout r7 <digest> <description>`), read
back with `list_versions_by_function`: a laptop and a CI runner see the same releases with no
extra resource, and the index can never disagree with Lambda — a version exists exactly when its
entry does, so a publish killed half-way leaves a partial release that the next publish of the same
content completes (same id) instead of an index pointing at versions that were never made.
The release's extra environment (drills' fault injection) is kept in the version's own
environment (`BACKOUT_RELEASE_ENV`), so the next publish can drop it again.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.errors import UsageError
from backout.manifest import Manifest
from backout.platforms.aws.config import Clients, Resources, aws_errors
from backout.platforms.base import FunctionConfig, Release, configuration_of

log = logging.getLogger(__name__)

DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024  # Lambda's limit for a zip sent in the request (ZipFile)
RELEASE_ENV = "BACKOUT_RELEASE_ENV"  # the release's extra environment, as JSON
_DESCRIPTION = re.compile(r"^backout r(\d+) ([0-9a-f]{16})(?: (.*))?$", re.S)
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Package:
    """One function package: the zip and Lambda's CodeSha256 of it."""

    data: bytes
    sha256: str  # base64 of the SHA-256, as Lambda reports CodeSha256


def build_package(source: Path, packages: list[str], architecture: str, python_version: str,
                  cache_dir: Path) -> Package:
    """The zip `sam build` would upload for a function of this service."""
    if not source.is_dir():
        raise UsageError(f"source directory {source} does not exist (check [service].source)")
    files: dict[str, Path] = {}
    tops = [source / p for p in packages] if packages else [p for p in source.iterdir() if p.name not in _SKIP_DIRS]
    for top in tops:
        if not top.exists():
            raise UsageError(f"package {top.name!r} not found in {source} (check [service].packages)")
        _add_tree(files, top, source)
    wrapper = importlib.util.find_spec("backout_lambda")
    if wrapper is not None and wrapper.origin:
        root = Path(wrapper.origin).parent
        _add_tree(files, root, root.parent)
    else:
        log.warning("backout_lambda is not installed: packages go without the metrics wrapper")
    req = source / "requirements.txt"
    if req.exists():
        deps = _dependencies(req, architecture, python_version, cache_dir)
        for p in sorted(deps.rglob("*")):
            if p.is_file() and not set(p.relative_to(deps).parts) & _SKIP_DIRS:
                files.setdefault(p.relative_to(deps).as_posix(), p)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in sorted(files):
            info = zipfile.ZipInfo(rel, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[rel].read_bytes())
    data = buf.getvalue()
    return Package(data, base64.b64encode(hashlib.sha256(data).digest()).decode())


def _add_tree(files: dict[str, Path], top: Path, base: Path) -> None:
    if top.is_file():
        files[top.relative_to(base).as_posix()] = top
        return
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in filenames:
            if not f.endswith(".pyc"):
                p = Path(dirpath) / f
                files[p.relative_to(base).as_posix()] = p


def _dependencies(req: Path, architecture: str, python_version: str, cache_dir: Path) -> Path:
    """Linux wheels of `requirements.txt` for the functions' architecture, installed once per content."""
    key = hashlib.sha256(req.read_bytes() + f"{architecture} {python_version}".encode()).hexdigest()[:16]
    target = cache_dir / f"deps-{key}"
    if (target / ".complete").exists():
        return target
    plat = "manylinux2014_x86_64" if architecture == "x86_64" else "manylinux2014_aarch64"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(req), "--target", str(target),
           "--platform", plat, "--implementation", "cp", "--python-version", python_version,
           "--only-binary=:all:", "--upgrade"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UsageError(f"{req}: dependencies for Lambda ({plat}, Python {python_version}) failed: {last}")
    (target / ".complete").write_text("ok")
    return target


def _describe(release_id: int, digest: str, description: str) -> str:
    return f"backout r{release_id} {digest[:16]} {description}".strip()[:256]


def _ts(v: Any) -> float:
    if isinstance(v, datetime):
        return v.timestamp()
    try:  # Lambda's LastModified: 2024-01-02T03:04:05.678+0000
        return datetime.strptime(str(v), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return time.time()


class AwsReleases:
    """Publishing and listing releases: one Lambda version per function per release."""

    def __init__(self, manifest: Manifest, env: str, clients: Clients, resources: Callable[[], Resources],
                 cache_dir: Path, direct_upload_limit: int = DIRECT_UPLOAD_LIMIT) -> None:
        self.manifest = manifest
        self.env = env
        self.spec = manifest.environment(env)
        self.aws = self.spec.aws
        self.clients = clients
        self.resources = resources
        self.cache_dir = cache_dir
        self.direct_upload_limit = direct_upload_limit

    def functions(self) -> list[str]:
        return [f for f, s in self.manifest.functions.items() if s.deploy and f in self.resources().functions]

    # --- reading ------------------------------------------------------------------------------
    def releases(self) -> list[Release]:
        """Every complete release (each function has its version), oldest first."""
        return [r for r in self._scan().values() if set(r.versions) >= set(self.functions())]

    def _scan(self) -> dict[int, Release]:
        lam = self.clients("lambda")
        found: dict[int, dict[str, Any]] = {}
        for fn in self.functions():
            name = self.resources().functions[fn]
            with aws_errors(f"function {fn} ({name})"):
                for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=name):
                    for v in page["Versions"]:
                        m = _DESCRIPTION.match(v.get("Description") or "")
                        if v["Version"] == "$LATEST" or m is None:
                            continue
                        rid = int(m.group(1))
                        r = found.setdefault(rid, {"versions": {}, "digest": m.group(2), "created": 0.0,
                                                   "description": m.group(3) or "", "environment": {}})
                        r["versions"][fn] = v["Version"]
                        r["created"] = max(r["created"], _ts(v.get("LastModified")))
                        env = (v.get("Environment") or {}).get("Variables") or {}
                        r["environment"] = json.loads(env.get(RELEASE_ENV, "{}"))
                        own = set(self._platform_env(fn)) | {"BACKOUT_RELEASE", RELEASE_ENV} | set(r["environment"])
                        r.setdefault("configuration", {})[fn] = FunctionConfig(
                            str(v.get("Handler", "")), float(v.get("Timeout", 3)), int(v.get("MemorySize", 128)),
                            {k: val for k, val in env.items() if k not in own})
        return {rid: Release(rid, r["versions"], r["digest"], r["created"], r["description"], r["environment"],
                             r.get("configuration", {}))
                for rid, r in sorted(found.items())}

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, source: Path, environment: dict[str, str] | None = None, description: str = "",
                configuration: dict[str, FunctionConfig] | None = None) -> Release:
        assert self.aws is not None
        extra = {str(k): str(v) for k, v in (environment or {}).items()}
        config = {**configuration_of(self.manifest, self.env), **(configuration or {})}
        pkg = build_package(Path(source), self.manifest.service.packages, self.aws.architecture,
                            self.aws.python_version, self.cache_dir)
        digest = self._digest(pkg.sha256, extra, config)
        return self._publish(digest, extra, description, lambda fn: pkg, config)

    def republish(self, release_id: int, environment: dict[str, str], description: str = "") -> Release:
        """The code of `release_id` with its environment plus `environment`: a configuration-only
        change when `$LATEST` still holds that code (downloaded from the version otherwise)."""
        base = self._release(release_id)
        extra = {**base.environment, **{str(k): str(v) for k, v in environment.items()}}
        digest = hashlib.sha256(f"{base.digest} {json.dumps(extra, sort_keys=True)}".encode()).hexdigest()
        config = {**configuration_of(self.manifest, self.env), **base.configuration}
        return self._publish(digest, extra, description, lambda fn: self._code_of(fn, base.version(fn)), config)

    def _release(self, release_id: int) -> Release:
        for r in self.releases():
            if r.id == release_id:
                return r
        known = ", ".join(f"r{r.id}" for r in self.releases()) or "none"
        raise UsageError(f"unknown release {release_id} (published: {known})")

    def _digest(self, code_sha: str, extra: dict[str, str], config: dict[str, FunctionConfig]) -> str:
        view = {fn: {"env": {**config[fn].environment, **self._platform_env(fn)}, "timeout": config[fn].timeout,
                     "memory": config[fn].memory} for fn in self.functions()}
        blob = json.dumps({"code": code_sha, "config": view, "extra": extra}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _publish(self, digest: str, extra: dict[str, str], description: str,
                 package: Callable[[str], Package | None], config: dict[str, FunctionConfig]) -> Release:
        known = self._scan()
        fns = self.functions()
        for r in known.values():
            if r.digest == digest[:16] and set(r.versions) >= set(fns):
                return r  # same content: the existing release, no new versions
        partial = next((r for r in known.values() if r.digest == digest[:16]), None)
        rid = partial.id if partial is not None else max(known, default=0) + 1
        done = dict(partial.versions) if partial is not None else {}
        desc = _describe(rid, digest, description)
        todo = [fn for fn in fns if fn not in done]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures = {fn: pool.submit(self._publish_function, fn, rid, extra, desc, package, config[fn])
                       for fn in todo}
            for fn, fut in futures.items():
                done[fn] = fut.result()
        return self._scan()[rid]  # as `releases()` will show it (creation time from Lambda)

    def _publish_function(self, fn: str, rid: int, extra: dict[str, str], desc: str,
                          package: Callable[[str], Package | None], config: FunctionConfig) -> str:
        lam = self.clients("lambda")
        name = self.resources().functions[fn]
        with aws_errors(f"function {fn} ({name})"):
            current = lam.get_function_configuration(FunctionName=name)
            pkg = package(fn)
            if pkg is not None and current.get("CodeSha256") != pkg.sha256:
                lam.update_function_code(FunctionName=name, **self._code(fn, pkg, rid))
                self._wait(name)
            old_env = (current.get("Environment") or {}).get("Variables") or {}
            dropped = set(json.loads(old_env.get(RELEASE_ENV, "{}")))  # the previous release's extras
            env = {k: v for k, v in old_env.items() if k not in dropped}
            env.update(config.environment)
            env.update(self._platform_env(fn))
            env.update(extra)
            env.update({"BACKOUT_RELEASE": str(rid), RELEASE_ENV: json.dumps(extra, sort_keys=True)})
            cfg = lam.update_function_configuration(FunctionName=name, Environment={"Variables": env},
                                                    Timeout=max(1, int(config.timeout)), MemorySize=config.memory)
            cfg = self._wait(name) or cfg
            kw: dict[str, Any] = {"FunctionName": name, "Description": desc, "CodeSha256": cfg["CodeSha256"]}
            if cfg.get("RevisionId"):  # moto returns none: publish without the optimistic-lock check there
                kw["RevisionId"] = cfg["RevisionId"]
            return str(lam.publish_version(**kw)["Version"])

    def _wait(self, name: str) -> dict[str, Any]:
        """Until the function's last update is Successful (function_updated_v2 polls GetFunction)."""
        lam = self.clients("lambda")
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})
        cfg = lam.get_function_configuration(FunctionName=name)
        if cfg.get("LastUpdateStatus") not in (None, "Successful"):
            raise RuntimeError(f"{name}: update {cfg.get('LastUpdateStatus')}: {cfg.get('LastUpdateStatusReason')}")
        return dict(cfg)

    def _code(self, fn: str, pkg: Package, rid: int) -> dict[str, Any]:
        """ZipFile in the request, or through S3 beyond the direct-upload limit."""
        if len(pkg.data) <= self.direct_upload_limit:
            return {"ZipFile": pkg.data}
        assert self.aws is not None
        bucket = self.aws.artifacts_bucket
        if bucket is None:
            raise UsageError(f"the {fn} package is {len(pkg.data) / 1e6:.0f} MB, over Lambda's direct upload limit: "
                             f"set aws.artifacts_bucket for backout to upload it through S3")
        key = f"backout/{self.manifest.service.name}/{self.env}/{hashlib.sha256(pkg.data).hexdigest()}.zip"
        with aws_errors(f"aws.artifacts_bucket {bucket!r}"):
            self.clients("s3").put_object(Bucket=bucket, Key=key, Body=pkg.data)
        return {"S3Bucket": bucket, "S3Key": key}

    def _code_of(self, fn: str, version: str) -> Package | None:
        """The code of `fn`'s `version`: None when $LATEST already holds it (nothing to upload)."""
        lam = self.clients("lambda")
        name = self.resources().functions[fn]
        wanted = lam.get_function_configuration(FunctionName=name, Qualifier=version)["CodeSha256"]
        if lam.get_function_configuration(FunctionName=name)["CodeSha256"] == wanted:
            return None
        import httpx

        location = lam.get_function(FunctionName=name, Qualifier=version)["Code"]["Location"]
        data = httpx.get(location, timeout=120).raise_for_status().content
        return Package(data, base64.b64encode(hashlib.sha256(data).digest()).decode())

    def _platform_env(self, fn: str) -> dict[str, str]:
        """What backout itself sets on every function, whatever the release: the wrapper's names."""
        return {
            "BACKOUT_FUNCTION": fn,
            "BACKOUT_SERVICE": self.manifest.service.name,
            "BACKOUT_ENV": self.env,
            "ENVIRONMENT": self.env,
        }
