"""The repository index: files, symbols with spans, signatures and docstrings, imports, references,
and which test files exercise which symbols — built with tree-sitter (tree-sitter-language-pack).

Python is first-class (docstrings, methods vs functions, body spans); JavaScript, TypeScript, Go, Rust and
Java go through the same interface. A language is a query file in ``agent/queries/<language>.scm`` with
the captures ``@name`` plus ``@definition.class``, ``@definition.function``, ``@reference.call`` or
``@import``. References are resolved by name (as in aider's repo map): precise enough to rank symbols and
find callers, and it degrades gracefully on code that does not parse.

Parsing is the expensive stage, so per-file results are cached by content hash (memory, and optionally a
versioned folder on disk): an index rebuilt after one commit re-parses only the files it changed.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import tree_sitter
import tree_sitter_language_pack as pack

from agent.state import atomic_open

INDEX_VERSION = 1
QUERIES = Path(__file__).resolve().parent / "queries"
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".jsx": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".ts": "typescript", ".tsx": "tsx", ".go": "go", ".rs": "rust", ".java": "java",
}
_QUERY_FOR = {"tsx": "typescript"}  # TSX's grammar extends TypeScript's: one query file serves both
_TEST_PATH = re.compile(r"(^|/)(tests?|__tests__|spec)/|(^|/)test_[^/]+\.py$|_test\.(py|go)$|\.(test|spec)\.[jt]sx?$|Test\.java$")
_BODY_FIELDS = ("body", "block")


def language_of(path: str) -> str | None:
    return LANGUAGES.get(PurePosixPath(path).suffix.lower())


def is_test_file(path: str) -> bool:
    return bool(_TEST_PATH.search(path))


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # "class", "function" or "method"
    path: str
    start_line: int  # 1-based, inclusive
    end_line: int
    signature: str
    doc: str | None = None
    parent: str | None = None  # enclosing class
    body_start_line: int | None = None  # first line of the body after any docstring (Python)

    @property
    def qualname(self) -> str:
        return f"{self.parent}.{self.name}" if self.parent else self.name

    def where(self) -> str:
        return f"{self.path}:{self.start_line}"


@dataclass
class Reference:
    name: str
    path: str
    line: int


@dataclass
class FileIndex:
    path: str
    language: str
    symbols: list[Symbol] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    error: str | None = None  # why the file could not be indexed, if it could not

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FileIndex:
        return cls(
            data["path"], data["language"], [Symbol(**s) for s in data["symbols"]],
            [Reference(**r) for r in data["references"]], data["imports"], data.get("error"),
        )

    def enclosing(self, line: int) -> Symbol | None:
        """The innermost symbol whose span holds ``line`` (symbols are sorted by start line: the latest
        start at or before ``line`` whose span reaches it is the innermost)."""
        starts = [s.start_line for s in self.symbols]
        for j in range(bisect.bisect_right(starts, line) - 1, -1, -1):
            if self.symbols[j].end_line >= line:
                return self.symbols[j]
        return None


# ---- parsing ------------------------------------------------------------------------------------
@functools.cache
def _parser_and_query(language: str):
    query_file = QUERIES / f"{_QUERY_FOR.get(language, language)}.scm"
    # the language pack types its argument as a Literal of every name; ours come from language_of()
    return pack.get_parser(language), tree_sitter.Query(pack.get_language(language), query_file.read_text())  # type: ignore[arg-type]


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(node) -> str:
    """A tree-sitter node's source text (nodes of a parsed tree always carry it)."""
    return (node.text or b"").decode("utf-8", errors="replace")


def _body(node):
    for name in _BODY_FIELDS:
        child = node.child_by_field_name(name)
        if child is not None:
            return child
    return None


def _python_doc_and_body_line(body) -> tuple[str | None, int | None]:
    statements = [c for c in body.named_children if c.type != "comment"]
    if not statements:
        return None, None
    first = statements[0]
    # grammar versions differ: the docstring is a bare `string` or an expression_statement holding one
    string = first if first.type == "string" else (
        first.named_children[0] if first.type == "expression_statement" and first.named_children
        and first.named_children[0].type == "string" else None)
    if string is not None:
        raw = _text(string)
        doc = raw.strip("rbuRBU").strip("\"'").strip()
        nxt = statements[1].start_point[0] + 1 if len(statements) > 1 else None
        return doc, nxt
    return None, first.start_point[0] + 1


