"""Escape 3 of issue 17 and its relatives: symbolic links in the repository. The tools read through a
link only where it stays inside the repository, never write through one, never list, search or index
what a link outside points to; copies reproduce links as links; an edit for the editor never targets a
path through a link (the editor would write wherever it points)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.errors import SwespotError
from agent.sandbox import sandbox_available
from agent.tools import CommandPolicy, Workspace, call_tool, make_tools
from lsp_server.documents import FileChange, build_workspace_edit

SECRET_DEF = "def private_helper_7f3a():\n    return 'outside the repository'\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text(SECRET_DEF)
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Guide\n")
    (root / "mod.py").write_text("def f():\n    return 1\n")
    os.symlink(outside, root / "link_dir")  # a folder outside
    os.symlink(outside / "secret.py", root / "leak.py")  # a file outside
    os.symlink("docs", root / "docs_link")  # a folder inside
    os.symlink("mod.py", root / "alias.py")  # a file inside
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture
def tools(repo):
    return make_tools(Workspace(repo, policy=CommandPolicy(approve=lambda command: True)))


def test_what_a_link_out_of_the_repository_points_to_is_not_listed_searched_or_indexed(tools):
    assert "leak.py" not in call_tool(tools, "list_dir", {})
    assert "leak.py" not in call_tool(tools, "find_files", {"pattern": "*.py"})
    assert call_tool(tools, "search", {"pattern": "private_helper"}).startswith("no matches")
    assert "private_helper" not in call_tool(tools, "repo_map", {})
    assert call_tool(tools, "find_definition", {"symbol": "private_helper_7f3a"}).startswith("no definition")
    assert "outside the repository" in call_tool(tools, "read_file", {"path": "leak.py"})


@pytest.mark.parametrize("tool, args", [
    ("create_file", {"path": "link_dir/autostart.sh", "content": "#!/bin/sh\n"}),
    ("edit", {"path": "leak.py", "old": "return", "new": "raise"}),
    ("create_file", {"path": "docs_link/new.md", "content": "x\n"}),
    ("edit", {"path": "alias.py", "old": "return 1", "new": "return 2"}),
    ("delete_file", {"path": "alias.py"}),
    ("create_file", {"path": "docs_link/../new.py", "content": "x = 1\n"}),
])
def test_nothing_is_written_through_a_link(repo, tools, tool, args, tmp_path):
    out = call_tool(tools, tool, args)
    assert out.startswith("error:") and ("symbolic link" in out or "outside the repository" in out), out
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.py"]
    assert not (repo / "docs" / "new.md").exists() and not (repo / "new.py").exists()
    assert (repo / "mod.py").read_text() == "def f():\n    return 1\n" and (repo / "alias.py").is_symlink()


def test_reading_through_a_link_inside_the_repository_still_works(tools):
    assert call_tool(tools, "read_file", {"path": "docs_link/guide.md"}) == "1: # Guide"
    assert call_tool(tools, "read_file", {"path": "alias.py", "start_line": 2}) == "2:     return 1"


@pytest.mark.skipif(not sandbox_available(), reason="bubblewrap (bwrap) is not installed or cannot work here")
def test_the_run_copy_holds_links_as_links_and_their_outside_targets_do_not_exist_there(tools):
    out = call_tool(tools, "run", {"command": "cat link_dir/secret.py leak.py docs_link/guide.md alias.py"})
    assert "private_helper" not in out
    assert "# Guide" in out and "return 1" in out  # links inside the repository work in the copy


def test_a_workspace_edit_never_targets_git_metadata_or_a_path_through_a_link(repo):
    for rel in (".git/config", "pkg/.git/HEAD", "link_dir/autostart.sh", "docs_link/new.md", "docs_link/../x.py", "leak.py"):
        with pytest.raises(SwespotError, match="no edit was made"):
            build_workspace_edit(repo, [FileChange(rel, None, "x\n")], {}, {}, "utf-16")
    edit = build_workspace_edit(repo, [FileChange("docs/new.md", None, "x\n")], {}, {}, "utf-16")
    assert len(edit.document_changes) == 2  # create, then its text


def test_a_file_turned_into_a_link_out_of_the_repository_leaves_the_index(repo):
    """What code running in place (the experience builder's snapshot) may do between two tool calls."""
    ws = Workspace(repo)
    assert ws.index().definitions("f")
    (repo / "mod.py").unlink()
    os.symlink(repo.parent / "outside" / "secret.py", repo / "mod.py")
    ws.invalidate(["mod.py"], listing=False)
    assert not ws.index().definitions("private_helper_7f3a")
    assert "mod.py" not in {d.path for d in ws.index().definitions("f")}
