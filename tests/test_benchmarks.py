"""The learning-curve benchmark (benchmarks/specialize.py) end to end on the tiny model: real git
repositories made in the test, real experience, training, llama.cpp evaluation; resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.errors import SwespotError
from daemon_support import NEXT_COMMITS, ROOT, commit, git, make_repo

sys.path.insert(0, str(ROOT))
TINY_BATCH = 4096  # tokens per step at most in the tiny training profile

SHAPES = {
    "shapes/__init__.py": '"""Plane shapes."""\n',
    "shapes/square.py": '''"""Squares."""


class Square:
    """A square with a side length."""

    def __init__(self, side):
        self.side = side

    def area(self):
        """The area of the square."""
        return self.side * self.side

    def perimeter(self):
        """The length around the square."""
        return 4 * self.side
''',
    "shapes/total.py": '''"""Sums over shapes."""


def total_area(shapes):
    """The sum of the areas of shapes."""
    return sum(s.area() for s in shapes)
''',
}


@pytest.fixture
def repos(tmp_path) -> tuple[Path, Path]:
    """Two repositories: the ledger (its last two commits held out) and a shapes package (the other
    benchmark repository, whose experience is the ledger's task-centric control)."""
    ledger = tmp_path / "ledger"
    make_repo(ledger)
    for message, files in NEXT_COMMITS:
        commit(ledger, message, files)
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    git(shapes, "init", "-q", "-b", "main")
    commit(shapes, "Squares and their total area", SHAPES)
    commit(shapes, "Largest shape", {"shapes/largest.py": '"""The largest shape."""\n\n\ndef largest(shapes):\n'
                                                          '    """The shape with the largest area."""\n'
                                                          '    return max(shapes, key=lambda s: s.area())\n'})
    return ledger, shapes


def test_learning_curve_compares_conditions_at_equal_trained_tokens_and_resumes(repos, tiny_hf_dir, tmp_path, capsys):
    from benchmarks import specialize as bench
    from trainer.experience.build import UNITS

    ledger, shapes = repos
    work, out_json, out_png = tmp_path / "work", tmp_path / "curve.json", tmp_path / "curve.png"
    conditions = ["rcl", "task-centric", "mix"] + (["text"] if "text" in UNITS else [])
    common = [f"{ledger}@3", f"{shapes}@1", "--work", str(work), "--repos", "ledger", "--base", str(tiny_hf_dir),
              "--profile", "tiny", "--steps", "1,2", "--quiet", "--device", "cpu"]
    # first only the reference condition, as a lead running the benchmark in pieces would
    assert bench.main(common + ["--conditions", "rcl"]) == 0
    first = (work / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in first] == ["experience", "base", "run", "run"]

    assert bench.main(common + ["--conditions", ",".join(conditions), "--json", str(out_json), "--plot", str(out_png)]) == 0
    records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert records[: len(first)] == [json.loads(line) for line in first]  # kept, not redone
    runs = [r for r in records if r["kind"] == "run"]
    assert sorted((r["steps"], r["condition"]) for r in runs) == sorted((s, c) for s in (1, 2) for c in conditions)
    built = {r["repo"] for r in records if r["kind"] == "experience"}
    assert built == {"ledger", "shapes"}  # the control's experience was built for task-centric
    for steps in (1, 2):
        ref = next(r for r in runs if r["steps"] == steps and r["condition"] == "rcl")
        assert ref["trained_steps"] == steps and ref["budget_tokens"] is None
        for run in (r for r in runs if r["steps"] == steps and r["condition"] != "rcl"):
            # trained until the reference's trained tokens were reached: at least that, at most one batch more
            assert run["budget_tokens"] == ref["trained_tokens"] <= run["trained_tokens"] < ref["trained_tokens"] + TINY_BATCH
    control = next(r for r in runs if r["condition"] == "task-centric")
    assert control["sources"] == ["shapes"]

    result = json.loads(out_json.read_text())
    entry = result["repos"]["ledger"]
    assert set(result["repos"]) == {"ledger"} and entry["cutoff"] == git(ledger, "rev-parse", "HEAD~3")
    base = entry["base"]["families"]
    assert {"line", "body"} <= set(base) and all(0 < f["loss"] < 20 for f in base.values())
    for run in entry["runs"]:
        iv = run["vs_base"]["headline"]  # line+body loss, paired over the same tasks
        assert iv["families"] == ["line", "body"] and iv["tasks"] == base["line"]["tasks"] + base["body"]["tasks"]
        assert iv["lo"] <= iv["delta"] <= iv["hi"] and iv["rel_lo"] <= iv["rel"] <= iv["rel_hi"]
        assert iv["reference"] == pytest.approx(_line_body_loss(base), abs=1e-3)
        assert run["vs_base"]["verdict"] in ("better", "worse", "no measurable change")
    rcl = [r for r in entry["runs"] if r["condition"] == "rcl"]
    assert all(r["vs_task_centric"]["headline"]["tasks"] == iv["tasks"] for r in rcl)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "line+body vs base" in printed and "task-centric" in printed

    # nothing left: a third run trains nothing and keeps the results
    assert bench.main(common + ["--conditions", ",".join(conditions)]) == 0
    assert len((work / "results.jsonl").read_text().splitlines()) == len(records)


def _line_body_loss(families: dict) -> float:
    parts = [families[f] for f in ("line", "body") if f in families]
    return sum(p["loss"] * p["tokens"] for p in parts) / sum(p["tokens"] for p in parts)


def test_a_work_dir_refuses_other_settings_and_the_estimate_trains_nothing(repos, tiny_hf_dir, tmp_path, capsys):
    from benchmarks import specialize as bench

    ledger, shapes = repos
    work = tmp_path / "work"
    args = [f"{ledger}@2", str(shapes), "--holdout", "1", "--work", str(work), "--base", str(tiny_hf_dir),
            "--profile", "tiny", "--steps", "2", "--conditions", "rcl", "--estimate"]
    assert bench.main(args) == 0
    err = capsys.readouterr().err
    assert "piece(s) to do (2 trainings)" in err and "from defaults" in err
    assert not (work / "results.jsonl").exists()
    with pytest.raises(SwespotError, match="other settings"):
        bench.main([a if a != f"{ledger}@2" else f"{ledger}@3" for a in args])
    with pytest.raises(SwespotError, match=r"other settings \(seed\)"):  # another seed needs its own work dir
        bench.main(args + ["--seed", "1"])
    with pytest.raises(SwespotError, match="leaves nothing"):
        bench.main([f"{ledger}@9", "--work", str(tmp_path / "w2"), "--estimate"])


def test_accumulation_continues_each_refresh_from_the_last_and_evaluates_on_fixed_tasks(repos, tiny_hf_dir, tmp_path, capsys, monkeypatch):
    from benchmarks import accumulate
    from trainer.config import TRAIN_PRESETS
    from trainer.pipeline import PROFILES

    ledger, _ = repos
    # a continuation trains at the profile's continue_lr, the first refresh at the profile's rate
    monkeypatch.setitem(PROFILES, "tiny", {**PROFILES["tiny"], "continue_lr": 3e-4})
    work, out_json = tmp_path / "acc", tmp_path / "acc.json"
    args = [str(ledger), "--work", str(work), "--last", "1", "--stride", "1", "--refreshes", "3", "--profile", "tiny",
            "--steps", "1", "--base", str(tiny_hf_dir), "--device", "cpu", "--quiet", "--json", str(out_json)]
    assert accumulate.main(args) == 0
    result = json.loads(out_json.read_text())
    commits = [git(ledger, "rev-parse", f"HEAD~{n}") for n in (3, 2, 1)]
    assert result["commits"] == commits and result["tasks_after"] == commits[-1]
    steps = result["refreshes"]
    assert [r["refresh"] for r in steps] == [1, 2, 3] and [r["commit"] for r in steps] == commits
    assert [r["version"] for r in steps] == ["v0001", "v0002", "v0003"]
    assert [r["continued_from"] for r in steps] == [None, "v0001", "v0002"]  # each continued from the one before
    assert [r["lr"] for r in steps] == [TRAIN_PRESETS["tiny"]["lr"], 3e-4, 3e-4]
    assert steps[-1]["cumulative_trained_tokens"] == sum(r["trained_tokens"] for r in steps) > 0
    assert steps[0]["vs_previous"] is None
    assert all(r["vs_previous"]["headline"]["tasks"] == r["vs_base"]["headline"]["tasks"] > 0 for r in steps[1:])
    assert "vs previous" in capsys.readouterr().out
    # run again: everything is in the work dir, nothing is retrained
    lines = (work / "results.jsonl").read_text().splitlines()
    assert accumulate.main(args) == 0
    assert (work / "results.jsonl").read_text().splitlines() == lines
