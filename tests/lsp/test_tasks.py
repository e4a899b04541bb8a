"""Agent tasks and code actions through the server: the change comes back as a versioned WorkspaceEdit
against the editor's buffers (never written to disk), and is refused when a buffer moved on. The agent
is the real loop with real tools; its model is the scripted one the agent package ships."""

from __future__ import annotations

import asyncio
import json

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from lsp_support import OPS, WAIT_S, apply_text_edits, call, write_script

pytestmark = pytest.mark.asyncio

BUFFER = "# unsaved note from the editor\n" + OPS  # the open document differs from the file on disk
MUL_TEST = "from calc.ops import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"


def fix_script(tmp_path) -> str:
    return write_script(tmp_path / "fix.json", [
        call("edit", path="calc/ops.py", old="    return a - b\n", new="    return a + b\n"),
        call("create_file", path="tests/test_mul.py", content=MUL_TEST),
        call("run", command="python -m pytest -q"),
        call("submit", summary="add adds; mul has a test"),
    ])


async def test_a_task_returns_a_versioned_workspace_edit_that_applies_cleanly_to_the_open_buffers(start_server, repo, tmp_path):
    session = await start_server({"agentModel": fix_script(tmp_path)})
    uri = session.open("calc/ops.py", BUFFER, version=7)
    result = await session.request("swespot/task", {"request": "Fix add and test mul", "taskId": "t1",
                                                    "textDocuments": [{"uri": uri, "version": 7}]})
    assert (result["taskId"], result["exit"]) == ("t1", "submitted")
    assert sorted(result["files"]) == ["calc/ops.py", "tests/test_mul.py"]
    changes = result["edit"]["documentChanges"]
    ops_edit = next(c for c in changes if c.get("textDocument", {}).get("uri") == uri)
    assert ops_edit["textDocument"]["version"] == 7
    assert apply_text_edits(BUFFER, ops_edit["edits"]) == BUFFER.replace("return a - b", "return a + b")
    new_uri = session.uri("tests/test_mul.py")
    assert {"kind": "create", "uri": new_uri, "options": {"overwrite": False, "ignoreIfExists": False}} in changes
    created = next(c for c in changes if c.get("textDocument", {}).get("uri") == new_uri)
    assert created["textDocument"]["version"] is None and apply_text_edits("", created["edits"]) == MUL_TEST
    assert "+    return a + b" in result["diff"] and result["usage"]["turns"] == 4
    # nothing was written behind the editor's back
    assert (repo / "calc" / "ops.py").read_text() == OPS and not (repo / "tests" / "test_mul.py").exists()


async def test_a_task_naming_a_stale_document_version_is_refused(start_server, tmp_path):
    session = await start_server({"agentModel": fix_script(tmp_path)})
    uri = session.open("calc/ops.py", BUFFER, version=7)
    with pytest.raises(JsonRpcException) as refused:
        await session.request("swespot/task", {"request": "Fix add", "textDocuments": [{"uri": uri, "version": 6}]})
    assert refused.value.code == -32803 and "version 7 on the server, not 6" in refused.value.message


async def test_an_edit_to_a_document_that_changed_while_the_agent_worked_is_refused(start_server, gate, tmp_path):
    script = write_script(tmp_path / "slow.json", [
        call("run", command=gate.command),  # the agent waits here until the test opens the gate
        call("edit", path="calc/ops.py", old="    return a - b\n", new="    return a + b\n"),
        call("submit", summary="fixed"),
    ])
    session = await start_server({"agentModel": script})
    uri = session.open("calc/ops.py", version=1)
    task = session.start("swespot/task", {"request": "Fix add", "textDocuments": [{"uri": uri, "version": 1}]}, "slow")
    await session.status(lambda s: s["state"] == "generating")
    session.change(uri, "# typed while the agent worked\n" + OPS, version=2)
    await gate.open()
    with pytest.raises(JsonRpcException) as refused:
        await task
    assert refused.value.code == -32803
    assert "changed while the agent worked on it (version 1 -> 2)" in refused.value.message


