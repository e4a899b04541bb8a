"""The evaluation under a knowledge cutoff, the refresh pipeline and `swespot specialize`, on a real git
repository made in the test and the tiny model (trained for real, served by llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import SwespotError
from daemon_support import commit, git  # real git in a test repository

SECRET = "AKIAIOSFODNN7EXAMPLE"

SHAPES = '''"""Plane shapes and their areas."""


class Square:
    """A square with a side length."""

    def __init__(self, side):
        self.side = side

    def area(self):
        """The area of the square."""
        return self.side * self.side


def total_area(shapes):
    """The sum of the areas of shapes."""
    return sum(s.area() for s in shapes)
'''
CIRCLE = '''

class Circle:
    """A circle with a radius."""

    def __init__(self, radius):
        self.radius = radius

    def area(self):
        """The area of the circle."""
        return 3.14159 * self.radius * self.radius


def largest_shape(shapes):
    """The shape with the largest area."""
    return max(shapes, key=lambda s: s.area())
'''
REPORT = '''"""Text reports about shapes."""
from geometry.shapes import total_area


def describe(shapes):
    """One line naming the total area."""
    return f"total area: {total_area(shapes):.2f}"
'''
CIRCLE_TEST = '''from geometry.shapes import Circle, largest_shape


def test_largest_shape_picks_the_circle():
    assert isinstance(largest_shape([Circle(2)]), Circle)
'''


@pytest.fixture
def geometry(tmp_path) -> tuple[Path, dict]:
    """Three commits up to the cutoff, then two after it (a new class with a function and its test,
    and a report module). A secret lands after the cutoff too: it must never become a task."""
    root = tmp_path / "geometry"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    revs = {"init": commit(root, "Add squares", {"geometry/__init__.py": "", "geometry/shapes.py": SHAPES})}
    revs["tests"] = commit(root, "Test the square", {"tests/test_shapes.py": "from geometry.shapes import Square\n\n\ndef test_area():\n    assert Square(3).area() == 9\n"})
    revs["cutoff"] = commit(root, "Document the package", {"README.md": "# Geometry\n\nAreas of plane shapes.\n"})
    revs["circle"] = commit(root, "Add circles and the largest shape", {"geometry/shapes.py": SHAPES + CIRCLE, "tests/test_circle.py": CIRCLE_TEST})
    revs["report"] = commit(root, "Describe shapes in text reports", {"geometry/report.py": REPORT})
    revs["secret"] = commit(root, "Add deployment keys", {"deploy/keys.py": f"AWS_KEY = '{SECRET}'\n"})
    return root, revs


def test_tasks_come_only_from_commits_after_the_cutoff(geometry):
    import git as git_repo

    from trainer.evaluation import make_tasks, post_cutoff_changes, replay_tasks

    root, revs = geometry
    tasks = make_tasks(root, revs["cutoff"], profile="tiny")
    families = {t.family for t in tasks}
    # infill: middle lines of post-cutoff hunks (checked below); facts: questions about the cutoff's held-out symbols
    assert families == {"line", "body", "infill", "design", "facts", "replay"}
    after = {revs["circle"], revs["report"], revs["secret"]}
    for task in tasks:
        assert SECRET not in task.prompt + task.target and task.path != "deploy/keys.py"
        if task.family == "facts":
            assert task.commit == revs["cutoff"]
        elif task.family != "design":
            assert task.commit in after
    # the body of a function written after the cutoff, completed from the code above it
    bodies = {t.meta["symbol"]: t for t in tasks if t.family == "body"}
    assert "largest_shape" in bodies and "max(shapes" in bodies["largest_shape"].target
    assert bodies["largest_shape"].prompt.rstrip().endswith('"""The shape with the largest area."""')
    # design answers are grounded in the newest index: where the new symbols live, who calls them
    design = [t for t in tasks if t.family == "design"]
    assert any(t.meta["answer"] == "geometry/report.py" and "describe" in t.prompt for t in design)
    assert any(t.meta["question"] == "caller" and "total_area" in t.prompt and "describe" in t.meta["accept"] for t in design)
    assert not any("Square" in t.prompt for t in design if t.meta["question"] == "where")  # defined before the cutoff
    # replay tasks: the commit's message is the request; its test is the grader
    assert sum(t.family == "replay" for t in tasks) == 1  # the tiny profile's one agent task
    replay = {t.commit: t for t in replay_tasks(post_cutoff_changes(git_repo.Repo(root), revs["cutoff"]), 10)}
    assert set(replay) == {revs["circle"], revs["report"]}  # the commit with a secret is not a task
    assert replay[revs["circle"]].prompt == "Add circles and the largest shape"
    assert replay[revs["circle"]].meta["tests"] == ["tests/test_circle.py"]


def test_a_cutoff_that_is_not_an_ancestor_is_refused(geometry):
    from trainer.evaluation import make_tasks

    root, revs = geometry
    git(root, "checkout", "-q", "-b", "side", revs["init"])
    side = commit(root, "Side work", {"geometry/other.py": "X = 1\n"})
    with pytest.raises(SwespotError, match="not an ancestor"):
        make_tasks(root, side, until="main")
    # nothing after HEAD: only the held-out facts, which ask about the cutoff itself (here Square, by hash)
    assert {t.family for t in make_tasks(root, "HEAD")} == {"facts"}


def test_evaluation_scores_models_through_llama_cpp_and_writes_the_report(geometry, tiny_gguf_f32, tmp_path):
    from trainer.evaluation import ModelSpec, evaluate

    root, revs = geometry
    out = tmp_path / "report"
    report = evaluate(root, revs["cutoff"], tiny_gguf_f32, [ModelSpec("base", None)], families=("line", "body", "design"),
                      profile="tiny", progress=False, out=out)
    fams = report["models"]["base"]["families"]
    assert set(fams) == {"line", "body", "design"}
    for entry in fams.values():
        assert 0 < entry["loss"] < 20 and 0 <= entry["similarity"] <= 1 and 0 <= entry["exact"] <= 1
    rows = [r for r in report["rows"] if r["family"] == "line"]
    assert rows and all(r["completion_tokens"] <= 48 and "\n" not in r["completion"] for r in rows)
    assert all(r["threads"] >= 1 for r in report["rows"])  # the thread count each task ran with (load shows there)
    saved = json.loads((out / "report.json").read_text())
    assert saved["cutoff"] == revs["cutoff"] and saved["tasks"]["line"] == len(rows)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "line: loss" in page


def test_loss_is_the_mean_negative_log_likelihood_of_the_target(tiny_gguf_f32):
    """The sparse pass (logits only where a target token is predicted, in batches) gives the log-softmax
    of the full logits, also across a batch boundary."""
    import numpy as np

    from agent.runtime import LlamaRuntime
    from trainer.evaluation import target_loss

    with LlamaRuntime(tiny_gguf_f32, n_ctx=1024, logits_all=True) as rt:
        prefix = rt.tokenize("def area(self):\n" * 60, add_bos=True)
        target = rt.tokenize("    return self.side * self.side\n" * 45, add_bos=False)
        assert len(prefix) < rt.n_batch < len(prefix) + len(target)
        logits = rt.logits(prefix + target).astype(np.float64)
        rows = logits[len(prefix) - 1: len(prefix) + len(target) - 1]
        expected = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1) - rows[np.arange(len(target)), target]
        assert target_loss(rt, prefix, target) == pytest.approx(float(expected.mean()), rel=1e-5)
        # token by token too
        np.testing.assert_allclose(-rt.target_logprobs(prefix + target, len(prefix)), expected, rtol=1e-5, atol=1e-5)
        # the prefix stays cached: its completion reads only the last prefix token, and is the one a cold cache gives
        stats: dict = {}
        warm = "".join(rt.generate(prefix, max_tokens=6, stats=stats))
        assert stats["cached_tokens"] == len(prefix) - 1 and stats["completion_tokens"] >= 1
        rt.reset_cache()
        assert rt.complete(prefix, max_tokens=6).text == warm
        target_loss(rt, prefix, target)
        other = rt.tokenize("class Square:\n", add_bos=True)  # another prompt after it starts afresh
        stats = {}
        assert "".join(rt.generate(other, max_tokens=6, stats=stats)) == rt.complete(other, max_tokens=6).text
        assert stats["cached_tokens"] <= 1  # at most a shared BOS


def test_an_interrupted_refresh_publishes_nothing_and_the_next_one_resumes(geometry, tiny_hf_dir, tmp_path, monkeypatch):
    from trainer.pipeline import Interrupted, RefreshOptions, refresh
    from trainer.store import AdapterStore

    root, _ = geometry
    state = tmp_path / "state"
    seen = []

    class StopAtStep2:
        def between_steps(self, step, total):
            seen.append(step)
            if step == 2:
                raise Interrupted("stop")

    opts = RefreshOptions(repo=root, base=str(tiny_hf_dir), profile="tiny", steps=4, gate="none", state=state, progress=False)
    with pytest.raises(Interrupted):
        refresh(opts, control=StopAtStep2())
    store = AdapterStore(state)
    assert store.current() is None and store.version_names() == []
    runs = list((state / "work").glob("run-*/adapter/checkpoints/*"))
    assert runs, "the interrupted run left a checkpoint to resume from"

    phases = []
    result = refresh(opts, on_phase=lambda phase, fraction, detail: phases.append((phase, fraction, detail)))
    assert result.published and store.current().name == result.version
    steps = [d["step"] for p, f, d in phases if p == "train" and "step" in d]
    assert steps == [3, 4]  # resumed after step 2, did not start over
    assert [p for p, f, _ in phases if f == 0.0] == ["experience", "train", "export", "gate", "publish"]
    manifest = store.current().manifest
    assert manifest["commit"] == git(root, "rev-parse", "HEAD") and manifest["experience"]["episodes"]["design"] > 0
    assert not (state / "work").exists() or not list((state / "work").glob("run-*"))


def test_a_chat_adapter_is_trained_beside_the_code_adapter_answers_the_questions_and_is_carried_over(geometry, tiny_hf_dir, tmp_path,
                                                                                                   monkeypatch):
    """A refresh asked for the chat adapter trains it on its own experience (design and recall episodes), with
    its recipe's own learning rate, and publishes it in the same version; the evaluation scores questions with it
    and code with the code adapter; the next refresh, continuing without one, carries it over."""
    from trainer.config import TRAIN_PRESETS
    from trainer.evaluation import ModelSpec, evaluate
    from trainer.pipeline import PROFILES, RefreshOptions, refresh
    from trainer.store import CHAT_GGUF, AdapterStore

    assert TRAIN_PRESETS["tiny"]["lr"] != 1e-3
    monkeypatch.setitem(PROFILES["tiny"], "chat", {**PROFILES["tiny"]["chat"], "train": {"lr": 1e-3}})  # as quick's CHAT
    root, revs = geometry
    state = tmp_path / "state"
    phases = []
    opts = RefreshOptions(repo=root, base=str(tiny_hf_dir), profile="tiny", cutoff=revs["cutoff"], steps=2, chat=True,
                          chat_steps=2, gate="none", state=state, progress=False, continue_training=False)
    result = refresh(opts, on_phase=lambda phase, fraction, detail: phases.append((phase, fraction)))
    assert result.published and [p for p, f in phases if f == 0.0] == ["experience", "train", "export", "chat", "gate", "publish"]
    version = AdapterStore(state).current()
    chat = version.manifest["chat"]
    assert version.chat_gguf == version.path / CHAT_GGUF and version.chat_gguf.is_file()
    assert chat["episodes"]["recall"] > 0 and chat["steps"] == 2 and chat["trained_tokens"] > 0 and chat["commit"] == revs["cutoff"]
    assert chat["lr"] == 1e-3 and version.manifest["config"]["lr"] == TRAIN_PRESETS["tiny"]["lr"]  # the code adapter keeps its own
    chat_shards = {p.name for p in (state / "experience-chat").glob("*/*.jsonl")}
    assert chat_shards and not chat_shards & set(version.manifest["shards"])  # the code adapter never trained on them

    base = version.manifest["export"]["base_gguf"]
    models = [ModelSpec("pair", version.gguf, version.chat_gguf), ModelSpec("code", version.gguf), ModelSpec("chat", version.chat_gguf)]
    report = evaluate(root, revs["cutoff"], base, models, families=("line", "design"), profile="tiny", progress=False,
                      out=tmp_path / "report")
    assert "answered by the chat adapter of pair" in (tmp_path / "report" / "report.html").read_text()
    loss = {(r["model"], r["task"]): r["loss"] for r in report["rows"]}
    for row in report["rows"]:
        if row["model"] == "pair":
            other = "chat" if row["family"] == "design" else "code"
            assert row["loss"] == pytest.approx(loss[(other, row["task"])], abs=1e-6), row["family"]
    design = [r["task"] for r in report["rows"] if r["model"] == "pair" and r["family"] == "design"]
    assert design and any(abs(loss[("code", t)] - loss[("chat", t)]) > 1e-4 for t in design)  # the two adapters differ
    assert report["models"]["pair"]["chat_adapter"] == str(version.chat_gguf)

    again = refresh(RefreshOptions(repo=root, base=str(tiny_hf_dir), profile="tiny", cutoff=revs["cutoff"], steps=1, gate="none",
                                   state=state, progress=False))
    carried = AdapterStore(state).current()
    assert again.published and carried.name != version.name and carried.manifest["chat"]["carried_from"] == version.name
    assert carried.chat_gguf.read_bytes() == version.chat_gguf.read_bytes()


@pytest.mark.slow
def test_specialize_trains_evaluates_and_publishes(geometry, tiny_hf_dir, tmp_path, monkeypatch, capsys):
    from agent.runtime import LlamaRuntime
    from swespot.cli import main
    from trainer.store import AdapterStore, state_dir

    root, revs = geometry
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "state"))
    assert main(["specialize", "--repo", str(root), "--base", str(tiny_hf_dir), "--profile", "tiny", "--holdout", "3", "--steps", "3",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "published v0001" in out and "report: " in out
    # one held-out fact (Square, by hash): too few questions for an interval, and the line says so
    assert "(too few for an interval, 1 question): no measurable change" in out
    version = AdapterStore.for_repo(root).current()
    manifest = version.manifest
    assert manifest["config"]["seed"] == 3 and manifest["specialize"]["seed"] == 3  # a second seed is told apart
    assert manifest["commit"] == revs["cutoff"]  # trained up to the cutoff; the held-out commits stayed unseen
    assert manifest["gate"]["kind"] == "eval" and set(manifest["gate"]["scores"]) == {"base", "adapter"}
    report_html = Path(out.split("report: ")[1].split()[0])
    assert report_html.is_file() and report_html.parent.parent == state_dir(root) / "reports"
    report = json.loads((report_html.parent / "report.json").read_text())
    assert report["cutoff"] == revs["cutoff"] and report["tasks"]["replay"] >= 1
    replay = [r for r in report["rows"] if r["family"] == "replay"]
    assert {r["model"] for r in replay} == {"base", "adapter"} and all(r["turns"] >= 1 for r in replay)
    # the published adapter is one llama.cpp serves
    with LlamaRuntime(manifest["export"]["base_gguf"], n_ctx=128) as rt:
        rt.set_adapters({rt.load_adapter(version.gguf): 1.0})
        assert rt.complete("def ", max_tokens=4).completion_tokens >= 1


def test_heldout_shards_are_stable_and_a_small_repository_is_gated_too(tmp_path):
    from trainer.pipeline import MIN_HELDOUT_SHARDS, heldout_shards

    shards = [tmp_path / f"design/{i:04x}.jsonl" for i in range(3 * MIN_HELDOUT_SHARDS)]
    chosen = heldout_shards(shards)
    assert len(chosen) == MIN_HELDOUT_SHARDS
    assert heldout_shards(list(reversed(shards))) == chosen  # by content address, not by order
    more = shards + [tmp_path / f"evolution/{i:04x}.jsonl" for i in range(200)]
    assert len(heldout_shards(more)) == round(0.1 * len(more))
    assert heldout_shards(shards[:5]) == []  # too few to hold any out


def test_an_evaluated_version_brings_its_chat_adapter_and_a_damaged_one_is_refused(tmp_path):
    """`swespot eval --adapter` on a version folder answers the questions with the chat adapter its manifest
    names; a version whose named chat adapter is missing is refused, not evaluated with the code adapter alone."""
    from trainer.specialize import resolve_adapters
    from trainer.store import CHAT_GGUF

    version = tmp_path / "v0001"
    version.mkdir()
    (version / "adapter.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (version / CHAT_GGUF).write_bytes(b"GGUF" + b"\0" * 60)
    (version / "manifest.json").write_text(json.dumps({"commit": "c1", "chat": {"gguf": CHAT_GGUF}}))
    [spec] = resolve_adapters([f"mine={version}"], tmp_path)
    assert (spec.name, spec.adapter, spec.chat_adapter) == ("mine", (version / "adapter.gguf").resolve(), (version / CHAT_GGUF).resolve())
    (version / CHAT_GGUF).unlink()
    with pytest.raises(SwespotError, match=f"cannot evaluate .*v0001: {CHAT_GGUF} is missing"):
        resolve_adapters([str(version)], tmp_path)
    (version / "manifest.json").write_text(json.dumps({"commit": "c1"}))  # a version without one: the code adapter answers
    assert resolve_adapters([str(version / "adapter.gguf")], tmp_path)[0].chat_adapter is None


def test_specialize_refuses_while_a_daemon_trains_the_same_repository(geometry, tmp_path, monkeypatch):
    from swespot.cli import main
    from trainer.daemon import DaemonLock
    from trainer.specialize import SpecializeOptions, specialize
    from trainer.store import state_dir

    root, _ = geometry
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "state"))
    lock = DaemonLock(state_dir(root))
    lock.acquire(root)
    try:
        with pytest.raises(SwespotError, match="trainer daemon is already running"):
            specialize(SpecializeOptions(repo=root, profile="tiny", steps=1, evaluate=False, device="cpu"), "HEAD")
    finally:
        lock.release()
    assert main(["adapters", "list", "--repo", str(root)]) == 0  # nothing was touched
