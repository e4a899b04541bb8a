"""How this repository's tests run: in the repository's own terms, isolated from SWE-Spot's environment.

A repository's tests are run with the interpreter SWE-Spot runs in (its venv has pytest), inside the
sandbox (``agent.sandbox``). Three things keep that run the repository's and not ours:

- **source roots first on the path**: ``src/`` layouts and the package folders the build configuration
  names (setuptools ``package-dir`` and ``packages.find where``, hatch, flit, poetry, pdm, setup.cfg,
  setup.py) come before site-packages, so ``import click`` is the snapshot's code even when an installed
  copy of click sits in the venv;
- **no third-party plugin autoload** (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``): this project's own pytest
  plugins (pytest-asyncio, ...) would otherwise load into the repository's run and, under its
  ``filterwarnings = error``, stop it; a plugin the repository's own configuration needs (its ini keys,
  ``required_plugins``, ``-p`` in ``addopts``) is loaded by name when it is installed;
- **the repository's configuration** (pytest.ini, pyproject ``[tool.pytest.ini_options]``, tox.ini,
  setup.cfg) applies with the snapshot root as rootdir; nothing above the root is visible in the sandbox,
  and ``--confcutdir`` keeps conftest files above it out even without one.

``run_pytest`` runs tests with a small plugin of ours that writes what happened as JSON — every test's
full node id (parameter ids with spaces and brackets intact) and outcome, collection errors — and,
when asked, a profile of the repository's functions (literal arguments and results, and which tests
called them). Its output is never parsed from pytest's terminal lines.
"""

from __future__ import annotations

import fnmatch
import json
import random
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

from agent.layout import as_list, dig, read_ini, read_toml, source_roots
from agent.sandbox import clean_env, run_limited

PLUGIN_MODULE = "_swespot_pytest"
# what a passing / failing test's outcome is called in a report
PASSED, FAILED, ERROR, SKIPPED, XFAILED, XPASSED = "passed", "failed", "error", "skipped", "xfailed", "xpassed"

