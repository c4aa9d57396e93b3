"""Packaging for Lambda as `sam build` does it: the service's packages, backout's handler wrapper and the
dependencies of `requirements.txt` as wheels for the functions' platform — installed by pip from a local
wheel here (no network), cached by the requirements' content, in a deterministic zip."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from backout.errors import UsageError
from backout.platforms.aws.releases import build_package


def wheel(directory: Path, name: str = "tinydep", version: str = "1.0") -> Path:
    """A pure-Python wheel (py3-none-any), as any index would serve it."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for p, t in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        for p, t in files.items():
            z.writestr(p, t)
    return path


def test_dependencies_are_installed_for_the_functions_platform_and_cached(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel(wheels)
    src = tmp_path / "src"
    (src / "svc").mkdir(parents=True)
    (src / "svc" / "__init__.py").write_text("")
    (src / "svc" / "handler.py").write_text("import tinydep\n\ndef handler(event, context):\n    return {}\n")
    (src / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinydep==1.0\n")
    cache = tmp_path / "cache"

    pkg = build_package(src, ["svc"], "x86_64", "3.11", cache)
    names = zipfile.ZipFile(io.BytesIO(pkg.data)).namelist()
    assert {"svc/handler.py", "tinydep/__init__.py", "backout_lambda/__init__.py"} <= set(names)
    assert names == sorted(names), "a deterministic zip: sorted entries"
    assert pkg.sha256 == base64.b64encode(hashlib.sha256(pkg.data).digest()).decode()  # Lambda's CodeSha256
    (deps,) = cache.glob("deps-*")
    assert (deps / ".complete").exists()

    # the same requirements: the cached install, no pip; the same content: the same bytes (so no upload)
    (wheels / "tinydep-1.0-py3-none-any.whl").unlink()
    assert build_package(src, ["svc"], "x86_64", "3.11", cache).data == pkg.data

    # requirements pip cannot satisfy for Lambda: one line naming the platform, no traceback
    (src / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\nnot-there==9\n")
    with pytest.raises(UsageError, match=r"dependencies for Lambda \(manylinux2014_x86_64, Python 3.11\) failed"):
        build_package(src, ["svc"], "x86_64", "3.11", cache)
