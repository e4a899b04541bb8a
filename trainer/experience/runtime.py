"""Unit 4, semantic-runtime alignment: what the code actually does when it runs.

The repository's own tests run once in the scratch snapshot (sandboxed: time and memory limits, no
network) with a small profiler plugin that records, for functions of the repository, literal arguments
and literal return values it saw. Episodes then (a) predict a call's output, answered with the observed
value, (b) write a test that pins that behaviour, which is executed and must pass, and (c) say which tests
fail when a function's result is dropped (a mutation, executed against a passing baseline). The trace is cached
by the content of every learnable file, so it re-runs only when the code changed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
from pathlib import Path

from agent.episode import save_episodes
from agent.index import is_test_file
from agent.sandbox import clean_env, run_limited
from trainer.experience import units as U
from trainer.experience.oracle import OracleSession

PLUGIN = r'''
"""SWE-Spot trace plugin: literal inputs and outputs of the repository's functions during a test run."""
import ast, json, os, sys, threading

ROOT = os.environ["SWESPOT_TRACE_ROOT"].rstrip("/") + "/"
OUT = os.environ["SWESPOT_TRACE_OUT"]
SEEN = {}
PENDING = {}


def _literal(value):
    try:
        text = repr(value)
    except Exception:
        return None
    if len(text) > 80:
        return None
    try:
        ast.literal_eval(text)
    except Exception:
        return None
    return text


def _is_test(path):
    name = os.path.basename(path)
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py" or "/tests/" in path


def _profile(frame, event, arg):
    code = frame.f_code
    path = code.co_filename
    if not path.startswith(ROOT) or _is_test(path):
        return
    if event == "call":
        names = code.co_varnames[: code.co_argcount]
        if names and names[0] in ("self", "cls"):
            return
        args = [_literal(frame.f_locals.get(n)) for n in names]
        if all(a is not None for a in args):
            PENDING[id(frame)] = args
    elif event == "return":
        args = PENDING.pop(id(frame), None)
        if args is None or arg is None:
            return
        ret = _literal(arg)
        if ret is None:
            return
        key = path[len(ROOT):] + "::" + code.co_qualname + "::" + str(code.co_firstlineno)
        examples = SEEN.setdefault(key, [])
        example = [args, ret]
        if example not in examples and len(examples) < 3:
            examples.append(example)


def pytest_configure(config):
    sys.setprofile(_profile)
    threading.setprofile(_profile)


def pytest_unconfigure(config):
    sys.setprofile(None)
    with open(OUT, "w") as fh:
        json.dump(SEEN, fh)
