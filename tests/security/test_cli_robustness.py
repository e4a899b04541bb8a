"""Bad revisions and bare repositories give one clean line from every command (issue 17), through the
real command line on real git repositories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_support import FILES, ROOT, commit, git

ZEROS = "0" * 40


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> tuple[Path, Path, str]:
    """A small repository with two commits, and a bare clone of it."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "ledger"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    first = commit(root, "Start the ledger", FILES)
    commit(root, "Add fees", {"ledger/fees.py": '"""Fees."""\n\n\ndef fee(a):\n    """One percent."""\n    return a // 100\n'})
    subprocess.run(["git", "clone", "-q", "--bare", str(root), str(tmp / "ledger.git")], check=True)
    return root, tmp / "ledger.git", first


def swespot(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWESPOT_STATE_DIR": str(tmp / "state"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "swespot", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp)


def one_clean_line(done: subprocess.CompletedProcess, *wanted: str) -> str:
    err = done.stderr
    assert done.returncode == 1, (done.returncode, err[-2000:])
    assert "Traceback" not in err and "Error:" not in err.replace("swespot: error:", ""), err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("swespot: error:")]
    assert len(lines) == 1, err[-2000:]
    for word in wanted:
        assert word in lines[0], lines[0]
    return lines[0]


def test_forty_zeros_as_cutoff_of_experience_build(repos, tmp_path):
    root, _bare, _first = repos
    done = swespot(tmp_path, "experience", "build", "--repo", str(root), "--cutoff", ZEROS, "--out", str(tmp_path / "x"))
    one_clean_line(done, ZEROS, "no such commit")


def test_forty_zeros_as_cutoff_of_specialize(repos, tmp_path):
    root, _bare, _first = repos
    one_clean_line(swespot(tmp_path, "specialize", str(root), "--cutoff", ZEROS), ZEROS, "no such commit")


@pytest.mark.parametrize("which", ["--cutoff", "--until"])
def test_forty_zeros_as_a_revision_of_eval(repos, tmp_path, which):
    root, _bare, first = repos
    base = tmp_path / "base.gguf"  # never loaded: the revisions are checked before any model
    base.write_bytes(b"GGUF")
    revs = {"--cutoff": first, "--until": "HEAD", which: ZEROS}
    done = swespot(tmp_path, "eval", "--repo", str(root), "--base", str(base), "--cutoff", revs["--cutoff"],
                   "--until", revs["--until"], "--out", str(tmp_path / "report"))
    one_clean_line(done, ZEROS, "no such commit")


def test_other_bad_revisions_stay_one_line(repos, tmp_path):
    root, _bare, _first = repos
    blob = git(root, "rev-parse", "HEAD:ledger/money.py")
    for rev in ("no-such-branch", blob, "f" * 40, "HEAD~99"):
        one_clean_line(swespot(tmp_path, "experience", "build", "--repo", str(root), "--cutoff", rev, "--out", str(tmp_path / "x")), rev)


def test_daemon_on_a_bare_repository_says_it_is_bare_like_the_other_commands(repos, tmp_path):
    _root, bare, _first = repos
    daemon = one_clean_line(swespot(tmp_path, "daemon", "--repo", str(bare), "--quiet", "0"), "bare repository", "no work tree")
    build = one_clean_line(swespot(tmp_path, "experience", "build", "--repo", str(bare), "--out", str(tmp_path / "x")))
    specialize = one_clean_line(swespot(tmp_path, "specialize", str(bare), "--no-eval"))
    assert daemon == build == specialize
    assert "gone" not in daemon
