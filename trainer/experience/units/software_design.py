"""Unit 1, software design: explore-and-answer episodes about one file (what the module defines, where
a behaviour lives, who calls a symbol, the chain of callers, how to extend a class), and recall episodes:
the same questions answered at once, without tools, as the evaluation asks them."""

from __future__ import annotations

import random
import re
import weakref

from agent.episode import new_episode
from agent.index import RepoIndex, Symbol, is_test_file, language_of
from agent.resolve import Resolver
from agent.tools import Workspace
from trainer.evaluation import DESIGN_SYSTEM, names_any
from trainer.experience import design as D
from trainer.experience.heldout import is_heldout_fact
from trainer.experience.oracle import OracleSession, say
from trainer.experience.teacher import Teacher, taught
from trainer.experience.units.base import WRONG_LOOK_RATE, UnitStats, finish_episode

_RESOLVERS: weakref.WeakKeyDictionary[RepoIndex, Resolver] = weakref.WeakKeyDictionary()
_HELD: weakref.WeakKeyDictionary[RepoIndex, tuple[int, list[str]]] = weakref.WeakKeyDictionary()  # index -> its held-out names
RECALL_VERSION = 3  # in the recall shards' key (build.py), with GENERATOR_VERSION, DESIGN_SYSTEM; 2: held-out members, 3: by name


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


def recall_episodes(ws: Workspace, index: RepoIndex, path: str, commit: str, stats: UnitStats, resolver: Resolver | None = None,
                    limit: int = 0, rng: random.Random | None = None):
    """Recall episodes about one file: the questions the design unit grounds here (the module question
    and ``design.design_questions`` of each symbol) and the evaluation's design-family questions (which
    file defines a name, a function that calls it: ``design.defined_in``, ``design.calls_it``), each
    answered at once in the layout the evaluation asks in: its system prompt (``DESIGN_SYSTEM``), the
    question, the grounded answer as the whole reply, no tools. The agentic episodes teach the search;
    these teach the answer itself, so that the weights hold it. Nothing is asked about a held-out symbol
    or a member of one (``_held_out``), and no answer names one (a caller, a link of a call chain, a
    subclass, a base class or type in a signature); the module summary alone names every top-level
    definition, held-out ones included, as the agentic module episode does. With a ``limit``, a sample of
    that many (drawn with ``rng``), so that a target spreads over more files."""
    if is_test_file(path):
        return []
    resolver = resolver or resolver_for(ws, index)
    questions = []
    module = D.module_question(index, path, ws.read_text(path))
    if module is not None:
        questions.append(module)
    for sym in index.files[path].symbols:
        if not D.public(sym) or sym.name == "__init__" or _held_out(sym):
            continue
        asked = D.design_questions(index, sym, resolver)
        questions += asked
        if D.defined_once(index, sym):  # the evaluation's design family asks only names defined once
            questions.append(D.defined_in(sym))
            callers = next((qa for qa in asked if qa.kind == "callers"), None)
            if callers is not None:
                questions.append(D.calls_it(sym, D.caller_of(callers.facts["sites"][0])))
    kept = [qa for qa in questions if qa.kind == "module"
            or not (any(_held_out(s) for s in _cited(qa)) or names_any(qa.answer, _held_names(index)))]
    stats.rejected["recall answer names a held-out symbol"] += len(questions) - len(kept)
    if 0 < limit < len(kept):  # a seeded sample, in file order
        kept = [kept[i] for i in sorted((rng or random.Random(path)).sample(range(len(kept)), limit))]
    out = []
    for qa in kept:
        messages = [{"role": "system", "content": DESIGN_SYSTEM}, {"role": "user", "content": qa.question},
                    {"role": "assistant", "content": qa.answer}]
        grounded = "index" if qa.kind in ("module", "defined") else _grounding(qa)
        episode = new_episode("design", commit, messages, [], verified={"ok": True, "grounded_in": grounded},
                              meta={**_design_meta(qa), "recall": True})
        stats.add(episode)
        out.append(episode)
    return out


def _held_out(sym: Symbol) -> bool:
    """A held-out symbol or a member of one: a method of a held-out class names the class and its file."""
    parts = sym.qualname.split(".")
    return any(is_heldout_fact(sym.path, ".".join(parts[:k])) for k in range(1, len(parts) + 1))


def _held_names(index: RepoIndex) -> list[str]:
    """The qualified names of the index's held-out symbols (cached per index and its file count)."""
    cached = _HELD.get(index)
    if cached is None or cached[0] != len(index.files):
        cached = _HELD[index] = (len(index.files), sorted({s.qualname for s in index.symbols() if is_heldout_fact(s.path, s.qualname)}))
    return cached[1]


def _cited(qa: D.DesignQA) -> list[Symbol]:
    """The definitions an answer names besides the one asked about: callers, the links of a call chain,
    subclasses, the caller of the design family's caller question."""
    sites = qa.facts.get("sites") or qa.facts.get("chain") or []
    caller = qa.facts.get("caller")
    return [D.caller_of(site) for site in sites] + list(qa.facts.get("subclasses", [])[:4]) + ([caller] if caller else [])


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
    return finish_episode(s, qa.answer, "design", commit, stats, _design_meta(qa), {"ok": True, "grounded_in": _grounding(qa)})


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
