"""The four units of Repository-Centric Experience, each a generator of episodes.

Every episode is an oracle session (``oracle.py``): the policy knows the answer from the index or the
history, but every observation comes from the real tools run on a snapshot of the repository at the
episode's commit. An episode whose tools fail or whose result does not verify is rejected and counted.
"""

from __future__ import annotations

import json
import random
import re
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from agent.episode import completion_episode
from agent.errors import SwespotError
from agent.index import RepoIndex, Symbol, is_test_file, language_of
from agent.resolve import Resolver
from agent.tools import Workspace
from trainer.evaluation import names_any
from trainer.experience import design as D
from trainer.experience.heldout import is_heldout_fact
from trainer.experience.history import line_opcodes
from trainer.experience.oracle import OracleSession, say, ungrounded_actions
from trainer.experience.teacher import Teacher, changed_files, parses, same_code, taught, tests_decide

GENERATOR_VERSION = 3  # 2: completion-form episodes next to the agentic ones; 3: resolver-grounded answers, honest actions, thoughts
MAX_BODY_LINES = 40
_WORD = re.compile(r"[A-Za-z_][A-Za-z_]{4,}")
HONEST_UNITS = ("design", "implementation", "evolution")  # episodes rejected when an action is ungrounded
WRONG_LOOK_RATE = 0.15  # share of episodes that first look in a plausible wrong place, which an observation corrects
_FIX = re.compile(r"\b(fix|fixes|fixed|bug|crash|error|wrong|broken|regression)\b", re.I)


@dataclass
class UnitStats:
    made: int = 0
    verified: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens: int = 0
    taught: int = 0  # of ``made``, episodes a teacher made (and verified); the rest are the oracle's
    teacher_tried: int = 0
    teacher_rejected: Counter = field(default_factory=Counter)  # why a teacher's attempt fell back to the oracle

    def add(self, episode: dict) -> None:
        self.made += 1
        self.verified += bool(episode["verified"].get("ok"))
        self.taught += bool(episode.get("meta", {}).get("teacher"))
        self.tokens += sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")) for m in episode["messages"]) // 4

    def to_dict(self) -> dict:
        out = {"made": self.made, "verified": self.verified, "rejected": dict(self.rejected), "tokens": self.tokens}
        if self.teacher_tried:
            out["teacher"] = {"tried": self.teacher_tried, "kept": self.taught, "rejected": dict(self.teacher_rejected)}
        return out


# ---- unit 1: software design --------------------------------------------------------------------
_RESOLVERS: weakref.WeakKeyDictionary[RepoIndex, Resolver] = weakref.WeakKeyDictionary()


def resolver_for(ws: Workspace, index: RepoIndex) -> Resolver:
    """One resolver per index (its per-file cache lives as long as the index)."""
    resolver = _RESOLVERS.get(index)
    if resolver is None or resolver.root != ws.root.resolve():
        resolver = _RESOLVERS[index] = Resolver(ws.root, index)
    return resolver


def design_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, rng: random.Random, stats: UnitStats, limit: int = 12,
                    resolver: Resolver | None = None, teacher: Teacher | None = None):
    """Explore-and-answer episodes about one file: what the module defines, where a behaviour lives, who
    calls a symbol, which chain of calls leads to it, how to extend a class. Only questions with one
    grounded answer (``design.design_questions``); never about a held-out symbol. With a ``teacher``, it
    answers each question first, kept when its answer names every grounded fact (else the oracle's)."""
    if is_test_file(path):
        return []
    resolver = resolver or resolver_for(ws, index)
    out = []
    qa = D.module_question(index, path, ws.read_text(path))
    if qa is not None:
        out.append(_taught_design(teacher, ws, qa, commit, stats) or _module_episode(ws, qa, commit, rng, stats))
    symbols = [x for x in index.files[path].symbols if D.public(x) and x.name != "__init__"]
    held = [x for x in symbols if is_heldout_fact(path, x.qualname)]
    if held:
        stats.rejected["held-out symbol"] += len(held)
    symbols = [x for x in symbols if x not in held]
    rng.shuffle(symbols)
    for sym in symbols:
        for qa in D.design_questions(index, sym, resolver):
            if len(out) >= limit:
                break
            out.append(_taught_design(teacher, ws, qa, commit, stats) or _DESIGN_EPISODES[qa.kind](ws, qa, commit, rng, stats))
    return [e for e in out if e is not None]


def _design_meta(qa: D.DesignQA) -> dict:
    meta = {"question": qa.kind, "path": qa.path, "accept": qa.accept}
    if qa.symbol:
        meta["symbol"] = qa.symbol
    return meta


def _grounding(qa: D.DesignQA) -> str:
    """What the answer's facts rest on: the resolver, or (for a call Jedi could not pin) the runtime trace."""
    sites = qa.facts.get("sites") or qa.facts.get("chain") or []
    return "resolver and runtime trace" if any(not site.resolved for site in sites) else "resolver"


