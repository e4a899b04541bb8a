"""Adapters, settings, feedback, the daemon, and what a misbehaving client sends: every bad request gets
an error, and the server keeps serving."""

from __future__ import annotations

import json

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcMethodNotFound

from lsp_support import inline_params

pytestmark = pytest.mark.asyncio


async def test_a_newly_published_adapter_is_hot_swapped_and_announced(start_server, state, tiny_adapter_dir):
    from trainer.store import AdapterStore, write_status

    session = await start_server()
    uri = session.open("calc/report.py")
    before = await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    AdapterStore(state).publish(tiny_adapter_dir)
    swapped = await session.status(lambda s: (s.get("adapter") or {}).get("version") == "v0001")
    assert swapped["adapter"]["commit"] == "0123456789abcdef"
    assert swapped["message"].startswith("switched to adapter v0001 (commit 0123456789ab)") and swapped["swapMs"] >= 0
    after = await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    assert before.items and after.items  # the adapter serves (its output may or may not differ)
    write_status(state, phase="training", progress=0.5)
    daemon = await session.status(lambda s: s["daemon"].get("phase") == "training")
    assert daemon["daemon"]["progress"] == 0.5


async def test_background_training_starts_the_daemon_and_turning_it_off_or_shutting_down_stops_it(start_server, state):
    from trainer.daemon import lock_holder

    session = await start_server({"backgroundTraining": True})
    status = await session.status(lambda s: s["daemon"]["running"])
    assert status["daemon"]["enabled"] and status["daemon"]["available"]
    await session.status(lambda s: s["state"] == "ready")
    mark = session.mark()
    session.client.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"swespot": {"backgroundTraining": False}}))
    await session.status(lambda s: not s["daemon"]["enabled"] and not s["daemon"]["running"], since=mark)
    assert lock_holder(state) is None  # the daemon process is gone (the kernel released its lock)
    mark = session.mark()
    session.client.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"swespot": {"backgroundTraining": True}}))
    await session.status(lambda s: s["daemon"]["running"], since=mark)
    await session.client.shutdown_session()
    assert lock_holder(state) is None  # shutting the server down stopped the daemon it started
    assert session.torch_modules_seen() == []  # finding the daemon command imported no torch either


async def test_unknown_settings_are_reported_and_the_defaults_kept(start_server):
    session = await start_server({"contextSise": 2048})
    status = await session.status(lambda s: s.get("error"))
    assert "unknown setting(s) contextSise" in status["error"]


async def test_a_setting_below_its_minimum_is_refused_with_a_reason_and_the_server_keeps_serving(start_server):
    session = await start_server()
    mark = session.mark()
    session.client.workspace_did_change_configuration(  # polling the store without pause would spin a core
        lsp.DidChangeConfigurationParams(settings={"swespot": {"adapterPollS": 0}}))
    status = await session.status(lambda s: s.get("error"), since=mark)
    assert "swespot.adapterPollS must be at least 0.01, got 0" in status["error"]
    uri = session.open("calc/report.py")
    assert (await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))).items


async def test_a_model_setting_that_cannot_be_loaded_is_reported_and_the_loaded_model_keeps_serving(start_server, tmp_path):
    session = await start_server()
    uri = session.open("calc/report.py")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))  # a damaged download
    session.client.workspace_did_change_configuration(
        lsp.DidChangeConfigurationParams(settings={"swespot": {"model": str(broken)}}))
    status = await session.status(lambda s: "broken.gguf" in (s.get("error") or ""))
    assert status["model"] == "tiny-q8_0.gguf" and status["state"] == "ready"
    assert (await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))).items
    assert (await session.request("swespot/getStatus", {}))["model"] == "tiny-q8_0.gguf"


