"""Repository context for inline completion: the definitions of the names used near the cursor.

A completion model sees the file around the cursor; what it cannot see is what the names used there
are (``ctx.invoke(...)``: which arguments, what it returns). This module looks the names of the lines
just above the cursor's line up in the tree-sitter index (``agent.index.RepoIndex``) and renders the
best definition of each as a stub: the signature and the first docstring line, with the enclosing
class for a method, grouped per file. Stubs go into the prompt ahead of the generic snippets (whole
definition bodies), within a token budget counted with the served model's tokenizer.

Only the lines above the cursor's line choose the names, so typing on the line leaves the choice, and
the prompt's start (with the llama.cpp KV cache behind it), unchanged.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.index import RepoIndex, Symbol, is_test_file

NAME_LINES = 12  # lines above the cursor's line whose names are looked up
MAX_CANDIDATES = 3  # a name with more equally good definitions than this is too ambiguous to show
DOC_CHARS = 100
_NAME = re.compile(r"(?:\b(self|cls)\s*\.\s*)?(\.\s*)?\b([A-Za-z_][A-Za-z0-9_]*)")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_SIGNATURE_COMMENT = re.compile(r"(\)(?:\s*->[^#]*?)?)\s*:?\s*#.*$")
_SKIP = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "cls", "t", "typing"}


@dataclass(frozen=True)
class NameUse:
    name: str
    on_self: bool  # used as ``self.name`` / ``cls.name``: a member of the enclosing class first
    attribute: bool = False  # used as ``obj.name``: a method or attribute, not a module-level name


def _code_lines(prefix: str, lines: int) -> list[str]:
    """The ``lines`` lines above the cursor's line with strings (docstrings too) and comments blanked:
    names in prose are not names the code uses."""
    all_lines = prefix.split("\n")
    start = max(0, len(all_lines) - 1 - lines)
    in_string = sum(prefix.count(q, 0, sum(len(x) + 1 for x in all_lines[:start])) for q in ('"""', "'''")) % 2 == 1
    out = []
    for line in all_lines[start:-1]:
        parts = re.split(r'"""|\'\'\'', line)
        code = []
        for n, part in enumerate(parts):
            if n:
                in_string = not in_string
            if not in_string:
                code.append(_STRING.sub('""', part).split("#", 1)[0])
        out.append(" ".join(code))
    return out


def names_near_cursor(prefix: str, lines: int = NAME_LINES) -> list[NameUse]:
    """The names the code uses in the ``lines`` lines above the cursor's line, the closest to the
    cursor first (the last use on the closest line first), each once."""
    seen: OrderedDict[str, NameUse] = OrderedDict()
    for code in reversed(_code_lines(prefix, lines)):
        for m in reversed(list(_NAME.finditer(code))):
            name = m.group(3)
            if name in _SKIP or name in seen or len(name) < 2:
                continue
            seen[name] = NameUse(name, bool(m.group(1)), bool(m.group(2)))
    return list(seen.values())


def _enclosing_class(prefix: str) -> str | None:
    """The class the cursor is in, from the last ``class X`` line above it that is indented less."""
    lines = prefix.split("\n")
    indent = len(lines[-1]) - len(lines[-1].lstrip())
    for line in reversed(lines[:-1]):
        stripped = line.lstrip()
        if not stripped:
            continue
        depth = len(line) - len(stripped)
        if depth < indent or (depth == 0 and not stripped.startswith(("@", "#"))):
            m = re.match(r"class\s+([A-Za-z_]\w*)", stripped)
            if m:
                return m.group(1)
            if depth == 0:
                return None
            indent = depth
    return None


def _module_words(imports: list[str]) -> set[str]:
    return {w for line in imports for w in re.findall(r"[A-Za-z_]\w*", line)}


def _module_name(path: str) -> str:
    p = PurePosixPath(path)
    return p.parent.name if p.stem == "__init__" else p.stem


def best_definition(index: RepoIndex, use: NameUse, rel: str, klass: str | None, imported: set[str],
                    excluded: Callable[[str], bool]) -> Symbol | None:
    """The definition a reader would look up: a member of the enclosing class for ``self.name``, else
    one in this file, else one in a module this file imports, else the only non-test one; None when
    the name is defined nowhere (or only in excluded files) or too ambiguously."""
    in_tests = is_test_file(rel)
    # a bare name is a module-level function or class; ``obj.name`` is a member of some class
    candidates = [s for s in index.definitions(use.name) if not excluded(s.path)
                  and (s.parent is not None) == (use.on_self or use.attribute) and (in_tests or not is_test_file(s.path))]
    if not candidates:
        return None

    def rank(s: Symbol) -> int:
        if use.on_self and klass and s.parent == klass:
            return 0
        if s.path == rel:
            return 1
        if _module_name(s.path) in imported:
            return 2
        return 3

    ranked = sorted(candidates, key=lambda s: (rank(s), s.path, s.start_line))
    best = rank(ranked[0])
    ties = [s for s in ranked if rank(s) == best]
    if best >= 3 and len(ties) > MAX_CANDIDATES:
        return None
    return ranked[0]


