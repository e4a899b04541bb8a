"""The evaluation's statistics (paired bootstrap intervals and the verdicts read from them), the gate that
uses them, and the held-out-facts family: on a real git repository made in the test, the real index,
resolver and experience builder, and the tiny model served by llama.cpp."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from agent.errors import SwespotError
from agent.index import RepoIndex
from daemon_support import commit, git  # real git in a test repository


def _rows(model: str, losses, tokens, family: str = "line", **extra) -> list[dict]:
    return [{"model": model, "task": f"{family}-{i}", "family": family, "loss": float(loss), "tokens": int(n), "seconds": 0.1,
             **{k: v[i] for k, v in extra.items()}} for i, (loss, n) in enumerate(zip(losses, tokens))]


# ---- the interval and the verdict ------------------------------------------------------------------
def test_a_known_paired_improvement_gives_an_interval_that_excludes_zero():
    from trainer.evaluation import paired_interval

    rng = np.random.default_rng(1)
    base = rng.uniform(1.5, 3.5, 100)  # tasks differ a lot from one another ...
    tokens = rng.integers(5, 40, 100)
    adapter = base - 0.15 + rng.normal(0, 0.05, 100)  # ... but the adapter is 0.15 better on each
    stats = paired_interval(_rows("adapter", adapter, tokens), _rows("base", base, tokens), "loss", lower_is_better=True)
    assert stats["tasks"] == 100 and stats["verdict"] == "better"
    assert stats["lo"] < stats["delta"] < stats["hi"] < 0
    assert -0.17 < stats["delta"] < -0.13 and stats["rel_lo"] < stats["rel"] < stats["rel_hi"] < 0
    # unpaired, the spread between tasks would swamp it: each model's own interval overlaps the other's
    assert stats["candidate_ci"][1] > stats["reference_ci"][0]
    # the reverse is "worse", with the mirrored interval
    worse = paired_interval(_rows("adapter", base, tokens), _rows("base", adapter, tokens), "loss", lower_is_better=True)
    assert worse["verdict"] == "worse" and worse["lo"] == pytest.approx(-stats["hi"], abs=0.02)


def test_identical_models_make_no_measurable_change():
    from trainer.evaluation import paired_interval

    losses, tokens = np.linspace(1, 4, 60), np.arange(1, 61)
    stats = paired_interval(_rows("b", losses, tokens), _rows("a", losses, tokens), "loss", lower_is_better=True)
    assert stats["verdict"] == "no measurable change" and stats["lo"] == stats["hi"] == 0.0
    # pure noise around no difference is no change either (the point estimate alone would pick a side)
    rng = np.random.default_rng(7)
    noisy = losses + rng.normal(0, 0.3, 60)
    stats = paired_interval(_rows("b", noisy, tokens), _rows("a", losses, tokens), "loss", lower_is_better=True)
    assert stats["delta"] != 0 and stats["lo"] < 0 < stats["hi"] and stats["verdict"] == "no measurable change"


def test_the_loss_is_token_weighted_on_every_resample_and_deterministic():
    from trainer.evaluation import paired_interval

    # one long task where the adapter is much worse, many short ones where it is slightly better: the
    # token-weighted mean says worse, the plain mean over tasks would say better
    base = [2.0] * 20 + [2.0]
    adapter = [1.9] * 20 + [3.0]
    tokens = [2] * 20 + [400]
    a = paired_interval(_rows("x", adapter, tokens), _rows("b", base, tokens), "loss", lower_is_better=True)
    assert a["delta"] == pytest.approx((1.9 * 40 + 3.0 * 400) / 440 - 2.0, abs=1e-4) and a["delta"] > 0
    assert a == paired_interval(_rows("x", adapter, tokens), _rows("b", base, tokens), "loss", lower_is_better=True)
    # each resample recomputes sum(loss·tokens)/sum(tokens): the interval is that ratio's, so it reaches
    # down to the resamples that miss the long task (−0.1) and up to the ones that draw it often
    assert a["lo"] <= -0.09 and a["hi"] > a["delta"]


def test_too_few_tasks_give_no_interval_and_no_verdict_but_no_change():
    from trainer.evaluation import describe, paired_interval

    stats = paired_interval(_rows("x", [1.0, 1.0], [5, 5]), _rows("b", [2.0, 2.0], [5, 5]), "loss", lower_is_better=True)
    assert stats["lo"] is None and stats["verdict"] == "no measurable change"
    assert "too few for an interval" in describe(stats, "line loss")


def test_verdict_wording_states_the_change_the_interval_and_the_verdict():
    from trainer.evaluation import describe, verdict_of

    assert verdict_of(-0.3, -0.1, lower_is_better=True) == "better"
    assert verdict_of(0.1, 0.3, lower_is_better=True) == "worse"
    assert verdict_of(-0.1, 0.3, lower_is_better=True) == "no measurable change"
    assert verdict_of(0.1, 0.3, lower_is_better=False) == "better"
    assert verdict_of(None, None, lower_is_better=True) == "no measurable change"
    loss = {"metric": "loss", "tasks": 120, "reference": 2.452, "candidate": 2.301, "delta": -0.151, "lo": -0.2, "hi": -0.1,
            "rel": -0.0616, "rel_lo": -0.081, "rel_hi": -0.043, "verdict": "better"}
    assert describe(loss, "line+body loss") == "line+body loss 2.452 → 2.301 (−6.2%, 95% CI −8.1% … −4.3%; 120 tasks): better"
    rate = {"metric": "exact", "tasks": 24, "reference": 0.1, "candidate": 0.35, "delta": 0.25, "lo": 0.12, "hi": 0.38,
            "rel": 2.5, "rel_lo": None, "rel_hi": None, "verdict": "better"}
    assert describe(rate, "facts accuracy") == "facts accuracy 0.100 → 0.350 (+25.0 points, 95% CI +12.0 … +38.0 points; 24 tasks): better"


def test_the_comparison_gives_a_verdict_per_family_and_a_headline_over_code_tasks():
    from trainer.evaluation import paired_comparison

    rng = np.random.default_rng(3)
    base_line, base_body = rng.uniform(2, 3, 40), rng.uniform(1, 2, 10)
    rows = (_rows("base", base_line, [10] * 40, "line", exact=[False] * 40, similarity=[0.3] * 40)
            + _rows("adapter", base_line - 0.2, [10] * 40, "line", exact=[False] * 40, similarity=[0.3] * 40)
            + _rows("base", base_body, [30] * 10, "body") + _rows("adapter", base_body + rng.normal(0, 0.2, 10), [30] * 10, "body")
            + _rows("base", [3.0] * 8, [12] * 8, "design") + _rows("adapter", [3.5] * 8, [12] * 8, "design"))
    comparison = paired_comparison(rows, "adapter", "base")
    assert comparison["families"]["line"]["verdict"] == "better"
    assert comparison["families"]["design"]["verdict"] == "worse"
    assert comparison["families"]["line"]["metrics"]["exact"]["verdict"] == "no measurable change"
    head = comparison["headline"]
    assert head["families"] == ["line", "body"] and head["tasks"] == 50  # design is not part of the headline
    assert comparison["verdict"] == head["verdict"] and comparison["line"].startswith("line+body loss ")


# ---- the gate -------------------------------------------------------------------------------------
def test_the_gate_refuses_an_adapter_the_interval_shows_worse_and_records_the_interval():
    from trainer.evaluation import ModelSpec, compare, summarize

    def report(delta):
        rng = np.random.default_rng(5)
        base = rng.uniform(2, 3, 30)
        rows = _rows("base", base, [8] * 30) + _rows("adapter", base + delta + rng.normal(0, 0.02, 30), [8] * 30)
        return {"models": summarize(rows, [ModelSpec("base", None), ModelSpec("adapter", None)]), "rows": rows}

    worse = compare(report(+0.1), "adapter", "base")
    assert not worse["ok"] and worse["verdict"] == "worse" and "worse" in worse["why"]
    assert worse["interval"]["lo"] > 0 and worse["interval"]["confidence"] == 0.95
    same = compare(report(+0.0), "adapter", "base")  # a point estimate slightly up or down decides nothing
    assert same["ok"] and same["verdict"] == "no measurable change" and same["interval"]["lo"] < 0 < same["interval"]["hi"]
    better = compare(report(-0.1), "adapter", "base")
    assert better["ok"] and better["verdict"] == "better" and better["families"]["line"]["verdict"] == "better"
    assert json.loads(json.dumps(better)) == better  # goes into the manifest as it is
    assert compare({"models": {}}, "adapter", "base")["ok"]  # nothing held out: nothing to compare


def test_a_refused_candidate_is_not_published(geometry_repo, tiny_hf_dir, tmp_path):
    from trainer.evaluation import ModelSpec, compare, summarize
    from trainer.pipeline import RefreshOptions, refresh
    from trainer.store import AdapterStore

    root, _ = geometry_repo
    base = np.linspace(2, 3, 20)
    rows = _rows("base", base, [8] * 20) + _rows("adapter", base + 0.2, [8] * 20)
    worse = {"models": summarize(rows, [ModelSpec("base", None), ModelSpec("adapter", None)]), "rows": rows}
    opts = RefreshOptions(repo=root, base=str(tiny_hf_dir), profile="tiny", steps=1, gate=lambda gi: compare(worse, "adapter", "base"),
                          state=tmp_path / "state", progress=False)
    result = refresh(opts)
    assert not result.published and "worse" in result.reason and result.gate["verdict"] == "worse"
    assert AdapterStore(tmp_path / "state").current() is None


# ---- tasks: spread over the history ---------------------------------------------------------------
def test_tasks_are_spread_over_all_commits_deterministically():
    from trainer.evaluation.tasks import Task, mark_generated, spread_tasks

    # 50 commits; the first holds 200 tasks, the others 2 each
    tasks = [Task(f"t{c}-{i}", "line", f"c{c:02d}", "a.py", "", "") for c in range(50) for i in range(200 if c == 0 else 2)]
    picked = spread_tasks(tasks, 60)
    assert len(picked) == 60 and picked == spread_tasks(list(tasks), 60)
    per_commit = {c: sum(t.commit == c for t in picked) for c in {t.commit for t in tasks}}
    assert set(per_commit.values()) <= {1, 2}  # every commit first, then a second round: no commit crowds out the rest
    assert [tasks.index(t) for t in picked] == sorted(tasks.index(t) for t in picked)
    few = spread_tasks(tasks, 20)
    commits = sorted({int(t.commit[1:]) for t in few})
    assert len(commits) == 20 and commits[0] <= 2 and commits[-1] >= 47  # evenly over the whole history
    marked = mark_generated(picked, 15)
    assert sum(t.meta["generate"] for t in marked) == 15


def test_a_design_caller_question_names_the_method_that_calls_and_answers_are_scored_by_names_written_as_code(tmp_path):
    import git as gitpython

    from trainer.evaluation import answer_names, design_tasks, post_cutoff_changes

    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Prices", {"shop/prices.py": 'def net_price(gross, rate):\n    """Net of tax."""\n    return gross / (1 + rate)\n'})
    cutoff = commit(root, "Readme", {"README.md": "# Shop\n"})
    commit(root, "Invoices", {"shop/invoice.py": "from shop.prices import net_price\n\n\nclass Invoice:\n    def __init__(self, lines):\n"
                                                 "        self.lines = lines\n\n    def totals(self, rate):\n"
                                                 "        return [net_price(g, rate) for g in self.lines]\n"})
    repo = gitpython.Repo(root)
    [task] = [t for t in design_tasks(repo, post_cutoff_changes(repo, cutoff), "HEAD", 50) if t.meta["question"] == "caller"]
    # the walk met the class Invoice first, but the one that calls is its method, named as the episodes name it
    assert task.meta["answer"] == "Invoice.totals" and task.meta["accept"] == ["Invoice.totals"]
    assert "`Invoice.totals`" in task.target and answer_names(task.target, task.meta["accept"])
    assert not answer_names("It is `totals`.", task.meta["accept"])  # another class's totals would read the same
    # the training episode (design.calls_it) answers and accepts in the same words
    from trainer.experience import design as D

    index = RepoIndex.build([(p, (root / p).read_text()) for p in ("shop/prices.py", "shop/invoice.py")])
    qa = D.calls_it(*index.definitions("net_price"), *index.definitions("totals"))
    assert (qa.question, qa.answer, qa.accept) == (task.prompt, task.target, ["Invoice.totals"])
    # a name that reads as a plain word counts only written as code
    for text, named in [("I would describe the shapes first.", False), ("`describe`", True), ("describe(shapes)", True),
                        ("describe (geometry/report.py:5)", True), ("describe (and print) them", False),
                        ("geometry.describe_all", False)]:
        assert answer_names(text, ["describe"]) is named, text
    assert answer_names("call total_area first", ["total_area"]) and not answer_names("total_areas", ["total_area"])


# ---- on a real repository with the tiny model -------------------------------------------------------
SHAPES = '''"""Plane shapes."""


class Square:
    def __init__(self, side):
        self.side = side

    def area(self):
        return self.side ** 2


def total_area(shapes):
    """The sum of the areas."""
    return sum(s.area() for s in shapes)
'''


@pytest.fixture
def geometry_repo(tmp_path):
    root = tmp_path / "geometry"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    revs = {"init": commit(root, "Add squares", {"geometry/__init__.py": "", "geometry/shapes.py": SHAPES})}
    revs["cutoff"] = commit(root, "Document the package", {"README.md": "# Geometry\n"})
    extra = "".join(f'\n\ndef scaled_area_{i}(shape, factor):\n    """Area of shape scaled by factor {i}."""\n'
                    f"    area = shape.area()\n    return area * factor * factor + {i}\n" for i in range(6))
    revs["scaled"] = commit(root, "Scaled areas", {"geometry/shapes.py": SHAPES + extra})
    revs["report"] = commit(root, "Reports", {"geometry/report.py": '"""Reports."""\nfrom geometry.shapes import total_area\n\n\n'
                                              'def describe(shapes):\n    """One line."""\n    return f"total: {total_area(shapes):.2f}"\n'})
    return root, revs


def test_base_against_itself_through_llama_cpp_is_no_measurable_change(geometry_repo, tiny_gguf_f32, tmp_path):
    from trainer.evaluation import ModelSpec, evaluate

    root, revs = geometry_repo
    report = evaluate(root, revs["cutoff"], tiny_gguf_f32, [ModelSpec("base", None), ModelSpec("again", None)],
                      families=("line", "body", "design"), profile="tiny", progress=False, out=tmp_path / "report")
    comparison = report["comparisons"]["again"]
    head = comparison["headline"]
    assert head["tasks"] >= 5 and head["lo"] == head["hi"] == 0.0 and comparison["verdict"] == "no measurable change"
    assert all(e["verdict"] == "no measurable change" for e in comparison["families"].values())
    page = (tmp_path / "report" / "report.html").read_text()
    assert "no measurable change" in page and "bootstrap resamples of the tasks" in page
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["comparisons"]["again"]["line"] == comparison["line"]
    assert re.fullmatch(r"line\+body loss \d\.\d{3} → \d\.\d{3} \(\+0\.0%, 95% CI \+0\.0% … \+0\.0%; \d+ tasks\): no measurable change",
                        comparison["line"])


def test_runtimes_side_by_side_give_one_runtimes_rows_in_its_order(geometry_repo, tiny_gguf_f32):
    from trainer.evaluation import ModelSpec
    from trainer.evaluation.runner import Evaluator
    from trainer.evaluation.tasks import make_tasks

    root, revs = geometry_repo
    tasks = make_tasks(root, revs["cutoff"], "HEAD", ("line", "body", "design"), "tiny")
    models = [ModelSpec("base", None), ModelSpec("again", None)]
    one = Evaluator(tiny_gguf_f32, models, "tiny", progress=False, threads=1, workers=1).run(tasks)
    two = Evaluator(tiny_gguf_f32, models, "tiny", progress=False, threads=1, workers=2).run(tasks)
    assert len(one) == 2 * len(tasks) >= 20
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in one]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in two] == strip  # same scores, same order
    assert [(r["model"], r["task"]) for r in two] == [(m.name, t.id) for m in models for t in sorted(
        tasks, key=lambda t: t.family in ("design", "facts"))]


def test_an_error_in_one_runtime_stops_the_others_and_reaches_the_caller(geometry_repo, tiny_gguf_f32, monkeypatch):
    from trainer.evaluation import ModelSpec
    from trainer.evaluation.runner import Evaluator
    from trainer.evaluation.tasks import make_tasks

    root, revs = geometry_repo
    tasks = make_tasks(root, revs["cutoff"], "HEAD", ("line", "body"), "tiny")
    done, failed = [], []
    real = Evaluator._text_task

    def failing(self, rt, task, renderer, fim):
        if task.id == tasks[1].id and not failed:  # once: the base model's second task
            failed.append(task.id)
            raise SwespotError("the model file went away")
        done.append(task.id)
        time.sleep(0.05)  # slower than the failure reaches the other runtime
        return real(self, rt, task, renderer, fim)

    monkeypatch.setattr(Evaluator, "_text_task", failing)
    evaluator = Evaluator(tiny_gguf_f32, [ModelSpec("base", None), ModelSpec("again", None)], "tiny", progress=False,
                          threads=1, workers=2)
    with pytest.raises(SwespotError, match="went away"):
        evaluator.run(tasks)
    assert len(tasks) >= 5 and len(done) <= 3  # the other runtime stopped instead of scoring the other 2 × tasks - 1


def test_a_long_prefix_keeps_the_tokens_the_whole_text_would_give():
    """The line and body tasks' prompt tokenizes only the tail of a long file prefix: on real source (the
    standard library's largest modules, cut at many points, and whitespace-heavy text) it must keep exactly
    the last tokens that tokenizing the whole prefix with Gemma's tokenizer keeps."""
    import inspect
    import random
    import typing

    from agent.default_model import ensure_default_gguf
    from agent.runtime import LlamaRuntime
    from trainer.evaluation.runner import _left_truncate

    sources = [inspect.getsource(inspect), inspect.getsource(typing), inspect.getsource(random)]
    sources.append("\n".join(" " * (i % 37) + "x = {" + "\t" * (i % 5) + "}" + "\n" * (i % 4) for i in range(3000)))
    sources.append("y" * 20000 + "\n" + "z = 1\n" * 10)  # the cut would land in one 20,000-character line
    rng = random.Random(0)
    with LlamaRuntime(ensure_default_gguf(), n_ctx=256, n_threads=1) as rt:
        bos = rt.tokenize("", add_bos=True)
        for text in sources:
            for end in [len(text), 10, 5000] + [rng.randrange(len(text)) for _ in range(12)]:
                prefix = text[:end]
                for keep in (64, 320):
                    whole = rt.tokenize(prefix, add_bos=False, special=False)[-keep:]
                    assert _left_truncate(rt, prefix, keep) == bos + whole, (end, keep)


