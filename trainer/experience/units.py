"""The four units of Repository-Centric Experience, each a generator of episodes.

Every episode is an oracle session (``oracle.py``): the policy knows the answer from the index or the
history, but every observation comes from the real tools run on a snapshot of the repository at the
episode's commit. An episode whose tools fail or whose result does not verify is rejected and counted.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from agent.episode import completion_episode
from agent.errors import SwespotError
from agent.index import RepoIndex, Symbol, is_test_file
from agent.tools import Workspace
from trainer.experience.history import line_opcodes
from trainer.experience.oracle import OracleSession

GENERATOR_VERSION = 2  # 2: completion-form episodes next to the agentic ones
MAX_BODY_LINES = 40
_WORD = re.compile(r"[A-Za-z_][A-Za-z_]{4,}")
_FIX = re.compile(r"\b(fix|fixes|fixed|bug|crash|error|wrong|broken|regression)\b", re.I)


@dataclass
class UnitStats:
    made: int = 0
    verified: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens: int = 0

    def add(self, episode: dict) -> None:
        self.made += 1
        self.verified += bool(episode["verified"].get("ok"))
        self.tokens += sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")) for m in episode["messages"]) // 4

    def to_dict(self) -> dict:
        return {"made": self.made, "verified": self.verified, "rejected": dict(self.rejected), "tokens": self.tokens}


def _first_sentence(doc: str | None) -> str | None:
    if not doc:
        return None
    text = " ".join(doc.strip().split())
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) >= 8 else None


def _public(sym: Symbol) -> bool:
    return not sym.name.startswith("_") or sym.name == "__init__"


# ---- unit 1: software design --------------------------------------------------------------------
def design_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, rng: random.Random, stats: UnitStats, limit: int = 12):
    """Explore-and-answer episodes about one file's module, symbols, callers and layers."""
    fi = index.files[path]
    top = [s for s in fi.symbols if s.parent is None and _public(s)]
    out = []
    if top and not is_test_file(path):
        s = OracleSession(ws, f"What is {path} for, and what does it define?", read_only=True)
        s.act([("repo_map", {"path": path, "budget": 400})])
        s.act([("read_file", {"path": path, "start_line": 1, "end_line": min(40, top[0].end_line)})])
        module_doc = _module_doc(ws, path)
        defs = "; ".join(f"{x.kind} {x.name} (line {x.start_line})" for x in top[:8])
        answer = (f"{path}: {module_doc}. " if module_doc else f"{path} ") + f"defines {defs}."
        out.append(_finish(s, answer, "design", commit, stats, {"question": "module", "path": path}))
    symbols = [x for x in fi.symbols if _public(x) and x.name != "__init__" and not is_test_file(path)]
    rng.shuffle(symbols)
    for sym in symbols:
        if len(out) >= limit:
            break
        behaviour = _first_sentence(sym.doc)
        if behaviour:
            words = sorted(set(_WORD.findall(behaviour)) - {sym.name}, key=lambda w: (-len(w), w))
            s = OracleSession(ws, f"Where is the code that does this: \"{behaviour}\"?", read_only=True)
            if words:
                s.act([("search", {"pattern": words[0]})])
            s.act([("find_definition", {"symbol": sym.qualname})])
            out.append(_finish(s, f"In {sym.path}:{sym.start_line}, {sym.kind} {sym.qualname}: {sym.signature}",
                               "design", commit, stats, {"question": "where", "symbol": sym.qualname}))
        callers = [c for c in index.callers(sym) if not is_test_file(c.path)]
        if callers and len(out) < limit:
            s = OracleSession(ws, f"Who calls {sym.qualname} ({sym.path})?", read_only=True)
            s.act([("find_references", {"symbol": sym.name})])
            names = ", ".join(f"{c.qualname} ({c.path}:{c.start_line})" for c in callers[:8])
            out.append(_finish(s, f"{sym.qualname} is called by {names}.", "design", commit, stats,
                               {"question": "callers", "symbol": sym.qualname}))
            chain = _caller_chain(index, sym)
            if len(chain) >= 3 and len(out) < limit:
                s = OracleSession(ws, f"Which layers does a call to {sym.qualname} pass through, from the entry point down?", read_only=True)
                for link in reversed(chain[1:]):
                    s.act([("find_references", {"symbol": chain[chain.index(link) - 1].name})])
                path_text = " → ".join(f"{c.qualname} ({c.path})" for c in reversed(chain))
                out.append(_finish(s, f"The call flows {path_text}.", "design", commit, stats, {"question": "layers", "symbol": sym.qualname}))
        if sym.kind == "class" and len(out) < limit:
            out.extend(_extension_point(ws, index, sym, commit, stats))
    return [e for e in out if e is not None]


