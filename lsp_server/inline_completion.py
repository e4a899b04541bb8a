"""Inline completion as the editor asks for it: ``textDocument/inlineCompletion`` (LSP 3.18) and
``swespot/inlineCompletion`` for older clients. The request side lives here (debounce, superseding,
the suggestion cache, the model call with its stop rules and time budget); what to show the model and
how to trim its answer are the plain rules of ``lsp_server.completion``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from lsprotocol import types as lsp

from agent.errors import SwespotError
from lsp_server import protocol as P
from lsp_server.completion import (
    CompletionContext,
    build_prompt,
    fit_to_line_rest,
    serving_fim,
    stop_point,
    stop_strings,
    trim_completion,
    worth_completing,
)
from lsp_server.documents import DocumentSnapshot
from lsp_server.model_thread import run_model_job

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer

log = logging.getLogger("swespot.lsp")
ANSWER_MARGIN_S = 0.02  # kept from completionMaxMs for the answer's way back (trim, JSON-RPC, the pipe)
WARM_BATCH = 128  # prompt tokens a warm-up reads between checks for a newer request (~0.25 s on 2 cores)


class CompletionTicket:
    """One inline-completion request of a document. A newer request for the document supersedes it at
    once, whether it still waits out its debounce (it answers with no items) or already generates
    (``cancel`` stops the model between tokens)."""

    def __init__(self, *, warm: bool = False) -> None:
        self.cancel = threading.Event()
        self.warm = warm  # a warm-up (``warm``): it shows nothing, and a newer warm-up supersedes it too
        self._woken = asyncio.Event()

    def supersede(self) -> None:  # on the event loop's thread
        self.cancel.set()
        self._woken.set()

    async def superseded_within(self, seconds: float) -> bool:
        """Wait out the debounce; True as soon as a newer request supersedes this one."""
        with contextlib.suppress(asyncio.TimeoutError):  # (not the builtin TimeoutError before Python 3.11)
            await asyncio.wait_for(self._woken.wait(), seconds)
        return self.cancel.is_set()


async def inline_completion(ls: SwespotServer, uri: str, position: lsp.Position) -> list[lsp.InlineCompletionItem]:
    arrived = time.perf_counter()  # the time budget counts from here (after the debounce), everything else included
    doc = ls.document(uri)
    ctx = completion_context(ls, doc, position)
    why_not = worth_completing(ctx)
    if why_not:
        log.debug("no completion: %s", why_not)
        return []
    # a newer request for the same document supersedes an older one still waiting or generating
    mine = CompletionTicket()
    previous = ls.completion_tickets.get(uri)
    if previous is not None:
        previous.supersede()
    cached = ls.suggestions.get(uri, ctx)  # typing along a shown suggestion, or a position seen before
    if cached is not None:
        log.info("completion from the cache (%d chars): no model call", len(cached))
        return inline_item(ls, uri, ctx, position, cached, cached=True) if cached else []
    ls.completion_tickets[uri] = mine
    try:
        debounce = ls.settings.completion_debounce_ms / 1e3
        if debounce > 0 and await mine.superseded_within(debounce):
            return []
        text = await run_model_job(ls, lambda cancel: complete(ls, ctx, cancel, arrived + debounce), mine.cancel)
    finally:
        if ls.completion_tickets.get(uri) is mine:
            del ls.completion_tickets[uri]
    if text is None or mine.cancel.is_set():
        return []
    ls.suggestions.put(uri, ctx, text)
    return inline_item(ls, uri, ctx, position, text, cached=False) if text else []


def inline_item(ls: SwespotServer, uri: str, ctx: CompletionContext, position: lsp.Position, text: str, *,
                cached: bool) -> list[lsp.InlineCompletionItem]:
    """The suggestion as an insertion at the cursor (an empty range: it never replaces what follows)."""
    completion_id = ls.served.new_id("c")
    ls.served.remember(completion_id, {"kind": "inlineCompletion", "uri": uri, "text": text, "adapter": ls.adapter_name,
                                       "prefix_tail": ctx.prefix[-200:], "cached": cached})
    accepted = lsp.Command(title="SWE-Spot: completion accepted", command=P.CMD_COMPLETION_ACCEPTED, arguments=[completion_id])
    return [lsp.InlineCompletionItem(insert_text=text, range=lsp.Range(position, position), command=accepted)]


def completion_context(ls: SwespotServer, doc: DocumentSnapshot, position: lsp.Position) -> CompletionContext:
    pygls_doc = ls.workspace.text_documents.get(doc.uri) or ls.workspace.get_text_document(doc.uri)
    lines = doc.text.split("\n")
    if position.line < 0 or position.line > len(lines) or position.character < 0:
        raise SwespotError(f"position {position.line}:{position.character} is outside {doc.uri}")
    offset = min(pygls_doc.offset_at_position(position), len(doc.text))
    return CompletionContext(ls.rel(doc.path), pygls_doc.language_id or "", doc.text[:offset], doc.text[offset:])


def complete(ls: SwespotServer, ctx: CompletionContext, cancel: threading.Event, arrived: float | None = None) -> str | None:
    """The model's suggestion (None when cancelled or out of time before any text), on the model thread.
    Generation stops at the stop rules (``stop_point``: the line's end mid-line, the indented block's end
    otherwise) and by ``completionMaxMs`` after the request ``arrived`` (after its debounce), less
    ANSWER_MARGIN_S for the answer's way back, keeping what came: waiting for the model and reading the
    prompt count, and no token is started that would come later (as llama.vscode's t_max_predict_ms).
    The prompt is read whole and gets its first token whatever the time (``generate``); a new place's
    prompt (~900 tokens, 1.4-2.8 s on 2 cores) is read ahead while the cursor rests there (``warm``)."""
    started = time.perf_counter()
    arrived = arrived or started
    runtime = ls.runtime
    assert runtime is not None and ls.heartbeat is not None  # the model job loaded it (or raised)
    prompt, fim = completion_prompt(ls, ctx)
    stats: dict = {}
    budget = ls.settings.completion_max_ms / 1e3
    text, ended, first_at = "", None, None
    stream = runtime.generate(prompt, max_tokens=ls.settings.completion_max_tokens,
                              stop=stop_strings(fim), cancel=cancel, stats=stats,
                              deadline=arrived + budget - ANSWER_MARGIN_S if budget else None)
    try:
        for piece in stream:
            first_at = first_at or time.perf_counter()
            text += piece
            ls.heartbeat.beat()
            cut = stop_point(text, ctx)
            if cut is not None:
                text, ended = text[:cut], "stop rule"
                break
    finally:
        stream.close()  # releases the model at once when a stop rule ended it
    if ended is None and stats.get("finish_reason") == "deadline":
        ended = "time budget"
    now = time.perf_counter()
    log.info("completion: %d prompt tokens, %d generated, %s in %.0f ms, %d cached, first text after %.0f ms, "
             "waited %.0f ms, %s", stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0),
             ended or stats.get("finish_reason"), (now - started) * 1e3, stats.get("cached_tokens", 0),
             ((first_at or now) - started) * 1e3, (started - arrived) * 1e3,
             "fill-in-the-middle" if fim else "left to right")
    if stats.get("finish_reason") == "cancelled" or (ended == "time budget" and not text):
        return None  # nothing to show, and nothing to remember for this position: it was not the model's answer
    return trim_completion(fit_to_line_rest(text, ctx), ctx)


def completion_prompt(ls: SwespotServer, ctx: CompletionContext) -> tuple[str, tuple[str, str, str] | None]:
    """The prompt the model completes at ``ctx`` and its FIM markers (None: left to right), on the model thread."""
    runtime = ls.runtime
    assert runtime is not None
    served = ls.tracker.active if ls.tracker else None
    fim = serving_fim(runtime, served.manifest if served else None)  # the layout follows the served adapter
    snippets = ls.snippets.snippets(ctx, ls.read_for_snippet, ls.is_excluded, budget_tokens=ls.settings.completion_context_tokens,
                                    count_tokens=lambda text: len(runtime.tokenize(text, special=False))) if ls.snippets else []
    return build_prompt(ctx, snippets, fim), fim


_warming: set[asyncio.Task] = set()  # warm-ups under way (the loop keeps only weak references to tasks)


def warm_soon(ls: SwespotServer, uri: str, position: lsp.Position) -> None:
    """Start ``warm`` in the background (on the event loop's thread)."""
    task = asyncio.get_running_loop().create_task(warm(ls, uri, position))
    _warming.add(task)
    task.add_done_callback(_warming.discard)


async def warm(ls: SwespotServer, uri: str, position: lsp.Position) -> None:
    """Read the completion prompt at the cursor into the model's cache while the user looks, before the
    first keystroke there asks for a suggestion: a new place's prompt (~900 tokens) takes 1.4-2.8 s to
    read on 2 cores, more than ``completionMaxMs``, while the keystrokes after it reuse it and take
    ~100 ms. Asked for by a code action request at an empty range (the cursor): VS Code asks for code
    actions wherever the cursor comes to rest. It is a completion request that shows nothing: any newer
    request for the document supersedes it (cancelled between batches of WARM_BATCH tokens; what was
    read stays cached, and the completion at the same place goes on from there)."""
    previous = ls.completion_tickets.get(uri)
    if ls.settings.completion_max_ms <= 0 or (previous is not None and not previous.warm):
        return  # no time budget to keep, or a completion of the document is already on its way
    try:
        ctx = completion_context(ls, ls.document(uri), position)
    except SwespotError:
        return  # a document the server does not hold (or a position outside it): nothing to warm
    if worth_completing(ctx) or ls.suggestions.get(uri, ctx) is not None:
        return  # no completion will be asked here, or its answer is cached
    if previous is not None:
        previous.supersede()  # the cursor moved on before the last place was read
    mine = CompletionTicket(warm=True)
    ls.completion_tickets[uri] = mine

    def read(cancel: threading.Event) -> None:
        assert ls.runtime is not None
        started = time.perf_counter()
        prompt, _ = completion_prompt(ls, ctx)
        total, before, after = ls.runtime.prefill(prompt, cancel, batch=WARM_BATCH)
        log.info("warm-up at the cursor: %d prompt tokens, %d were cached, %d are now, in %.0f ms%s", total, before,
                 after, (time.perf_counter() - started) * 1e3, " (superseded)" if cancel.is_set() else "")

    try:
        await run_model_job(ls, read, mine.cancel)
    except SwespotError as exc:  # (a model that cannot load says so to the request that needs it)
        log.info("no warm-up: %s", exc)
    finally:
        if ls.completion_tickets.get(uri) is mine:
            del ls.completion_tickets[uri]


def register(server: SwespotServer) -> None:
    @server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
    async def on_inline_completion(ls: SwespotServer, params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList:
        items = await ls.serve(lsp.TEXT_DOCUMENT_INLINE_COMPLETION,
                               lambda: inline_completion(ls, params.text_document.uri, params.position))
        return lsp.InlineCompletionList(items=items)

    @server.feature(P.INLINE_COMPLETION)
    async def on_custom_inline_completion(ls: SwespotServer, params: Any) -> P.InlineCompletionResult:
        async def run() -> P.InlineCompletionResult:
            parsed = ls.parse(params, P.InlineCompletionParams, P.INLINE_COMPLETION)
            return P.InlineCompletionResult(await inline_completion(ls, parsed.text_document.uri, parsed.position))

        return await ls.serve(P.INLINE_COMPLETION, run)