# ---- held-out facts ---------------------------------------------------------------------------------
NOUNS = ("invoice", "ledger", "parcel", "voucher", "tariff", "cargo", "rebate", "quota", "permit", "levy")
VERBS = ("audit", "merge", "split", "stamp", "route", "weigh", "price", "seal")


def _facts_module(noun: str) -> str:
    funcs = "".join(f'\n\ndef {verb}_{noun}(item):\n    """{verb.capitalize()} one {noun} and return its record."""\n'
                    f"    return {{'{verb}': item, 'kind': '{noun}'}}\n" for verb in VERBS)
    return f'"""Operations on every {noun}."""\n' + funcs


def _facts_caller(noun: str) -> str:
    calls = "".join(f"\n\ndef handle_{verb}_{noun}(item):\n    return {noun}s.{verb}_{noun}(item)\n" for verb in VERBS)
    return f'"""Entry points for {noun} requests."""\nfrom ledgerapp import {noun}s\n' + calls


def _facts_stub(noun: str) -> str:
    """What a typed library ships beside each module: the same functions again, declared in a ``.pyi``."""
    return "".join(f"def {verb}_{noun}(item: object) -> dict[str, object]: ...\n" for verb in VERBS)


@pytest.fixture
def facts_repo(tmp_path):
    return _facts_repo(tmp_path)