async def test_feedback_goes_to_a_journal_in_the_state_dir_and_can_be_turned_off(start_server, state):
    session = await start_server()
    uri = session.open("calc/report.py")
    item = (await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))).items[0]
    completion_id = item.command.arguments[0]
    session.client.protocol.notify("swespot/feedback", {"id": completion_id, "kind": "inlineCompletion", "action": "accepted", "uri": uri})
    await session.request("swespot/getStatus", {})  # handled after the notification: it is recorded by now
    entries = [json.loads(line) for line in (state / "feedback.jsonl").read_text().splitlines()]
    assert entries[-1]["id"] == completion_id and entries[-1]["action"] == "accepted"
    assert entries[-1]["served"]["text"] == item.insert_text  # what was shown, for the trainer
    session.client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(settings={"swespot": {"feedbackLogging": False}}))
    session.client.protocol.notify("swespot/feedback", {"id": completion_id, "kind": "inlineCompletion", "action": "rejected"})
    await session.request("swespot/getStatus", {})
    assert len((state / "feedback.jsonl").read_text().splitlines()) == len(entries)


async def test_malformed_requests_get_errors_and_the_server_keeps_serving(start_server, repo, state):
    session = await start_server({"excludedPaths": ["secrets"]})
    uri = session.open("calc/report.py")
    position = {"line": 3, "character": 14}

    async def refused(method: str, params, error=JsonRpcException) -> str:
        with pytest.raises(error) as info:
            await session.request(method, params)
        return info.value.message

    assert "required field missing @ $.prompt" in await refused("swespot/chat", {"chatId": "x"}, JsonRpcInvalidParams)
    assert "expected an object" in await refused("swespot/task", ["not", "an", "object"], JsonRpcInvalidParams)
    assert "'max_steps' must be >= 1: 0" in await refused("swespot/task", {"request": "x", "maxSteps": 0}, JsonRpcInvalidParams)
    assert "'max_tokens' must be >= 1: -5" in await refused("swespot/chat", {"chatId": "x", "prompt": "hi", "maxTokens": -5},
                                                           JsonRpcInvalidParams)
    # a standard method whose params pygls cannot parse is answered too (pygls alone would drop it)
    no_position = json.dumps({"jsonrpc": "2.0", "id": "bad-1", "method": "textDocument/inlineCompletion",
                              "params": {"textDocument": {"uri": uri}}}).encode()
    with pytest.raises(JsonRpcInvalidParams, match="invalid parameters for textDocument/inlineCompletion"):
        await session.send_raw(no_position, "bad-1")
    await refused("swespot/noSuchMethod", {}, JsonRpcMethodNotFound)
    unknown = (repo / "calc" / "nope.py").as_uri()
    assert "is not open" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": unknown}, "position": position})
    session.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        lsp.TextDocumentItem(uri="untitled:1", language_id="python", version=1, text="def f():\n")))
    assert "not a file URI" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": "untitled:1"}, "position": position})
    secret = session.open("secrets/keys.py")
    assert "excluded" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": secret}, "position": {"line": 0, "character": 3}})
    huge = session.open("calc/huge.py", "x = 1\n" * 400_000)
    assert "too large" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": huge}, "position": position})
    surrogate = session.open("calc/bad.py", "x = '\udcff'\n")
    assert "not valid UTF-8" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": surrogate}, "position": position})
    raw_uri = (repo / "calc" / "raw.py").as_uri()
    body = (b'{"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": "'
            + raw_uri.encode() + b'", "languageId": "python", "version": 1, "text": "x = \'\xff\xfe\'\\n"}}}')
    session.send_raw(body)  # a document whose text holds bytes that are not UTF-8
    assert "not valid UTF-8" in await refused("swespot/inlineCompletion", {"textDocument": {"uri": raw_uri}, "position": position})
    # and after all that, it still serves
    served = await session.client.text_document_inline_completion_async(inline_params(uri, 3, 14))
    assert served.items
    # each refusal is one line of the log, not pygls' ERROR with a traceback (they are answers, not faults)
    log = (state / "serve.log").read_text()
    assert log.count("refused after") >= 8 and "Exception occurred for message" not in log
