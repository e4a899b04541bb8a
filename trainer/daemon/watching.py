"""Watching a repository: what its HEAD is (``read_git_state``), what changed between two HEADs
(``describe_change``), and watchdog on the git folder so the daemon hears of commits, checkouts and
rebases without polling (``GitWatcher``). Edits in the work tree are not watched: only refs count.

watchdog is imported in ``GitWatcher.start`` only: it comes with the ``daemon`` extra, and the rest of
this module (reading git) serves installations without it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from agent.errors import SwespotError
from trainer.experience.history import require_work_tree

# a git operation between two states: nothing is decided while one of these exists in the git folder
IN_PROGRESS = ("rebase-merge", "rebase-apply", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "BISECT_LOG")


@dataclass(frozen=True)
class GitState:
    head: str | None  # None: no commit yet
    branch: str | None  # None: detached
    busy: str | None  # an operation in progress (rebase, merge...), or None


def read_git_state(repo: Path) -> GitState:
    try:
        r = git.Repo(repo)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo} is not a git repository") from exc
    require_work_tree(r, repo)
    git_dir = Path(r.git_dir)
    busy = next((name for name in IN_PROGRESS if (git_dir / name).exists()), None)
    if not (git_dir / "HEAD").exists():  # moved or deleted between the two reads
        raise SwespotError(f"{repo} has no HEAD (was the repository moved or deleted?)")
    try:
        head = r.head.commit.hexsha
    except ValueError:  # an unborn branch: no commit yet
        head = None
    try:
        branch = None if r.head.is_detached else r.head.ref.name
    except ValueError as exc:  # HEAD vanished while we read it
        raise SwespotError(f"cannot read HEAD of {repo}: {exc}") from exc
    return GitState(head, branch, busy)


def commits_between(repo: Path, old: str | None, new: str) -> int:
    """How many commits ``new`` has that ``old`` has not (all of them when ``old`` is None)."""
    r = git.Repo(repo)
    spec = f"{old}..{new}" if old else new
    try:
        return int(r.git.rev_list("--count", spec))
    except git.GitCommandError:  # ``old`` is gone (gc after a rebase): count everything
        return int(r.git.rev_list("--count", new))


def describe_change(repo: Path, before: GitState | None, after: GitState) -> str:
    """A human word for what happened between two HEADs: new commit(s), branch switch, rewrite..."""
    if before is None or before.head is None:
        return "start"
    if after.head == before.head:
        return "branch switch" if after.branch != before.branch else "no change"
    if after.branch != before.branch:
        return f"switch to {after.branch or 'a detached HEAD'}"
    if after.head is None:
        return "no commit yet"
    r = git.Repo(repo)
    try:
        old, new = r.commit(before.head), r.commit(after.head)
        if r.is_ancestor(old, new):
            return f"{commits_between(repo, before.head, after.head)} new commit(s)"
        if r.is_ancestor(new, old):
            return "reset to an earlier commit"
    except (git.GitCommandError, git.BadName, ValueError):  # the old HEAD is gone (gc after a rewrite)
        pass
    return "history rewritten (amend or rebase)"


class GitWatcher:
    """watchdog on the git folder: calls ``on_change(path)`` when HEAD, a ref or packed-refs changes (git
    writes ``x.lock`` and renames it to ``x``, so the rename's destination is what counts). Object
    writes, the index and logs are ignored, and so are edits in the work tree."""

    def __init__(self, repo: Path, on_change: Callable[[str], None], also: tuple[Path, ...] = ()) -> None:
        r = git.Repo(repo)
        self.git_dir = Path(r.git_dir).resolve()
        self.common_dir = Path(r.common_dir).resolve()
        self.also = tuple(Path(p).resolve() for p in also)  # other files whose changes count (outside git)
        self.on_change = on_change
        self.observer: Any = None  # a watchdog Observer while started

    def relevant(self, path: str) -> bool:
        p = Path(path)
        if p in self.also:
            return True
        if p.name.endswith(".lock"):
            return False
        for root in {self.git_dir, self.common_dir}:
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                continue
            if rel in ("HEAD", "packed-refs") or rel.startswith("refs/"):
                return True
        return False

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type not in ("created", "modified", "moved", "deleted"):
                    return
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path and watcher.relevant(os.fsdecode(path)):
                        watcher.on_change(os.fsdecode(path))
                        return

        self.observer = Observer()
        handler = Handler()
        self.observer.schedule(handler, str(self.git_dir), recursive=False)
        if self.common_dir != self.git_dir:  # a linked worktree: refs live in the main repository
            self.observer.schedule(handler, str(self.common_dir), recursive=False)
        if (self.common_dir / "refs").is_dir():
            self.observer.schedule(handler, str(self.common_dir / "refs"), recursive=True)
        for folder in {p.parent for p in self.also if p.parent.is_dir()}:
            self.observer.schedule(handler, str(folder), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            try:
                self.observer.join(timeout=5)
            except RuntimeError:
                pass
            self.observer = None
