"""Which definition a call refers to, with imports and ``self`` understood.

The index (``agent.index``) finds call sites by name, which is enough to rank symbols but not to say who
calls what: two classes with a method ``run`` are two different symbols, and ``d.get()`` on a dict is
no call of the repository's own ``get``. The resolver confirms each candidate call site:

- **Python** through Jedi, on the snapshot itself: a ``jedi.Project`` rooted at the repository whose
  ``sys.path`` is the repository's source roots (``src/`` layouts first) and the standard library only,
  so ``import pkg`` resolves to the snapshot's code and never to an installed copy. ``goto`` with
  imports followed turns a call site into the definition it names (``self.method()``, aliases,
  ``from .x import f``). A call site whose targets are not exactly one definition is *unresolved*.
- **Other languages** through the index's names, only where the name is defined exactly once.

Jedi is slow next to tree-sitter, so the resolver works lazily and caches per file (by content) and
name: only the calls of a name somebody asks about are ever resolved, each name's with a fresh
``jedi.Script``. Fresh, because Jedi's answers can depend on what the same Script inferred before (most likely
through its caches, which keep what an earlier ``goto`` inferred, also under a recursion limit): in a one-off check on click, the call
``obj.shell_complete(...)`` in ``shell_completion.py`` resolved one way after every other call of that file in
the same Script and another way asked alone. So a name's answer no longer depends on which names were asked
before it. Per name, the held-out facts of click, requests and attrs took 122, 130 and 13 ``goto`` calls instead of 1,893,
907 and 539 (the same questions and answers). ``seconds`` counts the time spent in Jedi.
"""

from __future__ import annotations

import hashlib
import re
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import jedi

from agent import layout
from agent.index import RepoIndex, Symbol, is_test_file


@dataclass(frozen=True)
class CallSite:
    path: str
    line: int  # 1-based
    column: int  # 0-based, where the called name starts
    name: str
    caller: Symbol | None  # the innermost definition holding the call (None: module level)
    target: Symbol | None  # the repository definition it resolves to (None: unresolved or not ours)
    resolved: bool  # the resolver could pin the call (target None then means: not a repository symbol)

    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Callers:
    sites: list[CallSite]  # confirmed calls of the symbol (outside the symbol itself)
    candidates: int  # call sites of the name anywhere in the considered files
    unresolved: int  # of those, how many the resolver could not pin

    @property
    def symbols(self) -> list[Symbol]:
        seen: dict[tuple, Symbol] = {}
        for site in self.sites:
            if site.caller is not None:
                seen.setdefault((site.caller.path, site.caller.start_line), site.caller)
        return list(seen.values())


@dataclass
class _FileSites:
    """One file's resolved call sites, per called name, while its content has ``digest``."""

    digest: str
    lines: list[str]
    by_name: dict[str, list[CallSite]] = field(default_factory=dict)


def source_roots(root: Path) -> list[Path]:
    """The folders that hold the repository's importable code, most specific first and the root itself
    last, as its build configuration says (``agent.layout``; the runtime unit's tests use the same)."""
    root = Path(root)
    return [root / rel for rel in layout.source_roots(root)]


def _call_columns(line_text: str, name: str) -> list[int]:
    """Columns where ``name`` is called on a line (``name(`` with ``name`` a whole word)."""
    return [m.start() for m in re.finditer(rf"(?<![\w]){re.escape(name)}\s*\(", line_text)]


