"""Unit 3, evolutionary replay: a later commit replayed as a task from its parent, the lines each hunk
added as completions, and a historical fix's bug put back into today's code to be found and fixed."""

from __future__ import annotations

import random
import re
from pathlib import PurePosixPath

from agent.episode import completion_episode
from agent.errors import SwespotError
from agent.index import RepoIndex, is_test_file
from agent.tools import Workspace
from trainer.experience.history import line_opcodes
from trainer.experience.oracle import OracleSession, say
from trainer.experience.teacher import Teacher, taught
from trainer.experience.units.base import FIX_SUBJECT, WRONG_LOOK_RATE, UnitStats, code_verifier, finish_episode


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


def replay_episode(ws: Workspace, change, stats: UnitStats, *, index: RepoIndex | None = None, test_runner=None,
                   rng: random.Random | None = None, teacher: Teacher | None = None) -> dict | None:
    """A commit as a task: its message is the request, the parent is the start, the child is the goal.
    The episode finds each file from the words of the message (or by walking the folders), reads the
    lines it changes, and edits them. With a ``teacher``, it makes the change first, kept when it
    verifies (the commit's code files reached, and the commit's code or its tests passing); the tree is
    left at the parent then."""
    rng = rng or random.Random(change.commit)
    task = change.message.strip()
    if teacher is not None:
        episode = _taught_replay(ws, change, stats, task, teacher)
        if episode is not None:
            return episode
    s = OracleSession(ws, task)
    touched: list[str] = []
    for fc in change.files:
        if fc.kind == "A":
            s.act([("create_file", {"path": fc.new_path, "content": fc.after})], content=say(rng, [
                "{path} does not exist yet; I'll create it.", "This needs a new file, {path}."], path=fc.new_path))
            touched.append(fc.new_path)
            continue
        if not locate(s, ws, fc.old_path, task, rng):
            stats.rejected["file not reachable"] += 1
            return None
        if fc.kind == "D":
            s.act([("delete_file", {"path": fc.old_path})], content=say(rng, [
                "{path} is no longer needed; deleting it.", "I'll remove {path}."], path=fc.old_path))
            touched.append(fc.old_path)
            continue
        if fc.kind == "R":
            s.act([("create_file", {"path": fc.new_path, "content": fc.after}), ("delete_file", {"path": fc.old_path})],
                  content=say(rng, ["{old} moves to {new}.", "Renaming {old} to {new}."], old=fc.old_path, new=fc.new_path))
            touched.append(fc.new_path)
            continue
        script = edit_script(fc.before, fc.after, fc.opcodes)
        if script is None:
            stats.rejected["no unique edit script"] += 1
            return None
        if not script:
            continue  # the file's text did not change (its mode did): nothing to edit
        changed: list[str] = []
        if not edit_seen(s, ws, fc.old_path, fc.before, script, rng, stats, changed):
            return None
        touched.append(f"{fc.old_path} ({', '.join(changed)})" if changed else fc.old_path)
    reached = all(_content(ws, fc.new_path) == fc.after for fc in change.files if fc.new_path) and all(
        not (ws.root / fc.old_path).exists() for fc in change.files if fc.kind in ("D", "R"))
    verified = {"ok": reached, "reaches_child": reached, "child": change.commit}
    tests = sorted({fc.new_path for fc in change.files if fc.new_path and is_test_file(fc.new_path) and fc.new_path.endswith(".py")})
    if reached and tests and test_runner is not None:
        verified["tests"] = test_runner(s, tests)
    if not reached:
        stats.rejected["does not reach the child commit"] += 1
        return None
    s.thought_before_submit = say(rng, ["That covers {files}.", "Done: the change touches {files}."], files=", ".join(touched))
    return finish_episode(s, f"{change.subject or 'Applied the change'}: changed {', '.join(touched)}.", "evolution", change.parent, stats,
                   {"commit": change.commit, "issue_refs": change.issue_refs, "files": [fc.path for fc in change.files]}, verified)


def _taught_replay(ws: Workspace, change, stats: UnitStats, task: str, teacher: Teacher) -> dict | None:
    """The teacher's change for a replayed commit, kept when it verifies: the commit's code files reached,
    and the commit's code or its tests (written in as they were in the child) passing."""
    code = [fc for fc in change.files if not is_test_file(fc.path)] or list(change.files)
    oracle = {fc.new_path: fc.after for fc in code if fc.new_path}
    oracle.update({fc.old_path: None for fc in code if fc.kind in ("D", "R")})
    start = {fc.old_path: fc.before for fc in code if fc.old_path}
    start.update({fc.new_path: None for fc in code if fc.kind in ("A", "R")})
    fixed = {fc.new_path: fc.after for fc in change.files if fc not in code and fc.new_path and fc.after is not None
             and fc.new_path.endswith(".py")}
    verify = code_verifier(ws, oracle, start, sorted(p for p in fixed if PurePosixPath(p).name != "conftest.py"),
                            {"reaches_child": True, "child": change.commit}, fixed)
    return taught(teacher, stats, ws, task, verify, unit="evolution", commit=change.parent,
                  meta={"commit": change.commit, "issue_refs": change.issue_refs, "files": [fc.path for fc in change.files]})


