"""The traced run: the repository's sampled tests, run once under the trace plugin and cached by content."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath

from agent.errors import SwespotError
from agent.index import is_test_file
from trainer.experience import units as U
from trainer.experience.runtime.common import TRACE_VERSION
from trainer.experience.testenv import PASSED, TestEnvironment, run_pytest, sample

TEST_FILES = 10  # test files sampled for the traced run (seeded)
DOCTEST_FILES = 4  # modules sampled for their doctests, where the configuration collects them
TRACE_SECONDS = 150  # the traced run starts no test after this
_CONFTEST = re.compile(r"ImportError while loading conftest '([^']+)'")


def _trace_sample(ws, tenv: TestEnvironment, blobs: dict, seed) -> list[str]:
    """The test files (and, where the configuration collects doctests, modules with doctests) the traced
    run takes: a seeded sample, the same on every rebuild of the same files."""
    files = sample(tenv.test_files(sorted(blobs)), seed, TEST_FILES)
    if "--doctest-modules" in str(tenv.config.get("addopts", "")):
        modules = []
        for path in sorted(blobs):
            if path.endswith(".py") and not is_test_file(path) and PurePosixPath(path).name not in ("setup.py", "conftest.py") \
                    and tenv.module_name(path):
                try:
                    if ">>> " in ws.read_text(path):
                        modules.append(path)
                except SwespotError:
                    continue
        files += sample(modules, seed, DOCTEST_FILES)
    return files


def traced_run(ws, tenv: TestEnvironment, files: list[str], stats: U.UnitStats) -> dict:
    """Run ``files`` under the trace. A conftest that cannot be imported stops pytest before any test; the
    files below it are then left out (named in the stats) and the rest run again."""
    run = run_pytest(tenv, files, trace=True, timeout_s=TRACE_SECONDS + 90, budget_s=TRACE_SECONDS)
    left = list(files)
    while not run.tests and (broken := _CONFTEST.search(run.output)):
        conftest = Path(broken.group(1))
        try:
            folder = conftest.resolve().parent.relative_to(tenv.root).as_posix()
        except ValueError:
            break
        stats.rejected[f"tests cannot run: {folder}/conftest.py does not import"] += 1
        kept = [f for f in left if not (folder == "." or f.startswith(folder + "/"))]
        if kept == left:
            break
        left = kept
        if not left:
            break
        run = run_pytest(tenv, left, trace=True, timeout_s=TRACE_SECONDS + 90, budget_s=TRACE_SECONDS)
    return {"files": left, "tests": run.tests, "errors": run.errors, "examples": run.examples, "callers": run.callers,
            "edges": run.edges, "summary": run.summary(), "seconds": round(run.seconds, 1)}


def load_trace(ws, tenv: TestEnvironment, blobs: dict, opts, out: Path, stats: U.UnitStats, *, run: bool = True) -> dict | None:
    """The traced run of this snapshot's sampled tests: from the cache (by the content of every learnable
    file, the sample and the environment), else run now (``run``) and cached; None when there are no
    tests to run (named in ``stats``) or, without ``run``, nothing is cached."""
    files = _trace_sample(ws, tenv, blobs, opts.seed)
    if not files:
        if run:
            stats.rejected["runtime trace is empty: no python tests to run"] += 1
        return None
    digest = hashlib.sha256(json.dumps([TRACE_VERSION, sorted(blobs.items()), files, tenv.describe()]).encode()).hexdigest()[:20]
    cache = out / ".cache" / f"trace-{digest}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if not run:
        return None
    trace = traced_run(ws, tenv, files, stats)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(trace))
    return trace


def _traced_symbol(index, key: str):
    """The indexed definition a trace key ("path::co_qualname::first line") names: the definition of that
    name starting at the line or just below it (decorators come first in the code object's line)."""
    path, qualname, first_line = key.rsplit("::", 2)
    entry = index.files.get(path)
    if entry is None:
        return None
    name, line = qualname.rsplit(".", 1)[-1], int(first_line)
    hits = sorted((s.start_line - line, s) for s in entry.symbols if s.name == name and 0 <= s.start_line - line <= 10)
    return hits[0][1] if hits else None


def trace_edges(trace: dict | None, index) -> set[tuple[str, str, str, str]]:
    """The calls the traced tests made between the repository's definitions, as the resolver takes them:
    (caller path, caller qualname, callee path, callee qualname)."""
    out = set()
    for caller_key, callee_key in (trace or {}).get("edges", []):
        caller, callee = _traced_symbol(index, caller_key), _traced_symbol(index, callee_key)
        if caller is not None and callee is not None and caller is not callee:
            out.add((caller.path, caller.qualname, callee.path, callee.qualname))
    return out


def empty_reason(trace: dict) -> str | None:
    """Why a traced run teaches nothing (None when it does)."""
    passed = [t for t, o in trace["tests"].items() if o == PASSED]
    if passed and (trace["examples"] or trace["callers"]):
        return None
    if not trace["files"]:
        return f"no test could run ({trace['summary']})"
    if not passed:
        return f"no test passed ({trace['summary']})"
    return "no function of the repository ran"