def _module_doc(ws: Workspace, path: str) -> str | None:
    if not path.endswith(".py"):
        return None
    import ast

    try:
        return _first_sentence(ast.get_docstring(ast.parse(ws.read_text(path))))
    except (SyntaxError, ValueError, SwespotError):  # an unreadable module simply has no docstring
        return None


def _caller_chain(index: RepoIndex, sym: Symbol, depth: int = 4) -> list[Symbol]:
    chain, seen = [sym], {(sym.path, sym.start_line)}
    while len(chain) < depth:
        callers = [c for c in index.callers(chain[-1]) if not is_test_file(c.path) and (c.path, c.start_line) not in seen]
        if not callers:
            break
        nxt = sorted(callers, key=lambda c: (c.path, c.start_line))[0]
        seen.add((nxt.path, nxt.start_line))
        chain.append(nxt)
    return chain


def _extension_point(ws: Workspace, index: RepoIndex, base: Symbol, commit: str, stats: UnitStats) -> list:
    subclasses = [s for s in index.symbols() if s.kind == "class" and re.search(rf"\(\s*(\w+\.)?{re.escape(base.name)}\b", s.signature)]
    if len(subclasses) < 2:
        return []
    subclasses.sort(key=lambda s: (s.path, s.start_line))
    methods = sorted({m.name for sub in subclasses for m in index.files[sub.path].symbols
                      if m.parent == sub.name and m.name != "__init__"})
    s = OracleSession(ws, f"How do I add a new kind of {base.name}?", read_only=True)
    s.act([("find_definition", {"symbol": base.name})])
    s.act([("search", {"pattern": f"({base.name})"})])
    s.act([("read_file", {"path": subclasses[0].path, "start_line": subclasses[0].start_line, "end_line": min(subclasses[0].end_line, subclasses[0].start_line + 30)})])
    examples = ", ".join(f"{c.name} ({c.path}:{c.start_line})" for c in subclasses[:4])
    answer = f"Subclass {base.name} ({base.path}:{base.start_line}) as {examples} do" + (f", implementing {', '.join(methods[:8])}." if methods else ".")
    return [_finish(s, answer, "design", commit, stats, {"question": "extend", "symbol": base.qualname})]


def _finish(session: OracleSession, answer: str, unit: str, commit: str, stats: UnitStats, meta: dict, verified: dict | None = None):
    if session.errors:
        stats.rejected["tool error"] += 1
        return None
    session.submit(answer)
    episode = session.episode(unit, commit, verified=verified or {"ok": True, "grounded_in": "index"}, meta=meta)
    stats.add(episode)
    return episode


# ---- unit 2: contextual implementation ----------------------------------------------------------
def implementation_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, rng: random.Random, stats: UnitStats,
                            limit: int = 8, test_runner=None):
    """Remove a Python function body; gather context with the tools; write it back with an edit."""
    if not path.endswith(".py") or is_test_file(path):
        return []
    original = ws.read_text(path)
    lines = original.splitlines(keepends=True)
    candidates = [s for s in index.files[path].symbols if s.kind in ("function", "method") and s.body_start_line
                  and 2 <= s.end_line - s.body_start_line + 1 <= MAX_BODY_LINES and _public(s)]
    rng.shuffle(candidates)
    out = []
    for sym in candidates[:limit]:
        body = "".join(lines[sym.body_start_line - 1 : sym.end_line])
        indent = re.match(r"[ \t]*", lines[sym.body_start_line - 1]).group(0)
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
            task = f"Implement {sym.qualname} in {path}; its body currently raises NotImplementedError."
            if _first_sentence(sym.doc):
                task += f" It should: {_first_sentence(sym.doc)}."
            s = OracleSession(ws, task)
            s.act([("find_references", {"symbol": sym.name})])
            lo = max(1, sym.start_line - 12)
            s.act([("read_file", {"path": path, "start_line": lo, "end_line": sym.start_line + (sym.body_start_line - sym.start_line) + 12})])
            tests = index.tests_for(sym)
            if tests:
                s.act([("read_file", {"path": tests[0], "start_line": 1, "end_line": 60})])
            s.act([("edit", {"path": path, "old": head + stub, "new": head + body})])
            verified = {"ok": ws.read_text(path) == original, "matches_original": ws.read_text(path) == original}
            if tests and test_runner is not None:
                outcome = test_runner(s, tests)
                verified["tests"] = outcome
                verified["ok"] = verified["ok"] and outcome in ("passed", "not run")
            if not verified["ok"]:
                stats.rejected["not verified"] += 1
                continue
            episode = _finish(s, f"Implemented {sym.qualname} in {path}.", "implementation", commit, stats,
                              {"symbol": sym.qualname, "path": path}, verified)
            if episode is not None:
                out.append(episode)
        finally:
            ws.write_text(path, original)
            ws.forget_changes()
    return out


