"""Design questions about one symbol or module, with answers grounded in the resolver (Jedi for Python).

These are the exact words the design unit's episodes use (``units.design_episodes``), and the evaluation
asks the same questions about held-out symbols, so a question and its answer live in one place:

    for qa in design_questions(index, sym, resolver):
        qa.kind      # "where", "callers", "layers" or "extend" ("module": module_question; "defined", "caller":
                     # the evaluation's design family, defined_in and calls_it)
        qa.question  # the user turn
        qa.answer    # the submitted answer, facts stated
        qa.accept    # strings any right answer names (paths, qualified names)

A question is asked only when it has one grounded answer: no question about a name the resolver cannot
pin (a conditional redefinition, a call that may or may not reach it), and only facts that the
episode's tools also show (the first ``MAX_SEARCH_RESULTS`` references of a name).
"""

from __future__ import annotations

import ast
import re
import weakref
from collections import Counter
from dataclasses import dataclass, field

from agent.index import RepoIndex, Symbol, is_test_file
from agent.resolve import CallSite, Resolver
from agent.tools import MAX_SEARCH_RESULTS
from trainer.experience.heldout import stub_module

MAX_CALLERS = 8
CHAIN_DEPTH = 4


@dataclass
class DesignQA:
    kind: str
    question: str
    answer: str
    accept: list[str]
    symbol: str = ""  # qualified name ("" for a module question)
    path: str = ""
    facts: dict = field(default_factory=dict)  # what the episode needs to explore (search phrase, call sites, chain)


def first_sentence(doc: str | None) -> str | None:
    if not doc:
        return None
    text = " ".join(doc.strip().split())
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) >= 8 else None


def public(sym: Symbol) -> bool:
    return not sym.name.startswith("_") or sym.name == "__init__"


def defined_once(index: RepoIndex, sym: Symbol) -> bool:
    """Whether ``sym`` is the only definition of its name in the repository. A type stub (``.pyi``) declares
    names that a module defines: beside its own module (``x.pyi`` for ``x.py``, as typed libraries ship one per
    module) or for a package that re-exports them (attrs' ``attr/__init__.pyi`` declares ``attrib``, defined in
    ``attr/_make.py``). Such a declaration is that definition again, not a second one: when any module defines
    the name, only the modules' definitions count; a name only stubs declare (an extension module's) counts
    theirs (once per stub: overloads declare a name several times). A module that defines it twice (a
    conditional redefinition) defines it twice."""
    defs = index.definitions(sym.name)
    counted = [(d.path, d.qualname) for d in defs if stub_module(d.path) is None] or sorted({(d.path, d.qualname) for d in defs})
    return counted == [(sym.path, sym.qualname)]


# ---- module summaries ---------------------------------------------------------------------------
def top_level_definitions(index: RepoIndex, path: str) -> list[Symbol]:
    """Every public top-level definition of a file, in file order."""
    fi = index.files.get(path)
    if fi is None:
        return []
    return [s for s in fi.symbols if s.parent is None and public(s) and s.name != "__init__"
            and not any(o is not s and o.start_line <= s.start_line and o.end_line >= s.end_line for o in fi.symbols)]


def module_doc(text: str, path: str) -> str | None:
    if not path.endswith(".py"):
        return None
    try:
        return first_sentence(ast.get_docstring(ast.parse(text)))
    except (SyntaxError, ValueError):  # an unparsable module simply has no docstring
        return None


def _short_kind(sym: Symbol) -> str:
    return "class" if sym.kind == "class" else "def"


def module_question(index: RepoIndex, path: str, text: str) -> DesignQA | None:
    """What a module is for and everything public it defines (all of it, compactly, in file order)."""
    top = top_level_definitions(index, path)
    if not top or is_test_file(path):
        return None
    doc = module_doc(text, path)
    defs = ", ".join(f"{_short_kind(s)} {s.name} ({s.start_line})" for s in top)
    answer = (f"{path}: {doc}. " if doc else f"{path} ") + f"defines {len(top)} public name{'s' * (len(top) != 1)}: {defs}."
    return DesignQA("module", f"What is {path} for, and what does it define?", answer, [s.name for s in top], "", path,
                    {"definitions": [(s.name, s.kind, s.start_line) for s in top], "doc": doc})


