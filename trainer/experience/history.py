"""The repository's history as replayable changes (gitpython).

Each non-merge commit up to the cutoff becomes a ``Change``: its message (the request), its parent (the
starting state) and the text of every touched file before and after. Merge commits, root commits of
shallow clones (their parent is missing), commits with binary or huge changes, and empty commits are
skipped and counted, never silently dropped.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import SwespotError
from trainer.experience.files import MAX_FILE_BYTES, decode_text, secret_reason, vendored_or_generated

MAX_FILES_PER_CHANGE = 12
MAX_CHANGED_LINES = 400
ISSUE_REF = re.compile(r"(?:(?:fix(?:es|ed)?|close[sd]?|resolve[sd]?)\s+)?#(\d+)", re.I)


def line_opcodes(a: list[str], b: list[str]) -> list:
    """difflib opcodes for two line lists, matching only the part between their common prefix and
    suffix (most commits touch a few lines of a long file: this makes diffs ~100x cheaper)."""
    pre = 0
    while pre < len(a) and pre < len(b) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < len(a) - pre and suf < len(b) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    middle = difflib.SequenceMatcher(None, a[pre:len(a) - suf], b[pre:len(b) - suf], autojunk=False).get_opcodes()
    ops = [("equal", 0, pre, 0, pre)] if pre else []
    ops += [(tag, i1 + pre, i2 + pre, j1 + pre, j2 + pre) for tag, i1, i2, j1, j2 in middle]
    if suf:
        ops.append(("equal", len(a) - suf, len(a), len(b) - suf, len(b)))
    return [op for op in ops if op[2] > op[1] or op[4] > op[3]]


@dataclass
class FileChange:
    kind: str  # "A" added, "M" modified, "D" deleted, "R" renamed
    old_path: str | None
    new_path: str | None
    before: str | None
    after: str | None

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @functools.cached_property
    def opcodes(self) -> list:
        """Line-level difference before → after, computed once (every consumer needs it)."""
        return line_opcodes((self.before or "").splitlines(keepends=True), (self.after or "").splitlines(keepends=True))

    @property
    def changed_lines(self) -> int:
        return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in self.opcodes if tag != "equal")

    @property
    def added(self) -> list[tuple[int, int]]:
        """The 0-based line ranges ``[j1, j2)`` of ``after`` that this change inserted or rewrote."""
        return [(j1, j2) for tag, _i1, _i2, j1, j2 in self.opcodes if tag in ("insert", "replace")]


@dataclass
class Change:
    commit: str
    parent: str
    message: str
    author_time: int
    files: list[FileChange]
    issue_refs: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""

    @property
    def changed_lines(self) -> int:
        return sum(f.changed_lines for f in self.files)


@dataclass
class HistoryStats:
    commits: int = 0
    changes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"commits": self.commits, "changes": self.changes, "skipped": dict(self.skipped)}


def resolve(repo, rev: str):
    from git.exc import GitCommandError
    from gitdb.exc import BadName, BadObject

    try:
        return repo.commit(rev)
    except (BadName, BadObject, ValueError, GitCommandError) as exc:
        raise SwespotError(f"{rev!r} is not a commit of {repo.working_tree_dir}: {exc}") from exc


def shallow_boundary(repo) -> set[str]:
    """Commits whose parents a shallow clone does not have (listed in .git/shallow)."""
    try:
        return set(Path(repo.git_dir, "shallow").read_text().split())
    except OSError:
        return set()


def _blob_text(commit, path: str) -> tuple[str | None, str | None]:
    try:
        blob = commit.tree / path
    except KeyError:
        return None, "missing"
    if blob.size > MAX_FILE_BYTES:
        return None, "huge file"
    return decode_text(blob.data_stream.read())


def candidate_commits(repo, cutoff: str = "HEAD", *, limit: int | None = None, stats: HistoryStats | None = None):
    """Yield (commit, parent) for the commits that may become changes, oldest first, without computing
    any diff (cheap: an incremental build checks its cache before paying for ``change_of``). Merges,
    roots and shallow boundaries are counted in ``stats`` and skipped."""
    stats = stats if stats is not None else HistoryStats()
    if not repo.head.is_valid():
        return
    end = resolve(repo, cutoff)
    shallow = shallow_boundary(repo)
    taken = 0
    for commit in repo.iter_commits(end.hexsha, reverse=True):
        stats.commits += 1
        if commit.hexsha in shallow:
            stats.skipped["shallow boundary"] += 1
        elif len(commit.parents) > 1:
            stats.skipped["merge commit"] += 1
        elif not commit.parents:
            stats.skipped["root commit"] += 1
        elif limit is not None and taken >= limit:
            stats.skipped["over limit"] += 1
        else:
            taken += 1
            yield commit, commit.parents[0]


@dataclass
class RawEntry:
    """One file of ``git log --raw`` output: what a commit did to it, with blob ids."""

    status: str
    old_mode: int
    new_mode: int
    old_blob: str
    new_blob: str
    old_path: str | None
    new_path: str | None


def raw_history(repo_path, cutoff: str) -> dict[str, list[RawEntry]]:
    """Every commit's file changes (renames detected) from ONE ``git log --raw`` process, instead of a
    diff process per commit: replaying thousands of commits is dominated by that otherwise."""
    import subprocess

    done = subprocess.run(["git", "log", "--raw", "-z", "-M", "--no-abbrev", "--format=%x01%H", cutoff],
                          cwd=repo_path, capture_output=True)
    if done.returncode != 0:
        raise SwespotError(f"git log failed: {done.stderr.decode(errors='replace').strip()}")
    out: dict[str, list[RawEntry]] = {}
    for record in done.stdout.decode("utf-8", errors="replace").split("\x01")[1:]:
        tokens = record.split("\0")
        sha, entries, i = tokens[0].strip(), [], 1
        while i < len(tokens):
            meta = tokens[i].strip("\n")
            if not meta.startswith(":"):
                i += 1
                continue
            old_mode, new_mode, old_blob, new_blob, status = meta[1:].split(" ")
            if status[0] in "RC":
                old_path, new_path, i = tokens[i + 1], tokens[i + 2], i + 3
            else:
                old_path = new_path = tokens[i + 1]
                i += 2
            kind = status[0]
            entries.append(RawEntry(kind, int(old_mode, 8), int(new_mode, 8), old_blob, new_blob,
                                    None if kind == "A" else old_path, None if kind == "D" else new_path))
        out[sha] = entries
    return out


def change_of(commit, parent, stats: HistoryStats | None = None, raw: list[RawEntry] | None = None):
    """The replayable change of one commit, or None (the reason counted in ``stats``). With ``raw``
    (from ``raw_history``) no diff process is started."""
    change, why = _change_from_raw(commit, parent, raw) if raw is not None else _change(commit, parent)
    if stats is not None:
        if change is None:
            stats.skipped[why] += 1
        else:
            stats.changes += 1
    return change


def changes(repo, cutoff: str = "HEAD", *, limit: int | None = None, stats: HistoryStats | None = None):
    """Yield replayable changes, oldest first, for commits reachable from ``cutoff``."""
    stats = stats if stats is not None else HistoryStats()
    if not repo.head.is_valid():
        return  # an empty repository has no history to replay
    end = resolve(repo, cutoff)
    shallow = shallow_boundary(repo)
    commits = list(repo.iter_commits(end.hexsha, reverse=True))
    for commit in commits:
        stats.commits += 1
        if limit is not None and stats.changes >= limit:
            stats.skipped["over limit"] += 1
            continue
        if commit.hexsha in shallow:  # its parent object is not in this clone
            stats.skipped["shallow boundary"] += 1
            continue
        if len(commit.parents) > 1:
            stats.skipped["merge commit"] += 1
            continue
        if not commit.parents:
            stats.skipped["root commit"] += 1
            continue
        parent = commit.parents[0]
        change, why = _change(commit, parent)
        if change is None:
            stats.skipped[why] += 1
            continue
        stats.changes += 1
        yield change


def _blob_by_id(repo, hexsha: str) -> tuple[str | None, str | None]:
    binsha = bytes.fromhex(hexsha)
    if repo.odb.info(binsha).size > MAX_FILE_BYTES:
        return None, "huge file"
    return decode_text(repo.odb.stream(binsha).read())


def _change_from_raw(commit, parent, raw: list[RawEntry]) -> tuple[Change | None, str | None]:
    if not raw:
        return None, "empty commit"
    if len(raw) > MAX_FILES_PER_CHANGE:
        return None, "huge commit"
    repo = commit.repo
    files: list[FileChange] = []
    for e in raw:
        if e.status not in "AMDR":
            return None, f"unsupported change {e.status}"
        if 0o160000 in (e.old_mode, e.new_mode):
            return None, "submodule change"
        if 0o120000 in (e.old_mode, e.new_mode):
            return None, "symlink change"
        for path in filter(None, (e.old_path, e.new_path)):
            if vendored_or_generated(path, None) or secret_reason(path, None):
                return None, "touches excluded file"
        before, why_a = _blob_by_id(repo, e.old_blob) if e.old_path else (None, None)
        after, why_b = _blob_by_id(repo, e.new_blob) if e.new_path else (None, None)
        why = why_a or why_b
        if why:
            return None, "binary change" if why in ("binary", "not utf-8") else why
        for text in filter(None, (before, after)):
            if secret_reason(e.new_path or e.old_path, text):
                return None, "touches excluded file"
        files.append(FileChange(e.status, e.old_path, e.new_path, before, after))
    change = Change(commit.hexsha, parent.hexsha, commit.message, commit.authored_date, files,
                    issue_refs=ISSUE_REF.findall(commit.message))
    if change.changed_lines > MAX_CHANGED_LINES:
        return None, "huge commit"
    return change, None


def _change(commit, parent) -> tuple[Change | None, str | None]:
    diffs = parent.diff(commit, find_renames=True)  # rename detection like `git diff -M`
    if not diffs:
        return None, "empty commit"
    if len(diffs) > MAX_FILES_PER_CHANGE:
        return None, "huge commit"
    files: list[FileChange] = []
    for d in diffs:
        if d.a_mode == 0o160000 or d.b_mode == 0o160000:
            return None, "submodule change"
        old_path = None if d.new_file else d.a_path
        new_path = None if d.deleted_file else d.b_path
        for path in filter(None, (old_path, new_path)):
            if vendored_or_generated(path, None) or secret_reason(path, None):
                return None, "touches excluded file"
        before, why_a = _blob_text(parent, old_path) if old_path else (None, None)
        after, why_b = _blob_text(commit, new_path) if new_path else (None, None)
        why = why_a or why_b
        if why:
            return None, "binary change" if why in ("binary", "not utf-8") else why
        for text in filter(None, (before, after)):
            if secret_reason(new_path or old_path, text):
                return None, "touches excluded file"
        kind = "A" if d.new_file else "D" if d.deleted_file else "R" if d.renamed_file else "M"
        files.append(FileChange(kind, old_path, new_path, before, after))
    change = Change(commit.hexsha, parent.hexsha, commit.message, commit.authored_date, files,
                    issue_refs=ISSUE_REF.findall(commit.message))
    if change.changed_lines > MAX_CHANGED_LINES:
        return None, "huge commit"
    return change, None