def _taught_design(teacher: Teacher | None, ws: Workspace, qa: D.DesignQA, commit: str, stats: UnitStats):
    """The teacher's answer to a design question when it names every fact the grounded answer names."""
    if teacher is None:
        return None
    # the wrong answers a search by name suggests: definitions that use the name without calling this symbol
    decoys = set()
    if qa.kind in ("callers", "layers"):
        sym = next((x for x in ws.index().files[qa.path].symbols if x.qualname == qa.symbol), None)
        decoys = {c.qualname for c in ws.index().callers(sym)} - set(qa.accept) if sym else set()

    def verify(result):
        missing = [a for a in qa.accept if not names_any(result.summary, [a])]
        if missing:
            return f"{qa.kind} answer misses {len(missing)} of {len(qa.accept)} facts"
        if any(names_any(result.summary, [d]) for d in decoys):
            return f"{qa.kind} answer names a definition that does not call it"
        return {"ok": True, "grounded_in": _grounding(qa), "names": len(qa.accept)}

    return taught(teacher, stats, ws, qa.question, verify, unit="design", commit=commit, meta=_design_meta(qa), read_only=True)


def _design_session(ws: Workspace, qa: D.DesignQA) -> OracleSession:
    return OracleSession(ws, qa.question, read_only=True)


def _submit_design(s: OracleSession, qa: D.DesignQA, thought: str, commit: str, stats: UnitStats, rejected: str | None = None):
    if rejected:
        stats.rejected[rejected] += 1
        return None
    s.thought_before_submit = thought
    return _finish(s, qa.answer, "design", commit, stats, _design_meta(qa), {"ok": True, "grounded_in": _grounding(qa)})


_TOP_LEVEL = r"(?m)^(async def|class|def) "


def _module_episode(ws: Workspace, qa: D.DesignQA, commit: str, rng: random.Random, stats: UnitStats):
    s = _design_session(ws, qa)
    path, defs = qa.path, qa.facts["definitions"]
    if path.endswith(".py"):
        s.act([("search", {"pattern": _TOP_LEVEL, "regex": True, "path": path})], content=say(rng, [
            "To see what {path} holds, I'll list its top-level definitions.",
            "First, every class and function {path} defines at the top level.",
            "Let me search {path} for definitions that start at column 0.",
        ], path=path))
    else:
        s.act([("repo_map", {"path": path, "budget": 1200})], content=say(rng, [
            "An outline of {path} shows what it defines.", "I'll start from the outline of {path}."], path=path))
    first, last = defs[0], defs[-1]
    end = max(5, min(30, first[2]))
    s.act([("read_file", {"path": path, "start_line": 1, "end_line": end})], content=say(rng, [
        "{n} public definitions, from {first} (line {l1}) to {last} (line {l2}). The top of the file should say what it is for.",
        "The file defines {first} first (line {l1}) and {last} last (line {l2}), {n} public names in all; now its opening lines.",
        "So {path} has {first} at line {l1} through {last} at line {l2}. Its docstring, if any, is in lines 1-{end}.",
    ], n=len(defs), first=first[0], l1=first[2], last=last[0], l2=last[2], path=path, end=end))
    doc = qa.facts["doc"]
    thought = say(rng, ["The docstring says: {doc}. That and the {n} definitions answer it.",
                        "{path} is documented as \"{doc}\"; I can list what it defines."], doc=doc, n=len(defs), path=path) if doc else say(
        rng, ["There is no module docstring, so the definitions themselves say what {path} is for.",
              "No docstring at the top; I'll answer with the {n} definitions."], path=path, n=len(defs))
    return _submit_design(s, qa, thought, commit, stats)


def _where_episode(ws: Workspace, qa: D.DesignQA, commit: str, rng: random.Random, stats: UnitStats):
    s = _design_session(ws, qa)
    phrase = qa.facts["phrase"]
    sym = ws.index().definitions(qa.symbol)
    sym = next((x for x in sym if x.path == qa.path), None)
    if sym is None:
        stats.rejected["symbol vanished"] += 1
        return None
    words = [w.lower() for w in re.findall(r"[A-Za-z]{4,}", phrase)][:2]
    guess = "_".join(words)
    if len(words) == 2 and rng.random() < WRONG_LOOK_RATE and guess != sym.name and not ws.index().definitions(guess):
        s.act([("find_definition", {"symbol": guess})], content=say(rng, [
            "Perhaps a function is named after it: `{guess}`?", "A guess first: maybe it is called `{guess}`."], guess=guess))
        first_thought = say(rng, ["No `{guess}` is defined. I'll search for the words themselves: \"{phrase}\".",
                                  "Nothing is called `{guess}`. Searching the text \"{phrase}\" instead."], guess=guess, phrase=phrase)
    else:
        first_thought = say(rng, ["The sentence reads like a docstring; I'll search for \"{phrase}\".",
                                  "Searching for the words \"{phrase}\" should find the docstring that says this.",
                                  "Let me look for \"{phrase}\" in the code."], phrase=phrase)
    found = s.act([("search", {"pattern": phrase})], content=first_thought)[0]
    hits = [(p, int(n)) for p, n in re.findall(r"^([^\s:]+):(\d+):", found, re.M) if language_of(p)]
    if len(hits) != 1 or hits[0][0] != sym.path or not sym.start_line <= hits[0][1] <= sym.end_line:
        return _submit_design(s, qa, "", commit, stats, rejected="behaviour not found once by search")
    line = hits[0][1]
    start = max(1, min(line - 6, sym.start_line - 1))
    s.act([("read_file", {"path": sym.path, "start_line": start, "end_line": line + 3})], content=say(rng, [
        "One hit in code: {path}:{line}. The definition it documents should be just above.",
        "{path}:{line} has it. I'll read the lines around it to see which definition this is.",
    ], path=sym.path, line=line))
    return _submit_design(s, qa, say(rng, [
        "Line {start} defines {kind} {qualname}, and its docstring is that sentence.",
        "It is {qualname} at {path}:{start}.",
    ], start=sym.start_line, kind=sym.kind, qualname=sym.qualname, path=sym.path), commit, stats)


