"""Unit 4, semantic-runtime alignment: what the code actually does when it runs.

The repository's tests run in the scratch snapshot in the repository's own terms (``testenv``: its
source roots first on the path, its pytest configuration, no plugin of ours but the report), sandboxed,
on a seeded sample of its test files within a time budget. A small plugin records every test's full
node id and outcome and, for functions of the repository, literal arguments and results and the tests
that called them. Episodes then (a) predict a call's output, answered with the observed value, (b)
write a test that pins that behaviour, which is executed and must pass, (c) say which tests fail when a
function's result is dropped (a mutation, run against the tests that called it and passed), and (d)
write a reproduction of a historical fix, newest fixes first, that fails before it and passes after
(both executed, by node id). The trace is cached by the content of every learnable file and the sample.

Every way this unit comes up empty has a name in the stats ("runtime trace is empty: ...", "tests do not
pass before the mutation", ...), so a build that makes no runtime episode says why.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import shlex
import time
from collections import Counter
from pathlib import Path, PurePosixPath

from agent.episode import save_episodes
from agent.errors import SwespotError
from agent.index import is_test_file
from trainer.experience import history as H
from trainer.experience import units as U
from trainer.experience.oracle import OracleSession, say
from trainer.experience.teacher import Teacher, taught, teacher_from_options
from trainer.experience.testenv import ERROR, FAILED, PASSED, PytestRun, TestEnvironment, repo_environment, run_pytest, sample

TRACE_VERSION = 4  # 2: the repository's own test environment, a sampled subset, node ids and callers; 3: whole-statement mutations;
# 4: caller -> callee edges between the repository's functions (they confirm the design unit's calls)
TEST_FILES = 10  # test files sampled for the traced run (seeded)
DOCTEST_FILES = 4  # modules sampled for their doctests, where the configuration collects them
TRACE_SECONDS = 150  # the traced run starts no test after this
MUTATION_TESTS = 25  # tests run against one mutation, at most
MAX_REPROS = 6  # fail-to-pass reproductions per build, newest fixes first
REPRO_ATTEMPTS = 25  # fix commits (with a test and a code change) tried for them
UNIT_SECONDS = 480  # mutations and reproductions start no new run after this (the trace not counted)
MAX_LISTED = 12  # failing tests an answer names


# ---- the traced run ------------------------------------------------------------------------------------
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


def _empty_reason(trace: dict) -> str | None:
    """Why a traced run teaches nothing (None when it does)."""
    passed = [t for t, o in trace["tests"].items() if o == PASSED]
    if passed and (trace["examples"] or trace["callers"]):
        return None
    if not trace["files"]:
        return f"no test could run ({trace['summary']})"
    if not passed:
        return f"no test passed ({trace['summary']})"
    return "no function of the repository ran"


# ---- episodes from the trace ---------------------------------------------------------------------------
def _symbol_at(index, path: str, line: int):
    entry = index.files.get(path)
    return next((s for s in entry.symbols if s.start_line == line), None) if entry else None


def _test_home(ws, trace: dict) -> str:
    """Where a new test goes: the folder of the test files that passed in the traced run, else the root."""
    folders = Counter(str(PurePosixPath(t.split("::")[0]).parent) for t, o in trace["tests"].items()
                      if o == PASSED and is_test_file(t.split("::")[0]))
    return folders.most_common(1)[0][0] if folders else "."


def _teacher(opts) -> Teacher | None:
    return teacher_from_options(opts)


def _taught(teacher: Teacher | None, stats: U.UnitStats, ws, task: str, verify, *, commit: str, meta: dict,
            read_only: bool = False) -> dict | None:
    """The teacher's verified episode for ``task``, or None (then the oracle's is made)."""
    return taught(teacher, stats, ws, task, verify, unit="runtime", commit=commit, meta=meta, read_only=read_only)


def _says(text: str, literal: str) -> bool:
    return re.search(rf"(?<![\w'\"]){re.escape(literal)}(?![\w'\"])", text) is not None


def runtime_episodes(ws, index, tenv: TestEnvironment, path: str, examples: dict, trace: dict, commit: str,
                     rng: random.Random, stats: U.UnitStats, limit: int = 6, teacher: Teacher | None = None):
    out: list[dict] = []
    items = sorted(examples.items())
    rng.shuffle(items)
    for key, cases in items:
        if len(out) >= limit:
            break
        _, qualname, line = key.rsplit("::", 2)
        sym = _symbol_at(index, path, int(line))
        if sym is None or sym.qualname != qualname:
            continue
        args, ret = cases[0]
        call = f"{sym.qualname}({', '.join(args)})"
        meta = {"form": "predict output", "symbol": sym.qualname}
        taught = _taught(teacher, stats, ws, f"What does `{call}` return? ({path})",
                         lambda r, ret=ret: {"ok": True, "observed": "test run"} if _says(r.summary, ret) else "answer lacks the observed value",
                         commit=commit, meta=meta, read_only=True)
        if taught:
            out.append(taught)
        module = tenv.module_name(path)
        if module and sym.parent is None and len(out) < limit:
            episode = _written_test_episode(ws, tenv, sym, module, call, args, ret, _test_home(ws, trace), commit, rng, stats, teacher)
            if episode:
                out.append(episode)
        if taught:
            continue
        s = OracleSession(ws, f"What does `{call}` return? ({path})", read_only=True)
        s.act([("find_definition", {"symbol": sym.qualname})], content=say(rng, [
            "First, where is {name} defined?", "I'll look up the definition of {name}.", "Let me find {name}."], name=sym.qualname))
        s.act([("read_file", {"path": path, "start_line": sym.start_line, "end_line": sym.end_line})], content=say(rng, [
            "It starts at {path}:{line}; reading its body.", "Reading {name} in {path}.", "The body of {name} will tell."],
            path=path, line=sym.start_line, name=sym.name))
        s.thought_before_submit = say(rng, ["Following the code with {args}: it returns {ret}.",
                                            "With these arguments the body yields {ret}."], args=", ".join(args) or "no arguments", ret=ret)
        episode = U._finish(s, f"`{call}` returns `{ret}` (observed when the tests ran).", "runtime", commit, stats,
                            meta, {"ok": True, "observed": "test run"})
        if episode:
            out.append(episode)
    return out


def _new_tests(ws) -> list[str]:
    return sorted(rel for rel, original in ws.originals.items() if original is None and rel.endswith(".py") and is_test_file(rel))


def _written_test_episode(ws, tenv, sym, module: str, call: str, args: list, ret: str, home: str, commit: str,
                          rng: random.Random, stats: U.UnitStats, teacher: Teacher | None = None):
    test_path = str(PurePosixPath(home) / f"test_swespot_{sym.name}.py") if home != "." else f"test_swespot_{sym.name}.py"
    if (ws.root / test_path).exists():
        return None
    task = f"Write a test for {sym.qualname} ({sym.path}) that pins what it returns for {', '.join(args) or 'no arguments'}."

    def verify(result):
        written = _new_tests(ws)
        if not written or not any(sym.name in ws.read_text(p) for p in written):
            return "wrote no test of the function"
        run = run_pytest(tenv, written, timeout_s=60)
        passed = run.with_outcome(PASSED)
        return {"ok": True, "test_passed": True} if passed and passed == set(run.tests) and not run.errors else "its test does not pass"

    meta = {"form": "write a passing test", "symbol": sym.qualname}
    taught = _taught(teacher, stats, ws, task, verify, commit=commit, meta=meta)
    if taught:
        return taught
    body = f"from {module} import {sym.name}\n\n\ndef test_{sym.name}_behaviour():\n    assert {call} == {ret}\n"
    s = OracleSession(ws, task)
    try:
        s.act([("read_file", {"path": sym.path, "start_line": sym.start_line, "end_line": sym.end_line})], content=say(rng, [
            "I'll read {name} first.", "Reading {name} to see what it computes."], name=sym.name))
        s.act([("create_file", {"path": test_path, "content": body})], content=say(rng, [
            "It is importable as {module}.{name}; a test next to the others, {test}.", "{test} will import it from {module}."],
            module=module, name=sym.name, test=test_path))
        ran = s.act([("run", {"command": f"python -m pytest -q -p no:cacheprovider {test_path}", "timeout": 60})], content=say(rng, [
            "Now run it.", "Does it pass?", "Running the new test."]))[0]
    finally:
        (ws.root / test_path).unlink(missing_ok=True)
        ws.forget_changes()
        ws.invalidate([test_path])
    if "[exit code 0" not in ran:
        stats.rejected["written test did not pass"] += 1
        return None
    s.thought_before_submit = say(rng, ["It passes.", "The test passes on the current code."])
    return U._finish(s, f"Added {test_path}; it passes.", "runtime", commit, stats, meta, {"ok": True, "test_passed": True})


def _full(opts, counts: Counter | None) -> bool:
    """Whether the runtime unit has reached its target number of episodes (the balanced mix)."""
    target = (getattr(opts, "targets", None) or {}).get("runtime") or 0
    return target > 0 and counts is not None and counts["runtime"] >= target


def _saved(shard: Path, episodes: list, stats: U.UnitStats, counts: Counter | None) -> None:
    n = save_episodes(shard, episodes, dropped=stats.rejected)
    if counts is not None:
        counts["runtime"] += n


def _reused(shard: Path, counts: Counter | None) -> int:
    """A shard already on disk: its episodes count against the unit's target."""
    n = sum(1 for line in open(shard, encoding="utf-8") if line.strip())
    if counts is not None:
        counts["runtime"] += n
    return n


