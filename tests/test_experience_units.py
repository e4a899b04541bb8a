"""Right answers and honest trajectories: the resolver (Jedi) on a real git repository with a src/ layout,
design questions that name only the calls that really reach a symbol, and every episode's actions
chosen from the task or an earlier observation, each after a thought."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from agent.episode import load_episodes
from agent.resolve import Resolver, source_roots
from agent.tools import Workspace
from daemon_support import commit, git  # real git in a test repository
from trainer.experience import units as U
from trainer.experience.build import BuildOptions, build_experience
from trainer.experience.design import design_questions, module_question
from trainer.experience.heldout import is_heldout_fact
from trainer.experience.oracle import ungrounded_actions
from trainer.experience.units import software_design

STORE = '''"""Readers and writers of the record store."""


class Reader:
    """Reads records from the store."""

    def load(self):
        """Load every record the reader can see."""
        return [1, 2, 3]

    def refresh(self):
        """Drop what was read and read again."""
        return self.load()


class Writer:
    """Writes records to the store."""

    def load(self):
        """Load the pending writes."""
        return []

    def flush(self):
        """Write every pending record out."""
        return len(self.load())


def use_reader():
    """Count the records a fresh reader loads."""
    r = Reader()
    return len(r.load())


def use_writer():
    """Count a fresh writer's pending records."""
    w = Writer()
    return len(w.load())


def handle(thing):
    """Process anything that can be processed."""
    return thing.process()


if FAST:
    def pick():
        return 1
else:
    def pick():
        return 2
'''
STORE = STORE.replace("if FAST:", "FAST = True\n\n\nif FAST:")
REPORT = '''"""Reports over the store."""
from store.core import Reader as Source
import store.core as core


def summary():
    """One line about the records."""
    return f"{len(Source().load())} records, {core.use_writer()} pending"
'''
PLUGINS = '''"""Two things that both process."""


class Alpha:
    def process(self):
        return "a"


class Beta:
    def process(self):
        return "b"
'''
TEST = '''from store.core import use_reader


def test_use_reader():
    assert use_reader() == 3
