"""Tools over a real repository: each returns text a small model can use, each error is a message."""

from __future__ import annotations

import os
import sys

import pytest

from agent.tools import CommandPolicy, Workspace, call_tool, make_tools


@pytest.fixture
def tools(repo):
    return make_tools(Workspace(repo, policy=CommandPolicy(approve=lambda cmd: cmd.startswith(sys.executable))))


def run(tools, name, **args):
    import json

    return call_tool(tools, name, json.dumps(args))


def test_read_file_numbers_lines_and_reads_ranges(tools):
    out = run(tools, "read_file", path="calc/ops.py", start_line=4, end_line=6)
    assert out.splitlines() == ["4: def add(a, b):", '5:     """Return a + b."""', "6:     return a - b"]


def test_large_files_are_read_in_pages(tools):
    out = run(tools, "read_file", path="big.log.txt")
    assert out.splitlines()[0] == "1: line 0"
    assert "more lines; read with start_line=401" in out


@pytest.mark.parametrize("path, message", [
    ("legacy.txt", "not UTF-8"), ("image.bin", "binary file"), ("escape.txt", "outside the repository"),
    ("../outside.txt", "outside the repository"), ("/etc/passwd", "outside the repository"), ("nope.py", "does not exist"),
    ("calc", "is a directory"),
])
def test_unreadable_paths_give_clear_errors(tools, path, message):
    out = run(tools, "read_file", path=path)
    assert out.startswith("error:") and message in out


def test_listing_and_globbing_respect_gitignore(tools):
    listing = run(tools, "list_dir", path=".").splitlines()
    assert "calc/" in listing and "tests/" in listing and "secret.txt" not in listing
    assert run(tools, "list_dir", path="calc").splitlines() == ["__init__.py", "ops.py", "report.py"]
    assert run(tools, "find_files", pattern="test_*.py") == "tests/test_ops.py"
    assert "no files match" in run(tools, "find_files", pattern="*.rs")
    assert run(tools, "find_files", pattern="**/*.py").splitlines() == [
        "calc/__init__.py", "calc/ops.py", "calc/report.py", "tests/test_ops.py"]


def test_search_finds_text_and_regex_and_skips_ignored_and_binary(tools):
    out = run(tools, "search", pattern="add(")
    assert "calc/report.py:7: out = add(out, x)" in out
    assert "secret.txt" not in run(tools, "search", pattern="ignored")
    assert run(tools, "search", pattern=r"def \w+\(a, b\)", regex=True).count("calc/ops.py") == 2
    assert run(tools, "search", pattern="(", regex=True).startswith("error: bad regular expression")


def test_repo_map_and_symbol_navigation(tools):
    repo_map = run(tools, "repo_map", budget=200)
    assert "calc/ops.py:" in repo_map and "def add(a, b)" in repo_map
    assert run(tools, "find_definition", symbol="add").startswith("calc/ops.py:4-6 function add: def add(a, b)")
    refs = run(tools, "find_references", symbol="add")
    assert "calc/report.py:7 in total" in refs and "tests/test_ops.py:5 in test_add" in refs


def test_edit_requires_a_unique_exact_match_and_names_candidates(tools, repo):
    missing = run(tools, "edit", path="calc/ops.py", old="return a-b", new="return a + b")
    assert missing.startswith("error: old text not found") and "line 6: return a - b" in missing
    twice = run(tools, "edit", path="calc/ops.py", old="(a, b):", new="(x, y):")
    assert "occurs 2 times" in twice and "lines 4, 9" in twice
    assert run(tools, "edit", path="calc/ops.py", old="return a - b", new="return a + b") == "edited calc/ops.py"
    assert "return a + b" in (repo / "calc/ops.py").read_text()


def test_diff_covers_edits_and_new_files(tools):
    run(tools, "edit", path="calc/ops.py", old="return a - b", new="return a + b")
    assert run(tools, "create_file", path="calc/extra.py", content="X = 1\n") == "created calc/extra.py (1 lines)"
    assert run(tools, "create_file", path="calc/extra.py", content="again").startswith("error: calc/extra.py already exists")
    assert run(tools, "delete_file", path="calc/report.py") == "deleted calc/report.py"
    diff = run(tools, "diff")
    assert "--- a/calc/report.py\n+++ /dev/null" in diff
    assert "--- a/calc/ops.py\n+++ b/calc/ops.py" in diff and "-    return a - b\n+    return a + b" in diff
    assert "--- /dev/null\n+++ b/calc/extra.py\n@@ -0,0 +1 @@\n+X = 1" in diff


