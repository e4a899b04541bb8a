"""Code actions: "Explain this" (a chat), "Fix <diagnostic>" and "Write a test for <function>" (tasks).
Listing them is cheap and runs nothing; the agent runs when an action is resolved
(``codeAction/resolve``) or its command (``swespot.explain``, ``swespot.codeAction``) is executed.
Asked at an empty range (the cursor at rest), listing them also warms inline completion there
(``inline_completion.warm``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from lsprotocol import types as lsp

from agent.errors import SwespotError
from agent.index import parse_file
from lsp_server import protocol as P
from lsp_server.chat import chat
from lsp_server.documents import DocumentSnapshot
from lsp_server.inline_completion import warm_soon
from lsp_server.tasks import task

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer


def code_actions(ls: SwespotServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
    """The actions at a range; none for a document the model may not read (clients ask on every cursor
    move: that is not an error)."""
    uri = params.text_document.uri
    try:
        doc = ls.document(uri)
    except SwespotError:
        return []
    wanted = params.context.only
    resolve = _client_resolves_edits(ls)
    actions = []

    def offer(title: str, kind: str, data: P.CodeActionData, diagnostics=None) -> None:
        if wanted and not any(kind == w or kind.startswith(f"{w}.") for w in wanted):
            return
        raw = ls.converter.unstructure(data)
        if data.action == "explain":
            actions.append(lsp.CodeAction(title=title, kind=kind, command=lsp.Command(title=title, command=P.CMD_EXPLAIN, arguments=[raw])))
        elif resolve:
            actions.append(lsp.CodeAction(title=title, kind=kind, diagnostics=diagnostics, data=raw))
        else:
            actions.append(lsp.CodeAction(title=title, kind=kind, diagnostics=diagnostics,
                                          command=lsp.Command(title=title, command=P.CMD_CODE_ACTION, arguments=[raw])))

    offer("SWE-Spot: Explain this", "refactor.swespot.explain", P.CodeActionData("explain", uri, params.range, doc.version))
    for diagnostic in params.context.diagnostics:
        offer(f"SWE-Spot: Fix “{diagnostic.message[:60]}”", lsp.CodeActionKind.QuickFix,
              P.CodeActionData("fix", uri, diagnostic.range, doc.version, diagnostic=diagnostic), [diagnostic])
    symbol = function_at(ls, doc, params.range.start.line + 1)
    if symbol is not None:
        offer(f"SWE-Spot: Write a test for {symbol.qualname}", "refactor.swespot.writeTest",
              P.CodeActionData("writeTest", uri, params.range, doc.version, symbol=symbol.qualname))
    return actions


def _client_resolves_edits(ls: SwespotServer) -> bool:
    caps = ls.client_capabilities.text_document
    support = caps.code_action.resolve_support if caps and caps.code_action else None
    return bool(support and "edit" in support.properties)


def function_at(ls: SwespotServer, doc: DocumentSnapshot, line: int):
    """The function or method around ``line``. Editors ask for code actions at every cursor move, so
    the document's symbols are parsed once per version (parsing holds the GIL: 5-20 ms a file)."""
    key = (doc.uri, doc.version, len(doc.text))
    if ls.symbols[0] != key:
        try:
            index = parse_file(ls.rel(doc.path), doc.text)
        except Exception:  # no parser for this language: no test action
            index = None
        ls.symbols = (key, index)
    index = ls.symbols[1]
    symbol = index.enclosing(line) if index is not None else None
    return symbol if symbol is not None and symbol.kind in ("function", "method") else None


async def resolve_code_action(ls: SwespotServer, action: lsp.CodeAction) -> lsp.CodeAction:
    data = ls.parse(action.data, P.CodeActionData, "codeAction/resolve")
    result = await run_code_action(ls, data)
    action.edit = result.edit
    return action


async def run_code_action(ls: SwespotServer, data: P.CodeActionData) -> P.TaskResult:
    """Fix a diagnostic or write a test: a task whose request says what and where."""
    doc = ls.document(data.uri)
    rel = ls.rel(doc.path)
    code = ls.text_in_range(doc, data.range)
    if data.action == "fix":
        message = data.diagnostic.message if data.diagnostic else "the problem"
        request = (f"Fix this problem reported in {rel} at line {data.range.start.line + 1}: {message}\n"
                   f"The code there:\n```\n{code}\n```\nMake the smallest change that fixes it, then submit.")
    elif data.action == "writeTest":
        request = (f"Write a test for {data.symbol} in {rel}. Put it with the repository's other tests, run it, "
                   "make sure it passes, then submit.")
    else:
        raise SwespotError(f"{data.action!r} is not an action that edits; use {P.CMD_EXPLAIN}")
    versions = [lsp.VersionedTextDocumentIdentifier(version=doc.version or 0, uri=data.uri)] if data.version is not None else []
    if data.version is not None and data.version != doc.version:
        raise SwespotError(f"{rel} changed since the action was offered (version {data.version} -> {doc.version}); ask again")
    return await task(ls, P.TaskParams(request=request, text_documents=versions))


async def explain(ls: SwespotServer, data: P.CodeActionData) -> P.ChatResult:
    params = P.ChatParams(chat_id=f"explain-{uuid.uuid4().hex[:8]}", prompt="Explain what this code does and why.",
                          text_document=lsp.TextDocumentIdentifier(data.uri), range=data.range)
    return await chat(ls, params)


def register(server: SwespotServer) -> None:
    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION, lsp.CodeActionOptions(
        code_action_kinds=[lsp.CodeActionKind.QuickFix, "refactor.swespot"], resolve_provider=True))
    async def on_code_action(ls: SwespotServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        if params.range.start == params.range.end:  # the cursor came to rest here
            warm_soon(ls, params.text_document.uri, params.range.start)
        return await ls.serve(lsp.TEXT_DOCUMENT_CODE_ACTION, lambda: code_actions(ls, params))

    @server.feature(lsp.CODE_ACTION_RESOLVE)
    async def on_code_action_resolve(ls: SwespotServer, action: lsp.CodeAction) -> lsp.CodeAction:
        return await ls.serve(lsp.CODE_ACTION_RESOLVE, lambda: resolve_code_action(ls, action))

    # (``ls`` unannotated in commands: pygls evaluates a command handler's annotations at run time, and
    # SwespotServer is only imported for the type checker here)
    @server.command(P.CMD_EXPLAIN)
    async def on_explain(ls, *args: Any) -> P.ChatResult:
        return await ls.serve(P.CMD_EXPLAIN, lambda: explain(ls, ls.parse(_first(args), P.CodeActionData, P.CMD_EXPLAIN)))

    @server.command(P.CMD_CODE_ACTION)
    async def on_run_code_action(ls, *args: Any) -> P.TaskResult:
        return await ls.serve(P.CMD_CODE_ACTION,
                              lambda: run_code_action(ls, ls.parse(_first(args), P.CodeActionData, P.CMD_CODE_ACTION)))


def _first(args: tuple) -> Any:
    return args[0] if args else None