# ---- unit 3: evolutionary replay ----------------------------------------------------------------
def edit_script(before: str, after: str, opcodes: list | None = None) -> list[tuple[str, str]] | None:
    """(old, new) replacements that turn ``before`` into ``after``, each ``old`` unique in the text it is
    applied to. Hunks are applied bottom-up (earlier line numbers stay valid) and widened with unchanged
    context lines until unique. None when some hunk cannot be made unique."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    opcodes = opcodes if opcodes is not None else line_opcodes(a, b)
    ops = [op for op in opcodes if op[0] != "equal"]
    cur = list(a)
    edits = []
    for k in range(len(ops) - 1, -1, -1):
        _, i1, i2, j1, j2 = ops[k]
        floor = ops[k - 1][2] if k > 0 else 0  # unchanged lines between the previous hunk and this one
        ceiling = ops[k + 1][1] if k + 1 < len(ops) else len(a)
        text = "".join(cur)
        lo, hi = i1, i2
        while True:
            old = "".join(cur[lo:hi])
            if old and text.count(old) == 1:
                break
            if lo <= floor and hi >= ceiling:
                return None
            lo, hi = max(floor, lo - 1), min(ceiling, hi + 1)
        replacement = cur[lo:i1] + b[j1:j2] + cur[i2:hi]
        edits.append((old, "".join(replacement)))
        cur[lo:hi] = replacement
    return edits if "".join(cur) == after else None


def replay_episode(ws: Workspace, change, stats: UnitStats, *, index: RepoIndex | None = None, test_runner=None) -> dict | None:
    """A commit as a task: its message is the request, the parent is the start, the child is the goal."""
    task = change.task  # subject, body and the changelog entry the commit adds (history.Change.task)
    s = OracleSession(ws, task)
    for fc in change.files:
        if fc.kind == "A":
            s.act([("create_file", {"path": fc.new_path, "content": fc.after})])
            continue
        if fc.kind == "D":
            s.act([("delete_file", {"path": fc.old_path})])
            continue
        if fc.kind == "R":
            s.act([("find_files", {"pattern": PurePosixPath(fc.old_path).name})])
            s.act([("create_file", {"path": fc.new_path, "content": fc.after}), ("delete_file", {"path": fc.old_path})])
            continue
        script = edit_script(fc.before, fc.after, fc.opcodes)
        if script is None:
            stats.rejected["no unique edit script"] += 1
            return None
        anchor = _anchor_line(fc.before, fc.opcodes)
        if anchor:
            s.act([("search", {"pattern": anchor})])
        first_line = _first_changed_line(fc.opcodes)
        s.act([("read_file", {"path": fc.old_path, "start_line": max(1, first_line - 10), "end_line": first_line + 20})])
        s.act([("edit", {"path": fc.old_path, "old": old, "new": new}) for old, new in script])
    reached = all(_content(ws, fc.new_path) == fc.after for fc in change.files if fc.new_path) and all(
        not (ws.root / fc.old_path).exists() for fc in change.files if fc.kind in ("D", "R"))
    verified = {"ok": reached, "reaches_child": reached, "child": change.commit}
    tests = sorted({fc.new_path for fc in change.files if fc.new_path and is_test_file(fc.new_path) and fc.new_path.endswith(".py")})
    if reached and tests and test_runner is not None:
        verified["tests"] = test_runner(s, tests)
    if not reached:
        stats.rejected["does not reach the child commit"] += 1
        return None
    return _finish(s, change.subject or "Applied the change.", "evolution", change.parent, stats,
                   {"commit": change.commit, "issue_refs": change.issue_refs, "files": [fc.path for fc in change.files]}, verified)


MAX_HUNK_LINES = 12


def hunk_completions(change, stats: UnitStats, allowed=None) -> list[dict]:
    """The lines each hunk of a replayed commit added, as inline completion would have to write them:
    from the child's text above the hunk (the code the developer had in front of them)."""
    out = []
    for fc in change.files:
        if fc.after is None or fc.kind == "D" or (allowed is not None and fc.path not in allowed):
            continue
        lines = fc.after.splitlines(keepends=True)
        for j1, j2 in fc.added:
            added = "".join(lines[j1: min(j2, j1 + MAX_HUNK_LINES)]).rstrip("\n")
            if j1 == 0 or len(added.strip()) < 8:
                continue
            episode = completion_episode("evolution", change.commit, "".join(lines[:j1]), added,
                                         meta={"commit": change.commit, "path": fc.path, "line": j1 + 1})
            stats.add(episode)
            out.append(episode)
    return out


