"""The runtime unit on repositories laid out like real ones: a ``src/`` package that shadows an installed
distribution of the same name, ``filterwarnings = error``, parametrized tests whose ids have spaces and
brackets, fix commits with tests in the history. The tests run for real, in the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.episode import load_episodes
from agent.sandbox import clean_env, run_limited
from daemon_support import commit, git
from trainer.experience import testenv as TE
from trainer.experience.build import BuildOptions, build_experience

# the package is called like a distribution installed in this project's venv (tqdm is one of our
# dependencies), so a run that does not put the snapshot's src/ first imports the installed copy
PACKAGE = "tqdm"
PYPROJECT = f'''[project]
name = "{PACKAGE}"
version = "0.1"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
filterwarnings = ["error"]
'''
INIT_BUGGY = '''"""A stand-in for the real package, with two small functions."""


def label(name, count):
    """Text for a named count."""
    return f"{name}: {count}"


def scale(value, factor):
    """value times factor."""
    return value + factor
'''
INIT_FIXED = INIT_BUGGY.replace("return value + factor", "return value * factor")
TESTS = f'''import pytest

import {PACKAGE}
from {PACKAGE} import label


def test_module_is_the_snapshot():
    assert "/src/{PACKAGE}/" in {PACKAGE}.__file__


def test_no_plugin_of_the_host_loaded():
    import sys

    assert "pytest_asyncio" not in sys.modules


@pytest.mark.parametrize("name, count, text", [("a b", 1, "a b: 1"), ("x", 2, "x: 2")], ids=["two words", "with [brackets]"])
def test_label(name, count, text):
    assert label(name, count) == text
'''
SCALE_TEST = f'''from {PACKAGE} import scale


def test_scale_multiplies():
    assert scale(2, 3) == 6
'''
# a conftest above the repository (as this project's own would be): it must never apply
HOSTILE_CONFTEST = '''import pytest


@pytest.fixture(autouse=True)
def _host_fixture():
    raise RuntimeError("the host's conftest applied")
'''


@pytest.fixture
def shadow_repo(tmp_path):
    """A src-layout repository whose history holds a fix commit that came with its test."""
    return _shadow_repo(tmp_path)


def _shadow_repo(tmp_path, *fix_also: str) -> tuple[Path, str]:
    """The shadow repository; ``fix_also``: git arguments run just before the fix commit (staged with it)."""
    (tmp_path / "conftest.py").write_text(HOSTILE_CONFTEST)
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start the package", {"pyproject.toml": PYPROJECT, f"src/{PACKAGE}/__init__.py": INIT_BUGGY,
                                       "tests/test_label.py": TESTS})
    if fix_also:
        git(root, *fix_also)
    fix = commit(root, "Fix scale: it added instead of multiplying",
                 {f"src/{PACKAGE}/__init__.py": INIT_FIXED, "tests/test_scale.py": SCALE_TEST})
    return root, fix


def _snapshot(root: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(f"git -C {root} archive HEAD | tar -x -C {dest}", shell=True, check=True)
    return dest


def test_source_roots_from_build_configuration(tmp_path):
    cases = {
        "hatch": ('[tool.hatch.build.targets.wheel]\npackages = ["src/attr", "src/attrs"]\n', ["src/attr"]),
        "setuptools": ('[tool.setuptools]\npackage-dir = {"" = "lib"}\n', ["lib/pkg"]),
        "poetry": ('[tool.poetry]\npackages = [{include = "pkg", from = "code"}]\n', ["code/pkg"]),
        "flat": ('[project]\nname = "pkg"\n', ["pkg"]),
    }
    for name, (pyproject, dirs) in cases.items():
        root = tmp_path / name
        for d in dirs:
            (root / d).mkdir(parents=True)
            (root / d / "__init__.py").write_text("")
        (root / "pyproject.toml").write_text(pyproject)
        expected = {"hatch": ["src", "."], "setuptools": ["lib", "."], "poetry": ["code", "."], "flat": ["."]}[name]
        assert TE.source_roots(root) == expected, name
    cfg = tmp_path / "cfg"
    (cfg / "source" / "pkg").mkdir(parents=True)
    (cfg / "setup.cfg").write_text("[options]\npackage_dir =\n    =source\n")
    assert TE.source_roots(cfg) == ["source", "."]
    assert TE.module_name("src/attr/_make.py", ["src", "."]) == "attr._make"
    assert TE.module_name("pkg/__init__.py", ["."]) == "pkg"


def test_plugins_only_when_the_configuration_asks():
    assert TE.needed_plugins({"filterwarnings": ["error"]}) == []
    assert TE.needed_plugins({"asyncio_mode": "auto"}) == ["pytest_asyncio.plugin"]
    assert TE.needed_plugins({"addopts": "-p asyncio"}) == ["pytest_asyncio.plugin"]
    assert TE.needed_plugins({"required_plugins": "pytest-asyncio>=0.2"}) == ["pytest_asyncio.plugin"]


def test_repository_tests_run_in_their_own_terms(shadow_repo, tmp_path):
    root, _ = shadow_repo
    snap = _snapshot(root, tmp_path / "snap")
    # without the repository's environment, the installed copy wins: the claim below can fail
    plain = run_limited([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], snap, env=clean_env())
    assert "site-packages" in plain.output, plain.output
    tenv = TE.repo_environment(snap)
    assert tenv.source_roots == ["src", "."] and tenv.plugins == [] and tenv.config_file == "pyproject.toml"
    run = TE.run_pytest(tenv, ["tests"], trace=True)
    assert run.tests == {
        "tests/test_label.py::test_module_is_the_snapshot": "passed",
        "tests/test_label.py::test_no_plugin_of_the_host_loaded": "passed",
        "tests/test_label.py::test_label[two words]": "passed",
        "tests/test_label.py::test_label[with [brackets]]": "passed",
        "tests/test_scale.py::test_scale_multiplies": "passed",
    }, run.output
    assert run.examples[f"src/{PACKAGE}/__init__.py::label::4"] == [[["'a b'", "1"], "'a b: 1'"], [["'x'", "2"], "'x: 2'"]]
    assert run.callers[f"src/{PACKAGE}/__init__.py::label::4"] == ["tests/test_label.py::test_label[two words]",
                                                                  "tests/test_label.py::test_label[with [brackets]]"]


def test_a_plugin_the_configuration_needs_is_loaded(tmp_path):
    root = tmp_path / "asyncrepo"
    (root / "tests").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\nfilterwarnings = error\n"
                                     "asyncio_default_fixture_loop_scope = function\n")
    (root / "tests" / "test_async.py").write_text("import asyncio\n\n\nasync def test_sleeps():\n    await asyncio.sleep(0)\n")
    tenv = TE.repo_environment(root)
    assert tenv.plugins == ["pytest_asyncio.plugin"]
    run = TE.run_pytest(tenv, ["tests"])
    assert run.tests == {"tests/test_async.py::test_sleeps": "passed"}, run.output


def test_runtime_unit_makes_episodes_on_a_src_layout_with_strict_warnings(shadow_repo, tmp_path):
    root, fix = shadow_repo
    result = build_experience(root, tmp_path / "exp", BuildOptions(units=("runtime",), progress=False))
    episodes = [e for shard in sorted((tmp_path / "exp" / "runtime").glob("*.jsonl")) for e in load_episodes(shard)]
    forms = {e["meta"]["form"] for e in episodes}
    assert forms == {"predict output", "write a passing test", "which tests fail", "fail-to-pass reproduction"}, result.stats
    assert result.stats["runtime"]["episodes_on_disk"] == len(episodes) and "why_none" not in result.stats["runtime"]
    predicted = [e for e in episodes if e["meta"]["form"] == "predict output"]
    assert any(f"(src/{PACKAGE}/__init__.py)" in e["messages"][1]["content"] for e in predicted)
    assert any("`label('a b', 1)` returns `'a b: 1'`" in e["messages"][-1]["content"] for e in predicted)
    written = next(e for e in episodes if e["meta"]["form"] == "write a passing test")
    assert f"from {PACKAGE} import" in json.dumps(written["messages"]) and "[exit code 0" in json.dumps(written["messages"])
    mutation = next(e for e in episodes if e["meta"]["form"] == "which tests fail" and e["meta"]["symbol"] == "label")
    assert mutation["verified"]["failing"] == ["tests/test_label.py::test_label[two words]",
                                               "tests/test_label.py::test_label[with [brackets]]"]
    assert "tests/test_label.py::test_label[with [brackets]]" in mutation["messages"][-1]["content"]
    repro = next(e for e in episodes if e["meta"]["form"] == "fail-to-pass reproduction")
    assert repro["meta"]["fix_commit"] == fix and repro["verified"]["fail_to_pass"] == ["tests/test_scale.py::test_scale_multiplies"]
    assert "[exit code 1" in json.dumps(repro["messages"])
    assert not list(root.glob("**/test_swespot_*.py"))  # the user's tree never saw the scratch tests


def test_a_fix_that_also_changes_a_test_files_mode_is_still_reproduced(tmp_path):
    # the fix also changes the mode of tests/test_label.py, not its text
    root, fix = _shadow_repo(tmp_path, "update-index", "--chmod=+x", "tests/test_label.py")
    result = build_experience(root, tmp_path / "exp", BuildOptions(units=("runtime",), progress=False))
    episodes = [e for shard in sorted((tmp_path / "exp" / "runtime").glob("*.jsonl")) for e in load_episodes(shard)]
    repro = [e for e in episodes if e["meta"]["form"] == "fail-to-pass reproduction"]
    assert [e["meta"]["fix_commit"] for e in repro] == [fix], result.stats["runtime"]["rejected"]
    assert "tests/test_label.py" not in json.dumps([m for m in repro[0]["messages"] if m["role"] == "assistant"])


def test_an_empty_trace_is_a_named_failure(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start", {"pkg/__init__.py": "def one():\n    return 1\n",
                           "tests/conftest.py": "import a_module_nobody_installed\n",
                           "tests/test_one.py": "from pkg import one\n\n\ndef test_one():\n    assert one() == 1\n"})
    result = build_experience(root, tmp_path / "exp", BuildOptions(units=("runtime",), progress=False))
    stats = result.stats["runtime"]
    assert stats["episodes_on_disk"] == 0
    assert stats["rejected"]["tests cannot run: tests/conftest.py does not import"] == 1
    assert "runtime trace is empty: no test could run (" in stats["why_none"] and "a_module_nobody_installed" in stats["why_none"]


# ---- a teacher (issue 13 item 8): kept only when it verifies; the oracle otherwise -----------------------
def _submit(summary: str) -> dict:
    return {"content": "What the tests showed answers it.",
            "tool_calls": [{"function": {"name": "submit", "arguments": {"summary": summary}}}]}


def test_a_teacher_trajectory_is_kept_only_when_it_verifies(shadow_repo, tmp_path):
    root, _ = shadow_repo
    script = tmp_path / "teacher.json"
    script.write_text(json.dumps([_submit("label('a b', 1) returns 'a b: 1'")] * 80))
    spec = f"scripted:{script}"
    result = build_experience(root, tmp_path / "exp", BuildOptions(units=("runtime",), progress=False, teacher=spec))
    episodes = [e for shard in sorted((tmp_path / "exp" / "runtime").glob("*.jsonl")) for e in load_episodes(shard)]
    taught = [e for e in episodes if e["meta"].get("teacher")]
    assert [(e["meta"]["form"], e["meta"]["symbol"]) for e in taught] == [("predict output", "label")]
    assert taught[0]["verified"] == {"ok": True, "observed": "test run", "teacher": spec}
    assert taught[0]["messages"][-1]["content"].endswith("'a b: 1'")
    # everywhere else the oracle's episode stands
    assert {e["meta"]["form"] for e in episodes if not e["meta"].get("teacher")} == {
        "predict output", "write a passing test", "which tests fail", "fail-to-pass reproduction"}
    teacher = result.stats["runtime"]["teacher"]
    rejected = teacher["rejected"]
    assert rejected["answer lacks the observed value"] >= 1
    assert rejected["wrote no test of the function"] >= 1
    assert rejected["named other tests than those that fail"] >= 1
    assert rejected["reproduction: no test written"] == 1
    assert teacher["kept"] == 1 and teacher["tried"] == 1 + sum(rejected.values())
    assert not any("teacher" in reason for reason in result.stats["runtime"]["rejected"])  # the oracle's episode was made


def test_a_teacher_leaves_the_workspace_as_it_found_it(shadow_repo, tmp_path):
    from agent.models import ScriptedModel
    from agent.tools import CommandPolicy, Workspace
    from trainer.experience.teacher import Teacher

    root, _ = shadow_repo
    snap = _snapshot(root, tmp_path / "snap")
    ws = Workspace(snap, policy=CommandPolicy(approve=lambda _c: True), scratch_runs=False)
    create = {"content": "A test file first.", "tool_calls": [{"function": {"name": "create_file", "arguments": {
        "path": "tests/test_new.py", "content": "def test_new():\n    assert True\n"}}}]}
    teacher = Teacher(ScriptedModel([create, _submit("done")]), "scripted")
    seen = {}
    episode = teacher.attempt(ws, "Add a test.", lambda r: seen.setdefault("ok", {"ok": (snap / "tests/test_new.py").is_file()}),
                              unit="runtime", commit="c0ffee", meta={"form": "demo"})
    assert episode["verified"] == {"ok": True, "teacher": "scripted"} and episode["repo_commit"] == "c0ffee"
    assert not (snap / "tests/test_new.py").exists() and ws.originals == {}
    assert teacher.to_dict() == {"model": "scripted", "tried": 1, "kept": 1, "rejected": {}}


def test_a_tiny_model_teacher_falls_back_to_the_oracle(shadow_repo, tmp_path, tiny_gguf_f32):
    from agent.loop import Budget
    from agent.models import model_from_spec
    from agent.tools import CommandPolicy, Workspace
    from trainer.experience.teacher import Teacher

    root, _ = shadow_repo
    snap = _snapshot(root, tmp_path / "snap")
    before = {p: p.read_text() for p in snap.rglob("*") if p.is_file()}
    ws = Workspace(snap, policy=CommandPolicy(approve=lambda _c: True), scratch_runs=False)
    teacher = Teacher(model_from_spec(str(tiny_gguf_f32), max_tokens=64), "tiny", Budget(max_steps=3, max_tokens=30_000))
    episode = teacher.attempt(ws, f"What does `label('a b', 1)` return? (src/{PACKAGE}/__init__.py)",
                              lambda r: {"ok": True} if "'a b: 1'" in r.summary else "answer lacks the observed value",
                              unit="runtime", commit="c0ffee", meta={}, read_only=True)
    assert episode is None and teacher.tried == 1 and sum(teacher.rejected.values()) == 1
    assert {p: p.read_text() for p in snap.rglob("*") if p.is_file()} == before


def test_doctests_carry_the_unit_when_the_test_folder_cannot_import(tmp_path):
    """requests at an older commit: its tests/ need a urllib3 older than the installed one, but its pytest
    configuration collects doctests, and those run."""
    root = tmp_path / "olddeps"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    util = 'def quote(text):\n    """Wrap in quotes.\n\n    >>> quote("a")\n    \'"a"\'\n    """\n    return \'"\' + text + \'"\'\n'
    commit(root, "Start", {"pytest.ini": "[pytest]\naddopts = -p no:warnings --doctest-modules\n",
                           "pkg/__init__.py": "", "pkg/util.py": util,
                           "tests/__init__.py": "from urllib3.exceptions import SNIMissingWarning\n",
                           "tests/conftest.py": "", "tests/test_util.py": "from pkg.util import quote\n\n\ndef test_quote():\n    assert quote('b') == '\"b\"'\n"})
    result = build_experience(root, tmp_path / "exp", BuildOptions(units=("runtime",), progress=False))
    stats = result.stats["runtime"]
    assert stats["rejected"]["tests cannot run: tests/conftest.py does not import"] == 1
    episodes = [e for shard in sorted((tmp_path / "exp" / "runtime").glob("*.jsonl")) for e in load_episodes(shard)]
    assert {e["meta"]["form"] for e in episodes} >= {"predict output", "write a passing test", "which tests fail"}, stats
    mutation = next(e for e in episodes if e["meta"]["form"] == "which tests fail")
    assert mutation["verified"]["failing"] == ["pkg/util.py::pkg.util.quote"]


def test_the_mutation_replaces_a_whole_return_statement():
    from trainer.experience.runtime import first_return

    source = ('def outer(x):\n    def inner():\n        return 1\n    if x:\n        return (\n            x,\n'
              '            "é",\n        )\n    return None\n\n\ndef short(): return 2\n')
    start, end, text = first_return(source, 1, 9)
    assert text == 'return ( x, "é", )'
    mutated = source[:start] + "return None" + source[end:]
    compile(mutated, "m.py", "exec")  # still valid Python: the continuation lines went with it
    assert "        return None\n    return None" in mutated and "return 1" in mutated
    start, end, text = first_return(source, 12, 12)
    assert text == "return 2" and source[:start].endswith("def short(): ")
    assert first_return("def f():\n    return None\n", 1, 2) is None