PLUGIN = r'''
"""SWE-Spot's pytest plugin: outcomes by full node id and (SWESPOT_TRACE=1) literal inputs and outputs of
the repository's functions and the tests that called them. It emits no warnings and uses no deprecated
hook, so a repository's ``filterwarnings = error`` cannot trip on it."""
import json, math, os, sys, threading, time

ROOT = os.environ["SWESPOT_ROOT"].rstrip("/") + "/"
OUT = os.environ["SWESPOT_REPORT"]
TRACE = os.environ.get("SWESPOT_TRACE") == "1"
DEADLINE = float(os.environ.get("SWESPOT_DEADLINE") or 0)
GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coroutine, async generator
TESTS, ERRORS, EXAMPLES, CALLERS, INFO, PENDING, EDGES = {}, {}, {}, {}, {}, {}, set()
MAX_EDGES = 20000
STATE = {"current": None, "session": None, "flushed": time.time(), "stopped": None}
SIMPLE = (int, str, bytes, bool, type(None))


def _plain(value, depth=0):
    """Whether ``repr(value)`` is a short Python literal; decided by type, so no repository code runs."""
    kind = type(value)
    if kind in SIMPLE:
        return kind not in (str, bytes) or len(value) <= 60
    if kind is float:
        return math.isfinite(value)
    if kind in (list, tuple, set, frozenset) and depth < 2 and len(value) <= 6:
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict and depth < 2 and len(value) <= 6:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _literal(value):
    if not _plain(value):
        return None
    text = repr(value)
    return text if len(text) <= 80 and (type(value) not in (set, frozenset) or value) else None


def _is_test(path):
    name = os.path.basename(path)
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py" or "/tests/" in path


def _info(code):
    """(key, record examples?) for a function of the repository's code; None for anything else."""
    path = code.co_filename
    if not path.startswith(ROOT) or _is_test(path):
        return None
    key = path[len(ROOT):] + "::" + getattr(code, "co_qualname", code.co_name) + "::" + str(code.co_firstlineno)
    return key, not (code.co_flags & GENERATOR_FLAGS)


def _profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        info = INFO.get(code, 0)
        if info == 0:
            info = INFO[code] = _info(code)
        if info is None:
            return
        test = STATE["current"]
        if test is not None:
            callers = CALLERS.setdefault(info[0], set())
            if len(callers) < 40:
                callers.add(test)
            # the repository function that made this call (caller -> callee, as the design unit resolves them)
            back = frame.f_back
            if back is not None and len(EDGES) < MAX_EDGES:
                outer = INFO.get(back.f_code, 0)
                if outer == 0:
                    outer = INFO[back.f_code] = _info(back.f_code)
                if outer is not None:
                    EDGES.add((outer[0], info[0]))
        if not info[1]:
            return
        names = code.co_varnames[: code.co_argcount]
        if names and names[0] in ("self", "cls"):
            return
        local = frame.f_locals
        args = [_literal(local.get(n)) for n in names]
        if None not in args:
            PENDING[id(frame)] = (info[0], args)
    elif event == "return":
        pending = PENDING.pop(id(frame), None)
        if pending is None or arg is None:
            return
        ret = _literal(arg)
        if ret is None:
            return
        examples = EXAMPLES.setdefault(pending[0], [])
        example = [pending[1], ret]
        if len(examples) < 3 and example not in examples:
            examples.append(example)


def _flush():
    data = {"tests": TESTS, "errors": ERRORS, "examples": EXAMPLES, "stopped": STATE["stopped"],
            "callers": {k: sorted(v) for k, v in CALLERS.items()}, "edges": sorted(EDGES)}
    tmp = OUT + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, OUT)
    STATE["flushed"] = time.time()


def pytest_configure(config):
    if TRACE:
        sys.setprofile(_profile)
        threading.setprofile(_profile)


def pytest_sessionstart(session):
    STATE["session"] = session


def pytest_collectreport(report):
    if report.failed:
        text = str(report.longrepr).strip().splitlines()
        first = [line for line in text if line.startswith("E ")][:1] or text[-1:] or ["collection failed"]
        ERRORS[report.nodeid or "."] = " ".join(first[0][1:].split())[:300] if first[0].startswith("E ") else first[0][:300]


def pytest_runtest_logstart(nodeid, location):
    STATE["current"] = nodeid


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            TESTS[nodeid] = "xfailed" if report.skipped else "xpassed"
        elif report.when == "setup" and report.failed:
            TESTS[nodeid] = "error"
        else:
            TESTS[nodeid] = report.outcome
    elif report.when == "teardown" and report.failed:
        TESTS[nodeid] = "error"


def pytest_runtest_logfinish(nodeid, location):
    STATE["current"] = None
    now = time.time()
    if DEADLINE and now > DEADLINE and STATE["session"] is not None and not STATE["stopped"]:
        STATE["stopped"] = "time budget spent"
        STATE["session"].shouldstop = "SWE-Spot: time budget spent"
    if now - STATE["flushed"] > 5:
        _flush()


def pytest_unconfigure(config):
    sys.setprofile(None)
    threading.setprofile(None)
    _flush()
'''


# ---- reading the repository's configuration --------------------------------------------------------
def pytest_config(root: Path) -> tuple[str | None, dict]:
    """(the file pytest takes its configuration from, its options), found as pytest finds them at the
    root: pytest.toml, pytest.ini, pyproject.toml with a pytest table, tox.ini [pytest], setup.cfg
    [tool:pytest]. Values are strings (ini files) or TOML values."""
    for name in ("pytest.toml", ".pytest.toml"):
        if (root / name).is_file():
            data = read_toml(root / name)
            return name, dict(data.get("pytest", data))
    for name in ("pytest.ini", ".pytest.ini"):
        if (root / name).is_file():
            parser = read_ini(root / name)
            return name, dict(parser["pytest"]) if parser is not None and parser.has_section("pytest") else {}
    project = read_toml(root / "pyproject.toml")
    for table in (dig(project, "tool", "pytest", "ini_options"), dig(project, "tool", "pytest")):
        if isinstance(table, dict):
            return "pyproject.toml", {k: v for k, v in table.items() if k != "ini_options"}
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        parser = read_ini(root / name) if (root / name).is_file() else None
        if parser is not None and parser.has_section(section):
            return name, dict(parser[section])
    return None, {}