def _callers_episode(ws: Workspace, qa: D.DesignQA, commit: str, rng: random.Random, stats: UnitStats):
    s = _design_session(ws, qa)
    name = qa.symbol.rsplit(".", 1)[-1]
    listed = s.act([("find_references", {"symbol": name})], content=say(rng, [
        "I'll list where `{name}` is used and keep the calls that reach {qualname}.",
        "{qualname} is called as `{name}`; let me find every use of that name.",
        "First every reference to `{name}` in the repository.",
    ], name=name, qualname=qa.symbol))[0]
    sites = qa.facts["sites"]
    if any(site.where() not in listed for site in sites):
        return _submit_design(s, qa, "", commit, stats, rejected="caller not in the tool's listing")
    uses = len([line for line in listed.splitlines() if re.match(r"^\S+:\d+", line)])
    first = sites[0]
    s.act([("read_file", {"path": first.path, "start_line": max(1, first.line - 3), "end_line": first.line + 2})], content=say(rng, [
        "{uses} uses of `{name}`. {where} in {caller} is the first; I'll check that it is a call of {qualname}.",
        "The listing has {uses} places. Let me look at {where} ({caller}) to see what `{name}` is called on there.",
    ], uses=uses, name=name, where=first.where(), caller=first.caller.qualname, qualname=qa.symbol))
    others = uses - len(sites)
    thought = say(rng, [
        "{k} of the {uses} uses reach {qualname}; the others are tests or other definitions named `{name}`.",
        "Not every `{name}` is this one: {k} of them resolve to {qualname}.",
    ], k=len(sites), uses=uses, qualname=qa.symbol, name=name) if others > 0 else say(rng, [
        "All {uses} uses call {qualname}.", "Every listed use is a call of {qualname}."], uses=uses, qualname=qa.symbol)
    return _submit_design(s, qa, thought, commit, stats)


def _layers_episode(ws: Workspace, qa: D.DesignQA, commit: str, rng: random.Random, stats: UnitStats):
    s = _design_session(ws, qa)
    name = qa.symbol.rsplit(".", 1)[-1]
    listed = s.act([("find_references", {"symbol": name})], content=say(rng, [
        "I'll walk up from {qualname}: who calls it?", "Starting at the bottom: the uses of `{name}`.",
    ], qualname=qa.symbol, name=name))[0]
    for site in qa.facts["chain"]:
        if site.where() not in listed:
            return _submit_design(s, qa, "", commit, stats, rejected="caller not in the tool's listing")
        caller = site.caller
        listed = s.act([("find_references", {"symbol": caller.name})], content=say(rng, [
            "{caller} calls it at {where}. Who calls {caller}?",
            "One level up: {where} is in {caller}; now the uses of `{short}`.",
        ], caller=caller.qualname, where=site.where(), short=caller.name))[0]
    top = qa.facts["chain"][-1].caller
    return _submit_design(s, qa, say(rng, [
        "That is {n} levels above {qualname}, up to {top}.", "The chain goes up through {n} callers to {top}."],
        n=len(qa.facts["chain"]), qualname=qa.symbol, top=top.qualname), commit, stats)


def _extend_episode(ws: Workspace, qa: D.DesignQA, commit: str, rng: random.Random, stats: UnitStats):
    s = _design_session(ws, qa)
    name = qa.symbol.rsplit(".", 1)[-1]
    s.act([("find_definition", {"symbol": name})], content=say(rng, [
        "First, where {name} is defined.", "Let me find the definition of {name}."], name=name))
    found = s.act([("search", {"pattern": D.subclass_pattern(name), "regex": True})], content=say(rng, [
        "Now the classes that derive from {name}.", "Which classes name {name} as their base?"], name=name))[0]
    subs = qa.facts["subclasses"]
    if any(f"{c.path}:{c.start_line}:" not in found for c in subs[:4]):
        return _submit_design(s, qa, "", commit, stats, rejected="subclass not in the search results")
    first = subs[0]
    s.act([("read_file", {"path": first.path, "start_line": first.start_line, "end_line": min(first.end_line, first.start_line + 59)})],
          content=say(rng, ["{k} subclasses, e.g. {first} at {where}; I'll read it to see what it overrides.",
                            "{first} ({where}) is one of {k}. Reading it shows what a new kind has to provide."],
                          k=len(subs), first=first.name, where=f"{first.path}:{first.start_line}"))
    methods = qa.facts["methods"]
    return _submit_design(s, qa, say(rng, ["{first} overrides {methods}.", "So a subclass implements {methods}, as {first} does."],
                                     first=first.name, methods=", ".join(methods[:8])) if methods else
                          say(rng, ["{first} adds no methods of its own in those lines."], first=first.name), commit, stats)


