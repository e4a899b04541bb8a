"""What a confused or hostile client sends the real ``swespot serve`` (issue 17): requests before
``initialize``, a lone surrogate, wrong ``Content-Length`` headers, requests without ``params``, versions
that go back. Each gets a clean answer, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient
from pytest_lsp.client import register_lsp_features

from lsp_server.protocol import make_converter
from lsp_support import CAPABILITIES, PROBE, ROOT, WAIT_S, Session, write_script

pytestmark = pytest.mark.asyncio


def frame(body: bytes, length: int | None = None) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def request_body(msg_id: str, method: str, params=None) -> bytes:
    message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def expect(session: Session, msg_id: str):
    """The future of the answer to ``msg_id``, for a request written by hand."""
    import concurrent.futures

    future = concurrent.futures.Future()
    session.client.protocol._request_futures[msg_id] = future
    return asyncio.wrap_future(future)


def write(session: Session, data: bytes) -> None:
    session.client._server.stdin.write(data)


async def test_requests_before_initialize_are_refused_cleanly_and_the_server_then_loads(repo, state, state_root, tiny_gguf_q8, tmp_path):
    client = LanguageClient(converter_factory=make_converter)
    register_lsp_features(client)
    session = Session(client, repo, tmp_path / "probe.txt")
    client.feature("swespot/status")(lambda params: session.record("swespot/status", params))
    client.set_configuration({"swespot": {"threads": 1, "contextSize": 4096}})
    env = {**os.environ, "SWESPOT_STATE_DIR": str(state_root), "PYTHONPATH": str(ROOT)}
    await client.start_io(sys.executable, "-c", PROBE, str(session.probe), "serve", "--model", str(tiny_gguf_q8),
                          "--repo", str(repo), env=env)
    try:
        uri = (repo / "calc" / "ops.py").as_uri()
        early = {"swespot/chat": {"chatId": "early", "prompt": "What does add do?"},
                 "textDocument/inlineCompletion": {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0},
                                                   "context": {"triggerKind": 1}},
                 "swespot/getStatus": {}}
        for n, (method, params) in enumerate(early.items()):
            answer = expect(session, f"early-{n}")  # (the client library itself refuses to send before initialize)
            write(session, frame(request_body(f"early-{n}", method, params)))
            with pytest.raises(JsonRpcException) as info:
                await asyncio.wait_for(answer, WAIT_S)
            assert info.value.code == -32002 and "before initialize" in info.value.message
            assert "Traceback" not in json.dumps(info.value.data or "")
        await client.initialize_session(lsp.InitializeParams(capabilities=CAPABILITIES, root_uri=repo.as_uri()))
        ready = await session.status(lambda s: s["state"] == "ready" and s.get("model"))  # not "loading" forever
        assert ready["model"] == tiny_gguf_q8.name
        assert (await session.request("swespot/getStatus", {}))["state"] == "ready"
        await client.shutdown_session()
    finally:
        await client.stop()


async def test_a_lone_surrogate_in_a_prompt_is_answered_not_a_traceback(start_server, tmp_path):
    session = await start_server({"agentModel": write_script(tmp_path / "a.json", ["add returns a - b."])})
    # "\udc80" is valid JSON and not valid Unicode; json.dumps cannot even write it, so write it by hand
    body = b'{"jsonrpc": "2.0", "id": "s1", "method": "swespot/chat", "params": {"chatId": "s", "prompt": "why \\udc80?"}}'
    answer = expect(session, "s1")
    write(session, frame(body))
    result = await asyncio.wait_for(answer, WAIT_S)
    assert result["chatId"] == "s" and result["text"] == "add returns a - b."
    task = b'{"jsonrpc": "2.0", "id": "s2", "method": "swespot/task", "params": {"request": "fix \\udc80", "maxSteps": 1}}'
    answer = expect(session, "s2")
    write(session, frame(task))
    assert (await asyncio.wait_for(answer, WAIT_S))["exit"]  # answered, whatever the scripted agent did


async def test_after_a_wrong_content_length_the_server_resynchronises(start_server):
    session = await start_server()
    status = request_body("a", "swespot/getStatus", {})
    # too long: the body would swallow the next message's header
    answers = [expect(session, "a"), expect(session, "b")]
    write(session, frame(status, len(status) + 10) + frame(request_body("b", "swespot/getStatus", {})))
    assert [(await asyncio.wait_for(a, WAIT_S))["state"] for a in answers] == ["ready", "ready"]
    # too short: the cut body is answered with a parse error naming its id; the next request is served
    cut, after = expect(session, "c"), expect(session, "d")
    body = request_body("c", "swespot/getStatus", {})
    write(session, frame(body, len(body) - 5) + frame(request_body("d", "swespot/getStatus", {})))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(cut, WAIT_S)
    assert info.value.code == -32700 and "Content-Length" in info.value.message
    assert (await asyncio.wait_for(after, WAIT_S))["state"] == "ready"
    # too long, and nothing follows: answered once the body stops arriving (not a silent hang)
    late = expect(session, "e")
    body = request_body("e", "swespot/getStatus", {})
    write(session, frame(body, len(body) + 40))
    assert (await asyncio.wait_for(late, WAIT_S))["state"] == "ready"
    assert (await session.request("swespot/getStatus", {}))["state"] == "ready"


async def test_requests_without_params_are_served(start_server):
    session = await start_server()
    answers = {m: expect(session, f"np-{m}") for m in ("swespot/getStatus", "swespot/adapters", "swespot/retrain")}
    for method in answers:
        write(session, frame(request_body(f"np-{method}", method)))  # no "params" at all: valid JSON-RPC
    assert (await asyncio.wait_for(answers["swespot/getStatus"], WAIT_S))["state"] == "ready"
    assert (await asyncio.wait_for(answers["swespot/adapters"], WAIT_S))["versions"] == []
    with pytest.raises(JsonRpcException) as info:  # refused for its own reason, not for the missing params
        await asyncio.wait_for(answers["swespot/retrain"], WAIT_S)
    assert "background training is paused" in info.value.message


async def test_a_change_to_an_older_version_is_refused_and_so_is_a_task_naming_it(start_server, tmp_path):
    session = await start_server({"agentModel": write_script(tmp_path / "t.json", ["nothing to do"])})
    uri = session.open("calc/ops.py", version=5)
    session.change(uri, "def add(a, b):\n    return 'rolled back'\n", version=3)
    with pytest.raises(JsonRpcException) as info:
        await session.request("swespot/task", {"request": "tidy", "textDocuments": [{"uri": uri, "version": 3}]})
    assert "at version 5 on the server, not 3" in info.value.message
    logged = [m.message for m in session.client.log_messages if "versions never go back" in m.message]
    assert logged and "version 3" in logged[0]
    session.change(uri, "def add(a, b):\n    return a + b\n", version=6)  # moving on still works
    result = await session.request("swespot/task", {"request": "tidy", "textDocuments": [{"uri": uri, "version": 6}]})
    assert result["exit"]