'''
MANY = '"""Many small helpers."""\n\n\n' + "\n\n".join(f"def helper_{i}(x):\n    return x + {i}\n" for i in range(12)) + \
    "\n\nclass Registry:\n    pass\n"


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start the record store", {"src/store/__init__.py": "", "src/store/core.py": STORE.replace("use_writer", "count_writes"),
                                            "src/store/plugins.py": PLUGINS, "tests/test_core.py": TEST})
    commit(root, "Add reports over the store: summary of the records",
           {"src/store/report.py": REPORT.replace("use_writer", "count_writes"), "src/store/many.py": MANY})
    commit(root, "Rename count_writes to use_writer so that its name says what it does\n\nThe writer's pending count.",
           {"src/store/core.py": STORE, "src/store/report.py": REPORT})
    return root


def _index(root: Path):
    ws = Workspace(root)
    return ws, ws.index()


def _sym(index, path: str, qualname: str):
    return next(s for s in index.files[path].symbols if s.qualname == qualname)


def test_source_roots_put_src_first(store):
    assert source_roots(store) == [store / "src", store]


def test_callers_of_a_method_name_only_the_class_that_defines_it(store):
    ws, index = _index(store)
    resolver = Resolver(store, index)
    reader_load = _sym(index, "src/store/core.py", "Reader.load")
    writer_load = _sym(index, "src/store/core.py", "Writer.load")
    readers = {s.qualname for s in resolver.callers(reader_load).symbols}
    writers = {s.qualname for s in resolver.callers(writer_load).symbols}
    # self.load() resolves to the class's own method; an imported alias (Source = Reader) resolves too
    assert readers == {"Reader.refresh", "use_reader", "summary"}
    assert writers == {"Writer.flush", "use_writer"}
    qa = next(q for q in design_questions(index, reader_load, resolver) if q.kind == "callers")
    assert "Writer" not in qa.answer and "use_writer" not in qa.answer
    assert qa.answer == ("Reader.load is called by Reader.refresh (src/store/core.py:13), "
                         "use_reader (src/store/core.py:31), summary (src/store/report.py:8).")
    assert resolver.seconds > 0 and resolver.files_resolved >= 2


def test_the_resolver_resolves_only_the_calls_of_the_name_asked_and_each_name_alike_in_any_order(store):
    ws, index = _index(store)
    reader_load = _sym(index, "src/store/core.py", "Reader.load")
    use_writer = _sym(index, "src/store/core.py", "use_writer")
    resolver = Resolver(store, index)
    first = resolver.callers(reader_load)
    # core.py calls other names too (Writer's, use_reader's ...); only `load` was resolved in it
    assert set(resolver._sites["src/store/core.py"].by_name) == {"load"}
    then = resolver.callers(use_writer)
    alone = Resolver(store, index)
    assert alone.callers(use_writer) == then and alone.callers(reader_load) == first  # the other order


def test_module_attribute_call_resolves_through_an_import_alias(store):
    ws, index = _index(store)
    resolver = Resolver(store, index)
    use_writer = _sym(index, "src/store/core.py", "use_writer")
    assert {s.qualname for s in resolver.callers(use_writer).symbols} == {"summary"}


def test_ambiguous_names_are_not_asked(store):
    ws, index = _index(store)
    resolver = Resolver(store, index)
    picks = [s for s in index.files["src/store/core.py"].symbols if s.name == "pick"]
    assert len(picks) == 2 and all(design_questions(index, p, resolver) == [] for p in picks)
    # `thing.process()` on a parameter of unknown type may call Alpha.process or Beta.process: nobody is
    # named as its caller
    for qualname in ("Alpha.process", "Beta.process"):
        sym = _sym(index, "src/store/plugins.py", qualname)
        assert resolver.callers(sym) is None
        assert not [q for q in design_questions(index, sym, resolver) if q.kind in ("callers", "layers")]


def test_module_summary_lists_every_public_top_level_definition_in_order(store):
    ws, index = _index(store)
    qa = module_question(index, "src/store/many.py", ws.read_text("src/store/many.py"))
    names = [f"def helper_{i} " for i in range(12)] + ["class Registry "]
    positions = [qa.answer.index(n) for n in names]
    assert positions == sorted(positions) and qa.answer.startswith("src/store/many.py: Many small helpers.")
    core = module_question(index, "src/store/core.py", ws.read_text("src/store/core.py"))
    assert "class Reader (4)" in core.answer and "def pick" in core.answer and "FAST" not in core.answer


def test_design_episodes_answer_in_the_words_of_design_questions(store):
    ws, index = _index(store)
    resolver = Resolver(store, index)
    stats = U.UnitStats()
    episodes = U.design_episodes(ws, index, "src/store/core.py", "c", random.Random(1), stats, limit=40, resolver=resolver)
    answers = {(e["meta"]["question"], e["meta"].get("symbol")): e["messages"][-1]["content"] for e in episodes}
    for sym in index.files["src/store/core.py"].symbols:
        for qa in design_questions(index, sym, resolver):
            if is_heldout_fact(sym.path, sym.qualname):
                assert (qa.kind, qa.symbol) not in answers
            elif (qa.kind, qa.symbol) in answers:
                assert answers[(qa.kind, qa.symbol)] == qa.answer
    assert ("callers", "Writer.load") in answers and ("where", "use_reader") in answers
    assert ("callers", "Reader.load") not in answers  # Reader is a held-out symbol (a quarter of them are, by hash)
    for e in episodes:
        assert ungrounded_actions(e) == [], e["meta"]


def _steps(tmp_path, count: int, head: str = "", step: str = "x"):
    """A repository with lib.py: ``head``, then step_0 … step_{count-1} (each returns ``step`` + i) and
    run_all calling every step; the workspace, its index and the held-out steps (a share, by hash)."""
    root = tmp_path / "steps"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    names = [f"step_{i}" for i in range(count)]
    source = head + "\n\n".join(f'def {n}(x):\n    """Advance the counter by {i} steps."""\n    return {step} + {i}\n'
                                  for i, n in enumerate(names))
    source += "\n\ndef run_all(x):\n    " + "\n    ".join(f"x = {n}(x)" for n in names) + "\n    return x\n"
    commit(root, "lib", {"lib.py": source})
    return (*_index(root), [n for n in names if is_heldout_fact("lib.py", n)])


def test_held_out_symbols_get_no_design_episode(tmp_path):
    ws, index, held = _steps(tmp_path, 40)
    assert held  # a fixed share, by content hash
    stats = U.UnitStats()
    episodes = U.design_episodes(ws, index, "lib.py", "c", random.Random(0), stats, limit=500)
    asked = {e["meta"].get("symbol") for e in episodes}
    assert not asked & set(held) and stats.rejected["held-out symbol"] == len(held)
    module = next(e for e in episodes if e["meta"]["question"] == "module")
    assert all(f"def {n} " in module["messages"][-1]["content"] for n in held)  # the summary still names them


STAGES = '''def shared(x):
    """Double the value before a step."""
    return 2 * x


