"""Repository context for inline completion (lsp_server/context.py): the definitions of the names used
near the cursor, found with the real tree-sitter index over a real git repository, counted with the
real tiny model's tokenizer, come ahead of the generic snippets and within the token budget."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.tools import Workspace
from lsp_server.completion import CompletionContext, SnippetIndex, build_prompt
from lsp_server.settings import Settings, merge

SHAPES = '''"""Shapes."""


class Gizmo:
    """A thing with a size and a colour."""

    def __init__(self, size: int, colour: str = "red") -> None:
        self.size = size
        self.colour = colour

    def scaled(self, factor: float) -> "Gizmo":
        """A copy of the gizmo, factor times as big."""
        return Gizmo(int(self.size * factor), self.colour)


def frobnicate(widget: Gizmo, *, depth: int = 3) -> int:
    """Turn the widget round depth times and report its size."""
    total = 0
    for _ in range(depth):
        total += widget.size
    return total
'''

REPORT = '''from shapes.core import Gizmo, frobnicate
from shapes.secret import hidden_helper


def summary(sizes):
    gizmos = [Gizmo(s) for s in sizes]
    big = [g.scaled(2.0) for g in gizmos]
    hidden_helper(big)
    total = frobnicate(big[0], depth=2)
    return later_helper(total)


def later_helper(value: int) -> str:
    """Format a value for the report."""
    return str(value)
'''


@pytest.fixture(scope="module")
def runtime(tiny_gguf_q8):
    from agent.runtime import LlamaRuntime

    return LlamaRuntime(tiny_gguf_q8, n_ctx=512, n_threads=1)


@pytest.fixture
def index(tmp_path: Path) -> SnippetIndex:
    root = tmp_path / "proj"
    files = {"__init__.py": "", "core.py": SHAPES, "secret.py": "def hidden_helper(items):\n    return items\n", "report.py": REPORT}
    for name, text in files.items():
        (root / "shapes").mkdir(parents=True, exist_ok=True)
        (root / "shapes" / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], check=True)
    snippets = SnippetIndex(Workspace(root))
    snippets.build_in_background().join(60)
    assert snippets.ready, snippets.error
    snippets.root = root
    return snippets


def cursor_context(root: Path) -> CompletionContext:
    """The cursor on a new line after ``total = frobnicate(...)`` inside ``summary``."""
    text = REPORT
    at = text.index("    return later_helper")
    return CompletionContext("shapes/report.py", "python", text[:at] + "    ", text[at + 4:])


def test_the_definitions_of_the_names_near_the_cursor_come_first_within_the_token_budget(index, runtime):
    def count(text: str) -> int:
        return len(runtime.tokenize(text, special=False))

    def read(rel: str) -> str:
        return (index.root / rel).read_text()

    excluded = lambda rel: rel == "shapes/secret.py"  # noqa: E731
    ctx = cursor_context(index.root)
    got = index.snippets(ctx, read, excluded, budget_tokens=200, count_tokens=count)
    stubs = got[0]
    assert stubs.path == "shapes/core.py"
    # signatures and first docstring lines, bodies elided; a method under its class, the class with __init__
    assert 'def frobnicate(widget: Gizmo, *, depth: int = 3) -> int:\n    """Turn the widget' in stubs.text
    assert "class Gizmo:" in stubs.text and "def __init__(self, size: int, colour: str = \"red\") -> None:" in stubs.text
    assert "    def scaled(self, factor: float) -> \"Gizmo\":" in stubs.text
    assert "total += widget.size" not in stubs.text
    assert stubs.text.count("class Gizmo") == 1
    # excluded files give nothing; a definition later in this file (not in the shown text) is not needed here
    assert all("hidden_helper" not in s.text for s in got)
    from lsp_server.context import definition_stubs

    shown = ctx.prefix + ctx.suffix
    found, used = definition_stubs(index.index, ctx.rel, "python", ctx.prefix, shown, 200, count, excluded)
    assert [(s.path, s.text) for s in got[:len(found)]] == found
    assert used <= 200 and sum(count(f"# Related code from {p}:\n{t}\n") for p, t in found) <= used + 2 * len(found)
    # the generic snippets (code bodies) follow the definitions and do not repeat them
    assert all(s.text.count("def frobnicate") <= 1 for s in got)
    prompt = build_prompt(ctx, got, None)
    assert prompt.index("def frobnicate(widget") < prompt.index("File: shapes/report.py")

    # a smaller budget keeps the closest names that fit and stays within it
    found, used = definition_stubs(index.index, ctx.rel, "python", ctx.prefix, shown, 60, count, excluded)
    assert [p for p, _ in found] == ["shapes/core.py"] and used <= 60
    assert "def frobnicate(" in found[0][1] and "Gizmo:" not in found[0][1]  # the name closest to the cursor first
    small = index.snippets(ctx, read, excluded, budget_tokens=60, count_tokens=count)
    assert sum(count(f"# Related code from {s.path}:\n{s.text}\n\n") for s in small) <= 60 + len(small)
    tiny = index.snippets(ctx, read, excluded, budget_tokens=5, count_tokens=count)
    assert tiny == []  # not even one line fits
    # off: the generic snippets only, as before
    off = index.snippets(ctx, read, excluded, budget_tokens=0, count_tokens=count)
    assert all(":\n    ..." not in s.text for s in off) and any("total += widget.size" in s.text for s in off)


