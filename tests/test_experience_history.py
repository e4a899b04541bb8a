"""History as replayable changes: renames, deletions, new files, merges, binaries, huge and shallow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest

from agent.errors import SwespotError
from trainer.experience.history import HistoryStats, changes

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
       "GIT_AUTHOR_DATE": "2026-01-01T00:00:00", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00", "PATH": "/usr/bin:/bin"}


def git_(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def commit(root: Path, message: str, files: dict[str, str | bytes | None]) -> str:
    for rel, content in files.items():
        path = root / rel
        if content is None:
            git_(root, "rm", "-q", rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        git_(root, "add", rel)
    git_(root, "commit", "-qm", message)
    return git_(root, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git_(root, "init", "-q", "-b", "main")
    commit(root, "initial", {"calc.py": "def add(a, b):\n    return a + b\n"})
    commit(root, "Add subtraction (fixes #12)", {"calc.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
                                                 "test_calc.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"})
    git_(root, "mv", "calc.py", "arith.py")
    commit(root, "Rename calc to arith", {"test_calc.py": "from arith import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"})
    commit(root, "Add a logo", {"logo.png": b"\x89PNG\0\0binary"})
    commit(root, "Drop the logo", {"logo.png": None})
    git_(root, "checkout", "-q", "-b", "side")
    commit(root, "Side work", {"side.py": "X = 1\n"})
    git_(root, "checkout", "-q", "main")
    commit(root, "Main work", {"main.py": "Y = 2\n"})
    git_(root, "merge", "-q", "--no-ff", "side", "-m", "Merge side")
    commit(root, "Generate a lot", {f"gen{i}.py": f"V = {i}\n" for i in range(20)})
    return root


def test_changes_carry_request_parent_and_file_texts(history):
    stats = HistoryStats()
    found = {c.subject: c for c in changes(git.Repo(history), "HEAD", stats=stats)}
    sub = found["Add subtraction (fixes #12)"]
    assert sub.issue_refs == ["12"]
    assert {(f.kind, f.path) for f in sub.files} == {("M", "calc.py"), ("A", "test_calc.py")}
    calc = next(f for f in sub.files if f.path == "calc.py")
    assert "def sub" not in calc.before and "def sub" in calc.after
    rename = found["Rename calc to arith"]
    assert ("R", "calc.py", "arith.py") in {(f.kind, f.old_path, f.new_path) for f in rename.files}
    assert {"Side work", "Main work"} <= set(found)
    assert stats.skipped == {"root commit": 1, "binary change": 2, "merge commit": 1, "huge commit": 1}
    assert stats.changes == len(found) == 4


def test_history_stops_at_the_cutoff(history):
    repo = git.Repo(history)
    cutoff = git_(history, "rev-list", "-n", "1", "--grep", "Rename calc", "HEAD")
    subjects = [c.subject for c in changes(repo, cutoff)]
    assert subjects == ["Add subtraction (fixes #12)", "Rename calc to arith"]


def test_a_shallow_clone_skips_the_boundary_instead_of_failing(history, tmp_path):
    clone = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "3", f"file://{history}", str(clone)], check=True, capture_output=True)
    stats = HistoryStats()
    found = list(changes(git.Repo(clone), "HEAD", stats=stats))
    assert stats.skipped["shallow boundary"] >= 1
    assert all(c.parent for c in found)


def test_empty_repository_and_unknown_cutoff(tmp_path, history):
    empty = tmp_path / "empty"
    empty.mkdir()
    git_(empty, "init", "-q")
    assert list(changes(git.Repo(empty))) == []
    with pytest.raises(SwespotError, match="not a commit"):
        list(changes(git.Repo(history), "no-such-ref"))


def test_detached_head_is_fine(history):
    first = git_(history, "rev-list", "--max-parents=0", "HEAD")
    second = git_(history, "rev-list", "--reverse", "HEAD").splitlines()[1]
    git_(history, "checkout", "-q", second)
    assert [c.parent for c in changes(git.Repo(history))] == [first]