async def test_cancelling_a_task_stops_the_agent_before_its_next_step(start_server, gate, second_gate, tmp_path):
    script = write_script(tmp_path / "two-gates.json", [
        call("run", command=gate.command),  # cancelled while the agent waits here
        call("run", command=second_gate.command),  # would block until its timeout: it must never run
        call("submit", summary="should not get here"),
    ])
    session = await start_server({"agentModel": script})
    task = session.start("swespot/task", {"request": "Wait at two gates"}, "two-gates")
    await gate.reached()  # the agent is running its first command
    session.cancel("two-gates")
    await gate.open()
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(task, WAIT_S)
    assert (await session.request("swespot/getStatus", {}))["state"] == "ready"


async def test_completions_queued_behind_a_task_are_cancelled_or_superseded_and_the_newest_is_served(start_server, gate, tmp_path):
    script = write_script(tmp_path / "busy.json", [call("run", command=gate.command), call("submit", summary="done")])
    session = await start_server({"agentModel": script, "completionMaxTokens": 8})
    uri = session.open("calc/report.py")
    task = session.start("swespot/task", {"request": "Wait at the gate"}, "busy")
    await session.status(lambda s: s["state"] == "generating")
    params = {"textDocument": {"uri": uri}, "position": {"line": 3, "character": 14}}
    cancelled = session.start("swespot/inlineCompletion", params, "c-cancelled")
    session.cancel("c-cancelled")
    with pytest.raises(JsonRpcRequestCancelled):
        await cancelled  # answered while the model thread is still busy: it never ran
    older = session.start("swespot/inlineCompletion", params, "c-older")
    newer = session.start("swespot/inlineCompletion", params, "c-newer")
    await gate.open()
    assert (await task)["exit"] == "submitted"
    assert (await older)["items"] == []  # superseded by the newer request for the same document
    assert (await newer)["items"][0]["insertText"]


async def test_code_actions_are_offered_cheaply_and_a_fix_resolves_to_an_edit(start_server, tmp_path):
    session = await start_server({"agentModel": fix_script(tmp_path)})
    uri = session.open("calc/ops.py", BUFFER, version=3)
    diagnostic = lsp.Diagnostic(range=lsp.Range(lsp.Position(6, 4), lsp.Position(6, 16)), message="add subtracts")
    actions = await session.client.text_document_code_action_async(lsp.CodeActionParams(
        text_document=lsp.TextDocumentIdentifier(uri), range=lsp.Range(lsp.Position(6, 4), lsp.Position(6, 4)),
        context=lsp.CodeActionContext(diagnostics=[diagnostic])))
    titles = [a.title for a in actions]
    assert titles == ["SWE-Spot: Explain this", "SWE-Spot: Fix “add subtracts”", "SWE-Spot: Write a test for add"]
    # nothing ran yet (lsprotocol reads an action that carries a command as a Command: no edit field)
    assert all(getattr(a, "edit", None) is None for a in actions)
    fixed = await session.client.code_action_resolve_async(actions[1])
    ops_edit = next(c for c in fixed.edit.document_changes if isinstance(c, lsp.TextDocumentEdit) and c.text_document.uri == uri)
    assert ops_edit.text_document.version == 3
    edits = [{"range": {"start": {"line": e.range.start.line, "character": e.range.start.character},
                        "end": {"line": e.range.end.line, "character": e.range.end.character}}, "newText": e.new_text}
             for e in ops_edit.edits]
    assert "return a + b" in apply_text_edits(BUFFER, edits)


async def test_explain_runs_the_chat_agent_and_returns_its_answer_which_feedback_can_rate(start_server, state, tmp_path):
    script = write_script(tmp_path / "explain.json", ["add returns a - b, which is a bug."])
    session = await start_server({"agentModel": script})
    uri = session.open("calc/ops.py")
    data = {"action": "explain", "uri": uri, "range": {"start": {"line": 3, "character": 0}, "end": {"line": 5, "character": 0}}}
    answer = await session.client.workspace_execute_command_async(
        lsp.ExecuteCommandParams(command="swespot.explain", arguments=[data]))
    assert answer["text"] == "add returns a - b, which is a bug." and answer["exit"] == "answered"
    session.client.protocol.notify("swespot/feedback", {"id": answer["chatId"], "kind": "chat", "action": "rejected"})
    await session.request("swespot/getStatus", {})  # handled after the notification: it is recorded by now
    entry = json.loads((state / "feedback.jsonl").read_text().splitlines()[-1])
    assert entry["action"] == "rejected" and entry["served"]["text"] == answer["text"]  # what the user rated