def test_a_definition_in_the_same_file_that_the_prompt_does_not_show_is_brought_in(index, runtime):
    from lsp_server.context import definition_stubs

    count = lambda text: len(runtime.tokenize(text, special=False))  # noqa: E731
    text = REPORT.replace("    return later_helper(total)\n", "    return later_helper(total)\n    \n")
    at = text.index("    \n", text.index("return later_helper")) + 4
    idx = index.index
    shown_without = text[:at]  # the prompt shows the file only up to the cursor
    found, used = definition_stubs(idx, "shapes/report.py", "python", text[:at], shown_without, 300, count, lambda rel: False)
    assert any("def later_helper(value: int) -> str:" in t for _, t in found)
    shown_with = text  # shown anyway (e.g. in the code after the cursor): not repeated
    found, _ = definition_stubs(idx, "shapes/report.py", "python", text[:at], shown_with, 300, count, lambda rel: False)
    assert not any("later_helper" in t for _, t in found)
    assert 0 < used <= 300


def test_the_context_budget_is_a_setting_that_switches_the_definitions_off():
    assert Settings().completion_context_tokens == 0  # off by default: on click it saved no typing (README)
    assert merge(Settings(), {"completionContextTokens": 256}, where="test").completion_context_tokens == 256
    with pytest.raises(Exception, match="at least 0"):
        merge(Settings(), {"completionContextTokens": -1}, where="test")


def test_only_names_the_code_uses_count_not_words_in_docstrings_strings_or_comments():
    from lsp_server.context import names_near_cursor

    prefix = ('def f(widget):\n    """Frobnicate the\n    gadget."""\n    label = "a sprocket"  # no cog\n'
              '    return widget.scaled(helper(label))\n    ')
    uses = {u.name: u for u in names_near_cursor(prefix)}
    assert {"widget", "scaled", "helper", "label"} <= set(uses)
    assert not {"Frobnicate", "gadget", "sprocket", "cog"} & set(uses)
    assert uses["scaled"].attribute and not uses["helper"].attribute


def test_typing_on_the_line_leaves_the_context_and_so_the_prompts_start_unchanged(index, runtime):
    count = lambda text: len(runtime.tokenize(text, special=False))  # noqa: E731
    read = lambda rel: (index.root / rel).read_text()  # noqa: E731
    ctx = cursor_context(index.root)
    typed = "return later_helper(total + frobnicate(big[1]))"
    prompts = []
    for n in range(len(typed) + 1):
        now = CompletionContext(ctx.rel, ctx.language, ctx.prefix + typed[:n], ctx.suffix)
        snippets = index.snippets(now, read, lambda rel: False, budget_tokens=256, count_tokens=count)
        prompts.append(build_prompt(now, snippets, None))
    assert "def frobnicate(widget" in prompts[0]
    for before, after in zip(prompts, prompts[1:]):
        assert after == before + after[-1]  # one more character at the end, nothing else changed