# ---- symbol questions ---------------------------------------------------------------------------
# per resolver (one per build): (the index, its file count, how often each first docstring sentence occurs)
_DOC_COUNTS: weakref.WeakKeyDictionary[Resolver, tuple[RepoIndex, int, Counter]] = weakref.WeakKeyDictionary()


def _doc_counts(index: RepoIndex, resolver: Resolver) -> Counter:
    cached = _DOC_COUNTS.get(resolver)
    if cached is None or cached[0] is not index or cached[1] != len(index.files):
        counts = Counter(first_sentence(s.doc) for s in index.symbols() if s.doc)
        cached = (index, len(index.files), counts)
        _DOC_COUNTS[resolver] = cached
    return cached[2]


def caller_of(site: CallSite) -> Symbol:
    """The function a confirmed call site sits in (confirmed_callers keeps only sites inside one)."""
    assert site.caller is not None
    return site.caller


def search_phrase(sym: Symbol, behaviour: str) -> str | None:
    """Words of the docstring's first line, as they stand in the file and in the question."""
    first = " ".join((sym.doc or "").strip().splitlines()[0].split()) if sym.doc and sym.doc.strip() else ""
    words = first.split()
    while words and (len(" ".join(words)) > 60 or not behaviour.startswith(" ".join(words).rstrip("."))):
        words.pop()
    phrase = " ".join(words).rstrip(".")
    return phrase if len(phrase) >= 12 else None


def _visible(index: RepoIndex, name: str) -> set[tuple[str, int]]:
    """The references the find_references tool lists for ``name`` (its first results)."""
    return {(r.path, r.line) for r in index.references(name)[:MAX_SEARCH_RESULTS]}


def confirmed_callers(index: RepoIndex, sym: Symbol, resolver: Resolver) -> list[CallSite] | None:
    """One call site per calling definition (outside tests), in path and line order; None when the
    resolver cannot pin the calls or a caller would not be visible in the tool's listing."""
    found = resolver.callers(sym)
    if found is None:
        return None
    sites = sorted((s for s in found.sites if not is_test_file(s.path) and s.caller is not None), key=lambda s: (s.path, s.line))
    visible = _visible(index, sym.name)
    first: dict[tuple, CallSite] = {}
    for site in sites:
        if (site.path, site.line) not in visible:
            return None
        first.setdefault((caller_of(site).path, caller_of(site).start_line), site)
    return list(first.values())


def _chain(index: RepoIndex, sym: Symbol, resolver: Resolver) -> list[CallSite]:
    """Call sites walked bottom-up from ``sym``: who calls it, who calls that, ... (first caller each)."""
    chain: list[CallSite] = []
    seen = {(sym.path, sym.start_line)}
    current = sym
    while len(chain) < CHAIN_DEPTH - 1:
        sites = [s for s in confirmed_callers(index, current, resolver) or [] if (caller_of(s).path, caller_of(s).start_line) not in seen]
        if not sites:
            break
        chain.append(sites[0])
        current = caller_of(sites[0])
        seen.add((current.path, current.start_line))
    return chain


def subclass_pattern(name: str) -> str:
    """The regular expression the episode searches with: class headers naming ``name`` as first base."""
    return rf"class \w+\(\s*([\w.]+\.)?{re.escape(name)}\b"


def _subclasses(index: RepoIndex, base: Symbol, resolver: Resolver) -> list[Symbol]:
    """Classes whose header line names ``base`` as first base, confirmed by the resolver (Python) or by
    a name defined once (other languages)."""
    pattern = re.compile(subclass_pattern(base.name))
    out = []
    for s in index.symbols():
        if s.kind != "class" or s == base or is_test_file(s.path):
            continue
        lines = (resolver._text(s.path) or "").splitlines()
        m = pattern.search(lines[s.start_line - 1]) if s.start_line <= len(lines) else None
        if not m:
            continue
        if s.path.endswith(".py"):
            column = m.end() - len(base.name)
            if resolver.resolve(s.path, s.start_line, column) != base:
                continue
        elif len(index.definitions(base.name)) != 1:
            continue
        out.append(s)
    return sorted(out, key=lambda s: (s.path, s.start_line))