def runtime_shards(ws, index, commit: str, out: Path, wanted: set, stats: U.UnitStats, blobs: dict, opts,
                   counts: Counter | None = None) -> tuple[int, int]:
    """Trace once (cached by content), then one shard per source file with observed calls, then the
    mutations of functions the passing tests called; no new shard once ``counts["runtime"]`` reaches the
    profile's ``targets["runtime"]``."""
    tenv = repo_environment(ws.root)
    ws.run_env = tenv.run_env()  # the run tool in episodes: the same environment
    trace = load_trace(ws, tenv, blobs, opts, out, stats)
    if trace is None:
        return 0, 0
    why = _empty_reason(trace)
    if why:
        stats.rejected[f"runtime trace is empty: {why}"] += 1
        return 0, 0
    by_file: dict[str, dict] = {}
    for key, cases in trace["examples"].items():
        path = key.split("::")[0]
        if path in blobs and path in index.files:
            by_file.setdefault(path, {})[key] = cases
    made = reused = 0
    for path, examples in sorted(by_file.items()):
        if _full(opts, counts):
            stats.rejected["over the unit's target"] += 1
            continue
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "runtime", opts.seed, path, blobs[path], examples,
                                         getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        wanted.add(key)
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            reused += 1
            _reused(shard, counts)
            continue
        rng = random.Random(f"{opts.seed}:runtime:{path}")
        _saved(shard, runtime_episodes(ws, index, tenv, path, examples, trace, commit, rng, stats, teacher=_teacher(opts)), stats, counts)
        made += 1
    m, r = mutation_shards(ws, index, tenv, trace, commit, out, wanted, stats, blobs, opts, counts)
    return made + m, reused + r