_DESIGN_EPISODES = {"where": _where_episode, "callers": _callers_episode, "layers": _layers_episode, "extend": _extend_episode}


def _finish(session: OracleSession, answer: str, unit: str, commit: str, stats: UnitStats, meta: dict, verified: dict | None = None):
    if session.errors:
        stats.rejected["tool error"] += 1
        return None
    session.submit(answer, content=session.thought_before_submit or "Done.")
    # the runtime unit (trainer/experience/runtime.py) is not yet written to this rule: checked where it is
    if unit in HONEST_UNITS and ungrounded_actions({"messages": session.messages}):
        stats.rejected["ungrounded action"] += 1
        return None
    episode = session.episode(unit, commit, verified=verified or {"ok": True, "grounded_in": "index"}, meta=meta)
    stats.add(episode)
    return episode


# ---- unit 2: contextual implementation ----------------------------------------------------------
def implementation_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, rng: random.Random, stats: UnitStats,
                            limit: int = 8, test_runner=None, teacher: Teacher | None = None):
    """Remove a Python function body; gather context with the tools; write it back with an edit. With a
    ``teacher``, it writes the body first, kept when it verifies (``_code_verifier``), else the oracle's."""
    if not path.endswith(".py") or is_test_file(path):
        return []
    original = ws.read_text(path)
    lines = original.splitlines(keepends=True)
    candidates = [s for s in index.files[path].symbols if s.kind in ("function", "method") and s.body_start_line
                  and 2 <= s.end_line - s.body_start_line + 1 <= MAX_BODY_LINES and D.public(s)]
    rng.shuffle(candidates)
    out = []
    for sym in candidates[:limit]:
        assert sym.body_start_line is not None  # candidates have a body
        body = "".join(lines[sym.body_start_line - 1 : sym.end_line])
        first_line = lines[sym.body_start_line - 1]
        indent = first_line[: len(first_line) - len(first_line.lstrip(" \t"))]
        head = "".join(lines[sym.start_line - 1 : sym.body_start_line - 1])
        stub = f"{indent}raise NotImplementedError  # TODO: implement\n"
        stubbed = "".join(lines[: sym.body_start_line - 1]) + stub + "".join(lines[sym.end_line :])
        if original.count(head + body) != 1:
            stats.rejected["ambiguous body"] += 1
            continue
        # the same body as inline completion sees it: written on from the code above it
        completion = completion_episode("implementation", commit, "".join(lines[: sym.body_start_line - 1]), body.rstrip("\n"),
                                        meta={"symbol": sym.qualname, "path": path})
        stats.add(completion)
        out.append(completion)
        ws.write_text(path, stubbed)
        try:
            episode = _implementation_episode(ws, index, sym, path, head, stub, body, original, commit, rng, stats, test_runner,
                                              teacher)
            if episode is not None:
                out.append(episode)
        finally:
            ws.write_text(path, original)
            ws.forget_changes()
    return out


def _implementation_episode(ws, index, sym: Symbol, path: str, head: str, stub: str, body: str, original: str, commit: str,
                            rng: random.Random, stats: UnitStats, test_runner, teacher: Teacher | None = None):
    task = f"Implement {sym.qualname} in {path}; its body currently raises NotImplementedError."
    behaviour = D.first_sentence(sym.doc)
    if behaviour:
        task += f" It should: {behaviour}."
    if teacher is not None:
        tests = sorted({r.path for r in index.references(sym.name) if is_test_file(r.path) and r.path.endswith(".py")})[:3]
        verify = _code_verifier(ws, {path: original}, {path: ws.read_text(path)}, tests, {"matches_original": True})
        episode = taught(teacher, stats, ws, task, verify, unit="implementation", commit=commit, meta={"symbol": sym.qualname, "path": path})
        if episode is not None:
            return episode
    s = OracleSession(ws, task)
    found = s.act([("find_definition", {"symbol": sym.qualname})], content=say(rng, [
        "Where exactly is {qualname}? Let me find its definition.", "First I locate {qualname} in {path}.",
        "I'll start from the definition of {qualname}."], qualname=sym.qualname, path=path))[0]
    if f"{path}:{sym.start_line}" not in found:  # a common name: the listing stops before this file
        s.act([("search", {"pattern": f"def {sym.name}(", "path": path})], content=say(rng, [
            "Many definitions share that name; I'll search {path} itself.", "Too many {name}s. Searching in {path} only."],
            path=path, name=sym.name))
    refs = s.act([("find_references", {"symbol": sym.name})], content=say(rng, [
        "It is at {path}:{line}. How is `{name}` used elsewhere?",
        "{path}:{line} it is. The callers of `{name}` show what it must return.",
        "Found at line {line}. Next, the places that use `{name}`."], path=path, line=sym.start_line, name=sym.name))[0]
    uses = re.findall(r"^(\S+):(\d+)", refs, re.M)
    lo = max(1, sym.start_line - 12)
    stub_line = sym.body_start_line
    assert stub_line is not None  # an implementation task is made only for a symbol with a body
    s.act([("read_file", {"path": path, "start_line": lo, "end_line": stub_line + 12})], content=(say(rng, [
        "{n} uses, e.g. {first}. Now the code around the stub.",
        "`{name}` is used at {first} ({n} in all); I'll read {path} around line {line}."],
        n=len(uses), first=":".join(uses[0]), name=sym.name, path=path, line=sym.start_line) if uses else say(rng, [
        "Nothing else uses `{name}`. The code around the stub will have to say enough.",
        "No references to `{name}`; I'll read the surrounding code in {path}."], name=sym.name, path=path)))
    # a test that mentions the symbol, at the line the listing showed
    test_hits = [(p, int(n)) for p, n in uses if is_test_file(p) and p.endswith(".py")]
    if test_hits:
        tpath, tline = test_hits[0]
        s.act([("read_file", {"path": tpath, "start_line": max(1, tline - 10), "end_line": tline + 10})], content=say(rng, [
            "{tpath}:{tline} uses it in a test; that pins the expected behaviour.",
            "A test mentions `{name}` at {tpath}:{tline}. Let me read it."], tpath=tpath, tline=tline, name=sym.name))
    first_line = next((line.strip() for line in body.splitlines() if line.strip()), "")
    s.act([("edit", {"path": path, "old": head + stub, "new": head + body})], content=say(rng, [
        "Line {stub_line} is the stub. I'll replace it with a body that starts `{first}`.",
        "Now I can write {qualname}: the body begins with `{first}`.",
        "Replacing the NotImplementedError at line {stub_line} with the implementation."],
        stub_line=stub_line, first=first_line[:80], qualname=sym.qualname))
    verified = {"ok": ws.read_text(path) == original, "matches_original": ws.read_text(path) == original}
    tests = sorted({p for p, _ in test_hits})
    if tests and test_runner is not None:
        s.thought_before_run = say(rng, ["Now the tests that use it: {tests}.", "Let me run {tests}."], tests=", ".join(tests))
        outcome = test_runner(s, tests)
        verified["tests"] = outcome
        verified["ok"] = verified["ok"] and outcome in ("passed", "not run")
    if not verified["ok"]:
        stats.rejected["not verified"] += 1
        return None
    s.thought_before_submit = say(rng, ["{qualname} is written.", "That completes {qualname}."], qualname=sym.qualname)
    return _finish(s, f"Implemented {sym.qualname} in {path} ({sym.signature}); the body starts with `{first_line[:80]}`.",
                   "implementation", commit, stats, {"symbol": sym.qualname, "path": path}, verified)


