"""A scratch work tree that can be moved from commit to commit cheaply.

Episodes drive the real tools against the repository as it was at the episode's commit. Extracting a
whole tree per commit would cost seconds on a large repository, so a ``Snapshot`` keeps one scratch
folder and moves it with git's own machinery (``read-tree --reset -u`` against a private index file):
only the files that differ between two commits are written or removed. The user's work tree, index and
HEAD are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from agent import gitsafe
from agent.errors import SwespotError


class Snapshot:
    def __init__(self, repo_dir: str | os.PathLike, *, prefix: str = "swespot-snapshot-") -> None:
        self.repo_dir = Path(repo_dir).resolve()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.tree = self.root / "tree"
        self.tree.mkdir()
        self.index_file = self.root / "index"
        self.commit: str | None = None
        self._index_stale = False
        done = gitsafe.run(["rev-parse", "--absolute-git-dir"], cwd=self.repo_dir, capture_output=True, text=True)
        if done.returncode != 0:
            self.close()
            raise SwespotError(f"{self.repo_dir} is not a git repository")
        self.git_dir = done.stdout.strip()
        gitsafe.protect_repo(self.repo_dir, self.git_dir)  # checkouts write files: no filter driver runs

    def _git(self, *args: str) -> str:
        env = dict(os.environ, GIT_INDEX_FILE=str(self.index_file), GIT_WORK_TREE=str(self.tree))
        done = gitsafe.run(["--git-dir", self.git_dir, *args], cwd=self.tree, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SwespotError(f"git {' '.join(args)} failed in the scratch copy: {done.stderr.strip()}")
        return done.stdout

    def checkout(self, commit: str) -> list[str] | None:
        """Make the scratch tree equal to ``commit``'s tree (tracked files only). Returns the paths that
        changed (None after the first, full checkout) so callers can refresh what they derived."""
        if self.commit == commit:
            return []
        if self.commit is None:
            self._git("read-tree", commit)
            self._git("checkout-index", "-a", "-f")
            changed = None
        else:
            changed = [p for p in self._git("diff-tree", "-r", "--name-only", "-z", self.commit, commit).split("\0") if p]
            if self._index_stale:
                self._git("read-tree", self.commit)
                self._index_stale = False
            self._git("read-tree", "--reset", "-u", commit)
        self.commit = commit
        return changed

    def advance(self, commit: str) -> None:
        """Record that the tree was brought to ``commit`` by other means (a replayed change reached its
        child exactly). The private index catches up lazily, at the next real checkout."""
        self.commit = commit
        self._index_stale = True

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
