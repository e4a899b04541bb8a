"""A teacher for every unit (issue 13 item 8) and the runtime trace in the design answers: on a real git
repository made in the test, with the tests run for real (sandboxed). A teacher's trajectory is kept only
when it verifies; otherwise the oracle's episode stands and the rejection is counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.episode import load_episodes
from daemon_support import commit, git  # real git in a test repository
from trainer.evaluation import names_any
from trainer.experience.build import BuildOptions, build_experience, format_table, unit_table

OPS = '''"""Arithmetic used by the billing layer."""


def add(a, b):
    """Return the sum of two amounts."""
    return a + b


def total(items):
    """Add up every amount in items."""
    out = 0
    for item in items:
        out = add(out, item)
    return out
'''
BILLING = '''"""Invoices built from line items."""
from shop.ops import total


class Invoice:
    """A customer's bill: named line items with prices."""

    def __init__(self, lines):
        self.lines = list(lines)

    def amount(self):
        """What the customer owes."""
        return total(list(dict(self.lines).values()))


OPEN = {}


def open_invoice(name, lines):
    """Open a named invoice."""
    OPEN[name] = Invoice(lines)


def render(name):
    """Text of a named invoice for printing."""
    return f"due: {OPEN[name].amount()}"
'''
OPS_TEST = '''from shop.ops import add, total


def test_add():
    assert add(2, 3) == 5


def test_total():
    assert total([1, 2, 3]) == 6


def test_total_of_nothing():
    assert total([]) == 0
'''
BILLING_TEST = '''from shop.billing import open_invoice, render


def test_render():
    open_invoice("march", [("a", 2), ("b", 3)])
    assert render("march") == "due: 5"
