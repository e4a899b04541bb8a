"""Escape 1 of issue 17, without the editor: git turned against us through ``.git``.

The agent's file tools accepted ``.git/config``; an ``fsmonitor`` written there ran (with the network,
outside any sandbox) the next time the project listed the workspace with ``git ls-files``, and again at
the user's next ``git status``. Now the tools refuse git's metadata at any depth, and every git command
the project runs (its own subprocesses and GitPython's) has ``core.fsmonitor``, ``core.hooksPath`` and
the like set to values that run nothing, so even a configuration planted by other means runs nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest

from agent.tools import CommandPolicy, Workspace, call_tool, make_tools
from trainer.experience.snapshot import Snapshot


def make_repo(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def fsmonitor_line(marker: Path) -> str:
    # git runs the hook through the shell, with its own arguments after ours
    return f'\tfsmonitor = "echo ran >> {marker}; true"\n'


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def tools(repo):
    return make_tools(Workspace(repo, policy=CommandPolicy(approve=lambda command: True)))


def test_an_fsmonitor_the_agent_adds_to_git_config_never_runs(repo, tools, tmp_path):
    marker = tmp_path / "fsmonitor-ran"
    config = (repo / ".git" / "config").read_text()
    out = call_tool(tools, "edit", {"path": ".git/config", "old": "[core]\n", "new": "[core]\n" + fsmonitor_line(marker)})
    assert out.startswith("error:") and "git's own metadata" in out
    assert (repo / ".git" / "config").read_text() == config  # no trap left for the user's next `git status`
    call_tool(tools, "find_files", {"pattern": "*.py"})  # the workspace listing runs git ls-files
    assert not marker.exists()


@pytest.mark.parametrize("tool, args", [
    ("read_file", {"path": ".git/config"}),
    ("read_file", {"path": "pkg/../.git/HEAD"}),
    ("create_file", {"path": ".git/hooks/post-checkout", "content": "#!/bin/sh\ntouch /tmp/owned\n"}),
    ("create_file", {"path": "pkg/.git/config", "content": "[core]\n\tfsmonitor = sh evil.sh\n"}),
    ("create_file", {"path": "pkg/.git", "content": "gitdir: /somewhere/else\n"}),
    ("create_file", {"path": ".GIT/config", "content": "[core]\n"}),
    ("delete_file", {"path": ".git/HEAD"}),
    ("edit", {"path": ".git/HEAD", "old": "ref", "new": "x"}),
])
def test_the_tools_neither_read_nor_write_git_metadata(repo, tools, tool, args):
    before = sorted(p.relative_to(repo).as_posix() for p in (repo / ".git").rglob("*"))
    out = call_tool(tools, tool, args)
    assert out.startswith("error:") and "git's own metadata" in out, out
    assert sorted(p.relative_to(repo).as_posix() for p in (repo / ".git").rglob("*")) == before
    assert not (repo / "pkg" / ".git").exists() and not (repo / ".GIT").exists()


def test_a_link_to_git_metadata_is_refused_too(repo, tools):
    (repo / "cfg").symlink_to(".git/config")
    assert "git's own metadata" in call_tool(tools, "read_file", {"path": "cfg"})
    assert "git's own metadata" in call_tool(tools, "edit", {"path": "cfg", "old": "[core]", "new": "[core]\n\tfsmonitor = x"})


def test_a_planted_fsmonitor_runs_in_none_of_the_projects_git_commands(repo, tmp_path):
    """A configuration the tools can no longer write, planted anyway (say, by hand): neither the
    workspace listing, nor GitPython, nor the experience builder's snapshot runs it."""
    marker = tmp_path / "fsmonitor-ran"
    config = repo / ".git" / "config"
    config.write_text(config.read_text().replace("[core]\n", "[core]\n" + fsmonitor_line(marker)))
    (repo / "pkg" / "mod.py").write_text("def f():\n    return 2\n")  # a dirty tree: status must look at it
    assert "pkg/mod.py" in Workspace(repo).files()
    r = git.Repo(repo)
    assert r.is_dirty() and r.git.status("--porcelain")
    assert r.untracked_files == []
    with Snapshot(repo) as snap:
        snap.checkout("HEAD")
    assert not marker.exists()


def test_a_planted_hook_does_not_run(repo, tmp_path):
    marker = tmp_path / "hook-ran"
    hook = repo / ".git" / "hooks" / "post-index-change"
    hook.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    hook.chmod(0o755)
    r = git.Repo(repo)
    r.git.update_index("--refresh")  # git runs post-index-change whenever it writes the index
    r.index.write()
    subprocess.run(["git", "add", "pkg/mod.py"], cwd=repo, check=True)  # any child of ours, too
    assert not marker.exists()


def test_a_planted_filter_driver_runs_in_neither_the_snapshot_nor_a_scratch_copy(repo, tmp_path):
    """Filter drivers have no switch: the ones a configuration defines are emptied by name."""
    from agent.sandbox import scratch_copy

    marker = tmp_path / "filter-ran"
    (repo / ".gitattributes").write_text("*.py filter=planted\n")
    subprocess.run(["git", "add", ".gitattributes"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "attributes"], cwd=repo, check=True)
    command = f"sh -c 'echo ran >> {marker}; cat'"
    for key in ("smudge", "clean"):
        subprocess.run(["git", "config", f"filter.planted.{key}", command], cwd=repo, check=True)
    with Snapshot(repo) as snap:
        snap.checkout("HEAD")
        assert (snap.tree / "pkg" / "mod.py").read_text() == "def f():\n    return 1\n"  # content passes through
    with scratch_copy(repo) as copy:
        assert (copy / "pkg" / "mod.py").read_text() == "def f():\n    return 1\n"
    (repo / "pkg" / "mod.py").write_text("def f():\n    return 3\n")
    assert git.Repo(repo).is_dirty()  # status hashes the changed file: the clean filter would run here
    assert not marker.exists()