def _enclosing_class(node) -> str | None:
    parent = node.parent
    while parent is not None:
        if parent.type in ("class_definition", "class_declaration", "class_body", "impl_item", "interface_declaration"):
            target = parent if parent.type != "class_body" else parent.parent
            if target is None:
                return None
            name = target.child_by_field_name("name") or target.child_by_field_name("type")
            return _text(name) if name is not None else None
        if parent.type in ("function_definition", "function_declaration"):
            return None  # a nested function belongs to a function, not a class
        parent = parent.parent
    return None


def parse_file(path: str, text: str) -> FileIndex | None:
    """Index one file, or None when its language is not supported."""
    language = language_of(path)
    if language is None:
        return None
    parser, query = _parser_and_query(language)
    source = text.encode("utf-8")
    tree = parser.parse(source)
    index = FileIndex(path, language)
    if tree.root_node.has_error:
        index.error = "syntax errors (indexed what parsed)"
    for _, caps in tree_sitter.QueryCursor(query).matches(tree.root_node):
        names = caps.get("name") or []
        if "import" in caps:
            index.imports.extend(_one_line(_text(n)) for n in caps["import"])
        if not names:
            continue
        name = _text(names[0])
        if "reference.call" in caps:
            index.references.append(Reference(name, path, names[0].start_point[0] + 1))
            continue
        kind_key = "definition.class" if "definition.class" in caps else "definition.function" if "definition.function" in caps else None
        if kind_key is None:
            continue
        node = caps[kind_key][0]
        body = _body(node)
        head_end = body.start_byte if body is not None else node.end_byte
        signature = _one_line(source[node.start_byte:head_end].decode("utf-8", errors="replace").rstrip().rstrip(":{").rstrip())
        doc, body_line = (None, None)
        if language == "python" and body is not None:
            doc, body_line = _python_doc_and_body_line(body)
        parent = _enclosing_class(node)
        kind = "class" if kind_key == "definition.class" else "method" if parent else "function"
        index.symbols.append(Symbol(name, kind, path, node.start_point[0] + 1, node.end_point[0] + 1, signature,
                                    doc, parent, body_line))
    index.symbols.sort(key=lambda s: (s.start_line, s.end_line))
    return index


