"""A repository's Python layout, read from its own configuration files without running anything: where
its importable code lives (``source_roots``) and the small readers of TOML and ini files that need.

One answer for every part that has to import the repository's code as the repository itself would: the
design unit's resolver (Jedi's ``sys.path``) and the runtime unit's test environment (``PYTHONPATH``).
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there only)
    import tomli as tomllib


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def read_ini(path: Path) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return parser


def dig(data: dict, *keys: str) -> Any:
    value: Any = data
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def _has_python(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(p.suffix == ".py" or (p / "__init__.py").is_file() for p in folder.iterdir())
    except OSError:
        return False


def _parent_of_packages(paths: list[str]) -> list[str]:
    """``src/attr`` (a package folder a build tool names) → ``src``, the folder that must be on the path."""
    return [str(PurePosixPath(p.rstrip("/")).parent) for p in paths if p and "/" in p.rstrip("/")]


def source_roots(root: Path) -> list[str]:
    """The folders (relative to ``root``) that hold the repository's importable code, most specific first
    and the root itself last, taken from its build configuration, else from an ``src/`` layout."""
    found: list[str] = []
    project = read_toml(root / "pyproject.toml")
    tool = project.get("tool", {}) if isinstance(project.get("tool"), dict) else {}
    setuptools = tool.get("setuptools", {}) if isinstance(tool.get("setuptools"), dict) else {}
    package_dir = setuptools.get("package-dir")
    if isinstance(package_dir, dict):
        found += [v for k, v in package_dir.items() if k == "" and isinstance(v, str)]
        found += _parent_of_packages([v for k, v in package_dir.items() if k and isinstance(v, str) and v.rstrip("/").endswith(k.split(".")[-1])])
    found += as_list(dig(setuptools, "packages", "find", "where"))
    hatch_wheel = dig(tool, "hatch", "build", "targets", "wheel") or {}
    found += _parent_of_packages(as_list(hatch_wheel.get("packages") if isinstance(hatch_wheel, dict) else None))
    for sources in (hatch_wheel.get("sources") if isinstance(hatch_wheel, dict) else None, dig(tool, "hatch", "build", "sources")):
        if isinstance(sources, dict):
            found += [k for k, v in sources.items() if v in ("", "/")]
        elif isinstance(sources, list):
            found += [str(s) for s in sources]
    for spec in dig(tool, "poetry", "packages") or []:
        if isinstance(spec, dict) and isinstance(spec.get("from"), str):
            found.append(spec["from"])
    pdm_dir = dig(tool, "pdm", "build", "package-dir")
    if isinstance(pdm_dir, str):
        found.append(pdm_dir)
    flit_backend = "flit" in str(dig(project, "build-system", "build-backend"))
    flit_name = dig(tool, "flit", "module", "name") or (dig(project, "project", "name") if flit_backend else None)
    if isinstance(flit_name, str) and (root / "src" / flit_name.replace("-", "_")).exists():
        found.append("src")
    cfg = read_ini(root / "setup.cfg") if (root / "setup.cfg").is_file() else None
    if cfg is not None:
        if cfg.has_option("options", "package_dir"):
            for line in cfg.get("options", "package_dir").splitlines():
                name, _, where = line.partition("=")
                if where.strip() and not name.strip():
                    found.append(where.strip())
        if cfg.has_option("options.packages.find", "where"):
            found += cfg.get("options.packages.find", "where").split()
    try:
        setup_py = (root / "setup.py").read_text(encoding="utf-8") if (root / "setup.py").is_file() else ""
    except (OSError, UnicodeDecodeError):
        setup_py = ""
    found += re.findall(r"""package_dir\s*=\s*\{\s*['"]{2}\s*:\s*['"]([\w./-]+)['"]""", setup_py)
    found += re.findall(r"""find(?:_namespace)?_packages\(\s*(?:where\s*=\s*)?['"]([\w./-]+)['"]""", setup_py)
    if _has_python(root / "src"):
        found.append("src")
    out: list[str] = []
    for rel in found:
        rel = str(PurePosixPath(rel.strip().strip("/") or "."))
        if rel != "." and rel not in out and not rel.startswith("..") and (root / rel).is_dir():
            out.append(rel)
    return out + ["."]