def _code_verifier(ws: Workspace, oracle: dict[str, str | None], start: dict[str, str | None], tests: list[str], same: dict,
                   fixed: dict[str, str] | None = None):
    """A teacher's code change verifies when it changed the files the oracle changes (and no other code
    file), everything parses, and it is the oracle's code (``same``: the record then) or the tests decide
    for it (``teacher.tests_decide``: the deciding tests pass, nothing the oracle passes fails)."""

    def verify(result):
        changes = changed_files(ws)
        missing = [p for p in oracle if p not in changes]
        if missing:
            return "did not change the task's files"
        if any(p not in oracle and p not in (fixed or {}) and not is_test_file(p) for p in changes):
            return "changed other code files"
        if not all(parses(text, p) for p, text in changes.items()):
            return "its code does not parse"
        if all(same_code(changes[p], text, p) for p, text in oracle.items()):
            return {"ok": True, **same}
        if not tests:
            return "differs from the oracle's code and no test decides"
        return tests_decide(ws, tests, oracle, start, fixed)

    return verify


# ---- unit 3: evolutionary replay ----------------------------------------------------------------
def edit_script(before: str, after: str, opcodes: list | None = None) -> list[tuple[str, str]] | None:
    """(old, new) replacements that turn ``before`` into ``after``, each ``old`` unique in the text it is
    applied to. Hunks are applied bottom-up (earlier line numbers stay valid) and widened with unchanged
    context lines until unique. None when some hunk cannot be made unique."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    opcodes = opcodes if opcodes is not None else line_opcodes(a, b)
    ops = [op for op in opcodes if op[0] != "equal"]
    cur = list(a)
    edits = []
    for k in range(len(ops) - 1, -1, -1):
        _, i1, i2, j1, j2 = ops[k]
        floor = ops[k - 1][2] if k > 0 else 0  # unchanged lines between the previous hunk and this one
        ceiling = ops[k + 1][1] if k + 1 < len(ops) else len(a)
        text = "".join(cur)
        lo, hi = i1, i2
        while True:
            old = "".join(cur[lo:hi])
            if old and text.count(old) == 1:
                break
            if lo <= floor and hi >= ceiling:
                return None
            lo, hi = max(floor, lo - 1), min(ceiling, hi + 1)
        replacement = cur[lo:i1] + b[j1:j2] + cur[i2:hi]
        edits.append((old, "".join(replacement)))
        cur[lo:hi] = replacement
    return edits if "".join(cur) == after else None


def replay_episode(ws: Workspace, change, stats: UnitStats, *, index: RepoIndex | None = None, test_runner=None,
                   rng: random.Random | None = None, teacher: Teacher | None = None) -> dict | None:
    """A commit as a task: its message is the request, the parent is the start, the child is the goal.
    The episode finds each file from the words of the message (or by walking the folders), reads the
    lines it changes, and edits them. With a ``teacher``, it makes the change first, kept when it
    verifies (the commit's code files reached, and the commit's code or its tests passing); the tree is
    left at the parent then."""
    rng = rng or random.Random(change.commit)
    task = change.message.strip()
    if teacher is not None:
        code = [fc for fc in change.files if not is_test_file(fc.path)] or list(change.files)
        oracle = {fc.new_path: fc.after for fc in code if fc.new_path}
        oracle.update({fc.old_path: None for fc in code if fc.kind in ("D", "R")})
        start = {fc.old_path: fc.before for fc in code if fc.old_path}
        start.update({fc.new_path: None for fc in code if fc.kind in ("A", "R")})
        fixed = {fc.new_path: fc.after for fc in change.files if fc not in code and fc.new_path and fc.after is not None
                 and fc.new_path.endswith(".py")}
        verify = _code_verifier(ws, oracle, start, sorted(p for p in fixed if PurePosixPath(p).name != "conftest.py"),
                                {"reaches_child": True, "child": change.commit}, fixed)
        episode = taught(teacher, stats, ws, task, verify, unit="evolution", commit=change.parent,
                         meta={"commit": change.commit, "issue_refs": change.issue_refs, "files": [fc.path for fc in change.files]})
        if episode is not None:
            return episode
    s = OracleSession(ws, task)
    touched: list[str] = []
    for fc in change.files:
        if fc.kind == "A":
            s.act([("create_file", {"path": fc.new_path, "content": fc.after})], content=say(rng, [
                "{path} does not exist yet; I'll create it.", "This needs a new file, {path}."], path=fc.new_path))
            touched.append(fc.new_path)
            continue
        if not _locate(s, ws, fc.old_path, task, rng):
            stats.rejected["file not reachable"] += 1
            return None
        if fc.kind == "D":
            s.act([("delete_file", {"path": fc.old_path})], content=say(rng, [
                "{path} is no longer needed; deleting it.", "I'll remove {path}."], path=fc.old_path))
            touched.append(fc.old_path)
            continue
        if fc.kind == "R":
            s.act([("create_file", {"path": fc.new_path, "content": fc.after}), ("delete_file", {"path": fc.old_path})],
                  content=say(rng, ["{old} moves to {new}.", "Renaming {old} to {new}."], old=fc.old_path, new=fc.new_path))
            touched.append(fc.new_path)
            continue
        script = edit_script(fc.before, fc.after, fc.opcodes)
        if script is None:
            stats.rejected["no unique edit script"] += 1
            return None
        changed: list[str] = []
        if not _edit_seen(s, ws, fc.old_path, fc.before, script, rng, stats, changed):
            return None
        touched.append(f"{fc.old_path} ({', '.join(changed)})" if changed else fc.old_path)
    reached = all(_content(ws, fc.new_path) == fc.after for fc in change.files if fc.new_path) and all(
        not (ws.root / fc.old_path).exists() for fc in change.files if fc.kind in ("D", "R"))
    verified = {"ok": reached, "reaches_child": reached, "child": change.commit}
    tests = sorted({fc.new_path for fc in change.files if fc.new_path and is_test_file(fc.new_path) and fc.new_path.endswith(".py")})
    if reached and tests and test_runner is not None:
        verified["tests"] = test_runner(s, tests)
    if not reached:
        stats.rejected["does not reach the child commit"] += 1
        return None
    s.thought_before_submit = say(rng, ["That covers {files}.", "Done: the change touches {files}."], files=", ".join(touched))
    return _finish(s, f"{change.subject or 'Applied the change'}: changed {', '.join(touched)}.", "evolution", change.parent, stats,
                   {"commit": change.commit, "issue_refs": change.issue_refs, "files": [fc.path for fc in change.files]}, verified)


_TERM = re.compile(r"`([^`]{3,60})`|([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+|[A-Za-z_]*_[A-Za-z_]\w*|[a-z]+[A-Z]\w*|[A-Z][a-z]+[A-Z]\w*)|([A-Za-z]{5,})")
_STOP = {"about", "after", "again", "allow", "always", "before", "being", "change", "changes", "could", "should", "would",
         "their", "there", "these", "those", "which", "while", "where", "other", "using", "instead", "because", "still",
         "first", "fixes", "fixed", "merge", "branch", "update", "updated", "remove", "removed", "added", "adding",
         "support", "version", "release", "pull", "request"}


def _task_terms(task: str) -> list[str]:
    """Words of the task worth searching for: quoted code, dotted or snake/camel-case names, then long
    words; most specific first, each once."""
    code, words = [], []
    for quoted, ident, word in _TERM.findall(task):
        if quoted or ident:
            term = (quoted or ident).strip()
            code.append(term.rsplit(".", 1)[-1] if "." in term and not re.search(r"\.\w{1,4}$", term) and len(term) > 40 else term)
        elif word.lower() not in _STOP:
            words.append(word)
    seen, out = set(), []
    for term in code + sorted(words, key=lambda w: -len(w)):
        if term not in seen:
            seen.add(term)
            out.append(term)
    return out[:8]


def _locate(s: OracleSession, ws: Workspace, path: str, task: str, rng: random.Random) -> bool:
    """Bring ``path`` into view the way an agent could: it may already have been seen; else search a word
    of the task that finds it (now and then after a word that does not); else a file name the task
    mentions; else walk the folders down to it. True once the path is in an observation."""
    if path in s.seen:
        return True
    try:
        text = ws.read_text(path)
    except SwespotError:
        text = ""
    terms = _task_terms(task)
    right = wrong = None
    for term in terms:
        spelled = term if term in text else term.lower() if term.lower() in text else None
        if spelled and right is None:
            result = ws.search(spelled)
            if re.search(rf"^{re.escape(path)}:\d+:", result, re.M):
                right = (spelled, result)
        elif not spelled and wrong is None:
            wrong = term
    if right is not None:
        term, _ = right
        if wrong is not None and rng.random() < WRONG_LOOK_RATE:
            result = s.act([("search", {"pattern": wrong})], content=say(rng, [
                "The task mentions \"{term}\"; I'll search for it.", "Let me start with \"{term}\"."], term=wrong))[0]
            files = sorted({m for m in re.findall(r"^([^\s:]+):\d+:", result, re.M)})
            lead = say(rng, ["\"{wrong}\" only turns up in {where}, which is not it. Trying \"{term}\".",
                             "Not helpful: \"{wrong}\" is in {where}. Now \"{term}\"."], wrong=wrong, term=term,
                       where=", ".join(files[:3])) if files else say(rng, [
                "No match for \"{wrong}\". Trying \"{term}\" instead.", "\"{wrong}\" is nowhere in the code; \"{term}\" then."],
                wrong=wrong, term=term)
        else:
            lead = say(rng, ["The task mentions \"{term}\"; I'll search for it.", "Let me find where \"{term}\" appears.",
                             "A search for \"{term}\" should show the code in question."], term=term)
        s.act([("search", {"pattern": term})], content=lead)
        return path in s.seen
    stem = PurePosixPath(path).stem
    if len(stem) >= 4 and re.search(rf"\b{re.escape(stem)}\b", task):
        s.act([("find_files", {"pattern": PurePosixPath(path).name})], content=say(rng, [
            "The task names {stem}; which file is that?", "Let me find the file called {name}."], stem=stem, name=PurePosixPath(path).name))
        if path in s.seen:
            return True
    parts = PurePosixPath(path).parts
    s.act([("list_dir", {"path": "."})], content=say(rng, [
        "Nothing in the task points at a file directly; I'll look at the layout.", "Let me see how the repository is organised."]))
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        s.act([("list_dir", {"path": folder})], content=say(rng, [
            "{folder}/ is the likely place; what is in it?", "Into {folder}/."], folder=folder))
    return path in s.seen


def _edit_seen(s: OracleSession, ws: Workspace, path: str, before: str, script: list[tuple[str, str]], rng: random.Random,
               stats: UnitStats, changed: list[str] | None = None) -> bool:
    """Read the lines each replacement changes (starting where an observation showed a line of the file,
    or at the enclosing definition an outline shows), then make the replacements. False when the edit
    could not be made; ``changed`` receives the qualified names of the definitions it changes."""
    spans = []
    for old, _new in script:
        at = before.find(old)
        if at < 0:
            stats.rejected["edit text not in the file"] += 1
            return False
        first = before.count("\n", 0, at) + 1
        spans.append((first, first + old.count("\n")))
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    starts = sorted(n for p, n in s.anchors if p == path and n <= lo)
    if not starts or lo - starts[-1] > 40:
        s.act([("repo_map", {"path": path, "budget": 2000})], content=say(rng, [
            "{path} it is. Its outline shows where each definition starts.", "An outline of {path} first."], path=path))
        starts = sorted(n for p, n in s.anchors if p == path and n <= lo)
    start = starts[-1] if starts and lo - starts[-1] <= 360 else 1
    while start <= hi:
        end = min(hi + 3, start + 399)
        shown = re.search(rf"^{re.escape(path)}:{start}: (.+)$|^\s*{start}: (.+)$", s.seen, re.M)
        code = next((g for g in shown.groups() if g), "").strip()[:70] if shown else ""
        s.act([("read_file", {"path": path, "start_line": start, "end_line": end})], content=say(rng, [
            "{path}:{start} has `{code}`; reading from there.", "Line {start} of {path} is `{code}`. Let me read on from it.",
            "`{code}` at {path}:{start} looks like the place; I'll read lines {start}-{end}."], path=path, start=start, end=end, code=code)
            if code else say(rng, ["Reading {path} from line {start}.", "Let me read {path} lines {start}-{end}."], path=path, start=start, end=end))
        start = end + 1 if end < hi else hi + 1
    where = ws.index().files.get(path)
    sym = where.enclosing(lo) if where else None
    names = list(dict.fromkeys(x.qualname for x in (where.enclosing(a) if where else None for a, _ in spans) if x))
    s.act([("edit", {"path": path, "old": old, "new": new}) for old, new in script], content=say(rng, [
        "The change goes at line {line}{inside}.", "Now the edit at {path}:{line}{inside}.", "Line {line}{inside} is what has to change."],
        line=lo, path=path, inside=f", in {sym.qualname}" if sym else ""))
    if changed is not None:
        changed.extend(names)
    return True


MAX_HUNK_LINES = 12


def hunk_completions(change, stats: UnitStats, allowed=None) -> list[dict]:
    """The lines each hunk of a replayed commit added, as inline completion would have to write them:
    from the child's text above the hunk (the code the developer had in front of them)."""
    out = []
    for fc in change.files:
        if fc.after is None or fc.kind == "D" or (allowed is not None and fc.path not in allowed):
            continue
        lines = fc.after.splitlines(keepends=True)
        for j1, j2 in fc.added:
            added = "".join(lines[j1: min(j2, j1 + MAX_HUNK_LINES)]).rstrip("\n")
            if j1 == 0 or len(added.strip()) < 8:
                continue
            episode = completion_episode("evolution", change.commit, "".join(lines[:j1]), added,
                                         meta={"commit": change.commit, "path": fc.path, "line": j1 + 1})
            stats.add(episode)
            out.append(episode)
    return out


