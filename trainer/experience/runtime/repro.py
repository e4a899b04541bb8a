"""Fail-to-pass reproductions of historical fixes, newest first: for each fix that came with tests, the
episode writes those tests on the pre-fix code, where they must fail; they are also run with the fix's code
in place, where they must pass (both executed, by node id)."""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import time
from collections import Counter
from pathlib import Path, PurePosixPath

from agent.index import is_test_file
from trainer.experience import history as H
from trainer.experience import units as U
from trainer.experience.oracle import OracleSession, say
from trainer.experience.runtime.common import MAX_LISTED, TRACE_VERSION, UNIT_SECONDS, reuse_shard, save_shard, taught_episode, unit_full
from trainer.experience.teacher import Teacher, teacher_from_options
from trainer.experience.testenv import ERROR, FAILED, PASSED, PytestRun, TestEnvironment, repo_environment, run_pytest

MAX_REPROS = 6  # fail-to-pass reproductions per build, newest fixes first
REPRO_ATTEMPTS = 25  # fix commits (with a test and a code change) tried for them


def repro_shards(ws, snap, repo, cutoff: str, out: Path, wanted: set, stats: U.UnitStats, allowed: set, opts, scrub,
                 counts: Counter | None = None) -> tuple[int, int]:
    """The seed paper's core runtime form: for each historical fix that came with tests, a reproduction
    test that fails on the pre-fix code and passes on the fixed code — both executed. The newest fixes
    before the cutoff first, at most ``MAX_REPROS`` episodes from ``REPRO_ATTEMPTS`` tries, in time."""
    started = time.monotonic()
    made = reused = tried = episodes = 0
    for commit, parent in H.candidate_commits(repo, cutoff, limit=opts.max_commits):
        if tried >= REPRO_ATTEMPTS or episodes >= MAX_REPROS or unit_full(opts, counts):
            break
        if not U.FIX_SUBJECT.search(commit.summary):
            continue
        key = hashlib.sha256(json.dumps([U.GENERATOR_VERSION, TRACE_VERSION, "repro", commit.hexsha, getattr(opts, "teacher", None)]).encode()).hexdigest()[:20]
        shard = out / "runtime" / f"{key}.jsonl"
        if shard.exists():
            wanted.add(key)
            reused += 1
            tried += 1
            episodes += reuse_shard(shard, counts)
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
        episode = repro_episode(ws, snap, change, stats, scrub, teacher_from_options(opts))
        save_shard(shard, [episode] if episode else [], stats, counts)
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
        taught = taught_episode(teacher, stats, ws, task, verify, commit=change.parent, meta=meta)
        if taught:
            return taught
        s = OracleSession(ws, task)
        if not _oracle_writes_tests(s, ws, change, tests, code[0], rng, stats):
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
        return U.finish_episode(s, f"{named} reproduce{'s' if len(f2p) == 1 else ''} it: failing on the current code, passing once fixed.",
                         "runtime", change.parent, stats, meta, {"ok": True, "fails_before": True, "passes_after": True, "fail_to_pass": f2p})
    finally:
        U.undo_files(ws.root, change)
        ws.invalidate([p for fc in change.files for p in (fc.old_path, fc.new_path) if p])
        ws.forget_changes()


def _oracle_writes_tests(s: OracleSession, ws, change, tests: list, target, rng: random.Random, stats: U.UnitStats) -> bool:
    """The oracle's steps to the fix's tests: find the code the fix changes (``target``) and read around the
    change, then write the tests (a new file whole, an existing one by the fix's own edits). False when a
    step cannot be shown (named in ``stats``)."""
    if U.locate(s, ws, target.path, change.task, rng):
        line = U.first_changed_line(target.opcodes)
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
            return False
        if not script:
            continue  # the test file's text did not change (its mode did): nothing to edit, as in the replay
        if not U.locate(s, ws, fc.new_path, change.task + " " + fc.new_path, rng):
            stats.rejected["file not reachable"] += 1
            return False
        if not U.edit_seen(s, ws, fc.new_path, fc.before, script, rng, stats):
            return False
    return True
