"""No model call when none is needed, through the real server with the tiny model: typing along a shown
suggestion is served from it, a superseded request never reaches the model, generation stops at the
stop rules and within the time budget, and a suggestion never overwrites or repeats the code after the
cursor. Model calls are counted in the server's own log (one ``completion: N prompt tokens`` line each)."""

from __future__ import annotations

import asyncio
import re

import pytest
from lsprotocol import types as lsp

from lsp_support import WAIT_S, call, model_calls, suggest, write_script

BODY = "from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        "
AFTER = "\n    return out\n"


@pytest.mark.asyncio
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


@pytest.mark.asyncio
async def test_a_superseded_request_never_reaches_the_model(start_server, state, gate, tmp_path):
    # An agent task holds the model thread at the gate while five keystrokes arrive, so every request but
    # the newest is superseded while it still waits for the model (without the gate, a fast model could
    # take and finish a request before the next keystroke is read: then it was never superseded).
    script = write_script(tmp_path / "busy.json", [call("run", command=gate.command), call("submit", summary="done")])
    session = await start_server({"agentModel": script, "completionMaxTokens": 64, "completionMaxMs": 0})
    uri = session.open("calc/report.py", BODY + AFTER)
    task = session.start("swespot/task", {"request": "Wait at the gate"}, "busy")
    await gate.reached()  # the model thread is running the agent's command
    texts = [BODY + "out" + "x" * n + AFTER for n in range(5)]  # five keystrokes, each a new position
    futures = []
    for n, text in enumerate(texts):
        session.change(uri, text, 2 + n)
        params = {"textDocument": {"uri": uri}, "position": {"line": 6, "character": 8 + 3 + n}}
        futures.append(session.start("swespot/inlineCompletion", params, f"key-{n}"))
    await session.request("swespot/getStatus", {})  # answered after the server has read every keystroke
    await gate.open()
    assert (await asyncio.wait_for(task, WAIT_S))["exit"] == "submitted"
    answers = await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert all(a["items"] == [] for a in answers[:-1])  # superseded: nothing shown
    log = (state / "serve.log").read_text().splitlines()
    for n in range(4):  # each was superseded before the model thread took it
        mine = [line for line in log if f"#key-{n}" in line]
        assert not model_calls(state, f"#key-{n}"), mine
        assert any("cancelled before it started" in line for line in mine), mine
    assert len(model_calls(state, "#key-4")) == 1


@pytest.mark.asyncio
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


@pytest.mark.asyncio
async def test_generation_ends_within_the_time_budget(start_server, state):
    session = await start_server({"completionMaxTokens": 200, "completionMaxMs": 1})
    uri = session.open("calc/report.py", "def total(xs):\n")
    await suggest(session, uri, "def total(xs):\n", "", 2, msg_id="budget")
    line = model_calls(state, "#budget")[0]
    assert "time budget" in line and int(re.search(r"(\d+) generated", line).group(1)) < 20, line


@pytest.mark.asyncio
async def test_a_prompt_read_past_the_budget_gets_its_first_token_and_no_more(start_server, state):
    session = await start_server({"completionMaxTokens": 16, "completionMaxMs": 1})
    uri = session.open("calc/report.py", BODY + AFTER)
    await suggest(session, uri, BODY, AFTER, 2, msg_id="late")
    line = model_calls(state, "#late")[0]
    generated = int(re.search(r"(\d+) generated", line).group(1))
    assert generated <= 1 and ("time budget" in line or generated == 0), line


@pytest.mark.asyncio
async def test_the_cursor_at_rest_has_the_completion_prompt_read_before_the_first_keystroke_asks(start_server, state):
    session = await start_server({"completionMaxTokens": 8, "completionMaxMs": 5000})
    uri = session.open("calc/report.py", BODY + AFTER)
    at = lsp.Position(BODY.count("\n"), len(BODY.rsplit("\n", 1)[-1]))

    def code_actions(start: lsp.Position) -> lsp.CodeActionParams:
        return lsp.CodeActionParams(lsp.TextDocumentIdentifier(uri), lsp.Range(start, at), lsp.CodeActionContext(diagnostics=[]))

    await session.request(lsp.TEXT_DOCUMENT_CODE_ACTION, code_actions(lsp.Position(0, 0)))  # a selection: nothing read
    # the cursor at rest (VS Code asks for code actions there): the prompt is read while the user looks
    await session.request(lsp.TEXT_DOCUMENT_CODE_ACTION, code_actions(at))
    warmed = await wait_for_log(state, "warm-up at the cursor")
    assert len(warmed) == 1, warmed
    total, before, after = map(int, re.search(r"(\d+) prompt tokens, (\d+) were cached, (\d+) are now", warmed[0]).groups())
    assert before < after == total - 1
    assert model_calls(state) == []  # a warm-up is no completion: nothing generated, nothing shown
    await suggest(session, uri, BODY, AFTER, 2, msg_id="first")
    call = model_calls(state, "#first")[0]
    prompt, cached = int(re.search(r"(\d+) prompt tokens", call).group(1)), int(re.search(r"(\d+) cached", call).group(1))
    assert (prompt, cached) == (total, total - 1), call  # the first keystroke read nothing again


async def wait_for_log(state, text: str) -> list[str]:
    for _ in range(int(WAIT_S / 0.05)):
        lines = [line for line in (state / "serve.log").read_text().splitlines() if text in line]
        if lines:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {text!r} in the server's log")


def test_a_prompt_read_past_the_deadline_gives_its_first_token_and_leaves_the_cache_consistent(tiny_gguf_q8, monkeypatch):
    import threading

    import agent.generation as G
    import agent.runtime as R

    runtime = R.LlamaRuntime(tiny_gguf_q8, n_ctx=512, n_threads=1)
    prompt = "from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n" * 4
    expected = runtime.complete(prompt, max_tokens=8).text
    runtime.reset_cache()
    # a slow machine: every token in llama.cpp's cache took 10 ms to read, so the prompt alone ends past 0.5 s
    monkeypatch.setattr(G, "clock", lambda: runtime.n_cached * 0.01)
    stats: dict = {}
    first = "".join(runtime.generate(prompt, max_tokens=8, stats=stats, deadline=0.5, cancel=threading.Event()))
    assert stats["prompt_tokens"] * 0.01 > 0.5
    assert stats["finish_reason"] == "deadline" and stats["completion_tokens"] == 1
    assert first and expected.startswith(first)  # read whole, and its first token came: no more
    monkeypatch.setattr(G, "clock", G.time.perf_counter)
    again: dict = {}
    assert "".join(runtime.generate(prompt, max_tokens=8, stats=again)) == expected  # the cache stayed consistent
    assert again["cached_tokens"] == again["prompt_tokens"] - 1