def _facts_repo(tmp_path, stubs: bool = False):
    """80 documented functions, each called from one entry point in another module: about one in four is
    a held-out fact. With ``stubs``, every module has its type stub beside it."""
    root = tmp_path / "ledgerapp-repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    files = {"ledgerapp/__init__.py": ""}
    for noun in NOUNS:
        files[f"ledgerapp/{noun}s.py"] = _facts_module(noun)
        files[f"ledgerapp/api_{noun}.py"] = _facts_caller(noun)
        if stubs:
            files[f"ledgerapp/{noun}s.pyi"] = _facts_stub(noun)
    cutoff = commit(root, "Ledger operations and their entry points", files)
    commit(root, "Later work", {"ledgerapp/extra.py": '"""Later."""\n\n\ndef later_thing(x):\n    """Done after the cutoff."""\n    return x\n'})
    held = {(f"ledgerapp/{noun}s.py", f"{verb}_{noun}") for noun in NOUNS for verb in VERBS}
    from trainer.experience.heldout import is_heldout_fact

    held = {s for s in held if is_heldout_fact(*s)}
    assert len(held) >= 3  # the hash picks a fixed share; enough of them here to test
    return root, cutoff, held


def test_facts_are_exactly_the_heldout_symbols_asked_in_the_training_words(facts_repo, tmp_path, monkeypatch):
    from trainer.evaluation import facts_tasks
    from trainer.experience.build import BuildOptions, build_experience

    root, cutoff, held = facts_repo
    tasks = facts_tasks(root, cutoff, limit=1000)
    assert {(t.path, t.meta["symbol"]) for t in tasks} == held
    assert {t.meta["question"] for t in tasks} == {"where", "callers"} and all(t.commit == cutoff for t in tasks)
    where = [t for t in tasks if t.meta["question"] == "where"]
    assert all(t.meta["accept"] == [t.path] for t in where)  # the answer must name the right file
    callers = [t for t in tasks if t.meta["question"] == "callers"]
    assert all(t.meta["accept"] == [f"handle_{t.meta['symbol']}"] for t in callers)

    # the same words as training: with nothing held out, the design unit asks these very questions and
    # submits these very answers
    import trainer.experience.units.software_design as design_unit

    monkeypatch.setattr(design_unit, "is_heldout_fact", lambda path, qualname: False)
    build_experience(root, tmp_path / "all", BuildOptions(cutoff=cutoff, units=("design",), per_file=50, progress=False))
    trained = _design_qa(tmp_path / "all")
    for task in tasks:
        assert trained.get(task.prompt) == task.target


