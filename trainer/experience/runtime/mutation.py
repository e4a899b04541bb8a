"""Mutations: which tests break when a function's result is dropped (executed, not guessed). The first
``return <value>`` of a function the passing tests called becomes ``return None``, those tests run again,
and the episode names the ones that fail."""

from __future__ import annotations

import ast
import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path

from agent.index import is_test_file
from trainer.experience import units as U
from trainer.experience.oracle import OracleSession, say
from trainer.experience.runtime.common import MAX_LISTED, TRACE_VERSION, UNIT_SECONDS, reuse_shard, save_shard, symbol_at, taught_episode, unit_full
from trainer.experience.teacher import Teacher, teacher_from_options
from trainer.experience.testenv import ERROR, FAILED, PASSED, TestEnvironment, run_pytest

MUTATION_TESTS = 25  # tests run against one mutation, at most


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
        sym = symbol_at(index, path, int(line))
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
        if unit_full(opts, counts):
            break
        files = sorted({t.split("::")[0] for t in tests})
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "mutation", sym.path, sym.qualname, blobs[sym.path],
                                         [blobs.get(f) for f in files], tests, getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        wanted.add(key)
        if (out / "runtime" / f"{key}.jsonl").exists():
            reused += 1
            reuse_shard(out / "runtime" / f"{key}.jsonl", counts)
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
        if unit_full(opts, counts):
            wanted.discard(key)
            stats.rejected["over the unit's target"] += 1
            continue
        rng = random.Random(f"{opts.seed}:mutation:{sym.path}:{sym.qualname}")
        episode = mutation_episode(ws, tenv, sym, [t for t in tests if t in stable], commit, stats, rng, teacher_from_options(opts))
        save_shard(out / "runtime" / f"{key}.jsonl", [episode] if episode else [], stats, counts)
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
    taught = taught_episode(teacher, stats, ws, task, verify, commit=commit, meta=meta, read_only=True)
    if taught:
        return taught
    s, answer = _oracle_names_failing(ws, task, sym, tests, failing, rng)
    return U.finish_episode(s, answer, "runtime", commit, stats, meta, {"ok": True, "executed": True, "failing": failing, "ran": tests})


def _oracle_names_failing(ws, task: str, sym, tests: list[str], failing: list[str], rng: random.Random) -> tuple[OracleSession, str]:
    """The oracle's steps to the failing tests (the references to the function, a test file among them or
    the function itself) and its answer."""
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
    return s, answer