_TERM = re.compile(r"`([^`]{3,60})`|([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+|[A-Za-z_]*_[A-Za-z_]\w*|[a-z]+[A-Z]\w*|[A-Z][a-z]+[A-Z]\w*)|([A-Za-z]{5,})")
_STOP = {"about", "after", "again", "allow", "always", "before", "being", "change", "changes", "could", "should", "would",
         "their", "there", "these", "those", "which", "while", "where", "other", "using", "instead", "because", "still",
         "first", "fixes", "fixed", "merge", "branch", "update", "updated", "remove", "removed", "added", "adding",
         "support", "version", "release", "pull", "request"}


def _task_terms(task: str) -> list[str]:
    """Words of the task worth searching for: quoted code, dotted or snake/camel-case names, then long
    words; most specific first, each once."""
    code, words = [], []
    for quoted, ident, word in _TERM.findall(task):
        if quoted or ident:
            term = (quoted or ident).strip()
            code.append(term.rsplit(".", 1)[-1] if "." in term and not re.search(r"\.\w{1,4}$", term) and len(term) > 40 else term)
        elif word.lower() not in _STOP:
            words.append(word)
    seen, out = set(), []
    for term in code + sorted(words, key=lambda w: -len(w)):
        if term not in seen:
            seen.add(term)
            out.append(term)
    return out[:8]


def locate(s: OracleSession, ws: Workspace, path: str, task: str, rng: random.Random) -> bool:
    """Bring ``path`` into view the way an agent could: it may already have been seen; else search a word
    of the task that finds it (now and then after a word that does not); else a file name the task
    mentions; else walk the folders down to it. True once the path is in an observation."""
    if path in s.seen:
        return True
    try:
        text = ws.read_text(path)
    except SwespotError:
        text = ""
    terms = _task_terms(task)
    right = wrong = None
    for term in terms:
        spelled = term if term in text else term.lower() if term.lower() in text else None
        if spelled and right is None:
            result = ws.search(spelled)
            if re.search(rf"^{re.escape(path)}:\d+:", result, re.M):
                right = (spelled, result)
        elif not spelled and wrong is None:
            wrong = term
    if right is not None:
        term, _ = right
        if wrong is not None and rng.random() < WRONG_LOOK_RATE:
            result = s.act([("search", {"pattern": wrong})], content=say(rng, [
                "The task mentions \"{term}\"; I'll search for it.", "Let me start with \"{term}\"."], term=wrong))[0]
            files = sorted({m for m in re.findall(r"^([^\s:]+):\d+:", result, re.M)})
            lead = say(rng, ["\"{wrong}\" only turns up in {where}, which is not it. Trying \"{term}\".",
                             "Not helpful: \"{wrong}\" is in {where}. Now \"{term}\"."], wrong=wrong, term=term,
                       where=", ".join(files[:3])) if files else say(rng, [
                "No match for \"{wrong}\". Trying \"{term}\" instead.", "\"{wrong}\" is nowhere in the code; \"{term}\" then."],
                wrong=wrong, term=term)
        else:
            lead = say(rng, ["The task mentions \"{term}\"; I'll search for it.", "Let me find where \"{term}\" appears.",
                             "A search for \"{term}\" should show the code in question."], term=term)
        s.act([("search", {"pattern": term})], content=lead)
        return path in s.seen
    stem = PurePosixPath(path).stem
    if len(stem) >= 4 and re.search(rf"\b{re.escape(stem)}\b", task):
        s.act([("find_files", {"pattern": PurePosixPath(path).name})], content=say(rng, [
            "The task names {stem}; which file is that?", "Let me find the file called {name}."], stem=stem, name=PurePosixPath(path).name))
        if path in s.seen:
            return True
    parts = PurePosixPath(path).parts
    s.act([("list_dir", {"path": "."})], content=say(rng, [
        "Nothing in the task points at a file directly; I'll look at the layout.", "Let me see how the repository is organised."]))
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        s.act([("list_dir", {"path": folder})], content=say(rng, [
            "{folder}/ is the likely place; what is in it?", "Into {folder}/."], folder=folder))
    return path in s.seen