def needed_plugins(config: dict) -> list[str]:
    """Modules of installed pytest plugins that the repository's configuration asks for: by
    ``required_plugins``, by ``-p NAME`` in ``addopts``, or by using an option of the plugin's
    (``asyncio_mode`` → the ``asyncio`` plugin). Everything else stays off."""
    plugins = {}
    for ep in metadata.entry_points(group="pytest11"):
        dist = ep.dist.name if ep.dist is not None else ""
        plugins[ep.name] = (ep.value.split(":")[0], re.sub(r"[-_.]+", "-", dist).lower())
    wanted: list[str] = []
    required = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]).lower() for r in as_list(config.get("required_plugins"))}
    addopts = as_list(config.get("addopts"))
    named = {addopts[i + 1] for i, opt in enumerate(addopts[:-1]) if opt == "-p"}
    named |= {opt[2:] for opt in addopts if opt.startswith("-p") and len(opt) > 2}
    keys = {str(k).lower() for k in config}
    for name, (module, dist) in sorted(plugins.items()):
        short = name.replace("-", "_").lower()
        if (dist in required or name in named or module in named
                or any(k == short or k.startswith(short + "_") for k in keys)):
            wanted.append(module)
    return wanted


def module_name(path: str, roots: list[str]) -> str | None:
    """The dotted name a Python file is imported by, given the source roots; None when it has none."""
    if not path.endswith(".py"):
        return None
    rel = path
    for root in roots:
        if root != "." and path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root.rstrip("/")) + 1:]
            break
    mod = rel[:-3].replace("/", ".")
    mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
    return mod if mod and all(part.isidentifier() for part in mod.split(".")) else None


