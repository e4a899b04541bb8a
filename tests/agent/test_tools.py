"""Tools over a real repository: each returns text a small model can use, each error is a message."""

from __future__ import annotations

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
    assert "[timed out" in out


def test_bad_calls_are_errors_not_crashes(tools):
    assert call_tool(tools, "frobnicate", "{}").startswith("error: unknown tool 'frobnicate'")
    assert call_tool(tools, "read_file", "{not json").startswith("error: arguments are not JSON")
    assert call_tool(tools, "read_file", "{}") == "error: read_file needs path"
    assert "has no parameter(s) colour" in call_tool(tools, "read_file", '{"path": "calc/ops.py", "colour": 1}')


def test_read_only_tools_cannot_change_anything(repo):
    names = set(make_tools(Workspace(repo), read_only=True))
    assert names.isdisjoint({"edit", "create_file", "delete_file", "run"}) and "submit" in names
