"""``swespot/chat``: a question about the workspace, answered by the agent with its read-only tools,
the reply streamed as ``swespot/chatDelta`` notifications while it is written."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from lsprotocol import types as lsp

from lsp_server import protocol as P
from lsp_server.agents import final_answer, run_chat, tool_note
from lsp_server.documents import DocumentSnapshot
from lsp_server.model_thread import agent_model, run_model_job

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer


DeltaKind = Literal["text", "tool"]


class DeltaStream:
    """Coalesces streamed pieces (one per token) into a notification at most every ``interval`` seconds:
    a client drawing a chat gains nothing from 1000 messages a second, and would fall behind. The first
    piece goes out at once: the time to the first token is what the user feels."""

    def __init__(self, send: Callable[[str, DeltaKind], None], interval: float = 0.03) -> None:
        self.send = send
        self.interval = interval
        self.text = ""
        self.kind: DeltaKind = "text"
        self.last = float("-inf")

    def push(self, text: str, kind: DeltaKind = "text") -> None:
        if not text:
            return
        if kind != self.kind:
            self.flush()
            self.kind = kind
        self.text += text
        if time.perf_counter() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.text:
            self.send(self.text, self.kind)
            self.text = ""
        self.last = time.perf_counter()


async def chat(ls: SwespotServer, params: P.ChatParams) -> P.ChatResult:
    question = params.prompt
    if params.text_document is not None:
        doc = ls.document(params.text_document.uri)
        question = f"{question}\n\n{document_context(ls, doc, params.range)}"
    history = [{"role": m.role, "content": m.content} for m in params.history]
    max_steps = params.max_steps or ls.settings.chat_max_steps
    max_tokens = params.max_tokens or ls.settings.chat_max_tokens
    result = await run_model_job(ls, lambda cancel: _chat_job(ls, params, question, history, max_steps, max_tokens, cancel),
                                 kind="chat")
    if result is None:
        raise asyncio.CancelledError()
    ls.served.remember(params.chat_id, {"kind": "chat", "prompt": params.prompt, "text": result.text,
                                        "adapter": result.adapter})
    return result


def _chat_job(ls: SwespotServer, params: P.ChatParams, question: str, history: list[dict], max_steps: int,
              max_tokens: int, cancel: threading.Event) -> P.ChatResult | None:
    """The chat's run on the model thread; None when it was cancelled."""
    stream = DeltaStream(lambda text, kind: ls.notify_soon(P.CHAT_DELTA, P.ChatDelta(params.chat_id, text, kind)))
    model = agent_model(ls, cancel, stream.push, max_tokens)
    streams = ls.settings.agent_model == ""
    seen: list[dict] = []

    def on_message(message: dict) -> None:
        seen.append(message)
        if message["role"] == "tool":
            stream.push(tool_note(seen, message) or "", "tool")
        elif message["role"] == "assistant" and not streams:
            stream.push(message.get("content") or "")  # backends that do not stream: the whole turn
        stream.flush()
        assert ls.heartbeat is not None
        ls.heartbeat.beat()

    ls.set_state("generating")
    try:
        result = run_chat(model, ls.editor_workspace(ls.open_documents()), question, history=history,
                          max_steps=max_steps, cancel=cancel, on_message=on_message)
    finally:
        stream.flush()
        ls.set_state("ready")
    if result.exit == "cancelled":
        return None
    usage = P.Usage(result.prompt_tokens, result.completion_tokens, result.steps)
    exit = "answered" if result.exit == "submitted" else result.exit
    return P.ChatResult(params.chat_id, final_answer(result), usage, exit, ls.adapter_name)


def document_context(ls: SwespotServer, doc: DocumentSnapshot, rng: lsp.Range | None) -> str:
    """The editor's file (and selection) as a line of the question."""
    rel = ls.rel(doc.path)
    if rng is None:
        return f"The user has {rel} open."
    text = ls.text_in_range(doc, rng)
    return f"The user selected lines {rng.start.line + 1}-{rng.end.line + 1} of {rel}:\n```\n{text}\n```"


def register(server: SwespotServer) -> None:
    @server.feature(P.CHAT)
    async def on_chat(ls: SwespotServer, params: Any) -> P.ChatResult:
        return await ls.serve(P.CHAT, lambda: chat(ls, ls.parse(params, P.ChatParams, P.CHAT)))