def test_a_type_stub_beside_its_module_is_not_a_second_definition_and_is_held_out_with_it(tmp_path):
    """attrs ships a ``.pyi`` for every module: counted as a second definition, its every public name was
    "defined twice", and the held-out facts and the design family lost them (3 facts questions at full's
    cutoff). The stub's declaration is the module's definition again; its held-out symbols stay held out.
    So is a package stub's declaration of a name a private module defines (attrs: 8 → 13 held-out symbols)."""
    from trainer.evaluation import facts_tasks
    from trainer.experience.build import BuildOptions, build_experience
    from trainer.experience.design import defined_once

    root, cutoff, held = _facts_repo(tmp_path, stubs=True)
    tasks = facts_tasks(root, cutoff, limit=1000)
    assert {(t.path, t.meta["symbol"]) for t in tasks} == held  # the same facts as without the stubs, about the module
    assert {t.meta["question"] for t in tasks} >= {"where"}
    files = [(p.relative_to(root).as_posix(), p.read_text()) for p in root.glob("ledgerapp/*.py*")]
    index = RepoIndex.build(files)
    module, stub = sorted(index.definitions("audit_invoice"), key=lambda s: s.path)
    assert (module.path, stub.path) == ("ledgerapp/invoices.py", "ledgerapp/invoices.pyi")
    assert defined_once(index, module) and not defined_once(index, stub)
    again = RepoIndex.build(files + [("ledgerapp/legacy.py", "def audit_invoice(item):\n    return item\n")])
    assert not defined_once(again, next(s for s in again.definitions("audit_invoice") if s.path == module.path))  # a real second one counts
    # a package stub re-declaring what a private module defines (attrs' attr/__init__.pyi for attr/_make.py)
    package = RepoIndex.build(files + [("ledgerapp/__init__.pyi", "def audit_invoice(item: object) -> dict[str, object]: ...\n")])
    redeclared = sorted(package.definitions("audit_invoice"), key=lambda s: s.path)
    assert [s.path for s in redeclared] == ["ledgerapp/__init__.pyi", "ledgerapp/invoices.py", "ledgerapp/invoices.pyi"]
    assert [defined_once(package, s) for s in redeclared] == [False, True, False]
    only_stubs = RepoIndex.build([("ext/_speedups.pyi", "def crc(data: bytes) -> int: ...\n")])  # an extension module's
    assert defined_once(only_stubs, only_stubs.definitions("crc")[0])

    from trainer.experience.heldout import is_heldout_fact

    assert all(is_heldout_fact(path + "i", qualname) for path, qualname in held)  # the stub's declaration too
    build_experience(root, tmp_path / "exp", BuildOptions(cutoff=cutoff, units=("design",), per_file=50, progress=False))
    names = {qualname for _, qualname in held}
    for question in _design_qa(tmp_path / "exp"):  # not through the stub either
        assert not any(re.search(rf"\b{n}\b", question) for n in names), question