# ---- mutations: which tests break when a function's result is dropped (executed, not guessed) ---------
def first_return(source: str, start_line: int, end_line: int) -> tuple[int, int, str] | None:
    """The first ``return <value>`` of the function spanning these lines, not inside a nested function:
    (start offset, end offset, its text on one line); None when there is none (or only ``return None``)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    func = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and start_line <= n.lineno <= end_line), None)
    if func is None:
        return None
    found: list[ast.Return] = []
    todo: list[ast.AST] = list(func.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    found = [r for r in found if r.value is not None and not (isinstance(r.value, ast.Constant) and r.value.value is None)]
    if not found:
        return None
    node = min(found, key=lambda r: (r.lineno, r.col_offset))
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    # ast offsets are in UTF-8 bytes of the line
    def offset(line: int, col: int) -> int:
        text = source[starts[line - 1]:starts[line]]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    start, end = offset(node.lineno, node.col_offset), offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
    return start, end, " ".join(source[start:end].split())


def mutation_targets(index, trace: dict, blobs: dict, seed) -> list[tuple]:
    """(symbol, the passing tests that called it) for functions of learnable, non-test files."""
    passed = {t for t, o in trace["tests"].items() if o == PASSED}
    out = []
    for key, callers in sorted(trace["callers"].items()):
        path, qualname, line = key.rsplit("::", 2)
        if path not in blobs or is_test_file(path):
            continue
        sym = _symbol_at(index, path, int(line))
        tests = sorted(t for t in callers if t in passed)
        if sym is None or sym.qualname != qualname or sym.kind not in ("function", "method") or not sym.body_start_line or not tests:
            continue
        out.append((sym, tests[:MUTATION_TESTS]))
    random.Random(f"{seed}:mutation").shuffle(out)
    return out


def mutation_shards(ws, index, tenv: TestEnvironment, trace: dict, commit: str, out: Path, wanted: set, stats: U.UnitStats,
                    blobs: dict, opts, counts: Counter | None = None) -> tuple[int, int]:
    started = time.monotonic()
    made = reused = 0
    todo = []
    for sym, tests in mutation_targets(index, trace, blobs, opts.seed)[: opts.max_mutations]:
        if _full(opts, counts):
            break
        files = sorted({t.split("::")[0] for t in tests})
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "mutation", sym.path, sym.qualname, blobs[sym.path],
                                         [blobs.get(f) for f in files], tests, getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        wanted.add(key)
        if (out / "runtime" / f"{key}.jsonl").exists():
            reused += 1
            _reused(out / "runtime" / f"{key}.jsonl", counts)
        else:
            todo.append((sym, tests, key))
    if not todo:
        return made, reused
    # the baseline: the chosen tests, run again without the trace; only tests that pass twice count
    union = sorted({t for _, tests, _ in todo for t in tests})
    baseline = run_pytest(tenv, union, timeout_s=240)
    stable = baseline.with_outcome(PASSED)
    for sym, tests, key in todo:
        if time.monotonic() - started > UNIT_SECONDS:
            stats.rejected["runtime time budget spent (mutations)"] += 1
            continue
        if _full(opts, counts):
            wanted.discard(key)
            stats.rejected["over the unit's target"] += 1
            continue
        rng = random.Random(f"{opts.seed}:mutation:{sym.path}:{sym.qualname}")
        episode = mutation_episode(ws, tenv, sym, [t for t in tests if t in stable], commit, stats, rng, _teacher(opts))
        _saved(out / "runtime" / f"{key}.jsonl", [episode] if episode else [], stats, counts)
        made += 1
    return made, reused


def mutation_episode(ws, tenv: TestEnvironment, sym, tests: list[str], commit: str, stats: U.UnitStats,
                     rng: random.Random, teacher: Teacher | None = None) -> dict | None:
    """Replace the function's first ``return ...`` with ``return None``, run the tests that called it and
    passed (twice: traced and not), and teach which of them fail. Every failure is the mutation's doing."""
    if not tests:
        stats.rejected["tests do not pass before the mutation"] += 1
        return None
    original = ws.read_text(sym.path)
    found = first_return(original, sym.start_line, sym.end_line)
    if found is None:
        stats.rejected["no return value to drop"] += 1
        return None
    start, end, changed = found
    (ws.root / sym.path).write_text(original[:start] + "return None" + original[end:], encoding="utf-8")
    try:
        after = run_pytest(tenv, tests, timeout_s=120)
    finally:
        (ws.root / sym.path).write_text(original, encoding="utf-8")
        ws.invalidate([sym.path])
    if after.timed_out:
        stats.rejected["mutation run timed out"] += 1
        return None
    # the baseline passed, so a run that collects nothing failed because of the mutation: the package (or a
    # conftest importing it) no longer imports, and every test fails
    broken = {e.split("::")[0] for e in after.errors} | ({""} if not after.tests else set())
    failing = sorted(t for t in tests if after.tests.get(t) in (FAILED, ERROR)
                     or (t not in after.tests and (t.split("::")[0] in broken or broken & {".", ""})))
    task = f"In {sym.path}, if `{changed}` in {sym.qualname} became `return None`, which tests would fail?"

    def verify(result):
        named = {t for t in tests if t in result.summary}
        if named != set(failing):
            return "named other tests than those that fail"
        return {"ok": True, "executed": True, "failing": failing, "ran": tests}

    meta = {"form": "which tests fail", "symbol": sym.qualname}
    taught = _taught(teacher, stats, ws, task, verify, commit=commit, meta=meta, read_only=True)
    if taught:
        return taught
    s = OracleSession(ws, task, read_only=True)
    refs = s.act([("find_references", {"symbol": sym.name})], content=say(rng, [
        "Which code uses {name}? The tests among its references are the candidates.", "I'll list the references to {name} first.",
        "Let me see where {name} is used."], name=sym.name))[0]
    shown = next((f for f in sorted({t.split("::")[0] for t in failing or tests}) if f in refs), None)
    if shown:
        s.act([("read_file", {"path": shown, "start_line": 1, "end_line": 80})], content=say(rng, [
            "{path} uses it; what do its tests check?", "{path} is among the references; reading it."], path=shown))
    else:
        s.act([("find_definition", {"symbol": sym.qualname})], content=say(rng, [
            "No test names it directly; I'll read {name} to see who depends on its result.",
            "The tests reach it indirectly. Where is {name} itself?"], name=sym.qualname))
        s.act([("read_file", {"path": sym.path, "start_line": sym.start_line, "end_line": sym.end_line})], content=say(rng, [
            "Reading its body.", "Here is what it computes."]))
    named = failing[:MAX_LISTED]
    more = f" and {len(failing) - len(named)} more" if len(failing) > len(named) else ""
    if failing:
        answer = f"These tests would fail: {', '.join(named)}{more}."
        s.thought_before_submit = say(rng, ["{k} of the {n} tests that exercise it check its result.",
                                            "The tests that depend on that value would break: {k} of {n}."], k=len(failing), n=len(tests))
    else:
        answer = f"None of the {len(tests)} tests that run it would fail: they do not check that result."
        s.thought_before_submit = say(rng, ["The tests run it but never look at what it returns.",
                                            "Nothing checks that value."])
    return U._finish(s, answer, "runtime", commit, stats, meta, {"ok": True, "executed": True, "failing": failing, "ran": tests})


