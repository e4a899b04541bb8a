"""Inline completion: what to show the model, whether to ask it at all, and how to trim its answer.

The prompt is ordered from the most stable part to the least stable one (repository snippets, the code
after the cursor, then the code before it), so that as the user types only the end of the prompt
changes and llama.cpp reuses the cached keys and values of everything before it.

Models with fill-in-the-middle tokens get the FIM layout (``agent/fim.py``), and so does a base without
them (the embedded Gemma base) while the served adapter declares FIM tokens it was trained with
(``serving_fim``: its manifest's ``fim``; a rollback or another branch's adapter without it switches
back). Otherwise the model completes left to right: the code after the cursor is shown as a commented
block before the prefix, and the completion is cut where it starts repeating that code.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agent.fim import FIM_FAMILIES, FimTokens, for_runtime
from lsp_server.context import definition_stubs, fit_to_tokens

log = logging.getLogger(__name__)

PREFIX_CHARS = 3000
PREFIX_STEP = 1000  # the prefix window's start moves in steps this big (at line starts), not per keystroke
SUFFIX_LINES = 12
SNIPPET_LINES = 12
SNIPPET_CHARS = 1500
MAX_SNIPPETS = 3
MAX_COMPLETION_LINES = 8

FIM_TOKENS = FIM_FAMILIES  # (prefix, suffix, middle) token texts of the FIM families we know

LINE_COMMENT = {
    "python": "#", "shellscript": "#", "ruby": "#", "perl": "#", "r": "#", "yaml": "#", "toml": "#",
    "makefile": "#", "dockerfile": "#", "lua": "--", "sql": "--", "haskell": "--",
}
_SUFFIX_TO_LANGUAGE = {".py": "python", ".sh": "shellscript", ".rb": "ruby", ".lua": "lua", ".sql": "sql",
                       ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".hs": "haskell"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Snippet:
    path: str
    text: str


@dataclass(frozen=True)
class CompletionContext:
    rel: str  # repository-relative path of the document
    language: str
    prefix: str
    suffix: str

    @property
    def line_after_cursor(self) -> str:
        return self.suffix.split("\n", 1)[0]


def comment_marker(language: str, rel: str) -> str:
    language = language or _SUFFIX_TO_LANGUAGE.get(Path(rel).suffix, "")
    return LINE_COMMENT.get(language, "//")


def worth_completing(ctx: CompletionContext) -> str | None:
    """Why not to ask the model here, or None when it is worth it. Cheap rules only: inside a word or
    before code on the same line, a completion would have to rewrite what follows."""
    if not ctx.prefix.strip():
        return "the document is empty before the cursor"
    after = ctx.line_after_cursor.strip()
    if after and not re.fullmatch(r"[\)\]\}\"'`;:,]*", after):
        return "the cursor is before code on the same line"
    if ctx.prefix[-1:].isalnum() and ctx.line_after_cursor[:1].isalnum():
        return "the cursor is inside a word"
    return None


def prefix_window(prefix: str) -> str:
    """The end of ``prefix`` the model sees: at most PREFIX_CHARS characters, starting at a line start.

    The start is chosen on a grid of PREFIX_STEP characters from the document's start, so it stays put
    while the user types (the prompt then only grows at its end, and llama.cpp reuses the cached keys
    and values of all of it); a window that slid by one character per keystroke would change the
    prompt's very first tokens every time and force the whole prompt to be evaluated again."""
    excess = len(prefix) - PREFIX_CHARS
    if excess <= 0:
        return prefix
    anchor = -(-excess // PREFIX_STEP) * PREFIX_STEP  # excess rounded up to the grid
    line_start = prefix.find("\n", anchor - 1) + 1  # the first line that starts at or after the anchor
    return prefix[line_start:] if line_start > 0 else prefix[anchor:]


def build_prompt(ctx: CompletionContext, snippets: list[Snippet], fim: tuple[str, str, str] | None) -> str:
    prefix = prefix_window(ctx.prefix)
    suffix = "\n".join(ctx.suffix.split("\n")[:SUFFIX_LINES])
    mark = comment_marker(ctx.language, ctx.rel)
    context = "".join(f"{mark} Related code from {s.path}:\n{s.text.rstrip()}\n\n" for s in snippets)
    if fim is not None:
        pre, suf, mid = fim
        # the header as the repository-as-text unit trains it (trainer/experience/text.py: "# path: ...")
        return f"{pre}{context}{mark} path: {ctx.rel}\n{prefix}{suf}{suffix}{mid}"
    after = ""
    if suffix.strip():
        commented = "\n".join(f"{mark} | {line}" for line in suffix.split("\n"))
        after = f"{mark} The code that follows the cursor:\n{commented}\n"
    return f"{context}{after}{mark} File: {ctx.rel}\n{prefix}"


def trim_completion(text: str, ctx: CompletionContext) -> str:
    """Cut the model's text where it stops being an insertion: at the first line that repeats the code
    after the cursor, after a blank-line gap, or after MAX_COMPLETION_LINES lines."""
    following = [line.strip() for line in ctx.suffix.split("\n") if line.strip()][:1]
    lines = text.split("\n")
    kept: list[str] = []
    for n, line in enumerate(lines):
        if n > 0 and following and line.strip() == following[0]:
            break
        if n > 0 and not line.strip() and kept and not kept[-1].strip():
            kept.pop()
            break
        kept.append(line)
        if len(kept) >= MAX_COMPLETION_LINES:
            break
    out = "\n".join(kept)
    return out.rstrip() if "\n" in out else out.rstrip("\n")


def stop_point(text: str, ctx: CompletionContext) -> int | None:
    """Where the streamed ``text`` stops being this completion, or None while it may go on. Checked as
    tokens arrive, so the model stops generating there instead of writing lines that are thrown away.

    Mid-line (code before the cursor on its line): at the line's end, once the line got more text. At a
    line's start (only indentation before the cursor), and mid-line when the model ends the line at
    once (the line was complete; what follows is the next lines): before the first line that leaves
    the indented block, i.e. a non-blank line indented less than the block's first line."""
    head = ctx.prefix.rsplit("\n", 1)[-1]
    if head.strip():
        end = text.find("\n")
        if end < 0:
            return None
        if text[:end].strip():
            return end
        block = text[end + 1:]
        first = next((line for line in block.split("\n") if line.strip()), None)
        if first is None:  # the block's indentation is not known yet
            return None
        indent, pos = len(first) - len(first.lstrip()), end
    else:
        indent, pos = len(head) - len(head.lstrip()), text.find("\n")
    while pos >= 0:
        nxt = text.find("\n", pos + 1)
        following = text[pos + 1:] if nxt < 0 else text[pos + 1:nxt]
        if following.strip() and len(following) - len(following.lstrip()) < indent:
            return pos
        pos = nxt
    return None


_CLOSERS = {")": "(", "]": "[", "}": "{"}


def fit_to_line_rest(text: str, ctx: CompletionContext) -> str:
    """Cut the first line of ``text`` where it would repeat the code after the cursor on the cursor's
    line (only closing brackets, quotes and punctuation get a completion there, see worth_completing):
    at a bracket that closes one opened before the cursor, when the rest of the line starts with that
    bracket, or at the end when it ends with the rest of the line. The suggestion is inserted, so what
    follows the cursor stays, once."""
    rest = ctx.line_after_cursor.strip()
    if not rest:
        return text
    first, newline, more = text.partition("\n")
    depth = 0
    for i, ch in enumerate(first):
        if ch in "([{":
            depth += 1
        elif ch in _CLOSERS:
            if depth == 0:
                if rest.startswith(ch):
                    return first[:i].rstrip()
                break
            depth -= 1
    stripped = first.rstrip()
    if stripped.endswith(rest):
        return stripped[: -len(rest)]
    return first + newline + more


class SuggestionCache:
    """Answers per document position, and the rest of a shown suggestion while the user types along it.

    Keyed by the document's text before and after the cursor (so an edit elsewhere or a moved cursor
    misses): a request whose prefix is an earlier request's prefix plus the start of that request's
    answer, with the same text after the cursor, gets the answer's remainder without a model call."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, uri: str, ctx: CompletionContext, text: str) -> None:
        with self._lock:
            self._entries[(uri, ctx.prefix, ctx.suffix)] = text
            self._entries.move_to_end((uri, ctx.prefix, ctx.suffix))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def get(self, uri: str, ctx: CompletionContext) -> str | None:
        """The cached answer at this position ("" when the model had nothing), or the untyped rest of a
        suggestion the user is typing along, or None (ask the model)."""
        with self._lock:
            exact = self._entries.get((uri, ctx.prefix, ctx.suffix))
            if exact is not None:
                self._entries.move_to_end((uri, ctx.prefix, ctx.suffix))
                return exact
            for (u, prefix, suffix), text in reversed(self._entries.items()):
                if (u == uri and suffix == ctx.suffix and len(prefix) < len(ctx.prefix) < len(prefix) + len(text)
                        and ctx.prefix.startswith(prefix) and text.startswith(ctx.prefix[len(prefix):])):
                    return text[len(ctx.prefix) - len(prefix):]
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def serving_fim(runtime, manifest: dict | None) -> tuple[str, str, str] | None:
    """The FIM markers to build the prompt with, or None (left to right): those the served adapter's
    manifest declares (``manifest["fim"]``, when each is one token of the runtime's vocabulary), else the
    base model's own FIM tokens. ``manifest`` is None while the bare base model serves."""
    tokens = for_runtime(runtime, FimTokens.from_manifest((manifest or {}).get("fim")))
    return tokens.markers if tokens is not None else None


def stop_strings(fim: tuple[str, str, str] | None) -> list[str]:
    stops = ["\n\n\n"]
    if fim is not None:
        stops += list(fim)
    return stops


class SnippetIndex:
    """Definitions from the repository for the names near the cursor, from the agent's tree-sitter index.

    The index is built once on a background thread (a big repository takes seconds); until it is ready,
    completions simply have no snippets. ``workspace`` is an ``agent.tools.Workspace`` over the repo."""

    def __init__(self, workspace) -> None:
        self.workspace = workspace
        self._index = None
        self._lock = threading.Lock()
        self.error: str | None = None

    def build_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self._build, name="swespot-index", daemon=True)
        thread.start()
        return thread

    def _build(self) -> None:
        try:
            index = self.workspace.index()
        except Exception as exc:  # snippets are optional; completions go on without them
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("repository index unavailable, completions get no snippets: %s", self.error)
            return
        with self._lock:
            self._index = index
        log.info("repository index ready: %d files", len(index.files))

    @property
    def ready(self) -> bool:
        return self._index is not None

    @property
    def index(self):
        """The repository index once built (``agent.index.RepoIndex``), else None."""
        with self._lock:
            return self._index

    def snippets(self, ctx: CompletionContext, read_text, excluded, *, budget_tokens: int = 0,
                 count_tokens=None) -> list[Snippet]:
        """With ``budget_tokens``: first the stubs (signature, docstring line) of the definitions of the
        names near the cursor (lsp_server/context.py), then generic snippets, all within that many
        tokens (``count_tokens(text)``). Generic snippets: up to MAX_SNIPPETS definitions of names used
        in the lines above the cursor, from other files, most recently used name first.
        ``read_text(rel)`` reads the editor's view of a file; ``excluded(rel)`` hides the user's
        excluded paths."""
        with self._lock:
            index = self._index
        if index is None:
            return []
        stubs, budget, tokens_left = [], SNIPPET_CHARS, None
        if budget_tokens > 0 and count_tokens is not None:
            shown = prefix_window(ctx.prefix) + "\n".join(ctx.suffix.split("\n")[:SUFFIX_LINES])
            language = ctx.language or _SUFFIX_TO_LANGUAGE.get(Path(ctx.rel).suffix, "")
            found, used = definition_stubs(index, ctx.rel, language, ctx.prefix, shown, budget_tokens, count_tokens, excluded)
            stubs = [Snippet(path, text) for path, text in found]
            tokens_left = budget_tokens - used
        # names from the lines above the cursor's line: typing on the line does not change the choice, so
        # the prompt's start (and the KV cache behind it) stays put
        names = list(dict.fromkeys(reversed(_WORD.findall("\n".join(ctx.prefix.split("\n")[-13:-1])))))
        out: list[Snippet] = []
        for name in names if tokens_left is None or tokens_left > 0 else []:
            for symbol in index.definitions(name)[:1]:
                if symbol.path == ctx.rel or excluded(symbol.path) or any(f"{symbol.signature}:" in s.text for s in stubs):
                    continue
                try:
                    lines = read_text(symbol.path).split("\n")
                except Exception:  # a file that vanished or is unreadable gives no snippet
                    continue
                end = min(symbol.end_line, symbol.start_line + SNIPPET_LINES - 1)
                text = "\n".join(lines[symbol.start_line - 1:end])[:budget]
                if tokens_left is not None:
                    text, cost = fit_to_tokens(text, f"Related code from {symbol.path}:", tokens_left, count_tokens)
                    tokens_left -= cost
                if text.strip():
                    out.append(Snippet(symbol.path, text))
                    budget -= len(text)
            if len(out) >= MAX_SNIPPETS or budget <= 0:
                break
        # a stable order keeps the prompt's start (and so the KV cache) the same while the user types
        return stubs + sorted(out, key=lambda s: (s.path, s.text))