def bug_episode(ws: Workspace, change, stats: UnitStats, commit: str, *, test_runner=None, rng: random.Random | None = None,
                teacher: Teacher | None = None) -> dict | None:
    """The seed paper's second form: put a historical fix's bug back into today's code (where the fix
    still applies in reverse) and have the episode find and fix it."""
    if not _FIX.search(change.subject):
        return None
    targets = [fc for fc in change.files if fc.kind == "M" and not is_test_file(fc.path)]
    if len(targets) != 1:
        return None
    fc = targets[0]
    rng = rng or random.Random(change.commit)
    try:
        current = ws.read_text(fc.path)
    except SwespotError:  # the file is gone or unreadable today: no episode
        return None
    script = edit_script(fc.after, fc.before)  # fixed → buggy
    if not script or len(script) > 3:
        return None
    buggy = current
    for fixed_text, bug_text in script:
        if buggy.count(fixed_text) != 1:
            return None
        buggy = buggy.replace(fixed_text, bug_text, 1)
    fix = edit_script(buggy, current)
    if fix is None:
        return None
    ws.write_text(fc.path, buggy)
    try:
        task = f"Bug report: {change.subject}. Find the cause and fix it."
        if teacher is not None:
            tests = sorted({t.path for t in change.files if is_test_file(t.path) and t.path.endswith(".py") and (ws.root / t.path).exists()})
            verify = _code_verifier(ws, {fc.path: current}, {fc.path: buggy}, tests, {"restores_fix": True, "fix_commit": change.commit})
            episode = taught(teacher, stats, ws, task, verify, unit="evolution", commit=commit,
                             meta={"form": "reintroduced bug", "fix_commit": change.commit, "path": fc.path})
            if episode is not None:
                return episode
        s = OracleSession(ws, task)
        if not _locate(s, ws, fc.path, task, rng):
            stats.rejected["file not reachable"] += 1
            return None
        changed: list[str] = []
        if not _edit_seen(s, ws, fc.path, buggy, fix, rng, stats, changed):
            return None
        fixed = ws.read_text(fc.path) == current
        verified = {"ok": fixed, "restores_fix": fixed, "fix_commit": change.commit}
        tests = sorted({t.path for t in change.files if is_test_file(t.path) and t.path.endswith(".py") and (ws.root / t.path).exists()})
        tests = [t for t in tests if t in s.seen]  # only tests the agent has seen named
        if fixed and tests and test_runner is not None:
            verified["tests"] = test_runner(s, tests)
            verified["ok"] = verified["tests"] in ("passed", "not run")
        if not verified["ok"]:
            stats.rejected["bug not fixed"] += 1
            return None
        s.thought_before_submit = say(rng, ["The cause was in {path}; fixed.", "{path} is fixed."], path=fc.path)
        return _finish(s, f"Fixed: {change.subject} (in {fc.path}{': ' + ', '.join(changed) if changed else ''})", "evolution", commit, stats,
                       {"form": "reintroduced bug", "fix_commit": change.commit, "path": fc.path}, verified)
    finally:
        ws.write_text(fc.path, current)
        ws.forget_changes()


