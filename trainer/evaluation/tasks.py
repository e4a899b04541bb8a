"""The held-out tasks: every task comes from the commits after the cutoff (see the package docstring);
``make_tasks`` builds a profile's set, each family spread over the commits (``spread_tasks``)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path, PurePosixPath

import git

from agent.errors import SwespotError
from agent.index import RepoIndex, is_test_file
from agent.resolve import Resolver
from agent.tools import CommandPolicy, Workspace
from trainer.evaluation.profiles import EVAL_PROFILES, FAMILIES, Task
from trainer.experience import design as D
from trainer.experience import history as H
from trainer.experience.files import ignored_paths, secret_reason, select_files, vendored_or_generated
from trainer.experience.heldout import is_heldout_fact
from trainer.experience.snapshot import Snapshot

CODE_SUFFIXES = {".py", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".c", ".h", ".cc", ".cpp", ".rb", ".sh"}
MIN_LINE_CHARS = 8
MAX_BODY_LINES = 40
INFILL_MAX_LINES = 8  # the middle of an infill task: at most this many lines (trainer/experience/text.py: FIM_MAX_MIDDLE_LINES)
INFILL_SUFFIX_LINES = 12  # the code after the middle kept with a task (the server shows 12: completion.SUFFIX_LINES)


def post_cutoff_changes(repo, cutoff: str, until: str = "HEAD"):
    """The replayable changes of commits after ``cutoff`` up to ``until``, oldest first."""
    start, end = H.resolve(repo, cutoff), H.resolve(repo, until)
    if start.hexsha == end.hexsha:
        return []
    if not repo.is_ancestor(start.hexsha, end.hexsha):
        raise SwespotError(f"the cutoff {cutoff} is not an ancestor of {until}: nothing is 'after' it")
    out = []
    for commit in repo.iter_commits(f"{start.hexsha}..{end.hexsha}", reverse=True):
        if len(commit.parents) != 1:
            continue  # merges and roots are not single changes
        change = H.change_of(commit, commit.parents[0])
        if change is not None:
            out.append(change)
    return out


def _usable(path: str, text: str | None) -> bool:
    return (text is not None and PurePosixPath(path).suffix in CODE_SUFFIXES
            and not secret_reason(path, text) and not vendored_or_generated(path, text))


def _task_id(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _code_files(changes):
    """(change, file change, the file's lines after it) for the usable non-test code files a change touched."""
    for change in changes:
        for fc in change.files:
            if fc.after is not None and _usable(fc.path, fc.after) and not is_test_file(fc.path):
                yield change, fc, fc.after.splitlines(keepends=True)


def line_tasks(changes, limit: int, per_file: int = 3) -> list[Task]:
    tasks = []
    for change, fc, lines in _code_files(changes):
        taken = 0
        for j1, j2 in fc.added:
            if taken >= per_file:
                break
            for j in range(j1, min(j2, len(lines))):
                if len(lines[j].strip()) >= MIN_LINE_CHARS and j > 0:
                    tasks.append(Task(_task_id("line", change.commit, fc.path, j), "line", change.commit, fc.path,
                                      "".join(lines[:j]), lines[j].rstrip("\n"), {"line": j + 1}))
                    taken += 1
                    break
    return spread_tasks(tasks, limit)


def body_tasks(changes, limit: int) -> list[Task]:
    tasks = []
    for change in changes:
        for fc in change.files:
            if fc.after is None or not fc.path.endswith(".py") or not _usable(fc.path, fc.after) or is_test_file(fc.path):
                continue
            changed = {j + 1 for j1, j2 in fc.added for j in range(j1, j2)}
            index = RepoIndex.build([(fc.path, fc.after)])
            lines = fc.after.splitlines(keepends=True)
            for sym in index.files[fc.path].symbols if fc.path in index.files else []:
                start = sym.body_start_line
                if sym.kind not in ("function", "method") or start is None or start > sym.end_line:
                    continue
                if not changed & set(range(start, sym.end_line + 1)) or sym.end_line - start + 1 > MAX_BODY_LINES:
                    continue
                body = "".join(lines[start - 1: sym.end_line])
                if len(body.strip()) < 2 * MIN_LINE_CHARS:
                    continue
                tasks.append(Task(_task_id("body", change.commit, fc.path, sym.qualname), "body", change.commit, fc.path,
                                  "".join(lines[: start - 1]), body.rstrip("\n"), {"symbol": sym.qualname, "line": start}))
    return spread_tasks(tasks, limit)


def infill_tasks(changes, limit: int, per_file: int = 2) -> list[Task]:
    """Hunks added inside a file (code before and after them): the prompt is the code before, the target
    the hunk's first lines (whole lines), ``meta["suffix"]`` the code after (INFILL_SUFFIX_LINES lines)."""
    tasks = []
    for change, fc, lines in _code_files(changes):
        taken = 0
        for j1, j2 in fc.added:
            end = min(j2, j1 + INFILL_MAX_LINES, len(lines))
            middle, after = "".join(lines[j1:end]), lines[end:end + INFILL_SUFFIX_LINES]
            if taken >= per_file or j1 == 0 or len(middle.strip()) < MIN_LINE_CHARS or not "".join(after).strip():
                continue
            tasks.append(Task(_task_id("infill", change.commit, fc.path, j1), "infill", change.commit, fc.path,
                              "".join(lines[:j1]), middle, {"line": j1 + 1, "lines": end - j1, "suffix": "".join(after)}))
            taken += 1
    return spread_tasks(tasks, limit)


def design_tasks(repo, changes, until: str, limit: int) -> list[Task]:
    """Questions about symbols that commits after the cutoff defined or changed, answered from the
    index of ``until`` (only the repository's learnable files: ignored, secret and vendored ones are not)."""
    touched = {fc.path for change in changes for fc in change.files if fc.after is not None}
    selection = select_files(repo, until)
    files = [(f.path, f.text) for f in selection.files if f.path in touched and not is_test_file(f.path)]
    if not files:
        return []
    index = RepoIndex.build([(f.path, f.text) for f in selection.files if PurePosixPath(f.path).suffix in CODE_SUFFIXES])
    known = _symbols_before(changes, files)
    fresh = []  # symbols defined or changed after the cutoff
    for path, text in files:
        lines = text.splitlines()
        for sym in index.files[path].symbols if path in index.files else []:
            if (path, sym.qualname, "\n".join(lines[sym.start_line - 1: sym.end_line])) not in known:
                fresh.append(sym)
    unique = lambda sym: D.defined_once(index, sym) and not sym.name.startswith("_")  # noqa: E731
    tasks, asked = [], set()
    for sym in fresh:
        if not unique(sym):
            continue  # an ambiguous or private name has no single grounded answer
        qa = D.defined_in(sym)
        tasks.append(Task(_task_id("where", sym.path, sym.qualname), "design", "", sym.path, qa.question, qa.answer,
                          {"question": "where", "answer": sym.path}))
    # who calls what, where the call is new: a fresh caller of any (possibly older) symbol
    for sym in fresh:
        for callee in index.callees(sym):
            if not unique(callee) or callee.qualname in asked or callee.name == sym.name:
                continue
            asked.add(callee.qualname)
            # the answer is a fresh definition that calls it: ``sym`` when the call is in its own body, else the
            # innermost one that holds the call (the method, not the class around it), by its qualified name
            callers = sorted({c for c in index.callers(callee) if c in fresh and c.name != callee.name}, key=lambda c: c.qualname)
            if callers:
                caller = sym if sym in callers else callers[0]
                qa = D.calls_it(callee, caller)
                tasks.append(Task(_task_id("caller", callee.path, callee.qualname), "design", "", callee.path, qa.question, qa.answer,
                                  {"question": "caller", "answer": caller.qualname, "accept": [c.qualname for c in callers]}))
    return spread_tasks(tasks, limit)


def _symbols_before(changes, files) -> set[tuple[str, str, str]]:
    """(path, qualname, source) of every symbol the touched files held at the cutoff (the state before
    the first post-cutoff change of each file)."""
    before: dict[str, str] = {}
    for change in changes:
        for fc in change.files:
            if fc.path not in before and fc.new_path:
                before[fc.new_path] = fc.before or ""
    out = set()
    for path, _ in files:
        text = before.get(path)
        if not text:
            continue
        index, lines = RepoIndex.build([(path, text)]), text.splitlines()
        for sym in index.files[path].symbols if path in index.files else []:
            out.add((path, sym.qualname, "\n".join(lines[sym.start_line - 1: sym.end_line])))
    return out


def facts_tasks(repo_path: Path, cutoff: str, limit: int) -> list[Task]:
    """The held-out facts: the design questions about the pre-cutoff symbols ``is_heldout_fact`` picks
    (names defined once in the repository, ``defined_once``), in the training episodes' words (``design_questions``),
    grounded in the index and resolver of the cutoff's learnable files, as the experience sees them."""

    repo = git.Repo(repo_path)
    commit = H.resolve(repo, cutoff).hexsha
    all_paths = [str(i.path) for i in repo.commit(commit).tree.traverse() if isinstance(i, git.Blob)]
    allowed = {f.path for f in select_files(repo, commit, ignored=ignored_paths(repo, all_paths)).files}
    tasks = []
    with Snapshot(repo_path, prefix="swespot-eval-") as snap:
        snap.checkout(commit)
        for path in set(all_paths) - allowed:  # what the experience may not learn from is not there
            (snap.tree / path).unlink(missing_ok=True)
        index = Workspace(snap.tree, policy=CommandPolicy(approve=lambda _cmd: False)).index()
        resolver = Resolver(snap.tree, index)
        for sym in index.symbols():
            if sym.path not in allowed or not is_heldout_fact(sym.path, sym.qualname) or not D.defined_once(index, sym):
                continue
            for qa in D.design_questions(index, sym, resolver):
                accept = [qa.path] if qa.kind == "where" else list(qa.accept)  # "where": the right file
                tasks.append(Task(_task_id("facts", qa.kind, sym.path, sym.qualname), "facts", commit, sym.path, qa.question,
                                  qa.answer, {"question": qa.kind, "symbol": sym.qualname, "accept": accept}))
    return spread_tasks(tasks, limit)


def replay_tasks(changes, limit: int) -> list[Task]:
    tasks = []
    for change in changes:
        if not change.subject or not any(_usable(fc.path, fc.after or fc.before) for fc in change.files):
            continue
        tests = sorted(fc.path for fc in change.files if fc.after is not None and is_test_file(fc.path) and fc.path.endswith(".py"))
        tasks.append(Task(_task_id("replay", change.commit), "replay", change.commit, None, change.message.strip(),
                          change.subject, {"parent": change.parent, "tests": tests,
                                           "files": {fc.path: {"before": fc.before, "after": fc.after} for fc in change.files}}))
    return spread_tasks(tasks, limit)


def spread_tasks(tasks: list[Task], limit: int) -> list[Task]:
    """At most ``limit`` tasks spread over the commits (design questions: over their files): in rounds of
    one task per commit, the commits of the last, partial round evenly spaced over the history; a
    commit's tasks in a fixed shuffled order. Deterministic, and the input order is kept."""
    if len(tasks) <= limit:
        return tasks
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault((task.path if task.family in ("design", "facts") else task.commit) or "", []).append(i)
    rng = random.Random(len(tasks))
    queues = list(groups.values())
    for queue in queues:
        rng.shuffle(queue)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        live = [q for q in queues if len(q) > depth]
        need = limit - len(chosen)
        if len(live) > need:
            live = [live[(2 * k + 1) * len(live) // (2 * need)] for k in range(need)]
        chosen += [q[depth] for q in live]
        depth += 1
    return [tasks[i] for i in sorted(chosen)]


def mark_generated(tasks: list[Task], count: int) -> list[Task]:
    """Mark an evenly spaced ``count`` of the tasks for greedy generation (the rest are scored by loss)."""
    picks = {(2 * k + 1) * len(tasks) // (2 * count) for k in range(count)} if count < len(tasks) else set(range(len(tasks)))
    for i, task in enumerate(tasks):
        task.meta["generate"] = i in picks
    return tasks


def make_tasks(repo_path: Path, cutoff: str, until: str = "HEAD", families=FAMILIES, profile: str = "quick") -> list[Task]:
    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    sizes = EVAL_PROFILES[profile]
    changes = post_cutoff_changes(repo, cutoff, until)
    tasks: list[Task] = []
    if "line" in families:
        tasks += mark_generated(line_tasks(changes, sizes["line"]), sizes["generate_line"])
    if "body" in families:
        tasks += mark_generated(body_tasks(changes, sizes["body"]), sizes["generate_body"])
    if "infill" in families and sizes.get("infill"):
        tasks += mark_generated(infill_tasks(changes, sizes["infill"]), sizes.get("generate_infill", 0))
    if "design" in families:
        tasks += design_tasks(repo, changes, until, sizes["design"])
    if "facts" in families:
        tasks += facts_tasks(repo_path, cutoff, sizes["facts"])
    if "replay" in families and sizes["replay"]:
        tasks += replay_tasks(changes, sizes["replay"])
    return tasks