# ---- fail-to-pass reproductions of historical fixes, newest first ----------------------------------------
def repro_shards(ws, snap, repo, cutoff: str, out: Path, wanted: set, stats: U.UnitStats, allowed: set, opts, scrub,
                 counts: Counter | None = None) -> tuple[int, int]:
    """The seed paper's core runtime form: for each historical fix that came with tests, a reproduction
    test that fails on the pre-fix code and passes on the fixed code — both executed. The newest fixes
    before the cutoff first, at most ``MAX_REPROS`` episodes from ``REPRO_ATTEMPTS`` tries, in time."""
    started = time.monotonic()
    made = reused = tried = episodes = 0
    for commit, parent in H.candidate_commits(repo, cutoff, limit=opts.max_commits):
        if tried >= REPRO_ATTEMPTS or episodes >= MAX_REPROS or _full(opts, counts):
            break
        if not U._FIX.search(commit.summary):
            continue
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "repro", commit.hexsha, getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            wanted.add(key)
            reused += 1
            tried += 1
            episodes += _reused(shard, counts)
            continue
        change = H.change_of(commit, parent)
        # the files the episode shows and writes must be learnable (the commit's changelog fragments or docs
        # need not be: the episode never opens them)
        if change is None or not _reproducible(change) or not all(fc.path in allowed for fc in _test_changes(change) + _code_changes(change)):
            continue
        if time.monotonic() - started > UNIT_SECONDS:
            stats.rejected["runtime time budget spent (reproductions)"] += 1
            break
        tried += 1
        wanted.add(key)
        episode = repro_episode(ws, snap, change, stats, scrub, _teacher(opts))
        _saved(shard, [episode] if episode else [], stats, counts)
        episodes += episode is not None
        made += 1
    if snap.commit != cutoff:
        moved = snap.checkout(cutoff)
        scrub(snap.tree, moved)
        ws.invalidate(moved)
    ws.run_env = repo_environment(ws.root).run_env()
    return made, reused


