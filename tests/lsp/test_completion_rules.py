"""The inline completion's cheap rules, without a model: where generation stops, how a suggestion keeps
clear of the code after the cursor, and the cache that serves a suggestion while the user types along."""

from __future__ import annotations

import pytest

from lsp_server.completion import CompletionContext, SuggestionCache, fit_to_line_rest, stop_point, trim_completion


def ctx(prefix: str, suffix: str = "") -> CompletionContext:
    return CompletionContext("pkg/mod.py", "python", prefix, suffix)


def test_mid_line_a_completion_stops_at_the_line_end():
    c = ctx("def f(x):\n    return x +")
    assert stop_point(" 1", c) is None
    assert stop_point(" 1\n    y = 2", c) == 2


def test_at_a_complete_line_the_next_lines_are_one_block():
    c = ctx("def f(x):")
    assert stop_point("\n    y = x\n", c) is None
    text = "\n    y = x\n    return y\n\ndef g():\n"
    assert text[:stop_point(text, c)] == "\n    y = x\n    return y\n"


def test_at_a_line_start_generation_ends_with_the_indented_block():
    c = ctx("def f(x):\n    for i in x:\n        ")
    text = "print(i)\n        i += 1\n    return x\n"
    assert text[:stop_point(text, c)] == "print(i)\n        i += 1"
    assert stop_point("print(i)\n\n        more", c) is None  # a blank line does not end the block
    assert stop_point("a = 1\nb = 2\n", ctx("x = 0\n")) is None  # top level: no dedent can end it


@pytest.mark.parametrize("prefix, rest, model, shown", [
    ("print(len(x", ")", "s)", "s"),  # the model closes what the editor already closed
    ("print(len(x", "))", "s))", "s"),
    ("f(a, ", ")", "g(b), c)", "g(b), c"),  # its own brackets stay, the outer one goes
    ("f(a, ", ")", "b), z", "b"),  # past the closing bracket: the rest would be typed twice
    ("x = [1, ", "]", "2, 3", "2, 3"),
    ("s = 'ab", "'", "cd'", "cd"),
    ("d = {", "}", "'k': 1}", "'k': 1"),
])
def test_no_suggestion_repeats_the_code_after_the_cursor_on_its_line(prefix, rest, model, shown):
    c = ctx(prefix, rest + "\nnext_line()\n")
    fitted = fit_to_line_rest(model, c)
    assert fitted == shown
    line = prefix + fitted + rest  # the editor inserts: what followed the cursor is still there, once
    assert line.count(rest) == (prefix + shown + rest).count(rest) and not fitted.endswith(rest)


def test_no_suggestion_repeats_the_lines_after_the_cursor():
    c = ctx("def f(xs):\n    out = 0\n    ", "\n    return out\n")
    assert trim_completion("for x in xs:\n        out += x\n    return out", c) == "for x in xs:\n        out += x"


def test_typing_along_a_suggestion_is_served_from_the_cache():
    cache = SuggestionCache(size=2)
    cache.put("u", ctx("def f(x):\n    ret", "\n"), "urn x + 1")
    assert cache.get("u", ctx("def f(x):\n    ret", "\n")) == "urn x + 1"  # the same position
    assert cache.get("u", ctx("def f(x):\n    retu", "\n")) == "rn x + 1"  # typed along
    assert cache.get("u", ctx("def f(x):\n    return x", "\n")) == " + 1"
    assert cache.get("u", ctx("def f(x):\n    return x + 1", "\n")) is None  # all of it typed: ask again
    assert cache.get("u", ctx("def f(x):\n    retr", "\n")) is None  # typed something else
    assert cache.get("u", ctx("def f(x):\n    retu", "\nmore\n")) is None  # the code after the cursor changed
    assert cache.get("other", ctx("def f(x):\n    retu", "\n")) is None
    cache.put("u", ctx("a", ""), "")
    assert cache.get("u", ctx("a", "")) == ""  # the model had nothing here: not asked again
    cache.put("u", ctx("b", ""), "c")
    assert cache.get("u", ctx("def f(x):\n    ret", "\n")) is None  # the oldest went (size 2)
    cache.clear()
    assert cache.get("u", ctx("b", "")) is None