def test_run_reports_exit_code_and_output_and_the_policy_gates_commands(tools):
    out = run(tools, "run", command=f"{sys.executable} -c \"print('hello'); raise SystemExit(3)\"")
    assert "[exit code 3" in out and "hello" in out
    assert "needs the user's approval" in run(tools, "run", command="rm -rf /")
    assert "needs the user's approval" in run(tools, "run", command="ls; rm -rf /")


def test_run_times_out_with_a_message(repo):
    ws = Workspace(repo, policy=CommandPolicy(approve=lambda cmd: True), run_timeout=1)
    out = call_tool(make_tools(ws), "run", {"command": f"{sys.executable} -c 'import time; time.sleep(30)'"})
    assert "[timed out after 1s" in out


def test_run_output_is_cut_to_the_budget_keeping_head_and_tail(repo):
    ws = Workspace(repo, policy=CommandPolicy(approve=lambda cmd: True), output_budget=1000)
    out = call_tool(make_tools(ws), "run", {"command": f"{sys.executable} -c \"print('HEAD' + 'x' * 100000 + 'TAIL')\""})
    assert len(out) < 1200 and "HEADxx" in out and out.endswith("xxTAIL") and "characters cut" in out


def test_bad_calls_are_errors_not_crashes(tools):
    assert call_tool(tools, "frobnicate", "{}").startswith("error: unknown tool 'frobnicate'")
    assert call_tool(tools, "read_file", "{not json").startswith("error: arguments are not JSON")
    assert call_tool(tools, "read_file", "{}") == "error: read_file needs path"
    assert "has no parameter(s) colour" in call_tool(tools, "read_file", '{"path": "calc/ops.py", "colour": 1}')


def test_read_only_tools_cannot_change_anything(repo):
    names = set(make_tools(Workspace(repo), read_only=True))
    assert names.isdisjoint({"edit", "create_file", "delete_file", "run"}) and "submit" in names


def test_huge_files_are_refused_with_the_limit_and_an_alternative(tools, repo):
    (repo / "dump.sql").write_text("x" * (3 * 1024 * 1024))
    out = run(tools, "read_file", path="dump.sql")
    assert out.startswith("error: dump.sql is too large to read (3072 KiB, the limit is 2048 KiB)") and "search" in out


@pytest.mark.parametrize("tool, args", [
    ("edit", {"path": "escape.txt", "old": "not yours", "new": "mine"}),
    ("create_file", {"path": "../planted.py", "content": "x = 1\n"}),
    ("delete_file", {"path": "escape.txt"}),
    ("list_dir", {"path": ".."}),
])
def test_writes_and_listings_outside_the_root_are_refused(tools, repo, tool, args):
    assert "outside the repository" in run(tools, tool, **args)
    assert (repo.parent / "outside.txt").read_text() == "not yours\n" and not (repo.parent / "planted.py").exists()


@pytest.mark.parametrize("command", [
    "find . -delete", "find . -name x -exec rm {} +", "rg --pre ./evil x", "git diff --output=owned.txt", "ls > x",
])
def test_policy_refuses_inspection_commands_that_write_or_execute(command):
    assert not CommandPolicy().allows(command)


@pytest.mark.parametrize("command", ["python -m pytest -q tests", "grep -rn add calc", "git log --oneline", "find . -name '*.py'"])
def test_policy_allows_tests_and_read_only_inspection(command):
    assert CommandPolicy().allows(command)


def test_run_without_a_command_runs_the_detected_tests(repo):
    out = call_tool(make_tools(Workspace(repo)), "run", {})
    assert out.startswith("$ python -m pytest -q\n[exit code 1") and "test_add" in out  # add() is the planted bug


def test_a_bug_inside_a_tool_is_an_error_text_not_a_crash(repo):
    from agent.tools import Tool

    def broken() -> str:
        raise RuntimeError("boom")

    tools = {"broken": Tool("broken", "always fails", {"type": "object", "properties": {}, "required": []}, broken)}
    assert call_tool(tools, "broken", "{}") == "error: broken failed unexpectedly (RuntimeError: boom); try another way"