# ---- the evaluation's design family: which file defines a name, which function calls one --------------
def defined_in(sym: Symbol) -> DesignQA:
    """Which file defines ``sym``: the words of the evaluation's design family (asked there about the
    symbols after the cutoff) and of the design unit's recall episodes (about the ones before it)."""
    kind = "class" if sym.kind == "class" else "function"
    return DesignQA("defined", f"In which file of this repository is the {kind} `{sym.qualname}` defined?",
                    f"`{sym.qualname}` is defined in `{sym.path}`.", [sym.path], sym.qualname, sym.path)


def calls_it(callee: Symbol, caller: Symbol) -> DesignQA:
    """A function that calls ``callee``: ``caller``, in the words of the evaluation's design family."""
    return DesignQA("caller", f"Name a function of this repository that calls `{callee.qualname}`.",
                    f"`{caller.qualname}` in `{caller.path}` calls `{callee.qualname}`.", [caller.qualname], callee.qualname, callee.path,
                    {"caller": caller})


def design_questions(index: RepoIndex, sym: Symbol, resolver: Resolver) -> list[DesignQA]:
    """The design questions about one symbol that have a single grounded answer, in the episodes' words."""
    if not public(sym) or sym.name == "__init__" or is_test_file(sym.path) or not resolver.unique_definition(sym):
        return []
    out = []
    behaviour = first_sentence(sym.doc)
    if behaviour and _doc_counts(index, resolver)[behaviour] == 1:
        phrase = search_phrase(sym, behaviour)
        if phrase:
            out.append(DesignQA("where", f"Where is the code that does this: \"{behaviour}\"?",
                                f"In {sym.path}:{sym.start_line}, {sym.kind} {sym.qualname}"
                                + (f": {sym.signature}" if sym.signature != f"class {sym.name}" else ""),
                                [sym.path, sym.qualname], sym.qualname, sym.path, {"phrase": phrase}))
    callers = confirmed_callers(index, sym, resolver)
    if callers:
        shown = callers[:MAX_CALLERS]
        names = ", ".join(f"{caller_of(c).qualname} ({c.where()})" for c in shown)
        more = f" and {len(callers) - len(shown)} more" if len(callers) > len(shown) else ""
        out.append(DesignQA("callers", f"Who calls {sym.qualname} ({sym.path})?", f"{sym.qualname} is called by {names}{more}.",
                            [caller_of(c).qualname for c in callers], sym.qualname, sym.path, {"sites": shown}))
        chain = _chain(index, sym, resolver)
        if len(chain) >= 2:
            flow = " → ".join(f"{caller_of(c).qualname} ({c.where()})" for c in reversed(chain))
            out.append(DesignQA("layers", f"Which chain of calls leads to {sym.qualname} ({sym.path})?",
                                f"The call flows {flow} → {sym.qualname} ({sym.path}).",
                                [caller_of(c).qualname for c in chain], sym.qualname, sym.path, {"chain": chain}))
    if sym.kind == "class":
        subs = _subclasses(index, sym, resolver)
        if len(subs) >= 2:
            first = subs[0]
            methods = [m.name for m in index.files[first.path].symbols
                       if m.parent == first.name and first.start_line < m.start_line <= min(first.end_line, first.start_line + 59)]
            examples = ", ".join(f"{c.name} ({c.path}:{c.start_line})" for c in subs[:4])
            answer = (f"Subclass {sym.name} ({sym.path}:{sym.start_line}) as {examples} do"
                      + (f"; {first.name} implements {', '.join(methods[:8])}." if methods else "."))
            out.append(DesignQA("extend", f"How do I add a new kind of {sym.name}?", answer, [c.name for c in subs],
                                sym.qualname, sym.path, {"subclasses": subs, "methods": methods}))
    return out