def test_heldout_facts_never_appear_in_the_training_episodes(facts_repo, tmp_path):
    from trainer.evaluation import facts_tasks
    from trainer.experience.build import BuildOptions, build_experience

    root, cutoff, held = facts_repo
    tasks = facts_tasks(root, cutoff, limit=1000)
    build_experience(root, tmp_path / "exp", BuildOptions(cutoff=cutoff, units=("design",), per_file=50, progress=False))
    trained = _design_qa(tmp_path / "exp")
    assert len(trained) >= 40  # the other symbols are asked about
    asked = set(trained)
    assert not asked & {t.prompt for t in tasks}
    names = {qualname for _, qualname in held}
    for question in asked:  # not even in other words: no training question names a held-out symbol
        assert not any(re.search(rf"\b{n}\b", question) for n in names), question


def _recall(folder) -> list[dict]:
    """The recall episodes (design questions answered without tools) of an experience folder."""
    return [e for shard in sorted(folder.glob("design/*.jsonl")) for line in shard.read_text().splitlines()
            if (e := json.loads(line))["meta"].get("recall")]


def test_recall_episodes_hold_no_heldout_fact_and_only_the_cutoffs_tree(facts_repo, tmp_path):
    import git as gitpython

    from trainer.evaluation import DESIGN_SYSTEM, design_tasks, facts_tasks, post_cutoff_changes
    from trainer.experience.build import BuildOptions, build_experience

    root, cutoff, held = facts_repo
    facts = facts_tasks(root, cutoff, limit=1000)
    result = build_experience(root, tmp_path / "exp", BuildOptions(cutoff=cutoff, units=("design",), per_file=50, progress=False,
                                                                   targets={"recall": 1000}))
    recall = _recall(tmp_path / "exp")
    assert len(recall) >= 150 and result.stats["design"]["recall"] == len(recall)
    for e in recall:  # the evaluation's layout: its system prompt, the question, the answer; no tools
        assert [m["role"] for m in e["messages"]] == ["system", "user", "assistant"] and e["tools"] == []
        assert e["messages"][0]["content"] == DESIGN_SYSTEM and e["verified"]["ok"]
    asked = {e["messages"][1]["content"]: e for e in recall}
    assert not set(asked) & {t.prompt for t in facts}
    assert not {e["messages"][2]["content"] for e in recall} & {t.target for t in facts}
    names = {qualname for _, qualname in held}
    for question, e in asked.items():  # no held-out symbol is asked about, nor named by an answer but a module summary's
        assert not any(re.search(rf"\b{n}\b", question) for n in names), question
        if e["meta"]["question"] != "module":
            assert not any(re.search(rf"\b{n}\b", e["messages"][2]["content"]) for n in names), e["messages"][2]["content"]
    free = sorted({f"{verb}_{noun}" for noun in NOUNS for verb in VERBS} - names)
    # the evaluation's design family in its own words, about symbols before the cutoff ...
    assert asked[f"In which file of this repository is the function `{free[0]}` defined?"]["messages"][2]["content"] == \
        f"`{free[0]}` is defined in `ledgerapp/{free[0].split('_')[1]}s.py`."
    assert asked[f"Name a function of this repository that calls `{free[0]}`."]["messages"][2]["content"] == \
        f"`handle_{free[0]}` in `ledgerapp/api_{free[0].split('_')[1]}.py` calls `{free[0]}`."
    # ... never about what came after it, which that family asks
    repo = gitpython.Repo(root)
    later = design_tasks(repo, post_cutoff_changes(repo, cutoff), "HEAD", 100)
    assert any("later_thing" in t.prompt for t in later)
    assert not any("later_thing" in m["content"] or "extra.py" in m["content"] for e in recall for m in e["messages"])