GITIGNORE_TREE = {
    ".gitignore": "build/\n*.log\n",
    "a/.gitignore": "!keep.log\nlocal.txt\n",
    "a/x.py": "", "a/x.log": "", "a/keep.log": "", "a/local.txt": "", "a/build/o.py": "",
    "b/local.txt": "", "b/y.log": "", "build/z.py": "", "c/deep/q.py": "",
}


def test_folders_outside_git_are_listed_as_git_would_list_them(tmp_path):
    import subprocess

    from agent.tools import walk_not_ignored

    for rel, text in GITIGNORE_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    ours = walk_not_ignored(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    git = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=tmp_path, capture_output=True, text=True).stdout.split()
    assert ours == sorted(git) and "a/keep.log" in ours and "a/build/o.py" not in ours


def test_a_plain_folder_gets_the_same_tools_and_a_diff_from_snapshots(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / ".gitignore").write_text("out/\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m.py").write_text("generated\n")
    tools = make_tools(Workspace(tmp_path))
    assert call_tool(tools, "find_files", {"pattern": "*.py"}) == "m.py"
    assert call_tool(tools, "edit", {"path": "m.py", "old": "return 1", "new": "return 2"}) == "edited m.py"
    assert "--- a/m.py\n+++ b/m.py" in call_tool(tools, "diff", {}) and "+    return 2" in call_tool(tools, "diff", {})


def test_long_ranges_are_paged_and_backwards_ranges_are_refused(tools):
    out = run(tools, "read_file", path="big.log.txt", start_line=10, end_line=4000).splitlines()
    assert out[0] == "10: line 9" and out[-2] == "409: line 408"
    assert out[-1] == "... (3591 more lines; read with start_line=410)"
    assert run(tools, "read_file", path="calc/ops.py", start_line=6, end_line=2) == "error: end_line (2) is before start_line (6)"


def test_commands_run_in_a_scratch_copy_never_in_the_users_tree(repo):
    ws = Workspace(repo, policy=CommandPolicy(approve=lambda cmd: True))
    tools = make_tools(ws)
    call_tool(tools, "edit", {"path": "calc/ops.py", "old": "return a - b", "new": "return a + b"})
    script = "import pathlib, os; print(pathlib.Path('calc/ops.py').read_text().count('return a + b')); pathlib.Path('calc/ops.py').write_text('clobbered'); print(os.getcwd())"
    out = call_tool(tools, "run", {"command": f"{sys.executable} -c \"{script}\""})
    assert "[exit code 0" in out and "\n1\n" in out  # the command saw the agent's current edit
    assert str(repo) not in out.split("\n", 3)[-1]  # ... from another folder
    assert "return a + b" in (repo / "calc/ops.py").read_text()  # and its writes did not reach the tree


def test_copies_of_the_tree_keep_links_as_links_and_modes_and_can_leave_big_files_out(repo, tmp_path):
    """One copy of the tree (``RepoFiles.copy_into``) for the sandbox's scratch copy and the editor's task snapshot."""
    from agent.workspace import RepoFiles, scratch_dir

    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "big.bin").write_bytes(b"x" * 5000)
    (repo / "outside").symlink_to(tmp_path)
    files = RepoFiles(repo)
    with files.scratch_copy() as copy:
        assert (copy / "run.sh").stat().st_mode & 0o777 == 0o755 and (copy / "big.bin").stat().st_size == 5000
        assert (copy / "outside").is_symlink() and (copy / "outside").readlink() == tmp_path
        assert (copy / "calc/ops.py").read_text() == (repo / "calc/ops.py").read_text() and not (copy / ".git").exists()
    assert not copy.exists()
    skipped: list[str] = []
    with scratch_dir("swespot-test-") as snapshot:
        (repo / "locked.py").write_text("secret = 1\n")
        (repo / "locked.py").chmod(0)
        RepoFiles(repo).copy_into(snapshot, max_bytes=4096, on_error=lambda rel, exc: skipped.append(rel))
        assert not (snapshot / "big.bin").exists() and (snapshot / "run.sh").exists()
        assert skipped == (["locked.py"] if os.geteuid() != 0 else [])
    assert not snapshot.exists()
