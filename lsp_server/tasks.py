"""``swespot/task``: the agent changes a scratch copy of the workspace, and the client gets the change
as a ``WorkspaceEdit`` (the server never writes the user's files), refused when the documents it
applies to changed meanwhile."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import TYPE_CHECKING, Any

from lsprotocol import types as lsp

from agent.errors import SwespotError
from lsp_server import protocol as P
from lsp_server.agents import run_task, scratch_snapshot
from lsp_server.documents import build_workspace_edit
from lsp_server.model_thread import agent_model, run_model_job

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer


async def task(ls: SwespotServer, params: P.TaskParams) -> P.TaskResult:
    task_id = params.task_id or f"task-{uuid.uuid4().hex[:12]}"
    check_versions(ls, params.text_documents)
    snapshots = ls.open_documents()
    source = ls.editor_workspace(snapshots)
    max_steps = params.max_steps or ls.settings.task_max_steps

    def job(cancel: threading.Event):
        model = agent_model(ls, cancel, None, ls.settings.chat_max_tokens)
        ls.set_state("generating")
        try:
            with scratch_snapshot(source, snapshots) as scratch:
                return run_task(model, scratch, params.request, max_steps=max_steps, cancel=cancel,
                                on_message=lambda _m: ls.heartbeat.beat() if ls.heartbeat else None)
        finally:
            ls.set_state("ready")

    run = await run_model_job(ls, job)
    if run is None or run.result.exit == "cancelled":
        raise asyncio.CancelledError()
    assert ls.repo is not None
    # the versions are checked against the documents as they are *now*, after the agent's run
    edit = build_workspace_edit(ls.repo, run.changes, snapshots, ls.current_documents(),
                                ls.workspace.position_encoding or lsp.PositionEncodingKind.Utf16)
    result = run.result
    ls.served.remember(task_id, {"kind": "task", "request": params.request, "diff": result.diff})
    return P.TaskResult(task_id, result.summary, result.exit, edit, result.diff,
                        P.Usage(result.prompt_tokens, result.completion_tokens, result.steps),
                        [c.rel for c in run.changes])


def check_versions(ls: SwespotServer, expected: list[lsp.VersionedTextDocumentIdentifier]) -> None:
    """Refuse a task when the client's idea of a document's version is not the server's."""
    for item in expected:
        doc = ls.open_document(item.uri)
        if doc is None:
            raise SwespotError(f"{item.uri} is not open in the editor")
        if doc.version != item.version:
            raise SwespotError(f"{item.uri} is at version {doc.version} on the server, not {item.version}: the "
                               "document changed since the request was made; try again")


def register(server: SwespotServer) -> None:
    @server.feature(P.TASK)
    async def on_task(ls: SwespotServer, params: Any) -> P.TaskResult:
        return await ls.serve(P.TASK, lambda: task(ls, ls.parse(params, P.TaskParams, P.TASK)))
