"""Building the Repository-Centric Experience of a real git repository made in the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.episode import load_episodes
from agent.errors import SwespotError
from trainer.experience.build import BuildOptions, build_experience

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
       "GIT_AUTHOR_DATE": "2026-01-01T00:00:00", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00", "PATH": "/usr/bin:/bin"}
FUTURE_MARKER = "quantum_flux_capacitor"  # appears only after the cutoff
SECRET = "AKIAIOSFODNN7EXAMPLE"

OPS_V1 = '''"""Arithmetic used by the billing layer."""


def add(a, b):
    """Return the sum of two amounts."""
    return a + b


def total(items):
    """Add up every amount in items."""
    out = 0
    for i in range(len(items) - 1):
        out = add(out, items[i])
    return out
'''
OPS_V2 = OPS_V1.replace("range(len(items) - 1)", "range(len(items))")
BILLING = '''"""Invoices built from line items."""
from shop.ops import total


class Invoice:
    """A customer's invoice."""

    def __init__(self, lines):
        self.lines = lines

    def amount(self):
        """The amount due."""
        return total([price for _, price in self.lines])


def render(invoice):
    """Text of an invoice for printing."""
    return f"due: {invoice.amount()}"
'''
TOTAL_TEST = '''from shop.ops import total


def test_total_counts_the_last_item():
    assert total([5]) == 5
'''
TESTS = '''from shop.ops import add, total


def test_add():
    assert add(2, 3) == 5


def test_total():
    assert total([1, 2, 3]) == 6
