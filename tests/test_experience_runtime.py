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
from tests.daemon_support import commit, git
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
    (tmp_path / "conftest.py").write_text(HOSTILE_CONFTEST)
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start the package", {"pyproject.toml": PYPROJECT, f"src/{PACKAGE}/__init__.py": INIT_BUGGY,
                                       "tests/test_label.py": TESTS})
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