def _test_changes(change) -> list:
    return [fc for fc in change.files if fc.new_path and is_test_file(fc.new_path) and fc.new_path.endswith(".py") and fc.after
            and PurePosixPath(fc.new_path).name != "conftest.py"]


def _code_changes(change) -> list:
    return [fc for fc in change.files if not is_test_file(fc.path) and fc.kind == "M" and fc.path.endswith(".py")]


def _reproducible(change) -> bool:
    return bool(_test_changes(change)) and bool(_code_changes(change))


def fail_to_pass(before: PytestRun, after: PytestRun) -> list[str]:
    """Tests that pass on the fixed code and failed on the old one (a failed test, or a test module that
    could not even be collected there)."""
    broken_files = {e.split("::")[0] for e in before.errors}
    return sorted(t for t, o in after.tests.items() if o == PASSED
                  and (before.tests.get(t) in (FAILED, ERROR) or (t not in before.tests and t.split("::")[0] in broken_files)))


def _fail_to_pass_runs(ws, tenv: TestEnvironment, code: list, test_paths: list[str]) -> tuple[list[str], str]:
    """Run ``test_paths`` on the code as it is, then with the fix's code in place (put back after):
    (the tests that fail before and pass after, why there are none)."""
    before = run_pytest(tenv, test_paths, timeout_s=120)
    for fc in code:
        (ws.root / fc.path).write_text(fc.after, encoding="utf-8")
    try:
        after = run_pytest(tenv, test_paths, timeout_s=120)
    finally:
        for fc in code:
            (ws.root / fc.path).write_text(fc.before, encoding="utf-8")
    f2p = fail_to_pass(before, after)
    if f2p:
        return f2p, ""
    return [], "its tests do not run after the fix" if not after.with_outcome(PASSED) else "its tests already pass before the fix"


