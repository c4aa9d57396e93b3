"""Immutable, numbered, content-hashed releases of the service's code (Lambda's published versions).

A release is a directory `releases/v{N}/` holding a copy of the service's source plus an entry
in `releases/index.json` with each function's configuration (handler, timeout, memory,
environment: a Lambda version holds its configuration too, so a rollback restores it). Publishing
the same content (code + configuration + environment overrides) twice returns the existing
version, so a retried deploy never mints a new number, and a configuration-only change mints one. Two processes may
publish at once, so every change happens under an `fcntl` lock, the copy is made in a temp dir
and renamed into place, and the index is replaced atomically: a crash never leaves half a release.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backout.errors import UsageError
from backout.platforms.base import FunctionConfig

_SKIP_DIRS = {"__pycache__", ".git"}
_SKIP_SUFFIXES = (".pyc",)
_VERSION_DIR = re.compile(r"^v\d+$")


@dataclass(frozen=True)
class VersionInfo:
    """One published local version: the same number for every function of the service. An empty
    `configuration` is a version published before configuration was versioned: the manifest's applies."""

    version: int
    digest: str
    created_at: float
    description: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    configuration: dict[str, FunctionConfig] = field(default_factory=dict)


def _wrapper_dir() -> Path | None:
    """backout's handler wrapper (`backout_lambda`), which every release carries as a Lambda package does
    (the AWS platform adds it to each zip): the service's handlers import it, and a version must run the
    wrapper it was published with. It is installed next to `backout`."""
    import importlib.util

    spec = importlib.util.find_spec("backout_lambda")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    sibling = Path(__file__).resolve().parents[3] / "backout_lambda"
    return sibling if (sibling / "__init__.py").is_file() else None


def _skipped(name: str) -> bool:
    return name in _SKIP_DIRS or name.endswith(_SKIP_SUFFIXES)


def _inside(path: Path, root: Path, source: Path) -> None:
    """A symlink may point within the source tree; one that leads out of it would copy files the
    service does not own (a key, /etc/…) into a release, and is refused with one line."""
    if path.is_symlink() and not path.resolve().is_relative_to(root):
        raise UsageError(f"{path} is a symlink out of the source tree ({source}) to {path.resolve()}: "
                         f"copy the file into the tree or remove the link")