def _undo_files(tree, change) -> None:
    """Put the parent's versions of a change's files back (after a replay or reproduction)."""
    for fc in change.files:
        if fc.new_path:
            (tree / fc.new_path).unlink(missing_ok=True)
        if fc.old_path and fc.before is not None:
            (tree / fc.old_path).parent.mkdir(parents=True, exist_ok=True)
            (tree / fc.old_path).write_text(fc.before, encoding="utf-8")


def _content(ws: Workspace, rel: str) -> str | None:
    path = ws.root / rel
    return path.read_text(encoding="utf-8") if path.exists() else None


def _first_changed_line(opcodes: list) -> int:
    return next((i1 + 1 for tag, i1, _, _, _ in opcodes if tag != "equal"), 1)


# ---- unit 4: semantic-runtime alignment -----------------------------------------------------------
def pytest_runner(ws: Workspace, timeout: float = 120):
    """A test runner for the oracle: runs the given test files with the real ``run`` tool (sandboxed)."""

    def run(session: OracleSession, tests: list[str]) -> str:
        output = session.act([("run", {"command": "python -m pytest -q -x -p no:cacheprovider " + " ".join(tests),
                                        "timeout": int(timeout)})],
                             content=session.thought_before_run or f"Let me run {', '.join(tests)}.")[0]
        if "[exit code 0" in output:
            return "passed"
        if "[exit code 5" in output:  # pytest: no tests collected
            return "not run"
        return "failed"

    return run
