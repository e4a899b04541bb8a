"""The repository's history as replayable changes (gitpython).

Each commit up to the cutoff that may teach something becomes a ``Change``: its task text (the request),
its parent (the starting state) and the text of every touched file before and after.

Which commits, in which order (``walk``): the history is walked **newest first** from the cutoff along
the first-parent line, because the code a user edits today looks like the last hundred commits, not
the first; a budget (``limit``) keeps the commits closest to the cutoff. A merge commit is not replayed
itself (its diff is a whole branch); the commits it merged are, each against its own parent, at the
merge's place in the walk. Every commit is owned by exactly one first-parent commit (the first one whose
history contains it), so no commit is replayed twice. Squash-merged histories are simply the first-parent
line.

What is skipped, each reason counted in ``HistoryStats.skipped``, never silently: merges, roots and
shallow boundaries; commits that touch no code file; version bumps; subjects that say nothing ("Fix
tests", "wip", "typo") unless the body or a changelog entry does; formatting-only changes (whitespace);
and, from the diff, binary, huge, submodule and excluded-file changes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from git.exc import GitCommandError
from gitdb.exc import BadName, BadObject

from agent import gitsafe
from agent.errors import SwespotError
from trainer.experience.change import VERSION_SUBJECT as VERSION_SUBJECT  # re-exported, with the two below
from trainer.experience.change import Change, FileChange, is_changelog, is_code, trivial_reason, uninformative
from trainer.experience.change import line_opcodes as line_opcodes
from trainer.experience.files import MAX_FILE_BYTES, decode_text, secret_reason, vendored_or_generated

MAX_FILES_PER_CHANGE = 12
MAX_CHANGED_LINES = 400
ISSUE_REF = re.compile(r"(?:(?:fix(?:es|ed)?|close[sd]?|resolve[sd]?)\s+)?#(\d+)", re.I)


@dataclass
class HistoryStats:
    commits: int = 0
    changes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"commits": self.commits, "changes": self.changes, "skipped": dict(self.skipped)}


def require_work_tree(repo, path) -> None:
    """Refuse a bare repository with the one message every command gives: swespot reads and watches a
    checked-out repository (snapshots, ignore rules, the editor's files), and a bare one has none."""
    if repo.bare or not repo.working_tree_dir:
        raise SwespotError(f"{path} is a bare repository: it has no work tree to learn from or watch; "
                           f"clone it (git clone {path} DIR) and point swespot at the clone")


def resolve(repo, rev: str):
    where = repo.working_tree_dir or repo.git_dir
    try:
        commit = repo.commit(rev)
    except (BadName, BadObject, ValueError, GitCommandError) as exc:
        why = "no such commit" if isinstance(exc, BadObject) else str(exc).strip()
        raise SwespotError(f"{rev!r} is not a commit of {where}: {why}") from exc
    try:
        _ = commit.size  # a full hex name is not looked up until read (forty zeros "resolve"): read it now
    except (BadObject, ValueError) as exc:  # the name was well-formed, the object is not in the repository
        raise SwespotError(f"{rev!r} is not a commit of {where}: no such commit") from exc
    return commit


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


def walk(repo_path, cutoff: str) -> list[tuple[str, list[str]]]:
    """(sha, parents) of every commit reachable from ``cutoff``, in replay order: newest first along the
    first-parent line, each merge followed by the commits it brought in (newest first), each commit once.
    One ``git log`` process; ownership of merged commits is worked out in one pass over the history."""
    done = gitsafe.run(["log", "--topo-order", "--format=%H %P", cutoff], cwd=repo_path, capture_output=True, text=True)
    if done.returncode != 0:
        raise SwespotError(f"git log failed: {done.stderr.strip()}")
    parents: dict[str, list[str]] = {}
    order: dict[str, int] = {}  # topological position: smaller is newer
    for n, line in enumerate(done.stdout.splitlines()):
        sha, *ps = line.split()
        parents[sha], order[sha] = ps, n
    line_ = []  # the first-parent line, newest first (git log starts at the cutoff itself)
    at = next(iter(parents), None)
    while at is not None and at in parents:
        line_.append(at)
        at = parents[at][0] if parents[at] else None
    owned: set[str] = set(line_)
    brought: dict[str, list[str]] = {}
    for fp in reversed(line_):  # oldest first: everything an older first-parent commit reaches is owned
        stack = [p for p in parents[fp][1:] if p in parents and p not in owned]
        mine = []
        while stack:
            c = stack.pop()
            if c in owned:
                continue
            owned.add(c)
            mine.append(c)
            stack.extend(p for p in parents[c] if p in parents and p not in owned)
        brought[fp] = sorted(mine, key=order.__getitem__)
    out = []
    for fp in line_:
        out.append((fp, parents[fp]))
        out.extend((c, parents[c]) for c in brought[fp])
    return out


ACTIVITY_COMMITS = 300  # how far back along the first-parent line recent activity looks
ACTIVITY_HALF_LIFE = 50  # commits: a file changed 50 first-parent commits before the cutoff counts half


def recent_activity(repo_path, cutoff: str, *, commits: int = ACTIVITY_COMMITS,
                    half_life: float = ACTIVITY_HALF_LIFE) -> dict[str, float]:
    """Where the repository has been moving just before ``cutoff``: for each path, the sum over the last
    ``commits`` first-parent commits that changed it of ``0.5 ** (age / half_life)`` (age 0 = the cutoff;
    a merge counts with its whole first-parent diff). Only history up to the cutoff is read, so ranking
    files by it never looks at what the evaluation holds out. Paths are as of each commit (a file renamed
    since is credited under both names; the caller keeps the names that exist at the cutoff)."""
    done = gitsafe.run(["log", "--first-parent", "--diff-merges=first-parent", "--no-renames", "--name-only",
                        "--format=%x00", "-n", str(commits), cutoff, "--"],
                       cwd=repo_path, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        raise SwespotError(f"git log failed: {done.stderr.strip()}")
    score: Counter = Counter()
    for age, block in enumerate(done.stdout.split("\0")[1:]):
        weight = 0.5 ** (age / half_life)
        for path in {p for p in block.splitlines() if p.strip()}:
            score[path] += weight
    return dict(score)


def _cheap_skip(sha: str, message: str, raw: list[RawEntry] | None) -> str | None:
    """Reasons to skip a commit that need no diff: no code file touched, a version bump, a subject that
    says nothing (unless the body, or a changelog entry the commit adds, says something)."""
    subject = message.strip().splitlines()[0].strip() if message.strip() else ""
    paths = [p for e in raw or [] for p in (e.old_path, e.new_path) if p]
    if raw is not None and paths and not any(is_code(p) for p in paths):
        return "no code file"
    if VERSION_SUBJECT.match(subject):
        return "version bump"
    if uninformative(subject):
        body = Change(sha, "", message, 0, []).body
        if len(body.split()) < 8 and not any(is_changelog(p) for p in paths):
            return "subject says nothing"
    return None


def candidate_commits(repo, cutoff: str = "HEAD", *, limit: int | None = None, stats: HistoryStats | None = None,
                      raw: dict[str, list[RawEntry]] | None = None, skip_trivial: bool = True):
    """Yield (commit, parent) for the commits that may become changes, in replay order (``walk``: newest
    first), at most ``limit`` of them, without computing any diff (cheap: an incremental build checks its
    cache before paying for ``change_of``). Merges, roots, shallow boundaries and (``skip_trivial``) the
    commits ``_cheap_skip`` rejects are counted in ``stats`` and skipped; so are those over the limit."""
    stats = stats if stats is not None else HistoryStats()
    if not repo.head.is_valid():
        return
    end = resolve(repo, cutoff)
    shallow = shallow_boundary(repo)
    if skip_trivial and raw is None:
        raw = raw_history(repo.working_tree_dir, end.hexsha)
    taken = 0
    for sha, parents in walk(repo.working_tree_dir, end.hexsha):
        stats.commits += 1
        if limit is not None and taken >= limit:
            stats.skipped["over limit"] += 1
            continue
        why = ("shallow boundary" if sha in shallow else "merge commit" if len(parents) > 1 else "root commit" if not parents
               else None)
        commit = None
        if why is None and skip_trivial:
            commit = repo.commit(sha)
            why = _cheap_skip(sha, commit.message, (raw or {}).get(sha))
        if why:
            stats.skipped[why] += 1
            continue
        taken += 1
        commit = commit or repo.commit(sha)
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
    done = gitsafe.run(["log", "--raw", "-z", "-M", "--no-abbrev", *gitsafe.DIFF_FLAGS, "--format=%x01%H", cutoff],
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


def change_of(commit, parent, stats: HistoryStats | None = None, raw: list[RawEntry] | None = None, *,
              skip_trivial: bool = False):
    """The replayable change of one commit, or None (the reason counted in ``stats``). With ``raw``
    (from ``raw_history``) no diff process is started; with ``skip_trivial`` a formatting-only change or
    a version bump is None too (``trivial_reason``)."""
    change, why = _change_from_raw(commit, parent, raw) if raw is not None else _change(commit, parent)
    if change is not None and skip_trivial:
        why = trivial_reason(change)
        change = None if why else change
    if stats is not None:
        if change is None:
            stats.skipped[why] += 1
        else:
            stats.changes += 1
    return change


def changes(repo, cutoff: str = "HEAD", *, limit: int | None = None, stats: HistoryStats | None = None,
            skip_trivial: bool = True):
    """Yield replayable changes, newest first (``walk``), for commits reachable from ``cutoff``; ``limit``
    counts the candidates taken (closest to the cutoff), as ``candidate_commits`` does."""
    stats = stats if stats is not None else HistoryStats()
    if not repo.head.is_valid():
        return  # an empty repository has no history to replay
    raw = raw_history(repo.working_tree_dir, resolve(repo, cutoff).hexsha)
    for commit, parent in list(candidate_commits(repo, cutoff, limit=limit, stats=stats, raw=raw, skip_trivial=skip_trivial)):
        change = change_of(commit, parent, stats, raw=raw.get(commit.hexsha, []), skip_trivial=skip_trivial)
        if change is not None:
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
        path = e.new_path or e.old_path or ""  # a change has one of them
        for text in filter(None, (before, after)):
            if secret_reason(path, text):
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
        path = new_path or old_path or ""  # a diff has one of them
        for text in filter(None, (before, after)):
            if secret_reason(path, text):
                return None, "touches excluded file"
        kind = "A" if d.new_file else "D" if d.deleted_file else "R" if d.renamed_file else "M"
        files.append(FileChange(kind, old_path, new_path, before, after))
    change = Change(commit.hexsha, parent.hexsha, commit.message, commit.authored_date, files,
                    issue_refs=ISSUE_REF.findall(commit.message))
    if change.changed_lines > MAX_CHANGED_LINES:
        return None, "huge commit"
    return change, None
