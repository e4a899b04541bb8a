"""History as replayable changes: renames, deletions, new files, merges, binaries, huge and shallow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest

from agent.errors import SwespotError
from trainer.experience.history import VERSION_SUBJECT, HistoryStats, candidate_commits, changes, uninformative, walk

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
    found = {c.subject: c for c in changes(git.Repo(history), "HEAD", stats=stats, skip_trivial=False)}
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
    assert subjects == ["Rename calc to arith", "Add subtraction (fixes #12)"]  # newest first


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


def _repo(tmp_path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    git_(root, "init", "-q", "-b", "main")
    commit(root, "initial", {"app.py": "def f():\n    return 0\n"})
    return root


def test_the_budget_keeps_the_commits_closest_to_the_cutoff(tmp_path):
    root = _repo(tmp_path)
    for n in range(1, 9):
        commit(root, f"Return {n} from f", {"app.py": f"def f():\n    return {n}\n"})
    stats = HistoryStats()
    found = [c.subject for c in changes(git.Repo(root), "HEAD", limit=3, stats=stats)]
    assert found == ["Return 8 from f", "Return 7 from f", "Return 6 from f"]
    assert stats.skipped == {"over limit": 6} and stats.commits == 9


def test_trivial_commits_are_skipped_and_each_reason_counted(tmp_path):
    root = _repo(tmp_path)
    code = "def f():\n    return 0\n"
    commit(root, "Fix tests", {"app.py": code + "\n\ndef g():\n    return 1\n"})
    commit(root, "wip", {"app.py": code + "\n\ndef g():\n    return 2\n"})
    commit(root, "Fix tests\n\nThe fixture left the temporary folder behind on Windows, so the second run failed.",
           {"app.py": code + "\n\ndef g():\n    return 3\n"})  # the body says what the subject does not
    commit(root, "Tidy the signature of g", {"app.py": code + "\n\ndef g( ):\n    return   3\n"})
    commit(root, "Bump version to 1.2.0", {"app.py": code + "\n\ndef g():\n    return 3\n"})
    commit(root, "Prepare the next cycle", {"version.py": "__version__ = '1.3.0.dev0'\n"})
    commit(root, "Explain the options in the README", {"README.md": "# app\n\nOptions...\n"})
    commit(root, "typo", {"app.py": code + "\n\ndef g():\n    return 4\n", "CHANGES.md": "- ``g`` returns 4.\n"})
    stats = HistoryStats()
    found = [c.subject for c in changes(git.Repo(root), "HEAD", stats=stats)]
    assert found == ["typo", "Fix tests"]  # the changelog entry and the body rescue them
    assert stats.skipped == {"subject says nothing": 2, "formatting only": 1, "version bump": 2, "no code file": 1,
                             "root commit": 1}


@pytest.mark.parametrize("subject, says_nothing", [
    ("Fix tests", True), ("wip", True), ("typo", True), ("Fix typos.", True), ("Update CHANGES.rst", True),
    ("[pre-commit.ci] lint", True), ("docs: fixes (#12)", True), ("Lint", True),
    ("Fix parsing when a parameter is named help (#3678)", False), ("Strip all ANSI sequences", False),
    ("style()", False), ("Refactor pager stream handling", False),
])
def test_uninformative_subjects(subject, says_nothing):
    assert uninformative(subject) is says_nothing


@pytest.mark.parametrize("subject, bump", [
    ("Release 8.1.7", True), ("start version 8.2.0", True), ("Bump version to 2.0.0.dev0", True), ("8.1.3", True),
    ("release version 8.1.8", True), ("Update to Python 3.12", False), ("Support Python 3.13", False),
    ("Update tests for pytest 8.0", False), ("3.0 compatibility", False),
])
def test_version_bump_subjects(subject, bump):
    assert bool(VERSION_SUBJECT.match(subject)) is bump


def test_the_task_text_is_subject_body_and_the_changelog_entry(tmp_path):
    root = _repo(tmp_path)
    commit(root, "Start the changelog", {"CHANGES.md": "# Changes\n\n## Version 1.0\n\n- First.\n"})
    commit(root, "Let f take a default\n\nCallers no longer need to pass zero.\n\nSigned-off-by: A <a@example.org>\n",
           {"app.py": "def f(x=0):\n    return x\n",
            "CHANGES.md": "# Changes\n\n## Version 1.1\n\nUnreleased\n\n- ``f`` takes a default. :issue:`7`\n\n## Version 1.0\n\n- First.\n"})
    commit(root, "Make f double its input", {"app.py": "def f(x=0):\n    return 2 * x\n",
                                              "changelog.d/8.change.md": "`f` now doubles its input.\n"})
    newest, older = list(changes(git.Repo(root), "HEAD"))
    assert older.task == ("Let f take a default\n\nCallers no longer need to pass zero.\n\n"
                          "Changelog entry:\n- ``f`` takes a default. :issue:`7`")
    assert newest.task == "Make f double its input\n\nChangelog entry:\n`f` now doubles its input."


def test_merges_replay_the_merged_commits_once_at_the_merge(tmp_path):
    """A first-parent walk, newest first; a merge itself is not replayed, the commits it brought in are
    (each against its own parent, at the merge's place); a branch that merged main in between replays
    nothing twice."""
    root = _repo(tmp_path)
    base = git_(root, "rev-parse", "HEAD")
    git_(root, "checkout", "-q", "-b", "side")
    s1 = commit(root, "Add helper h", {"side.py": "def h():\n    return 1\n"})
    git_(root, "checkout", "-q", "main")
    m1 = commit(root, "Add g to app", {"app.py": "def f():\n    return 0\n\n\ndef g():\n    return 1\n"})
    git_(root, "checkout", "-q", "side")
    git_(root, "merge", "-q", "--no-ff", "main", "-m", "Merge main into side")  # main's m1 reaches side too
    s2 = commit(root, "Let h take an argument", {"side.py": "def h(x):\n    return x\n"})
    git_(root, "checkout", "-q", "main")
    git_(root, "merge", "-q", "--no-ff", "side", "-m", "Merge branch side")
    merge = git_(root, "rev-parse", "HEAD")
    after = commit(root, "Use h in f", {"app.py": "from side import h\n\n\ndef f():\n    return h(0)\n\n\ndef g():\n    return 1\n"})
    order = [sha for sha, _ in walk(root, after)]
    assert len(order) == len(set(order)) == 7
    assert order[:2] == [after, merge] and order[2] == s2 and order[-2:] == [m1, base]
    stats = HistoryStats()
    pairs = [(c.hexsha, p.hexsha) for c, p in candidate_commits(git.Repo(root), "HEAD", stats=stats)]
    assert [c for c, _ in pairs] == [after, s2, s1, m1]
    assert dict(pairs)[s1] == base  # the merged commit against its own parent
    assert stats.skipped == {"merge commit": 2, "root commit": 1}
    replayed = [c.subject for c in changes(git.Repo(root), "HEAD")]
    assert replayed == ["Use h in f", "Let h take an argument", "Add helper h", "Add g to app"]


def test_recent_activity_ranks_files_by_decayed_changes_up_to_the_cutoff(tmp_path):
    """The text and design units take files in this order: the files changed most, most recently, before
    the cutoff first; a merge counts with its first-parent diff; nothing after the cutoff is read."""
    from trainer.experience.history import recent_activity
    from trainer.experience.text import file_order

    root = _repo(tmp_path)
    commit(root, "Add b", {"b.py": "B = 1\n", "old.py": "O = 1\n"})
    for n in range(3):
        commit(root, f"Tune a {n}", {"a.py": f"A = {n}\n"})
    git_(root, "checkout", "-q", "-b", "side")
    commit(root, "Add c on a branch", {"c.py": "C = 1\n"})
    git_(root, "checkout", "-q", "main")
    git_(root, "merge", "-q", "--no-ff", "side", "-m", "Merge branch side")
    cutoff = git_(root, "rev-parse", "HEAD")
    commit(root, "After the cutoff", {"later.py": "L = 1\n"})
    score = recent_activity(root, cutoff, half_life=2)
    assert "later.py" not in score
    assert score["c.py"] == pytest.approx(1.0)  # the merge, age 0
    assert score["a.py"] == pytest.approx(0.5 ** 0.5 + 0.5 + 0.5 ** 1.5)
    assert score["a.py"] > score["b.py"] > 0 and score["b.py"] == score["old.py"]
    order = file_order(["README.md", "old.py", "b.py", "a.py", "c.py", "app.py"], 0, lambda p: p.endswith(".py"), score)
    assert order[:2] == ["a.py", "c.py"] and order[-1] == "README.md"
    assert set(order[2:4]) == {"b.py", "old.py"}
