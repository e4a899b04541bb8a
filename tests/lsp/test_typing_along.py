"""No model call when none is needed, through the real server with the tiny model: typing along a shown
suggestion is served from it, a superseded request never reaches the model, generation stops at the
stop rules and within the time budget, and a suggestion never overwrites or repeats the code after the
cursor. Model calls are counted in the server's own log (one ``completion: N prompt tokens`` line each)."""

from __future__ import annotations

import asyncio
import re

import pytest

from lsp_support import WAIT_S, model_calls, suggest

pytestmark = pytest.mark.asyncio

BODY = "from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        "
AFTER = "\n    return out\n"


async def test_typing_along_a_suggestion_asks_the_model_nothing(start_server, state):
    session = await start_server({"completionMaxTokens": 24, "completionMaxMs": 0})
    uri = session.open("calc/report.py", BODY + AFTER)
    shown = await suggest(session, uri, BODY, AFTER, 2)
    assert len(shown) >= 3, f"the tiny model suggested too little to type along: {shown!r}"
    calls = len(model_calls(state))
    assert calls == 1
    for n in range(1, len(shown)):  # the user types the suggestion's characters one by one
        rest = await suggest(session, uri, BODY + shown[:n], AFTER, 2 + n)
        assert rest == shown[n:]
    assert len(model_calls(state)) == calls, "typing along the suggestion asked the model"
    # back at a position seen before: its answer comes from the cache too
    version = 2 + len(shown)  # newer than every change above (an older version is refused)
    assert await suggest(session, uri, BODY, AFTER, version) == shown
    assert len(model_calls(state)) == calls
    # typing something else asks the model again
    await suggest(session, uri, BODY + "zz", AFTER, version + 1)
    assert len(model_calls(state)) == calls + 1


async def test_a_superseded_request_never_reaches_the_model(start_server, state):
    session = await start_server({"completionMaxTokens": 64, "completionMaxMs": 0})
    uri = session.open("calc/report.py", BODY + AFTER)
    texts = [BODY + "out" + "x" * n + AFTER for n in range(5)]  # five keystrokes, each a new position
    futures = []
    for n, text in enumerate(texts):
        session.change(uri, text, 2 + n)
        params = {"textDocument": {"uri": uri}, "position": {"line": 6, "character": 8 + 3 + n}}
        futures.append(session.start("swespot/inlineCompletion", params, f"key-{n}"))
    answers = await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert all(a["items"] == [] for a in answers[:-1])  # superseded: nothing shown
    log = (state / "serve.log").read_text().splitlines()
    for n in range(1, 4):  # the middle ones were superseded before the model thread took them
        mine = [line for line in log if f"#key-{n}" in line]
        generated = [int(m.group(1)) for line in mine if (m := re.search(r"prompt tokens, (\d+) generated", line))]
        assert all(g == 0 for g in generated), mine
        assert any("cancelled before it started" in line or "0 generated, cancelled" in line for line in mine), mine
    assert len(model_calls(state, "#key-4")) == 1


async def test_mid_line_generation_stops_at_the_line_end_and_keeps_the_closing_bracket_once(start_server, state):
    session = await start_server({"completionMaxTokens": 64, "completionMaxMs": 0})
    uri = session.open("calc/report.py", BODY + AFTER)
    typed = BODY + "out = add(out, "
    shown = await suggest(session, uri, typed, ")" + AFTER, 2, msg_id="mid")
    assert "\n" not in shown, shown
    depth = 0  # the suggestion never closes the bracket the ')' after the cursor already closes
    for ch in shown:
        depth += (ch in "([{") - (ch in ")]}")
        assert depth >= 0, shown
    line = model_calls(state, "#mid")[0]
    assert "stop rule" in line or int(re.search(r"(\d+) generated", line).group(1)) < 64, line


async def test_generation_ends_within_the_time_budget(start_server, state):
    session = await start_server({"completionMaxTokens": 200, "completionMaxMs": 1})
    uri = session.open("calc/report.py", "def total(xs):\n")
    await suggest(session, uri, "def total(xs):\n", "", 2, msg_id="budget")
    line = model_calls(state, "#budget")[0]
    assert "time budget" in line and int(re.search(r"(\d+) generated", line).group(1)) < 20, line
