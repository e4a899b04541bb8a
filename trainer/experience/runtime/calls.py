"""Episodes from the trace: predict a call's output (answered with the observed value) and write a test
that pins it (executed, must pass); ``runtime_shards`` is the unit's entry: trace, these, then the mutations."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from agent.index import is_test_file
from trainer.experience import units as U
from trainer.experience.oracle import OracleSession, say
from trainer.experience.runtime.common import TRACE_VERSION, reuse_shard, save_shard, symbol_at, taught_episode, unit_full
from trainer.experience.runtime.mutation import mutation_shards
from trainer.experience.runtime.trace import empty_reason, load_trace
from trainer.experience.teacher import Teacher, teacher_from_options
from trainer.experience.testenv import PASSED, TestEnvironment, repo_environment, run_pytest


def _test_home(ws, trace: dict) -> str:
    """Where a new test goes: the folder of the test files that passed in the traced run, else the root."""
    folders = Counter(str(PurePosixPath(t.split("::")[0]).parent) for t, o in trace["tests"].items()
                      if o == PASSED and is_test_file(t.split("::")[0]))
    return folders.most_common(1)[0][0] if folders else "."


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
        sym = symbol_at(index, path, int(line))
        if sym is None or sym.qualname != qualname:
            continue
        args, ret = cases[0]
        call = f"{sym.qualname}({', '.join(args)})"
        meta = {"form": "predict output", "symbol": sym.qualname}
        taught = taught_episode(teacher, stats, ws, f"What does `{call}` return? ({path})",
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
        episode = U.finish_episode(s, f"`{call}` returns `{ret}` (observed when the tests ran).", "runtime", commit, stats,
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
    taught = taught_episode(teacher, stats, ws, task, verify, commit=commit, meta=meta)
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
    return U.finish_episode(s, f"Added {test_path}; it passes.", "runtime", commit, stats, meta, {"ok": True, "test_passed": True})


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
    why = empty_reason(trace)
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
        if unit_full(opts, counts):
            stats.rejected["over the unit's target"] += 1
            continue
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "runtime", opts.seed, path, blobs[path], examples,
                                         getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        wanted.add(key)
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            reused += 1
            reuse_shard(shard, counts)
            continue
        rng = random.Random(f"{opts.seed}:runtime:{path}")
        episodes = runtime_episodes(ws, index, tenv, path, examples, trace, commit, rng, stats, teacher=teacher_from_options(opts))
        save_shard(shard, episodes, stats, counts)
        made += 1
    m, r = mutation_shards(ws, index, tenv, trace, commit, out, wanted, stats, blobs, opts, counts)
    return made + m, reused + r