class Stage0:
    """One stage of the run."""

    def move(self, x):
        """Move the stage forward by one."""
        return shared(x) + 1


def start(x):
    """Start the first stage."""
    return Stage0().move(x)


def build_stage() -> Stage0:
    """Build the stage the run starts with."""
    return Stage0()


'''


def test_recall_episodes_never_ask_about_nor_answer_with_a_held_out_symbol(tmp_path):
    # every step calls shared: its callers include held-out steps; Stage0 is held out, its method is not
    ws, index, held = _steps(tmp_path, 20, head=STAGES, step="shared(x)")
    assert held and not {"shared", "run_all", "Stage0.move", "start"} & set(held) and is_heldout_fact("lib.py", "Stage0")
    held.append("Stage0")
    stats = U.UnitStats()
    episodes = U.recall_episodes(ws, index, "lib.py", "c", stats)
    asked = {e["messages"][1]["content"]: e["messages"][2]["content"] for e in episodes}
    assert len(asked) == len(episodes) == stats.recall == stats.made
    for question, answer in asked.items():
        assert not any(re.search(rf"\b{n}\b", question) for n in held), question
        if not question.startswith("What is lib.py for"):  # the module summary names every definition
            assert not any(re.search(rf"\b{n}\b", answer) for n in held), answer
    # who calls shared: every step, held-out ones too, so not asked; a caller that is not held out is
    assert "Who calls shared (lib.py)?" not in asked and stats.rejected["recall answer names a held-out symbol"] >= 1
    assert "Name a function of this repository that calls `shared`." not in asked  # its first caller: Stage0.move
    assert asked["Name a function of this repository that calls `step_5`."] == "`run_all` in `lib.py` calls `step_5`."
    assert asked["Who calls step_5 (lib.py)?"].startswith("step_5 is called by run_all (lib.py:")
    assert asked["In which file of this repository is the function `step_5` defined?"] == "`step_5` is defined in `lib.py`."
    assert "Who calls start (lib.py)?" not in asked and "Who calls run_all (lib.py)?" not in asked  # nobody does
    assert asked["Where is the code that does this: \"Start the first stage\"?"] == "In lib.py:14, function start: def start(x)"
    assert "Where is the code that does this: \"Build the stage the run starts with\"?" not in asked  # its signature names Stage0
    assert all(f" {n} (" in asked["What is lib.py for, and what does it define?"] for n in held)
    # a share per file: a seeded sample, in file order
    some = U.recall_episodes(ws, index, "lib.py", "c", U.UnitStats(), limit=7, rng=random.Random(1))
    assert len(some) == 7 and [e["id"] for e in some] == [e["id"] for e in episodes if e in some]
    assert some == U.recall_episodes(ws, index, "lib.py", "c", U.UnitStats(), limit=7, rng=random.Random(1))


def test_every_action_of_a_build_is_grounded_and_follows_a_thought(store, tmp_path):
    build_experience(store, tmp_path / "exp", BuildOptions(progress=False, seed=3))
    episodes = [e for unit in ("design", "implementation", "evolution") for shard in sorted((tmp_path / "exp" / unit).glob("*.jsonl"))
                for e in load_episodes(shard) if e["meta"].get("format") != "completion"]
    units = {e["unit"] for e in episodes}
    assert units == {"design", "implementation", "evolution"}
    for e in episodes:
        assert ungrounded_actions(e) == [], (e["unit"], e["meta"])
        for m in e["messages"]:
            if m["role"] == "assistant":
                assert (m.get("content") or "").strip()
    replay = next(e for e in episodes if e["meta"].get("commit") and "report.py" in json.dumps(e["meta"]["files"])
                  and e["messages"][1]["content"].startswith("Rename"))
    calls = [c["function"] for m in replay["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    # it searched a name the request mentions, never a line of the diff it is about to make
    assert calls[0]["name"] == "search" and json.loads(calls[0]["arguments"])["pattern"] in replay["messages"][1]["content"]
    impl = [e for e in episodes if e["unit"] == "implementation"]
    for e in impl:  # only tests that mention the symbol are read
        reads = [json.loads(c["function"]["arguments"]) for m in e["messages"] if m["role"] == "assistant"
                 for c in m.get("tool_calls") or [] if c["function"]["name"] == "read_file"]
        name = e["meta"]["symbol"].rsplit(".", 1)[-1]
        for r in reads:
            if r["path"].startswith("tests/"):
                assert name in (store / r["path"]).read_text()


def test_the_checker_catches_an_action_taken_from_the_answer(store):
    ws, _ = _index(store)
    from trainer.experience.oracle import OracleSession

    s = OracleSession(ws, "Who calls Reader.load?", read_only=True)
    s.act([("search", {"pattern": "return len(r.load())"})], content="I'll search for it.")  # a line nobody showed
    s.act([("read_file", {"path": "src/store/report.py", "start_line": 5, "end_line": 8})])  # no thought, unseen path
    problems = ungrounded_actions({"messages": s.messages})
    assert any("pattern" in p for p in problems) and any("no thought" in p for p in problems)
    assert any("src/store/report.py" in p for p in problems)


def test_a_wrong_first_look_is_corrected_by_what_the_tools_show(store, monkeypatch):
    monkeypatch.setattr(software_design, "WRONG_LOOK_RATE", 1.0)  # the design unit's wrong looks
    ws, index = _index(store)
    episodes = U.design_episodes(ws, index, "src/store/core.py", "c", random.Random(2), U.UnitStats(), limit=40)
    where = [e for e in episodes if e["meta"]["question"] == "where"]
    assert where
    for e in where:
        first_call = e["messages"][2]["tool_calls"][0]["function"]
        assert first_call["name"] == "find_definition" and e["messages"][3]["content"].startswith("no definition")
        assert e["messages"][4]["tool_calls"][0]["function"]["name"] == "search"
        assert json.loads(first_call["arguments"])["symbol"] in e["messages"][4]["content"]  # the thought says it was not there
        assert ungrounded_actions(e) == []


def test_the_design_check_benchmark_rejects_a_wrong_caller_and_accepts_the_right_one(store):
    from benchmarks.design_check import Checker, check

    def episode(kind: str, symbol: str, answer: str) -> dict:
        return {"meta": {"question": kind, "symbol": symbol, "path": "src/store/core.py"},
                "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "?"}, {"role": "tool", "content": answer}]}

    checker = Checker(store)
    right = "Reader.load is called by Reader.refresh (src/store/core.py:13), use_reader (src/store/core.py:31)."
    assert check(checker, episode("callers", "Reader.load", right)) is None
    # a method of the same name in another class: the bare-name answer this project used to give
    wrong = "Reader.load is called by Writer.flush (src/store/core.py:25)."
    assert "no call that Jedi resolves" in check(checker, episode("callers", "Reader.load", wrong))
    assert check(checker, episode("where", "Reader.load", "In src/store/core.py:19, method Reader.load: def load(self)")) is not None


def test_other_languages_answer_only_for_names_defined_once(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "web", {
        "lib/parse.js": "// Parsing.\nfunction parseQuery(text) {\n  return text.split('&');\n}\n\nfunction run() {\n  return 1;\n}\n",
        "lib/app.js": "function start(q) {\n  return parseQuery(q).length + run();\n}\n\nfunction run() {\n  return 2;\n}\n",
    })
    ws, index = _index(root)
    resolver = Resolver(root, index)
    parse = _sym(index, "lib/parse.js", "parseQuery")
    callers = next(q for q in design_questions(index, parse, resolver) if q.kind == "callers")
    assert callers.answer == "parseQuery is called by start (lib/app.js:2)."
    runs = [s for s in index.symbols() if s.name == "run"]
    assert len(runs) == 2 and all(design_questions(index, r, resolver) == [] for r in runs)