@dataclass
class TestEnvironment:
    """How the tests of the repository at ``root`` run."""

    root: Path
    source_roots: list[str]
    plugins: list[str]  # modules of plugins the repository's configuration needs
    config_file: str | None = None
    config: dict = field(default_factory=dict)

    __test__ = False  # not a pytest test class

    def run_env(self) -> dict[str, str]:
        """Environment for commands run in a copy of the repository (``Workspace.run``): relative source
        roots, so it holds wherever the copy lies."""
        env = {"PYTHONPATH": ":".join(self.source_roots), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONNOUSERSITE": "1"}
        if self.plugins:
            env["PYTEST_PLUGINS"] = ",".join(self.plugins)
        return env

    def env(self, extra: dict[str, str] | None = None, *, path_first: Sequence[str] = (), home: str | None = None) -> dict[str, str]:
        """The full (clean) environment for running in ``root`` itself: absolute source roots after
        ``path_first``."""
        env = self.run_env()
        env["PYTHONPATH"] = ":".join([*path_first, *(str((self.root / r).resolve()) for r in self.source_roots)])
        return clean_env({**env, **(extra or {})}, home=home)

    def module_name(self, path: str) -> str | None:
        return module_name(path, self.source_roots)

    def test_files(self, files: list[str]) -> list[str]:
        """The files among ``files`` that pytest would collect as tests under this configuration."""
        patterns = as_list(self.config.get("python_files")) or ["test_*.py", "*_test.py"]
        where = [p.strip("/") for p in as_list(self.config.get("testpaths"))]
        out = []
        for path in files:
            name = PurePosixPath(path).name
            if not path.endswith(".py") or not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            if where and not any(path == w or path.startswith(w + "/") or fnmatch.fnmatch(path, w) for w in where):
                continue
            out.append(path)
        return sorted(out)

    def describe(self) -> dict:
        return {"source_roots": self.source_roots, "plugins": self.plugins, "config": self.config_file}


def repo_environment(root: str | Path) -> TestEnvironment:
    root = Path(root).resolve()
    config_file, config = pytest_config(root)
    return TestEnvironment(root, source_roots(root), needed_plugins(config), config_file, config)


def sample(files: list[str], seed, cap: int) -> list[str]:
    """At most ``cap`` of ``files``, chosen by a seeded shuffle (the same choice on every rebuild)."""
    chosen = sorted(files)
    random.Random(f"{seed}:test-files").shuffle(chosen)
    return sorted(chosen[:cap])


# ---- running tests ---------------------------------------------------------------------------------------
@dataclass
class PytestRun:
    """What one pytest run did, from our plugin's report."""

    tests: dict[str, str]  # full node id -> outcome
    errors: dict[str, str]  # collection errors: node id -> last line of the error
    examples: dict  # "path::qualname::line" -> [[args, result], ...] (traced runs)
    callers: dict  # "path::qualname::line" -> node ids of the tests that called it (traced runs)
    returncode: int | None
    timed_out: bool
    seconds: float
    output: str
    stopped: str | None = None
    reported: bool = True  # False: the plugin wrote nothing (pytest did not start, or was killed early)
    edges: list = field(default_factory=list)  # [caller key, callee key]: calls between the repository's functions (traced)

    def with_outcome(self, *outcomes: str) -> set[str]:
        return {t for t, o in self.tests.items() if o in outcomes}

    def summary(self) -> str:
        """One line: counts of outcomes, the first collection error, how the run ended."""
        counts: dict[str, int] = {}
        for outcome in self.tests.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        parts = [f"{n} {o}" for o, n in sorted(counts.items())] or ["no test ran"]
        if self.errors:
            first = next(iter(sorted(self.errors.items())))
            parts.append(f"{len(self.errors)} collection error(s), e.g. {first[0]}: {first[1][:120]}")
        if self.timed_out:
            parts.append("timed out")
        elif self.stopped:
            parts.append(self.stopped)
        elif not self.reported:
            last = [line for line in self.output.strip().splitlines() if line.strip()][-1:] or [f"exit code {self.returncode}"]
            parts.append(f"pytest did not run: {last[0][:160]}")
        return ", ".join(parts)


def run_pytest(tenv: TestEnvironment, args: list[str], *, trace: bool = False, timeout_s: float = 120,
               budget_s: float | None = None, memory_mb: int = 4096) -> PytestRun:
    """Run ``pytest args`` in the repository's root, in its own terms (see the module), with our report
    plugin. ``budget_s``: after this many seconds no further test starts (the report is kept)."""
    with tempfile.TemporaryDirectory(prefix="swespot-pytest-") as tmp:
        (Path(tmp) / f"{PLUGIN_MODULE}.py").write_text(PLUGIN, encoding="utf-8")
        report = Path(tmp) / "report.json"
        extra = {"SWESPOT_ROOT": str(tenv.root), "SWESPOT_REPORT": str(report)}
        if trace:
            extra["SWESPOT_TRACE"] = "1"
        if budget_s:
            extra["SWESPOT_DEADLINE"] = str(time.time() + budget_s)
        env = tenv.env(extra, path_first=[tmp], home=tmp)
        # a module that cannot be collected (an import the environment lacks, a deprecation under the
        # repository's filterwarnings=error) costs its own tests, not the whole run
        argv = ["python", "-m", "pytest", "-q", "-p", PLUGIN_MODULE, "-p", "no:cacheprovider", "--continue-on-collection-errors",
                f"--rootdir={tenv.root}", f"--confcutdir={tenv.root}", *args]
        result = run_limited(argv, tenv.root, timeout_s=timeout_s, memory_mb=memory_mb, env=env, writable=[tmp])
        data = {}
        if report.exists():
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
    return PytestRun(data.get("tests", {}), data.get("errors", {}), data.get("examples", {}), data.get("callers", {}),
                     result.returncode, result.timed_out, result.seconds, result.output, data.get("stopped"),
                     reported=bool(data), edges=data.get("edges", []))