def test_recall_episodes_are_the_facts_questions_trained_as_the_evaluation_scores_them(facts_repo, tmp_path, monkeypatch):
    """With nothing held out, every held-out fact would be a recall episode whose trained span starts
    exactly where the evaluation's prompt ends and holds the grounded answer it scores."""
    from agent.render import Renderer
    from trainer.evaluation import facts_tasks
    from trainer.experience.build import BuildOptions, build_experience

    root, cutoff, _ = facts_repo
    facts = facts_tasks(root, cutoff, limit=1000)
    import trainer.experience.units.software_design as design_unit

    monkeypatch.setattr(design_unit, "is_heldout_fact", lambda path, qualname: False)
    build_experience(root, tmp_path / "all", BuildOptions(cutoff=cutoff, units=("design",), per_file=50, progress=False,
                                                          targets={"recall": 1000}))
    recall = {e["messages"][1]["content"]: e for e in _recall(tmp_path / "all")}
    renderer = Renderer.fallback()
    for task in facts:
        messages = recall[task.prompt]["messages"]
        text, spans = renderer.render_with_spans(messages, [])
        assert len(spans) == 1 and text[:spans[0][0]] == renderer.prompt(messages[:2])
        assert text[spans[0][0]:spans[0][1]].startswith(task.target) and messages[2]["content"] == task.target