class Resolver:
    def __init__(self, root: str | Path, index: RepoIndex, *, trace_edges: set[tuple[str, str, str, str]] | None = None,
                 max_unresolved_share: float = 0.25) -> None:
        """``trace_edges``: (caller path, caller qualname, callee path, callee qualname) calls seen by the
        runtime trace; they confirm a call site the static resolver could not pin."""
        self.root = Path(root).resolve()
        self.index = index
        self.trace_edges = trace_edges or set()
        self.traced_sites: set[tuple[str, int, int]] = set()  # call sites only the runtime trace confirmed
        self.max_unresolved_share = max_unresolved_share
        self.seconds = 0.0
        self._resolved_paths: set[str] = set()
        self._project = None
        self._sites: dict[str, _FileSites] = {}  # path -> its resolved call sites, per name

    # -- Jedi ------------------------------------------------------------------------------------------
    def _jedi_project(self):
        if self._project is None:
            stdlib = sysconfig.get_paths()
            paths = [str(p) for p in source_roots(self.root)] + sorted({stdlib["stdlib"], stdlib["platstdlib"]})
            self._project = jedi.Project(self.root, sys_path=paths, smart_sys_path=False, load_unsafe_extensions=False)
        return self._project

    @property
    def files_resolved(self) -> int:
        """How many files Jedi has read to resolve calls in them."""
        return len(self._resolved_paths)

    def _text(self, path: str) -> str | None:
        try:
            return (self.root / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def symbol_at(self, path: str, line: int, name: str | None = None) -> Symbol | None:
        """The indexed definition whose name sits on ``line`` of ``path``."""
        fi = self.index.files.get(path)
        if fi is None:
            return None
        hits = [s for s in fi.symbols if s.start_line == line and (name is None or s.name == name)]
        return hits[0] if len(hits) == 1 else None

    def _targets(self, script, line: int, column: int) -> list[tuple[str, int, str]] | None:
        """(path, line, name) of every definition ``goto`` reaches from a position; None when Jedi
        stops at an import it could not follow (or fails)."""
        try:
            names = script.goto(line, column, follow_imports=True)
        except Exception:  # Jedi's inference can fail on odd code: the site stays unresolved
            return None
        out = []
        for n in names:
            if n.module_path is None or n.line is None:
                out.append(("", 0, n.name))  # a builtin or compiled module: not the repository's
                continue
            try:
                rel = Path(n.module_path).resolve().relative_to(self.root).as_posix()
            except ValueError:
                out.append(("", 0, n.name))  # the standard library or elsewhere outside the repository
                continue
            if n.type == "module":
                out.append(("", 0, n.name))  # a module is not a definition anybody calls
                continue
            text = self._text(rel) or ""
            lines = text.splitlines()
            if 0 < n.line <= len(lines) and re.match(r"\s*(from\s|import\s)", lines[n.line - 1]):
                return None  # stopped at an import: the module was not found
            out.append((rel, n.line, n.name))
        return out

    def call_sites(self, path: str, name: str) -> list[CallSite]:
        """The call sites of ``name`` in ``path`` that the index found, resolved, in the index's order;
        cached by the file's content, per name (module docstring)."""
        text = self._text(path)
        fi = self.index.files.get(path)
        if text is None or fi is None:
            return []
        digest = hashlib.sha256(text.encode()).hexdigest()
        cached = self._sites.get(path)
        if cached is None or cached.digest != digest:
            cached = self._sites[path] = _FileSites(digest, text.splitlines())
        if name in cached.by_name:
            return cached.by_name[name]
        lines = cached.lines
        sites: list[CallSite] = []
        script = None  # Jedi's view of the file, fresh for each name (module docstring)
        started = time.perf_counter()
        for ref in fi.references:
            if ref.name != name or not 0 < ref.line <= len(lines):
                continue
            for column in _call_columns(lines[ref.line - 1], ref.name):
                caller = fi.enclosing(ref.line)
                if fi.language == "python":
                    if script is None:
                        script = jedi.Script(text, path=self.root / path, project=self._jedi_project())
                        self._resolved_paths.add(path)
                    targets = self._targets(script, ref.line, column)
                    if targets is None or not targets:
                        sites.append(CallSite(path, ref.line, column, ref.name, caller, None, False))
                        continue
                    symbols = {self.symbol_at(p, ln, nm) if p else None for p, ln, nm in targets}
                    if len(symbols) != 1:
                        sites.append(CallSite(path, ref.line, column, ref.name, caller, None, False))
                        continue
                    target = symbols.pop()
                    # goto reached a repository line that is no indexed definition (an assignment, an
                    # alias...): pinned, but to nothing we ask about
                    sites.append(CallSite(path, ref.line, column, ref.name, caller, target, True))
                else:
                    defs = self.index.definitions(ref.name)
                    target = defs[0] if len(defs) == 1 else None
                    sites.append(CallSite(path, ref.line, column, ref.name, caller, target, target is not None))
        self.seconds += time.perf_counter() - started
        cached.by_name[name] = sites
        return sites

    def resolve(self, path: str, line: int, column: int) -> Symbol | None:
        """The repository definition the name at a position refers to (Python only), or None."""
        text = self._text(path)
        if text is None or not path.endswith((".py", ".pyi")):
            return None
        started = time.perf_counter()
        try:
            targets = self._targets(jedi.Script(text, path=self.root / path, project=self._jedi_project()), line, column)
        finally:
            self.seconds += time.perf_counter() - started
        symbols = {self.symbol_at(p, ln, nm) if p else None for p, ln, nm in targets or []}
        return symbols.pop() if len(symbols) == 1 else None

    # -- questions -------------------------------------------------------------------------------------
    def unique_definition(self, sym: Symbol) -> bool:
        """The symbol is the only definition of its qualified name in its file (no conditional
        redefinitions), and for languages without Jedi, the only definition of its name anywhere."""
        fi = self.index.files.get(sym.path)
        if fi is None or sum(1 for s in fi.symbols if s.qualname == sym.qualname) != 1:
            return False
        return sym.path.endswith((".py", ".pyi")) or len(self.index.definitions(sym.name)) == 1

    def callers(self, sym: Symbol, *, include_tests: bool = False) -> Callers | None:
        """The call sites that really call ``sym``, or None when the resolver cannot pin them: the
        definition is not unique, or too many candidate calls of its name stay unresolved (they might
        call it: an answer without them could be wrong by omission)."""
        if not self.unique_definition(sym):
            return None
        paths = sorted({r.path for r in self.index.references(sym.name) if include_tests or not is_test_file(r.path)})
        confirmed, candidates, unresolved = [], 0, 0
        for path in paths:
            for site in self.call_sites(path, sym.name):
                candidates += 1
                inside = site.caller is not None and site.caller == sym
                traced = not site.resolved and self._traced(site, sym)
                if site.target == sym or traced:
                    if not inside:
                        confirmed.append(site)
                    if traced:
                        self.traced_sites.add((site.path, site.line, site.column))
                elif not site.resolved:
                    unresolved += 1
        if candidates and unresolved > self.max_unresolved_share * candidates:
            return None
        return Callers(confirmed, candidates, unresolved)

    @property
    def trace_confirmed(self) -> int:
        """How many call sites the answers rest on that Jedi could not pin and the runtime trace confirmed."""
        return len(self.traced_sites)

    def _traced(self, site: CallSite, sym: Symbol) -> bool:
        return site.caller is not None and (site.caller.path, site.caller.qualname, sym.path, sym.qualname) in self.trace_edges
