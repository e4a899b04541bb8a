"""Unit 2, contextual implementation: a Python function's body is removed; the episode gathers context
with the tools and writes it back (next to the completion-form episode of the same body)."""

from __future__ import annotations

import random
import re

from agent.episode import completion_episode
from agent.index import RepoIndex, Symbol, is_test_file
from agent.tools import Workspace
from trainer.experience import design as D
from trainer.experience.oracle import OracleSession, say
from trainer.experience.teacher import Teacher, taught
from trainer.experience.units.base import UnitStats, code_verifier, finish_episode

MAX_BODY_LINES = 40


def implementation_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, rng: random.Random, stats: UnitStats,
                            limit: int = 8, test_runner=None, teacher: Teacher | None = None):
    """Remove a Python function body; gather context with the tools; write it back with an edit. With a
    ``teacher``, it writes the body first, kept when it verifies (``code_verifier``), else the oracle's."""
    if not path.endswith(".py") or is_test_file(path):
        return []
    original = ws.read_text(path)
    lines = original.splitlines(keepends=True)
    candidates = [s for s in index.files[path].symbols if s.kind in ("function", "method") and s.body_start_line
                  and 2 <= s.end_line - s.body_start_line + 1 <= MAX_BODY_LINES and D.public(s)]
    rng.shuffle(candidates)
    out = []
    for sym in candidates[:limit]:
        assert sym.body_start_line is not None  # candidates have a body
        body = "".join(lines[sym.body_start_line - 1 : sym.end_line])
        first_line = lines[sym.body_start_line - 1]
        indent = first_line[: len(first_line) - len(first_line.lstrip(" \t"))]
        head = "".join(lines[sym.start_line - 1 : sym.body_start_line - 1])
        stub = f"{indent}raise NotImplementedError  # TODO: implement\n"
        stubbed = "".join(lines[: sym.body_start_line - 1]) + stub + "".join(lines[sym.end_line :])
        if original.count(head + body) != 1:
            stats.rejected["ambiguous body"] += 1
            continue
        # the same body as inline completion sees it: written on from the code above it
        completion = completion_episode("implementation", commit, "".join(lines[: sym.body_start_line - 1]), body.rstrip("\n"),
                                        meta={"symbol": sym.qualname, "path": path})
        stats.add(completion)
        out.append(completion)
        ws.write_text(path, stubbed)
        try:
            episode = _implementation_episode(ws, index, sym, path, head, stub, body, original, commit, rng, stats, test_runner,
                                              teacher)
            if episode is not None:
                out.append(episode)
        finally:
            ws.write_text(path, original)
            ws.forget_changes()
    return out


def _implementation_episode(ws, index, sym: Symbol, path: str, head: str, stub: str, body: str, original: str, commit: str,
                            rng: random.Random, stats: UnitStats, test_runner, teacher: Teacher | None = None):
    task = f"Implement {sym.qualname} in {path}; its body currently raises NotImplementedError."
    behaviour = D.first_sentence(sym.doc)
    if behaviour:
        task += f" It should: {behaviour}."
    if teacher is not None:
        episode = _taught_implementation(ws, index, sym, path, original, task, commit, stats, teacher)
        if episode is not None:
            return episode
    s = OracleSession(ws, task)
    found = s.act([("find_definition", {"symbol": sym.qualname})], content=say(rng, [
        "Where exactly is {qualname}? Let me find its definition.", "First I locate {qualname} in {path}.",
        "I'll start from the definition of {qualname}."], qualname=sym.qualname, path=path))[0]
    if f"{path}:{sym.start_line}" not in found:  # a common name: the listing stops before this file
        s.act([("search", {"pattern": f"def {sym.name}(", "path": path})], content=say(rng, [
            "Many definitions share that name; I'll search {path} itself.", "Too many {name}s. Searching in {path} only."],
            path=path, name=sym.name))
    refs = s.act([("find_references", {"symbol": sym.name})], content=say(rng, [
        "It is at {path}:{line}. How is `{name}` used elsewhere?",
        "{path}:{line} it is. The callers of `{name}` show what it must return.",
        "Found at line {line}. Next, the places that use `{name}`."], path=path, line=sym.start_line, name=sym.name))[0]
    uses = re.findall(r"^(\S+):(\d+)", refs, re.M)
    lo = max(1, sym.start_line - 12)
    stub_line = sym.body_start_line
    assert stub_line is not None  # an implementation task is made only for a symbol with a body
    s.act([("read_file", {"path": path, "start_line": lo, "end_line": stub_line + 12})], content=(say(rng, [
        "{n} uses, e.g. {first}. Now the code around the stub.",
        "`{name}` is used at {first} ({n} in all); I'll read {path} around line {line}."],
        n=len(uses), first=":".join(uses[0]), name=sym.name, path=path, line=sym.start_line) if uses else say(rng, [
        "Nothing else uses `{name}`. The code around the stub will have to say enough.",
        "No references to `{name}`; I'll read the surrounding code in {path}."], name=sym.name, path=path)))
    # a test that mentions the symbol, at the line the listing showed
    test_hits = [(p, int(n)) for p, n in uses if is_test_file(p) and p.endswith(".py")]
    if test_hits:
        tpath, tline = test_hits[0]
        s.act([("read_file", {"path": tpath, "start_line": max(1, tline - 10), "end_line": tline + 10})], content=say(rng, [
            "{tpath}:{tline} uses it in a test; that pins the expected behaviour.",
            "A test mentions `{name}` at {tpath}:{tline}. Let me read it."], tpath=tpath, tline=tline, name=sym.name))
    first_line = next((line.strip() for line in body.splitlines() if line.strip()), "")
    s.act([("edit", {"path": path, "old": head + stub, "new": head + body})], content=say(rng, [
        "Line {stub_line} is the stub. I'll replace it with a body that starts `{first}`.",
        "Now I can write {qualname}: the body begins with `{first}`.",
        "Replacing the NotImplementedError at line {stub_line} with the implementation."],
        stub_line=stub_line, first=first_line[:80], qualname=sym.qualname))
    verified = {"ok": ws.read_text(path) == original, "matches_original": ws.read_text(path) == original}
    tests = sorted({p for p, _ in test_hits})
    if tests and test_runner is not None:
        s.thought_before_run = say(rng, ["Now the tests that use it: {tests}.", "Let me run {tests}."], tests=", ".join(tests))
        outcome = test_runner(s, tests)
        verified["tests"] = outcome
        verified["ok"] = verified["ok"] and outcome in ("passed", "not run")
    if not verified["ok"]:
        stats.rejected["not verified"] += 1
        return None
    s.thought_before_submit = say(rng, ["{qualname} is written.", "That completes {qualname}."], qualname=sym.qualname)
    return finish_episode(s, f"Implemented {sym.qualname} in {path} ({sym.signature}); the body starts with `{first_line[:80]}`.",
                   "implementation", commit, stats, {"symbol": sym.qualname, "path": path}, verified)



def _taught_implementation(ws: Workspace, index: RepoIndex, sym: Symbol, path: str, original: str, task: str, commit: str,
                           stats: UnitStats, teacher: Teacher) -> dict | None:
    """The teacher's body, kept when it verifies: the original code, or (where it differs) passing the tests
    that use the symbol (at most three test files)."""
    tests = sorted({r.path for r in index.references(sym.name) if is_test_file(r.path) and r.path.endswith(".py")})[:3]
    verify = code_verifier(ws, {path: original}, {path: ws.read_text(path)}, tests, {"matches_original": True})
    return taught(teacher, stats, ws, task, verify, unit="implementation", commit=commit, meta={"symbol": sym.qualname, "path": path})