def _visible(symbol: Symbol, rel: str, shown: str) -> bool:
    """Whether the prompt already shows this definition (this file, its head within the shown text)."""
    if symbol.path != rel:
        return False
    head = symbol.signature.split("(", 1)[0]
    return re.search(rf"^\s*(async\s+)?{re.escape(head)}\b", shown, re.M) is not None


def render_stub(symbol: Symbol, language: str) -> str:
    """One definition as a stub: the signature, then the docstring's first line (Python), the body
    elided; a method indented under its class."""
    doc = " ".join((symbol.doc or "").strip().split("\n\n", 1)[0].split())  # the first paragraph
    if len(doc) > DOC_CHARS:
        doc = doc[: DOC_CHARS - 1].rstrip() + "…"
    if language != "python":
        return symbol.signature + "\n"
    pad = "    " if symbol.parent else ""
    body = pad + "    "
    signature = _SIGNATURE_COMMENT.sub(r"\1", symbol.signature)  # a trailing comment (``# type: ignore``) goes
    text = f"{pad}{signature}:\n"
    if doc:
        text += f'{body}"""{doc.replace(chr(34) * 3, chr(39) * 3)}"""\n'
    if symbol.kind != "class":
        text += f"{body}...\n"
    return text


def definition_stubs(index: RepoIndex, rel: str, language: str, prefix: str, shown: str, budget_tokens: int,
                     count_tokens: Callable[[str], int], excluded: Callable[[str], bool]) -> tuple[list[tuple[str, str]], int]:
    """Stubs of the definitions of the names near the cursor, fitted to ``budget_tokens``: a list of
    (path, text) per file in a stable order, and the tokens they use. ``shown`` is the document text
    the prompt shows anyway (definitions in it are not repeated)."""
    imported = _module_words(index.files[rel].imports) if rel in index.files else set()
    klass = _enclosing_class(prefix)
    chosen: list[Symbol] = []
    used = 0
    seen: set[tuple[str, int]] = set()
    for use in names_near_cursor(prefix):
        symbol = best_definition(index, use, rel, klass, imported, excluded)
        if symbol is None or (symbol.path, symbol.start_line) in seen or _visible(symbol, rel, shown):
            continue
        extra = [symbol]
        if symbol.kind == "class":  # what calling the class takes
            extra += [s for s in index.definitions("__init__") if s.path == symbol.path and s.parent == symbol.name][:1]
        cost = sum(count_tokens(render_stub(s, language)) for s in extra)
        if symbol.parent and not any(c.parent == symbol.parent and c.path == symbol.path for c in chosen):
            cost += count_tokens(f"class {symbol.parent}:\n")
        if not any(c.path == symbol.path for c in chosen):  # the file's header in the prompt
            cost += count_tokens(f"# Related code from {symbol.path}:\n\n")
        if used + cost > budget_tokens:
            continue  # a smaller definition further on may still fit
        used += cost
        for s in extra:
            seen.add((s.path, s.start_line))
            chosen.append(s)
    by_file: OrderedDict[str, list[Symbol]] = OrderedDict()
    for s in sorted(chosen, key=lambda s: (s.path, s.start_line)):
        by_file.setdefault(s.path, []).append(s)
    out = []
    for path, symbols in by_file.items():
        text, parent = "", None
        for s in symbols:
            if language == "python" and s.parent and s.parent != parent:
                text += f"class {s.parent}:\n"
            parent = s.parent if s.kind != "class" else s.name
            text += render_stub(s, language)
        out.append((path, text))
    return out, used


def fit_to_tokens(text: str, header: str, budget_tokens: int, count_tokens: Callable[[str], int]) -> tuple[str, int]:
    """``text`` cut back by whole lines until it and its ``header`` line fit ``budget_tokens``: the text
    ("" when not even its first line fits) and the tokens it costs."""
    lines = text.split("\n")
    while lines:
        cost = count_tokens(f"# {header}\n" + "\n".join(lines) + "\n\n")
        if cost <= budget_tokens:
            return "\n".join(lines), cost
        lines.pop()
    return "", 0