'''


def trace_tests(root: Path, timeout_s: float = 300) -> tuple[dict, str]:
    """Run the tests under the trace plugin; (examples, how it went)."""
    with tempfile.TemporaryDirectory(prefix="swespot-trace-") as tmp:
        (Path(tmp) / "_swespot_trace.py").write_text(PLUGIN)
        out = Path(tmp) / "trace.json"
        env = clean_env({"PYTHONPATH": f"{tmp}:{root}", "SWESPOT_TRACE_ROOT": str(root), "SWESPOT_TRACE_OUT": str(out)}, home=tmp)
        result = run_limited(["python", "-m", "pytest", "-q", "-p", "_swespot_trace", "-p", "no:cacheprovider"], root,
                             timeout_s=timeout_s, memory_mb=4096, env=env, writable=[tmp])
        if not out.exists():
            return {}, "timed out" if result.timed_out else f"no trace (exit {result.returncode})"
        return json.loads(out.read_text()), "timed out" if result.timed_out else f"exit {result.returncode}"


def _module_of(path: str) -> str | None:
    if not path.endswith(".py"):
        return None
    mod = path[:-3].replace("/", ".")
    mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
    return mod if all(part.isidentifier() for part in mod.split(".")) else None


def runtime_episodes(ws, index, path: str, examples: dict, commit: str, rng: random.Random, stats: U.UnitStats, limit: int = 6):
    out = []
    items = sorted(examples.items())
    rng.shuffle(items)
    for key, cases in items:
        if len(out) >= limit:
            break
        _, qualname, line = key.split("::")
        sym = next((s for s in index.files[path].symbols if s.start_line == int(line)), None)
        if sym is None:
            continue
        args, ret = cases[0]
        call = f"{sym.name}({', '.join(args)})"
        s = OracleSession(ws, f"What does `{call}` return? ({path})", read_only=True)
        s.act([("find_definition", {"symbol": sym.qualname})])
        s.act([("read_file", {"path": path, "start_line": sym.start_line, "end_line": sym.end_line})])
        episode = U._finish(s, f"`{call}` returns `{ret}` (observed when the tests ran).", "runtime", commit, stats,
                            {"form": "predict output", "symbol": sym.qualname}, {"ok": True, "observed": "test run"})
        if episode:
            out.append(episode)
        module = _module_of(path)
        if module and sym.parent is None and len(out) < limit:
            test_path = f"tests/test_swespot_{sym.name}.py" if (ws.root / "tests").is_dir() else f"test_swespot_{sym.name}.py"
            if (ws.root / test_path).exists():
                continue
            body = f"from {module} import {sym.name}\n\n\ndef test_{sym.name}_behaviour():\n    assert {call} == {ret}\n"
            s = OracleSession(ws, f"Write a test for {sym.qualname} ({path}) that pins what it returns for {', '.join(args) or 'no arguments'}.")
            s.act([("read_file", {"path": path, "start_line": sym.start_line, "end_line": sym.end_line})])
            s.act([("create_file", {"path": test_path, "content": body})])
            ran = s.act([("run", {"command": f"python -m pytest -q -p no:cacheprovider {test_path}", "timeout": 60})])[0]
            try:
                (ws.root / test_path).unlink(missing_ok=True)
                ws.forget_changes()
            finally:
                ws.invalidate([test_path])
            if "[exit code 0" not in ran:
                stats.rejected["written test did not pass"] += 1
                continue
            episode = U._finish(s, f"Added {test_path}; it passes.", "runtime", commit, stats,
                                {"form": "write a passing test", "symbol": sym.qualname}, {"ok": True, "test_passed": True})
            if episode:
                out.append(episode)
    return out


def runtime_shards(ws, index, commit: str, out: Path, wanted: set, stats: U.UnitStats, blobs: dict, opts) -> tuple[int, int]:
    """Trace once (cached by content), then one shard per source file with observed calls."""
    if not any(is_test_file(p) and p.endswith(".py") for p in blobs):
        stats.rejected["no python tests to run"] += 1
        return 0, 0
    digest = hashlib.sha256(json.dumps(sorted(blobs.items())).encode()).hexdigest()[:20]
    cache = out / ".cache" / f"trace-{digest}.json"
    if cache.exists():
        trace = json.loads(cache.read_text())
    else:
        examples, how = trace_tests(ws.root)
        trace = {"examples": examples, "run": how}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(trace))
    by_file: dict[str, dict] = {}
    for key, cases in trace["examples"].items():
        path = key.split("::")[0]
        if path in blobs and path in index.files:
            by_file.setdefault(path, {})[key] = cases
    made = reused = 0
    for path, examples in sorted(by_file.items()):
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, "runtime", opts.seed, path, blobs[path], examples]).encode()).hexdigest()[:20]
        wanted.add(key)
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            reused += 1
            continue
        rng = random.Random(f"{opts.seed}:runtime:{path}")
        save_episodes(shard, runtime_episodes(ws, index, path, examples, commit, rng, stats), dropped=stats.rejected)
        made += 1
    # mutations: which tests break when a function's result is dropped (executed, not guessed)
    targets = [sym for path in sorted(index.files) if path in blobs and path.endswith(".py") and not is_test_file(path)
               for sym in index.files[path].symbols if sym.kind == "function" and sym.body_start_line and index.tests_for(sym)]
    random.Random(f"{opts.seed}:mutation").shuffle(targets)
    for sym in targets[: opts.max_mutations]:
        tests = index.tests_for(sym)
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, "mutation", sym.path, blobs[sym.path], [blobs.get(t) for t in tests]]).encode()).hexdigest()[:20]
        wanted.add(key)
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            reused += 1
            continue
        episode = mutation_episode(ws, sym, tests, commit, stats)
        save_episodes(shard, [episode] if episode else [], dropped=stats.rejected)
        made += 1
    return made, reused


_RETURN = re.compile(r"^([ \t]*)return\b.*$", re.M)
_FAILED = re.compile(r"^FAILED (\S+?::\S+)", re.M)


def _failing_tests(root: Path, tests: list[str]) -> tuple[list[str] | None, str]:
    env = clean_env({"PYTHONPATH": str(root)})
    result = run_limited(["python", "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests], root, timeout_s=120, env=env)
    if result.timed_out or result.returncode not in (0, 1):
        return None, result.output
    return sorted(set(_FAILED.findall(result.output))), result.output


def mutation_episode(ws, sym, tests: list[str], commit: str, stats: U.UnitStats) -> dict | None:
    """Replace the function's first ``return ...`` with ``return None``, run its tests, and teach which
    of them fail. The baseline must pass first, so every failure is the mutation's doing."""
    original = ws.read_text(sym.path)
    lines = original.splitlines(keepends=True)
    body = "".join(lines[sym.body_start_line - 1 : sym.end_line])
    match = _RETURN.search(body)
    if match is None or match.group(0).strip() == "return None":
        return None
    baseline, _ = _failing_tests(ws.root, tests)
    if baseline is None or baseline:
        stats.rejected["tests do not pass before the mutation"] += 1
        return None
    mutated_body = body[: match.start()] + f"{match.group(1)}return None" + body[match.end():]
    mutated = "".join(lines[: sym.body_start_line - 1]) + mutated_body + "".join(lines[sym.end_line:])
    (ws.root / sym.path).write_text(mutated, encoding="utf-8")
    try:
        failing, _ = _failing_tests(ws.root, tests)
    finally:
        (ws.root / sym.path).write_text(original, encoding="utf-8")
        ws.invalidate([sym.path])
    if failing is None:
        stats.rejected["mutation run failed"] += 1
        return None
    changed = match.group(0).strip()
    s = OracleSession(ws, f"In {sym.path}, if `{changed}` in {sym.qualname} became `return None`, which tests would fail?", read_only=True)
    s.act([("find_references", {"symbol": sym.name})])
    s.act([("read_file", {"path": tests[0], "start_line": 1, "end_line": 80})])
    answer = ("These tests would fail: " + ", ".join(failing) + ".") if failing else "None of its tests would fail: they do not check that result."
    return U._finish(s, answer, "runtime", commit, stats, {"form": "which tests fail", "symbol": sym.qualname},
                     {"ok": True, "executed": True, "failing": failing})


def repro_shards(ws, snap, repo, cutoff: str, out: Path, wanted: set, stats: U.UnitStats, allowed: set, opts, scrub) -> tuple[int, int]:
    """The seed paper's core runtime form: for each historical fix that came with tests, a reproduction
    test that fails on the pre-fix code and passes on the fixed code — both executed."""
    from trainer.experience import history as H

    made = reused = 0
    for commit, parent in H.candidate_commits(repo, cutoff, limit=opts.max_commits):
        if not U._FIX.search(commit.summary):
            continue
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, "repro", commit.hexsha]).encode()).hexdigest()[:20]
        wanted.add(key)
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            reused += 1
            continue
        change = H.change_of(commit, parent)
        episode = None
        if change is not None and all(fc.path in allowed for fc in change.files if fc.new_path):
            episode = repro_episode(ws, snap, change, stats, scrub)
        save_episodes(shard, [episode] if episode else [], dropped=stats.rejected)
        made += 1
    if snap.commit != cutoff:
        moved = snap.checkout(cutoff)
        scrub(snap.tree, moved)
        ws.invalidate(moved)
    return made, reused


def repro_episode(ws, snap, change, stats: U.UnitStats, scrub) -> dict | None:
    tests = [fc for fc in change.files if fc.new_path and is_test_file(fc.new_path) and fc.new_path.endswith(".py") and fc.after]
    code = [fc for fc in change.files if not is_test_file(fc.path) and fc.kind == "M"]
    if not tests or not code:
        return None
    moved = snap.checkout(change.parent)
    scrub(snap.tree, moved)
    ws.invalidate(moved)
    ws.forget_changes()
    test_paths = [fc.new_path for fc in tests]
    try:
        s = OracleSession(ws, f"Write a test that reproduces this bug, failing on the current code: {change.subject}")
        target = code[0]
        line = U._first_changed_line(target.opcodes)
        s.act([("read_file", {"path": target.path, "start_line": max(1, line - 10), "end_line": line + 15})])
        for fc in tests:
            if fc.before is None or not (ws.root / fc.new_path).exists():
                s.act([("create_file", {"path": fc.new_path, "content": fc.after})])
            else:
                script = U.edit_script(fc.before, fc.after, fc.opcodes)
                if script is None:
                    return None
                s.act([("edit", {"path": fc.new_path, "old": old, "new": new}) for old, new in script])
        before = s.act([("run", {"command": "python -m pytest -q -p no:cacheprovider " + " ".join(test_paths), "timeout": 120})])[0]
        fails_before = "[exit code 1" in before
        for fc in code:  # the fix itself, outside the episode: does the test pass on the fixed code?
            (ws.root / fc.path).write_text(fc.after, encoding="utf-8")
        env = clean_env({"PYTHONPATH": str(ws.root)})
        after = run_limited(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_paths], ws.root, timeout_s=120, env=env)
        passes_after = after.returncode == 0
        if not (fails_before and passes_after):
            stats.rejected["reproduction does not fail before and pass after"] += 1
            return None
        return U._finish(s, f"{', '.join(test_paths)} reproduces it: it fails on the current code and passes once fixed.",
                         "runtime", change.parent, stats, {"form": "fail-to-pass reproduction", "fix_commit": change.commit},
                         {"ok": True, "fails_before": True, "passes_after": True})
    finally:
        U._undo_files(ws.root, change)
        ws.invalidate([p for fc in change.files for p in (fc.old_path, fc.new_path) if p])
        ws.forget_changes()