def repro_episode(ws, snap, change, stats: U.UnitStats, scrub, teacher: Teacher | None = None) -> dict | None:
    tests, code = _test_changes(change), _code_changes(change)
    rng = random.Random(f"repro:{change.commit}")
    moved = snap.checkout(change.parent)
    scrub(snap.tree, moved)
    ws.invalidate(moved)
    ws.forget_changes()
    tenv = repo_environment(ws.root)  # the parent's own layout and configuration
    ws.run_env = tenv.run_env()
    test_paths = [fc.new_path for fc in tests]
    task = f"Write a test that reproduces this bug, failing on the current code:\n\n{change.task}"
    meta = {"form": "fail-to-pass reproduction", "fix_commit": change.commit}

    def verify(result):
        written = sorted(rel for rel in ws.originals if rel.endswith(".py") and is_test_file(rel))
        f2p, why = _fail_to_pass_runs(ws, tenv, code, written) if written else ([], "no test written")
        if not f2p:
            return f"reproduction: {why}"
        return {"ok": True, "fails_before": True, "passes_after": True, "fail_to_pass": f2p}

    try:
        taught = _taught(teacher, stats, ws, task, verify, commit=change.parent, meta=meta)
        if taught:
            return taught
        s = OracleSession(ws, task)
        target = code[0]
        if U._locate(s, ws, target.path, change.task, rng):
            line = U._first_changed_line(target.opcodes)
            near = sorted(n for p, n in s.anchors if p == target.path and abs(n - line) <= 30)
            if near:
                s.act([("read_file", {"path": target.path, "start_line": near[0], "end_line": near[0] + 30})], content=say(rng, [
                    "{path}:{line} is where it happens; reading the code around it.", "Let me read {path} from line {line}."],
                    path=target.path, line=near[0]))
        for fc in tests:
            if fc.before is None or not (ws.root / fc.new_path).exists():
                s.act([("create_file", {"path": fc.new_path, "content": fc.after})], content=say(rng, [
                    "The reproduction goes in a new test file, {path}.", "I'll write {path} with tests that show the bug."],
                    path=fc.new_path))
                continue
            script = U.edit_script(fc.before, fc.after, fc.opcodes)
            if script is None:
                stats.rejected["no unique edit script"] += 1
                return None
            if not U._locate(s, ws, fc.new_path, change.task + " " + fc.new_path, rng):
                stats.rejected["file not reachable"] += 1
                return None
            if not U._edit_seen(s, ws, fc.new_path, fc.before, script, rng, stats):
                return None
        # executed outside the episode, by node id: before the fix, then with the fix's code in place
        f2p, why = _fail_to_pass_runs(ws, tenv, code, test_paths)
        if not f2p:
            stats.rejected[f"reproduction: {why}"] += 1
            return None
        command = "python -m pytest -q -p no:cacheprovider " + " ".join(shlex.quote(t) for t in f2p[:MAX_LISTED])
        ran = s.act([("run", {"command": command, "timeout": 120})], content=say(rng, [
            "Now run the new tests on the current code; they should fail.", "Do they fail on the code as it is?"]))[0]
        if "[exit code 0" in ran:
            stats.rejected["reproduction: passes in the episode's run"] += 1
            return None
        s.thought_before_submit = say(rng, ["They fail as expected: the bug is reproduced.", "Failing, as they should before the fix."])
        named = ", ".join(f2p[:MAX_LISTED]) + (f" and {len(f2p) - MAX_LISTED} more" if len(f2p) > MAX_LISTED else "")
        return U._finish(s, f"{named} reproduce{'s' if len(f2p) == 1 else ''} it: failing on the current code, passing once fixed.",
                         "runtime", change.parent, stats, meta, {"ok": True, "fails_before": True, "passes_after": True, "fail_to_pass": f2p})
    finally:
        U._undo_files(ws.root, change)
        ws.invalidate([p for fc in change.files for p in (fc.old_path, fc.new_path) if p])
        ws.forget_changes()