def bug_episode(ws: Workspace, change, stats: UnitStats, commit: str, *, test_runner=None) -> dict | None:
    """The seed paper's second form: put a historical fix's bug back into today's code (where the fix
    still applies in reverse) and have the episode find and fix it."""
    if not _FIX.search(change.subject):
        return None
    targets = [fc for fc in change.files if fc.kind == "M" and not is_test_file(fc.path)]
    if len(targets) != 1:
        return None
    fc = targets[0]
    try:
        current = ws.read_text(fc.path)
    except SwespotError:  # the file is gone or unreadable today: no episode
        return None
    script = edit_script(fc.after, fc.before)  # fixed → buggy
    if not script or len(script) > 3:
        return None
    buggy = current
    for fixed_text, bug_text in script:
        if buggy.count(fixed_text) != 1:
            return None
        buggy = buggy.replace(fixed_text, bug_text, 1)
    ws.write_text(fc.path, buggy)
    try:
        s = OracleSession(ws, f"Bug report: {change.subject}. Find the cause and fix it.")
        reverse = line_opcodes(current.splitlines(keepends=True), buggy.splitlines(keepends=True))
        anchor = _anchor_line(buggy, [(t, j1, j2, i1, i2) for t, i1, i2, j1, j2 in reverse])
        if anchor:
            s.act([("search", {"pattern": anchor})])
        line = _first_changed_line(reverse)
        s.act([("read_file", {"path": fc.path, "start_line": max(1, line - 10), "end_line": line + 20})])
        s.act([("edit", {"path": fc.path, "old": bug_text, "new": fixed_text}) for fixed_text, bug_text in script])
        fixed = ws.read_text(fc.path) == current
        verified = {"ok": fixed, "restores_fix": fixed, "fix_commit": change.commit}
        tests = sorted({t.path for t in change.files if is_test_file(t.path) and t.path.endswith(".py") and (ws.root / t.path).exists()})
        if fixed and tests and test_runner is not None:
            verified["tests"] = test_runner(s, tests)
            verified["ok"] = verified["tests"] in ("passed", "not run")
        if not verified["ok"]:
            stats.rejected["bug not fixed"] += 1
            return None
        return _finish(s, f"Fixed: {change.subject}", "evolution", commit, stats,
                       {"form": "reintroduced bug", "fix_commit": change.commit, "path": fc.path}, verified)
    finally:
        ws.write_text(fc.path, current)
        ws.forget_changes()


def _undo_files(tree, change) -> None:
    """Put the parent's versions of a change's files back (after a replay or reproduction)."""
    for fc in change.files:
        if fc.new_path:
            (tree / fc.new_path).unlink(missing_ok=True)
        if fc.old_path and fc.before is not None:
            (tree / fc.old_path).parent.mkdir(parents=True, exist_ok=True)
            (tree / fc.old_path).write_text(fc.before, encoding="utf-8")


def _content(ws: Workspace, rel: str) -> str | None:
    path = ws.root / rel
    return path.read_text(encoding="utf-8") if path.exists() else None


def _first_changed_line(opcodes: list) -> int:
    return next((i1 + 1 for tag, i1, _, _, _ in opcodes if tag != "equal"), 1)


def _anchor_line(before: str, opcodes: list) -> str | None:
    """A distinctive line of ``before`` near the first change (removed or context), to search for."""
    a = before.splitlines()
    for tag, i1, i2, _, _ in opcodes:
        if tag != "equal":
            near = [line.strip() for line in a[max(0, i1 - 3): i2 + 1] if len(line.strip()) >= 12]
            unique = [line for line in near if before.count(line) == 1]
            return max(unique, key=len)[:80] if unique else None
    return None


# ---- unit 4: semantic-runtime alignment -----------------------------------------------------------
def pytest_runner(ws: Workspace, timeout: float = 120):
    """A test runner for the oracle: runs the given test files with the real ``run`` tool (sandboxed)."""

    def run(session: OracleSession, tests: list[str]) -> str:
        output = session.act([("run", {"command": "python -m pytest -q -x -p no:cacheprovider " + " ".join(tests),
                                        "timeout": int(timeout)})])[0]
        if "[exit code 0" in output:
            return "passed"
        if "[exit code 5" in output:  # pytest: no tests collected
            return "not run"
        return "failed"

    return run