'''
STUB = "    raise NotImplementedError  # TODO: implement\n"


@pytest.fixture
def shop(tmp_path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start the shop", {"shop/__init__.py": "", "shop/ops.py": OPS, "tests/test_ops.py": OPS_TEST})
    commit(root, "Add invoices and their rendering", {"shop/billing.py": BILLING, "tests/test_billing.py": BILLING_TEST})
    return root


def _episodes(out: Path, unit: str) -> list[dict]:
    return [e for shard in sorted((out / unit).glob("*.jsonl")) for e in load_episodes(shard)]


def _script(tmp_path: Path, turns: list[dict]) -> str:
    path = tmp_path / "teacher.json"
    path.write_text(json.dumps(turns))
    return f"scripted:{path}"


def _call(name: str, thought: str, **arguments) -> dict:
    return {"content": thought, "tool_calls": [{"function": {"name": name, "arguments": arguments}}]}


def _submit(summary: str) -> dict:
    return _call("submit", "That answers it.", summary=summary)


# ---- the runtime trace confirms calls Jedi cannot pin ------------------------------------------------
def test_a_call_on_an_untyped_parameter_is_answered_once_the_trace_saw_it(shop, tmp_path):
    # static only: `OPEN[name].amount()` is on a value Jedi cannot infer, so "who calls Invoice.amount" is not asked
    static = build_experience(shop, tmp_path / "static", BuildOptions(units=("design",), progress=False))
    assert not any(e["meta"].get("question") == "callers" and e["meta"].get("symbol") == "Invoice.amount"
                   for e in _episodes(tmp_path / "static", "design"))
    assert static.stats["design"]["trace"] == {"edges": 0, "sites_confirmed": 0}

    traced = build_experience(shop, tmp_path / "traced", BuildOptions(units=("design", "runtime"), progress=False))
    callers = [e for e in _episodes(tmp_path / "traced", "design")
               if e["meta"].get("question") == "callers" and e["meta"].get("symbol") == "Invoice.amount"]
    assert len(callers) == 1
    assert callers[0]["messages"][-1]["content"].endswith("Invoice.amount is called by render (shop/billing.py:26).")
    assert callers[0]["verified"] == {"ok": True, "grounded_in": "resolver and runtime trace"}
    trace = traced.stats["design"]["trace"]
    assert trace["sites_confirmed"] == 1 and trace["edges"] >= 3  # render→amount, amount→total, total→add

    # a design-only rebuild into the same folder takes the cached trace (no test runs): its shards stay wanted
    again = build_experience(shop, tmp_path / "traced", BuildOptions(units=("design",), progress=False))
    assert again.stats["design"]["trace"]["edges"] == trace["edges"] and again.shards_made == 0 and again.shards_removed == 0


def test_the_runtime_unit_stops_at_its_target(shop, tmp_path):
    full = build_experience(shop, tmp_path / "all", BuildOptions(units=("runtime",), progress=False))
    capped = build_experience(shop, tmp_path / "capped", BuildOptions(units=("runtime",), progress=False, targets={"runtime": 1}))
    assert 1 <= capped.stats["runtime"]["episodes_on_disk"] < full.stats["runtime"]["episodes_on_disk"]
    assert capped.stats["runtime"]["rejected"]["over the unit's target"] >= 1


# ---- a teacher: kept when it verifies, the oracle's episode otherwise -------------------------------
def test_a_teacher_body_that_the_tests_decide_for_is_kept(shop, tmp_path):
    spec = _script(tmp_path, [
        _call("read_file", "Let me see the stub.", path="shop/ops.py", start_line=1, end_line=20),
        _call("edit", "A sum over the items does it.", path="shop/ops.py", old=STUB, new="    return sum(items)\n"),
        _submit("Implemented total as the sum of the items.")])
    result = build_experience(shop, tmp_path / "exp", BuildOptions(units=("implementation",), progress=False, teacher=spec))
    agentic = [e for e in _episodes(tmp_path / "exp", "implementation") if e["meta"].get("format") != "completion"]
    assert len(agentic) == 1 and agentic[0]["meta"]["teacher"] == spec
    # not the original code: the repository's tests decided (they fail on the stub, pass on the teacher's body)
    assert agentic[0]["verified"] == {"ok": True, "tests": "passed", "teacher": spec,
                                      "fail_to_pass": ["tests/test_ops.py::test_total", "tests/test_ops.py::test_total_of_nothing"]}
    assert "return sum(items)" in json.dumps(agentic[0]["messages"])
    assert (shop / "shop/ops.py").read_text() == OPS  # the snapshot, not the repository, was edited; and put back
    assert result.stats["implementation"]["teacher"] == {"tried": 1, "kept": 1, "rejected": {}}
    row = unit_table(result.stats)["implementation"]
    assert (row["teacher_made"], row["oracle_made"], row["teacher_tried"]) == (1, 1, 1)  # the completion form is the oracle's
    assert any("made (verified) 1" in line for line in format_table(unit_table(result.stats)))


def test_a_teacher_body_that_fails_the_tests_falls_back_to_the_oracle(shop, tmp_path):
    spec = _script(tmp_path, [_call("edit", "Nothing to add up.", path="shop/ops.py", old=STUB, new="    return 0\n"),
                              _submit("Implemented total.")])
    result = build_experience(shop, tmp_path / "exp", BuildOptions(units=("implementation",), progress=False, teacher=spec))
    agentic = [e for e in _episodes(tmp_path / "exp", "implementation") if e["meta"].get("format") != "completion"]
    assert len(agentic) == 1 and "teacher" not in agentic[0]["meta"] and agentic[0]["verified"]["matches_original"]
    assert result.stats["implementation"]["teacher"] == {"tried": 1, "kept": 0, "rejected": {"tests fail on its code (1 of 2 deciding)": 1}}


def test_a_teacher_design_answer_is_kept_only_when_it_names_every_grounded_fact(shop, tmp_path):
    summary = "shop/ops.py defines add and total."
    spec = _script(tmp_path, [_submit(summary)] * 60)
    result = build_experience(shop, tmp_path / "exp", BuildOptions(units=("design",), progress=False, teacher=spec))
    episodes = _episodes(tmp_path / "exp", "design")
    taught = [e for e in episodes if e["meta"].get("teacher")]
    oracle = [e for e in episodes if not e["meta"].get("teacher")]
    assert {e["meta"]["question"] for e in taught} >= {"module"} and all(e["meta"]["path"] == "shop/ops.py" for e in taught)
    assert all(names_any(summary, [a]) for e in taught for a in e["meta"]["accept"])
    assert all(not all(names_any(summary, [a]) for a in e["meta"]["accept"]) for e in oracle)
    assert any(e["meta"]["path"] == "shop/billing.py" for e in oracle)
    teacher = result.stats["design"]["teacher"]
    assert teacher["kept"] == len(taught) and teacher["tried"] == len(episodes) == len(taught) + sum(teacher["rejected"].values())


def test_the_tiny_model_as_teacher_is_rejected_and_the_oracle_episodes_stand(shop, tmp_path, tiny_gguf_f32):
    commit(shop, "Fix the total of an empty invoice", {"shop/ops.py": OPS.replace("    out = 0\n", "    out = 0  # nothing due\n")})
    opts = BuildOptions(units=("design", "implementation", "evolution"), progress=False, teacher=str(tiny_gguf_f32), teacher_steps=2,
                        targets={"design": 3, "implementation": 2, "evolution": 2})
    result = build_experience(shop, tmp_path / "exp", opts)
    for unit in opts.units:
        teacher = result.stats[unit]["teacher"]
        assert teacher["tried"] >= 1 and teacher["tried"] == teacher["kept"] + sum(teacher["rejected"].values())
        episodes = _episodes(tmp_path / "exp", unit)
        assert all(e["verified"]["ok"] for e in episodes)
        assert sum(1 for e in episodes if e["meta"].get("teacher")) == teacher["kept"]
        assert any(not e["meta"].get("teacher") and e["meta"].get("format") != "completion" for e in episodes) or teacher["kept"]


def test_a_teacher_replay_that_reaches_the_commits_code_is_kept(shop, tmp_path):
    # the same program as the commit's, written differently (a comment, other blank lines): the same syntax tree
    written = BILLING.replace('from shop.ops import total\n', 'from shop.ops import total  # the sum of prices\n\n')
    spec = _script(tmp_path, [_call("create_file", "Invoices need a module of their own.", path="shop/billing.py", content=written),
                              _submit("Added shop/billing.py with Invoice and render.")])
    result = build_experience(shop, tmp_path / "exp", BuildOptions(units=("evolution",), progress=False, teacher=spec))
    replays = [e for e in _episodes(tmp_path / "exp", "evolution") if e["meta"].get("format") != "completion"]
    assert len(replays) == 1 and replays[0]["meta"]["teacher"] == spec
    head = git(shop, "rev-parse", "HEAD")
    assert replays[0]["verified"] == {"ok": True, "reaches_child": True, "child": head, "teacher": spec}
    assert replays[0]["repo_commit"] == git(shop, "rev-parse", "HEAD~1")
    assert result.stats["evolution"]["teacher"] == {"tried": 1, "kept": 1, "rejected": {}}