def edit_seen(s: OracleSession, ws: Workspace, path: str, before: str, script: list[tuple[str, str]], rng: random.Random,
               stats: UnitStats, changed: list[str] | None = None) -> bool:
    """Read the lines each replacement changes (starting where an observation showed a line of the file,
    or at the enclosing definition an outline shows), then make the replacements. False when the edit
    could not be made; ``changed`` receives the qualified names of the definitions it changes."""
    if not script:  # a file whose mode changed but not its text: the replay and the reproduction skip those before
        stats.rejected["no text edit in the change"] += 1
        return False
    spans = []
    for old, _new in script:
        at = before.find(old)
        if at < 0:
            stats.rejected["edit text not in the file"] += 1
            return False
        first = before.count("\n", 0, at) + 1
        spans.append((first, first + old.count("\n")))
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    starts = sorted(n for p, n in s.anchors if p == path and n <= lo)
    if not starts or lo - starts[-1] > 40:
        s.act([("repo_map", {"path": path, "budget": 2000})], content=say(rng, [
            "{path} it is. Its outline shows where each definition starts.", "An outline of {path} first."], path=path))
        starts = sorted(n for p, n in s.anchors if p == path and n <= lo)
    start = starts[-1] if starts and lo - starts[-1] <= 360 else 1
    while start <= hi:
        end = min(hi + 3, start + 399)
        shown = re.search(rf"^{re.escape(path)}:{start}: (.+)$|^\s*{start}: (.+)$", s.seen, re.M)
        code = next((g for g in shown.groups() if g), "").strip()[:70] if shown else ""
        s.act([("read_file", {"path": path, "start_line": start, "end_line": end})], content=say(rng, [
            "{path}:{start} has `{code}`; reading from there.", "Line {start} of {path} is `{code}`. Let me read on from it.",
            "`{code}` at {path}:{start} looks like the place; I'll read lines {start}-{end}."], path=path, start=start, end=end, code=code)
            if code else say(rng, ["Reading {path} from line {start}.", "Let me read {path} lines {start}-{end}."], path=path, start=start, end=end))
        start = end + 1 if end < hi else hi + 1
    where = ws.index().files.get(path)
    sym = where.enclosing(lo) if where else None
    names = list(dict.fromkeys(x.qualname for x in (where.enclosing(a) if where else None for a, _ in spans) if x))
    s.act([("edit", {"path": path, "old": old, "new": new}) for old, new in script], content=say(rng, [
        "The change goes at line {line}{inside}.", "Now the edit at {path}:{line}{inside}.", "Line {line}{inside} is what has to change."],
        line=lo, path=path, inside=f", in {sym.qualname}" if sym else ""))
    if changed is not None:
        changed.extend(names)
    return True


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


def bug_episode(ws: Workspace, change, stats: UnitStats, commit: str, *, test_runner=None, rng: random.Random | None = None,
                teacher: Teacher | None = None) -> dict | None:
    """The seed paper's second form: put a historical fix's bug back into today's code (where the fix
    still applies in reverse) and have the episode find and fix it."""
    if not FIX_SUBJECT.search(change.subject):
        return None
    targets = [fc for fc in change.files if fc.kind == "M" and not is_test_file(fc.path)]
    if len(targets) != 1:
        return None
    fc = targets[0]
    rng = rng or random.Random(change.commit)
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
    fix = edit_script(buggy, current)
    if fix is None:
        return None
    ws.write_text(fc.path, buggy)
    try:
        task = f"Bug report: {change.subject}. Find the cause and fix it."
        if teacher is not None:
            tests = sorted({t.path for t in change.files if is_test_file(t.path) and t.path.endswith(".py") and (ws.root / t.path).exists()})
            verify = code_verifier(ws, {fc.path: current}, {fc.path: buggy}, tests, {"restores_fix": True, "fix_commit": change.commit})
            episode = taught(teacher, stats, ws, task, verify, unit="evolution", commit=commit,
                             meta={"form": "reintroduced bug", "fix_commit": change.commit, "path": fc.path})
            if episode is not None:
                return episode
        s = OracleSession(ws, task)
        if not locate(s, ws, fc.path, task, rng):
            stats.rejected["file not reachable"] += 1
            return None
        changed: list[str] = []
        if not edit_seen(s, ws, fc.path, buggy, fix, rng, stats, changed):
            return None
        fixed = ws.read_text(fc.path) == current
        verified = {"ok": fixed, "restores_fix": fixed, "fix_commit": change.commit}
        tests = sorted({t.path for t in change.files if is_test_file(t.path) and t.path.endswith(".py") and (ws.root / t.path).exists()})
        tests = [t for t in tests if t in s.seen]  # only tests the agent has seen named
        if fixed and tests and test_runner is not None:
            verified["tests"] = test_runner(s, tests)
            verified["ok"] = verified["tests"] in ("passed", "not run")
        if not verified["ok"]:
            stats.rejected["bug not fixed"] += 1
            return None
        s.thought_before_submit = say(rng, ["The cause was in {path}; fixed.", "{path} is fixed."], path=fc.path)
        return finish_episode(s, f"Fixed: {change.subject} (in {fc.path}{': ' + ', '.join(changed) if changed else ''})", "evolution", commit, stats,
                       {"form": "reintroduced bug", "fix_commit": change.commit, "path": fc.path}, verified)
    finally:
        ws.write_text(fc.path, current)
        ws.forget_changes()


def undo_files(tree, change) -> None:
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


def first_changed_line(opcodes: list) -> int:
    return next((i1 + 1 for tag, i1, _, _, _ in opcodes if tag != "equal"), 1)