class Releases:
    """The published versions under `state_dir/releases/`."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "releases"
        self._index = self.root / "index.json"
        self._lock_path = self.root / ".lock"
        self._cache: tuple[tuple[int, int, int], list[dict]] | None = None

    # -- reading -------------------------------------------------------------------------------

    def list(self) -> list[VersionInfo]:
        """Every published version, oldest first (read fresh: another process may have published)."""
        return [self._info(v) for v in self._read_index()]

    def get(self, version: int) -> VersionInfo:
        for v in self._read_index():
            if v["version"] == version:
                return self._info(v)
        raise UsageError(f"unknown version {version} (published: {self.describe_published()})")

    def code_dir(self, version: int) -> Path:
        """The directory put first on a worker's sys.path (Lambda's task root)."""
        self.get(version)
        return self.root / f"v{version}"

    def describe_published(self) -> str:
        return ", ".join(str(v["version"]) for v in self._read_index()) or "none"

    def _read_index(self) -> list[dict]:
        """The index, parsed again only when the file changed (callers ask on every invocation)."""
        try:
            st = os.stat(self._index)
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with open(self._index) as f:
            versions = sorted(json.load(f)["versions"], key=lambda v: v["version"])
        self._cache = (key, versions)
        return versions

    @staticmethod
    def _info(v: dict) -> VersionInfo:
        return VersionInfo(
            version=v["version"],
            digest=v["digest"],
            created_at=v["created_at"],
            description=v.get("description", ""),
            environment=dict(v.get("environment", {})),
            configuration={fn: FunctionConfig.from_dict(c) for fn, c in v.get("configuration", {}).items()},
        )

    def files(self, version: int) -> dict[str, str]:
        """Relative path → SHA-256 of every file of the version's code (compiled bytecode left out)."""
        root = self.code_dir(version)
        return {rel: hashlib.sha256(path.read_bytes()).hexdigest() for rel, path in self._collect(root, [])}

    # -- publishing ----------------------------------------------------------------------------

    def publish(
        self,
        source: Path,
        packages: list[str],
        environment: dict[str, str] | None = None,
        description: str = "",
        configuration: dict[str, FunctionConfig] | None = None,
    ) -> int:
        """Copy `source` (or just its `packages`) into a new immutable version holding `configuration`
        (function → its configuration); same content → same one."""
        env = {str(k): str(v) for k, v in (environment or {}).items()}
        config = {fn: asdict(c) for fn, c in sorted((configuration or {}).items())}
        files = self._collect(Path(source), packages)
        digest = self._digest(files, env, config)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            index = self._read_index()
            for v in index:
                if v["digest"] == digest:
                    return int(v["version"])
            self._sweep(index)
            version = max((int(v["version"]) for v in index), default=0) + 1
            final = self.root / f"v{version}"
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            try:
                for rel, src in files:
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
                # Compile now: the release is read-only, so workers could never cache bytecode later.
                # In a child process: compiling in the supervisor held its GIL from the gateway and left
                # the parser's memory in its arenas at every deployment (a soak's supervisor stepped up).
                # A file that does not compile is the worker's init error, as before.
                subprocess.run([sys.executable, "-I", "-m", "compileall", "-qq", "-d", str(final), str(tmp)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False, timeout=600)
                _make_read_only(tmp)
                os.rename(tmp, final)
            except BaseException:
                _remove(tmp)
                raise
            entry = {
                "version": version,
                "digest": digest,
                "created_at": time.time(),
                "description": description,
                "environment": env,
                "configuration": config,
            }
            self._write_index([*index, entry])
            return version

    @staticmethod
    def _collect(source: Path, packages: list[str]) -> list[tuple[str, Path]]:
        """(relative path, file) of everything a release holds, sorted by relative path."""
        if not source.is_dir():
            raise UsageError(f"source directory {source} does not exist (check [service].source)")
        if packages:
            tops = []
            for name in packages:
                p = source / name
                if not p.exists():
                    raise UsageError(f"package {name!r} not found in {source} (check [service].packages)")
                tops.append(p)
        else:
            tops = [p for p in source.iterdir() if not _skipped(p.name)]
        out: list[tuple[str, Path]] = []
        root = source.resolve()
        for top in tops:
            _inside(top, root, source)
            if top.is_file():
                out.append((top.name, top))
                continue
            for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
                dirnames[:] = [d for d in dirnames if not _skipped(d)]
                for d in dirnames:
                    _inside(Path(dirpath) / d, root, source)
                for f in filenames:
                    if not _skipped(f):
                        p = Path(dirpath) / f
                        _inside(p, root, source)
                        out.append((p.relative_to(source).as_posix(), p))
        wrapper = _wrapper_dir()
        if wrapper is not None and not any(rel.startswith(f"{wrapper.name}/") for rel, _ in out):
            out += [(f"{wrapper.name}/{f.relative_to(wrapper).as_posix()}", f) for f in sorted(wrapper.rglob("*.py"))]
        return sorted(out)

    @staticmethod
    def _digest(files: list[tuple[str, Path]], env: dict[str, str], config: dict[str, dict]) -> str:
        h = hashlib.sha256()
        for rel, path in files:
            h.update(rel.encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(json.dumps(env, sort_keys=True).encode())
        if config:  # without one the digest stays what versions published before had
            h.update(json.dumps(config, sort_keys=True).encode())
        return h.hexdigest()

    def _sweep(self, index: list[dict]) -> None:
        """Remove leftovers of a publish that crashed: temp dirs, and a renamed dir never indexed."""
        known = {f"v{v['version']}" for v in index}
        for p in self.root.iterdir():
            if p.name.startswith(".index-"):
                p.unlink(missing_ok=True)
            elif not p.is_dir():
                continue
            elif p.name.startswith(".tmp-") or (_VERSION_DIR.match(p.name) and p.name not in known):
                _remove(p)

    def _write_index(self, versions: list[dict]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"versions": versions}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._index)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


_RO_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_RO_DIR = _RO_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def _make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chmod(p, _RO_FILE | (stat.S_IMODE(os.stat(p).st_mode) & _RO_DIR & ~_RO_FILE))
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), _RO_DIR)
    os.chmod(root, _RO_DIR)


def _remove(path: Path) -> None:
    """rmtree a read-only tree: give write permission back first."""
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