def test_recall_is_made_only_when_asked_and_joins_an_existing_experience(facts_repo, tmp_path):
    from trainer.experience.build import BuildOptions, build_experience

    root, cutoff, _ = facts_repo
    opts = BuildOptions(cutoff=cutoff, units=("design",), per_file=4, progress=False, targets={"design": 12})
    first = build_experience(root, tmp_path / "exp", opts)
    assert not _recall(tmp_path / "exp") and "recall" not in first.stats["design"]  # no knob: as before
    opts.targets = {"design": 12, "recall": 40}
    again = build_experience(root, tmp_path / "exp", opts)
    recall = _recall(tmp_path / "exp")
    # the agentic shards are reused as they were; the recall shards are new, counted against their own target
    assert again.shards_reused == first.shards_made and again.shards_made >= 1 and again.shards_removed == 0
    assert 40 <= len(recall) == again.stats["design"]["recall"] and again.stats["design"]["made"] == len(recall)
    assert again.stats["design"]["episodes_on_disk"] == first.stats["design"]["episodes_on_disk"] + len(recall)
    opts.recall_per_file = 3  # a share per file: the target spreads over more files
    spread = build_experience(root, tmp_path / "exp", opts)
    files = {e["meta"]["path"] for e in _recall(tmp_path / "exp")}
    assert spread.stats["design"]["recall"] == len(_recall(tmp_path / "exp")) >= 40 and len(files) > len({e["meta"]["path"] for e in recall})
    assert all(sum(e["meta"]["path"] == f for e in _recall(tmp_path / "exp")) <= 3 for f in files)