'''


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def commit(root: Path, message: str, files: dict[str, str | bytes | None]) -> str:
    for rel, content in files.items():
        if content is None:
            git(root, "rm", "-q", rel)
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content) if isinstance(content, bytes) else (root / rel).write_text(content)
        git(root, "add", rel)
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def shop(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    revs = {}
    revs["init"] = commit(root, "Start the shop", {"shop/__init__.py": "", "shop/ops.py": OPS_V1, "README.md": "# Shop\n"})
    revs["billing"] = commit(root, "Add invoices", {"shop/billing.py": BILLING, "tests/test_ops.py": TESTS})
    revs["fix"] = commit(root, "Fix off-by-one in total (fixes #7)", {"shop/ops.py": OPS_V2, "tests/test_total.py": TOTAL_TEST})
    revs["secret"] = commit(root, "Add deployment settings", {"deploy/settings.py": f"KEY = '{SECRET}'\n",
                                                                  "docs/latin.txt": "caf\xe9\n".encode("latin-1")})
    revs["cutoff"] = commit(root, "Render invoices with a currency", {"shop/billing.py": BILLING.replace('f"due: {invoice.amount()}"', 'f"due: {invoice.amount()} EUR"')})
    revs["future"] = commit(root, "Add the flux feature", {"shop/flux.py": f"def {FUTURE_MARKER}():\n    return 1\n"})
    return root, revs


def all_episodes(out: Path) -> dict[str, list[dict]]:
    return {unit.name: [e for shard in sorted(unit.glob("*.jsonl")) for e in load_episodes(shard)]
            for unit in sorted(out.iterdir()) if unit.is_dir() and not unit.name.startswith(".")}


def test_all_static_units_are_built_and_verified(shop, tmp_path):
    root, revs = shop
    result = build_experience(root, tmp_path / "exp", BuildOptions(cutoff=revs["cutoff"], progress=False))
    episodes = all_episodes(tmp_path / "exp")
    assert {u: len(e) > 0 for u, e in episodes.items()} == {"design": True, "implementation": True, "evolution": True}
    assert all(e["verified"]["ok"] for es in episodes.values() for e in es)
    questions = {e["meta"].get("question") for e in episodes["design"]}
    assert {"module", "where", "callers", "layers"} <= questions
    layers = next(e for e in episodes["design"] if e["meta"].get("question") == "layers")
    # walked bottom-up from add; render's `invoice.amount()` is on a parameter of unknown type: not claimed
    assert "Invoice.amount (shop/billing.py:13) → total (shop/ops.py:13) → add (shop/ops.py)" in layers["messages"][-1]["content"]
    agentic = {u: [e for e in es if e["meta"].get("format") != "completion"] for u, es in episodes.items()}
    replays = {e["meta"].get("commit"): e for e in agentic["evolution"] if "commit" in e["meta"]}
    assert set(replays) == {revs["billing"], revs["fix"], revs["cutoff"]}  # root skipped; secret commit excluded
    fix = replays[revs["fix"]]
    assert fix["messages"][1]["content"] == "Fix off-by-one in total (fixes #7)" and fix["meta"]["issue_refs"] == ["7"]
    assert fix["repo_commit"] == revs["billing"] and fix["verified"]["reaches_child"]
    bug = [e for e in episodes["evolution"] if e["meta"].get("form") == "reintroduced bug"]
    assert len(bug) == 1 and bug[0]["verified"]["restores_fix"]
    assert "range(len(items) - 1)" in json.dumps(bug[0]["messages"])  # the tools really saw the buggy code
    impl = agentic["implementation"][0]
    assert "raise NotImplementedError" in json.dumps(impl["messages"]) and impl["verified"]["matches_original"]
    # the completion form: what inline completion would have had to write, from the code above it
    hunks = [e for e in episodes["evolution"] if e["meta"].get("format") == "completion" and e["meta"]["commit"] == revs["fix"]]
    fixed = next(e for e in hunks if e["meta"]["path"] == "shop/ops.py")
    assert fixed["messages"][1]["content"] == "    for i in range(len(items)):" and fixed["tools"] == []
    assert fixed["messages"][0]["content"].endswith("    out = 0\n")
    bodies = [e for e in episodes["implementation"] if e["meta"].get("format") == "completion"]
    assert any(e["messages"][1]["content"].startswith("    out = 0\n") and e["messages"][1]["content"].endswith("return out")
               and e["messages"][0]["content"].endswith('"""Add up every amount in items."""\n') for e in bodies)
    assert result.stats["evolution"]["rejected"]["commit skipped: touches excluded file"] == 1
    assert result.excluded == {"aws access key": 1, "not utf-8": 1}


def test_nothing_after_the_cutoff_and_no_secret_leaks_into_episodes(shop, tmp_path):
    root, revs = shop
    build_experience(root, tmp_path / "exp", BuildOptions(cutoff=revs["cutoff"], progress=False))
    text = "".join(shard.read_text() for shard in (tmp_path / "exp").rglob("*.jsonl"))
    assert FUTURE_MARKER not in text
    assert SECRET not in text
    assert "deploy/settings.py" not in text


def test_builds_are_deterministic(shop, tmp_path):
    root, revs = shop
    for name in ("a", "b"):
        build_experience(root, tmp_path / name, BuildOptions(cutoff=revs["cutoff"], progress=False, seed=3))
    shards = lambda d: {p.relative_to(d): p.read_text() for p in d.rglob("*.jsonl") if ".cache" not in p.parts}  # noqa: E731
    assert shards(tmp_path / "a") == shards(tmp_path / "b")


def test_rebuild_after_one_commit_redoes_only_what_it_touched(shop, tmp_path):
    root, revs = shop
    out = tmp_path / "exp"
    first = build_experience(root, out, BuildOptions(cutoff=revs["cutoff"], progress=False))
    second = build_experience(root, out, BuildOptions(cutoff="HEAD", progress=False))
    assert second.shards_reused >= first.shards_made - 3
    # the new commit: its replay, the new file's design shard (and implementation shard); nothing else changed
    assert 1 <= second.shards_made <= 3
    flux = [e for e in all_episodes(out)["design"] if e["meta"].get("path") == "shop/flux.py"]
    assert flux and FUTURE_MARKER in json.dumps(flux)
    third = build_experience(root, out, BuildOptions(cutoff=revs["cutoff"], progress=False))
    assert third.shards_made == 0 and third.shards_removed >= 2  # back in time: the future's shards go


class Stop(Exception):
    pass


class StopAtFile:
    """A build control that stops the build before its ``n``-th file or commit (as the daemon does on SIGTERM)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, []

    def between_files(self, unit: str, done: int, total: int) -> None:
        self.seen.append((unit, done, total))
        if len(self.seen) > self.n:
            raise Stop


def test_a_control_stops_the_build_between_files_and_the_next_build_reuses_what_was_made(shop, tmp_path):
    root, revs = shop
    opts = BuildOptions(cutoff=revs["cutoff"], progress=False, units=("design", "text", "evolution"))
    out = tmp_path / "exp"
    control = StopAtFile(2)
    with pytest.raises(Stop):
        build_experience(root, out, opts, control=control)
    # two files done, then stopped before the third: their shards stay, nothing else was made
    assert [unit for unit, _done, _total in control.seen] == ["design"] * 3
    assert [done for _unit, done, _total in control.seen] == [0, 1, 2] and control.seen[0][2] >= 3
    assert len(list(out.glob("*/*.jsonl"))) == 2 and not (out / "experience.json").exists()
    every = StopAtFile(10**6)
    resumed = build_experience(root, out, opts, control=every)
    assert resumed.shards_reused == 2 and resumed.shards_made >= 3
    assert {unit for unit, _done, _total in every.seen} == {"design", "text", "evolution"}
    fresh = build_experience(root, tmp_path / "fresh", opts)
    assert all_episodes(out) == all_episodes(tmp_path / "fresh") and fresh.shards_made == resumed.shards_made + 2


def test_awkward_repositories_give_clear_results(shop, tmp_path):
    root, revs = shop
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(SwespotError, match="no commits yet"):
        build_experience(empty, tmp_path / "e0", BuildOptions(progress=False))
    with pytest.raises(SwespotError, match="not a git repository"):
        build_experience(tmp_path, tmp_path / "e1", BuildOptions(progress=False))
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "2", f"file://{root}", str(shallow)], check=True, capture_output=True)
    result = build_experience(shallow, tmp_path / "e2", BuildOptions(progress=False))
    assert result.stats["evolution"]["rejected"]["commit skipped: shallow boundary"] == 1
    git(root, "checkout", "-q", revs["fix"])  # detached HEAD
    detached = build_experience(root, tmp_path / "e3", BuildOptions(progress=False))
    assert detached.cutoff == revs["fix"]


def test_runtime_unit_predicts_observed_outputs_and_writes_passing_tests(shop, tmp_path):
    root, revs = shop
    result = build_experience(root, tmp_path / "exp", BuildOptions(cutoff=revs["cutoff"], units=("runtime",), progress=False))
    episodes = all_episodes(tmp_path / "exp")["runtime"]
    forms = {e["meta"]["form"] for e in episodes}
    assert forms == {"predict output", "write a passing test", "which tests fail", "fail-to-pass reproduction"}
    repro = next(e for e in episodes if e["meta"]["form"] == "fail-to-pass reproduction")
    assert repro["meta"]["fix_commit"] == revs["fix"] and repro["repo_commit"] == revs["billing"]
    assert "[exit code 1" in json.dumps(repro["messages"]) and repro["verified"]["passes_after"]
    mutation = next(e for e in episodes if e["meta"]["form"] == "which tests fail")
    assert mutation["verified"]["executed"] and mutation["verified"]["failing"]
    assert "tests/test_ops.py::test_" in mutation["messages"][-1]["content"]
    predicted = " ".join(e["messages"][-1]["content"] for e in episodes if e["meta"]["form"] == "predict output")
    assert "`add(2, 3)` returns `5`" in predicted or "`total([1, 2, 3])` returns `6`" in predicted
    written = next(e for e in episodes if e["meta"]["form"] == "write a passing test")
    assert written["verified"]["test_passed"] and "[exit code 0" in json.dumps(written["messages"])
    assert not list(root.glob("**/test_swespot_*.py"))  # the user's tree never saw the scratch tests
    assert result.stats["runtime"]["made"] == len(episodes)


def test_a_commit_that_also_changes_a_files_mode_is_replayed(shop, tmp_path):
    root, revs = shop
    git(root, "update-index", "--chmod=+x", "shop/ops.py")  # its mode changes, its text does not
    mixed = commit(root, "Bill in cents and make the ops script executable",
                   {"shop/billing.py": BILLING.replace("return total(", "return 100 * total(")})
    result = build_experience(root, tmp_path / "exp", BuildOptions(cutoff=mixed, units=("evolution",), progress=False))
    replays = {e["meta"]["commit"]: e for e in all_episodes(tmp_path / "exp")["evolution"]
               if "commit" in e["meta"] and e["meta"].get("format") != "completion"}
    assert replays[mixed]["verified"]["reaches_child"]
    assert "shop/ops.py" not in json.dumps(replays[mixed]["messages"][2:])  # nothing to edit there
    assert result.stats["evolution"]["episodes_on_disk"] >= 3