# ---- caching ------------------------------------------------------------------------------------
class ParseCache:
    """Per-file parse results keyed by a hash of (index version, path, content). In memory, and on disk
    when given a folder (the folder name carries the version, so old caches are never misread)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.memory: dict[str, FileIndex | None] = {}
        self.folder = Path(folder) / f"index-v{INDEX_VERSION}" if folder else None
        self.hits = self.misses = 0

    @staticmethod
    def key(path: str, text: str) -> str:
        return hashlib.sha256(f"{INDEX_VERSION}\0{path}\0{text}".encode()).hexdigest()

    def get_or_parse(self, path: str, text: str, *, persist: bool = True) -> FileIndex | None:
        key = self.key(path, text)
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        disk = self.folder / key[:2] / f"{key}.json" if self.folder else None
        if disk is not None and disk.exists():
            try:
                data = json.loads(disk.read_text())
                result = FileIndex.from_json(data) if data else None
                self.memory[key] = result
                self.hits += 1
                return result
            except (ValueError, KeyError, TypeError):
                pass  # a damaged entry is re-parsed and rewritten
        self.misses += 1
        result = parse_file(path, text)
        self.memory[key] = result
        if disk is not None and persist:
            with atomic_open(disk, "w", durable=False) as fh:  # a cache: a lost entry is parsed again
                fh.write(json.dumps(result.to_json() if result else None))
        return result


# ---- the index ----------------------------------------------------------------------------------
class RepoIndex:
    def __init__(self, files: dict[str, FileIndex]) -> None:
        self.files = files
        self._defs: dict[str, list[Symbol]] = defaultdict(list)
        self._refs: dict[str, list[Reference]] = defaultdict(list)
        for fi in files.values():
            for sym in fi.symbols:
                self._defs[sym.name].append(sym)
            for ref in fi.references:
                self._refs[ref.name].append(ref)

    def update_file(self, path: str, fi: FileIndex | None) -> None:
        """Replace one file's entries (None: the file is gone) without rebuilding the whole index."""
        old = self.files.pop(path, None)
        if old is not None:
            for name in {s.name for s in old.symbols}:
                self._defs[name] = [s for s in self._defs[name] if s.path != path]
            for name in {r.name for r in old.references}:
                self._refs[name] = [r for r in self._refs[name] if r.path != path]
        if fi is not None:
            self.files[path] = fi
            for sym in fi.symbols:
                self._defs[sym.name].append(sym)
            for ref in fi.references:
                self._refs[ref.name].append(ref)

    @classmethod
    def build(cls, files: Iterable[tuple[str, str]], cache: ParseCache | None = None) -> RepoIndex:
        """From (path, text) pairs: the caller decides which files may be read (see
        ``trainer.experience.files`` for training, the tools' own filters for the agent)."""
        cache = cache or ParseCache()
        indexed = {}
        for path, text in files:
            fi = cache.get_or_parse(path, text)
            if fi is not None:
                indexed[path] = fi
        return cls(indexed)

    @classmethod
    def from_directory(cls, root: Path, paths: Iterable[str], cache: ParseCache | None = None) -> RepoIndex:
        def read():
            for rel in paths:
                if language_of(rel) is None:
                    continue
                try:
                    yield rel, (Path(root) / rel).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue  # unreadable files simply are not indexed
        return cls.build(read(), cache)

    # -- queries --
    def symbols(self) -> Iterable[Symbol]:
        for fi in self.files.values():
            yield from fi.symbols

    def definitions(self, name: str) -> list[Symbol]:
        """Symbols called ``name`` (or ``Class.name``)."""
        if "." in name:
            parent, _, short = name.rpartition(".")
            return [s for s in self._defs.get(short, []) if s.parent == parent.rsplit(".", 1)[-1]]
        return list(self._defs.get(name, []))

    def references(self, name: str) -> list[Reference]:
        return list(self._refs.get(name.rsplit(".", 1)[-1], []))

    def callers(self, symbol: Symbol) -> list[Symbol]:
        """Symbols whose bodies reference ``symbol`` by name (excluding itself)."""
        out: dict[tuple, Symbol] = {}
        for ref in self.references(symbol.name):
            enclosing = self.files[ref.path].enclosing(ref.line)
            if enclosing is not None and enclosing != symbol:
                out[(enclosing.path, enclosing.start_line)] = enclosing
        return list(out.values())

    def callees(self, symbol: Symbol) -> list[Symbol]:
        """Defined symbols that ``symbol``'s body references by name."""
        fi = self.files[symbol.path]
        names = {r.name for r in fi.references if symbol.start_line <= r.line <= symbol.end_line}
        return [d for n in sorted(names) for d in self._defs.get(n, []) if d != symbol]

    def tests_for(self, symbol: Symbol) -> list[str]:
        return sorted({r.path for r in self.references(symbol.name) if is_test_file(r.path)})

    def reference_counts(self) -> Counter:
        """How often each defined name is referenced from outside its own definition."""
        counts: Counter = Counter()
        for name, refs in self._refs.items():
            if name in self._defs:
                counts[name] += len(refs)
        return counts

    def ranked_symbols(self) -> list[Symbol]:
        counts = self.reference_counts()
        return sorted(self.symbols(), key=lambda s: (-counts.get(s.name, 0), s.path, s.start_line))

    def repo_map(self, budget_tokens: int = 1024, count_tokens: Callable[[str], int] | None = None,
                 paths: Iterable[str] | None = None) -> str:
        """Definitions and signatures per file, the most referenced first, fitted to a token budget."""
        count = count_tokens or (lambda text: -(-len(text) // 4))  # ~4 characters a token, rounded up
        counts = self.reference_counts()
        wanted = set(paths) if paths is not None else None
        by_file: dict[str, list[Symbol]] = defaultdict(list)
        for sym in self.ranked_symbols():
            if wanted is None or sym.path in wanted:
                by_file[sym.path].append(sym)
        def file_key(p: str):
            scores = [counts.get(s.name, 0) for s in by_file[p]]
            return (-max(scores), -sum(scores), p)  # the file of the most referenced symbol first

        file_rank = sorted(by_file, key=file_key)
        lines: list[str] = []
        used = 0
        for path in file_rank:
            entry = [f"{path}:"] + [f"  {s.start_line}: {s.signature}" for s in sorted(by_file[path], key=lambda s: s.start_line)]
            kept = []
            for line in entry:
                cost = count(line + "\n")
                if used + cost > budget_tokens:
                    break
                kept.append(line)
                used += cost
            if len(kept) > 1:  # a file header without any of its symbols says nothing
                lines.extend(kept)
            if len(kept) < len(entry):
                break
        return "\n".join(lines)