def _design_qa(folder) -> dict[str, str]:
    """question → submitted answer of every design episode in an experience folder."""
    out = {}
    for shard in sorted(folder.glob("design/*.jsonl")):
        for line in shard.read_text().splitlines():
            episode = json.loads(line)
            question = next(m["content"] for m in episode["messages"] if m["role"] == "user")
            submit = [json.loads(c["function"]["arguments"])["summary"] for m in episode["messages"] if m["role"] == "assistant"
                      for c in m.get("tool_calls") or [] if c["function"]["name"] == "submit"]
            if submit:
                out[question] = submit[-1]
    return out


def test_specialize_holds_out_enough_history_for_the_profiles_line_tasks(tmp_path):
    from trainer.specialize import auto_cutoff

    root = tmp_path / "grow"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for i in range(16):  # every commit adds three modules: three line tasks
        commit(root, f"Step {i}", {f"steps/s{i}_{j}.py": f"def step(value):\n    return value + {i * 10 + j}  # step {i}.{j}\n"
                                   for j in range(3)})
    first_parent = git(root, "rev-list", "--first-parent", "HEAD").split()
    assert auto_cutoff(root, None, "tiny") == first_parent[3]  # 8 line tasks wanted: three commits give 9
    assert auto_cutoff(root, 2, "tiny") == first_parent[2]  # an explicit --holdout wins
    assert auto_cutoff(root, 40, "tiny") == first_parent[8]  # never more than half the history
