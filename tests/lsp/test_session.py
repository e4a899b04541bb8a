"""The server's life cycle and its two model features on the tiny model: chat and inline completion."""

from __future__ import annotations

import asyncio
import json

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcRequestCancelled

from lsp_support import WAIT_S, inline_params

pytestmark = pytest.mark.asyncio


async def test_initialize_announces_features_and_status_and_shutdown_exits_cleanly(start_server, state):
    session = await start_server(init_options={"threads": 1})  # settings in initializationOptions too
    assert session.statuses_before_initialized == 0  # the first status comes after the initialize answer
    caps = session.initialized.capabilities
    assert session.initialized.server_info.name == "swespot"
    assert caps.inline_completion_provider and caps.code_action_provider.resolve_provider
    assert set(caps.execute_command_provider.commands) >= {"swespot.explain", "swespot.codeAction"}
    assert caps.text_document_sync.change == lsp.TextDocumentSyncKind.Incremental
    status = await session.status(lambda s: s["state"] == "ready")
    assert status["model"] == "tiny-q8_0.gguf" and "adapter" not in status  # no adapter published yet
    assert status["daemon"] == {"enabled": False, "running": False, "available": True}
    got = await session.request("swespot/getStatus", {})
    assert got["state"] == "ready" and got["model"] == "tiny-q8_0.gguf"
    await session.client.shutdown_session()
    assert session.client._server.returncode == 0
    log = (state / "serve.log").read_text()
    assert "[swespot/getStatus#" in log  # every request is tagged with its id in the log
    assert session.torch_modules_seen() == []


async def test_chat_streams_deltas_and_returns_the_final_text_with_usage(start_server, state):
    session = await start_server({"chatMaxTokens": 24, "chatMaxSteps": 1})
    result = await session.request("swespot/chat", {"chatId": "c1", "prompt": "What does add do?"})
    assert result["chatId"] == "c1" and result["exit"] in ("answered", "limits")
    assert 0 < result["usage"]["completionTokens"] <= 24 and result["usage"]["turns"] == 1
    streamed = "".join(d["text"] for d in session.notes["swespot/chatDelta"] if d["chatId"] == "c1" and d["kind"] == "text")
    assert result["text"].strip() and result["text"].strip()[:10] in streamed  # the reply came as deltas too
    assert await session.status(lambda s: s["state"] == "generating")
    heartbeat = json.loads((state / "heartbeat.json").read_text())  # the daemon's sign that the editor waits
    assert heartbeat["generating"] is False and heartbeat["updated_at"] > 0


async def test_cancelling_a_chat_stops_its_generation(start_server):
    session = await start_server({"chatMaxTokens": 15000, "contextSize": 16384, "chatMaxSteps": 1})
    question = {"prompt": "Tell me everything."}
    whole = await session.request("swespot/chat", {"chatId": "whole", **question})  # greedy: the same reply each time
    chat = session.start("swespot/chat", {"chatId": "cut", **question}, msg_id="chat-cut")
    await session.wait_for("swespot/chatDelta", lambda d: d["chatId"] == "cut")
    session.cancel("chat-cut")
    with pytest.raises(JsonRpcRequestCancelled):
        await chat
    # the model thread runs one job at a time: once this answers, the cancelled chat has really ended
    uri = session.open("calc/report.py")
    await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    streamed = "".join(d["text"] for d in session.notes["swespot/chatDelta"] if d["chatId"] == "cut")
    assert 0 < len(streamed) < len(whole["text"]) / 2, "the chat went on generating after it was cancelled"


async def test_inline_completion_returns_an_item_at_the_cursor_by_both_methods(start_server):
    session = await start_server({"completionMaxTokens": 16})
    uri = session.open("calc/report.py")
    standard = await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    assert isinstance(standard, lsp.InlineCompletionList) and len(standard.items) == 1
    item = standard.items[0]
    assert item.insert_text and item.range == lsp.Range(lsp.Position(3, 14), lsp.Position(3, 14))
    assert item.command.command == "swespot.completionAccepted"
    custom = await session.request("swespot/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": 3, "character": 14}})
    # greedy decoding of the same prompt: the second request (which reuses the KV cache) says the same
    assert custom["items"][0]["insertText"] == item.insert_text


async def test_a_debounced_completion_answers_at_once_when_the_next_keystroke_supersedes_it(start_server):
    session = await start_server({"completionDebounceMs": 600_000})  # a wait no test could sit out
    uri = session.open("calc/report.py")
    params = {"textDocument": {"uri": uri}, "position": {"line": 3, "character": 14}}
    older = session.start("swespot/inlineCompletion", params, "typed-1")
    newer = session.start("swespot/inlineCompletion", params, "typed-2")
    assert (await asyncio.wait_for(older, WAIT_S))["items"] == []  # superseded while it waited: no model work
    session.cancel("typed-2")  # the editor moves on: the waiting request is cancelled
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(newer, WAIT_S)


async def test_no_completion_is_asked_for_in_the_middle_of_code(start_server):
    session = await start_server()
    uri = session.open("calc/report.py")
    inside_word = await session.client.text_document_inline_completion_async(inline_params(uri, 3, 6))  # "def to|tal(xs):"
    assert not inside_word.items
