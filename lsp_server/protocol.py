"""Every custom method, notification and type of the SWE-Spot language server, in one place.

The TypeScript client (``vscode-extension/``) mirrors this module. Field names are snake_case here and
camelCase on the wire: pygls' converter (lsprotocol's) renames every attrs field (``chat_id`` ->
``chatId``) and leaves out optional fields that hold their default. Standard LSP types (positions,
ranges, ``WorkspaceEdit``) are lsprotocol's own.

Requests (client -> server)
    ``swespot/chat``              ChatParams -> ChatResult. While it runs, the reply streams as
                                  ``swespot/chatDelta`` notifications (not ``$/progress``: a delta names
                                  its chat and says what kind of text it is, so the client can show tool
                                  activity apart from the answer). ``$/cancelRequest`` stops generation
                                  (the reply is the LSP error RequestCancelled, -32800).
    ``swespot/task``              TaskParams -> TaskResult: the agent's change as a ``WorkspaceEdit``
                                  (never written to disk by the server). Refused (RequestFailed,
                                  -32803) when an open document's version is not the one the client
                                  named, or changed while the agent worked.
    ``swespot/inlineCompletion``  InlineCompletionParams -> InlineCompletionResult, for clients without
                                  LSP 3.18's ``textDocument/inlineCompletion`` (which is served too).
    ``swespot/getStatus``         no params -> StatusParams (the same object as the notification).
    ``swespot/adapters``          no params -> AdaptersResult: the adapter store's versions, for a rollback.
    ``swespot/rollback``          RollbackParams -> AdapterInfo: make a published version current (the
                                  store's ``rollback``); the server then hot-swaps to it and says so in
                                  ``swespot/status``. Unknown or damaged versions: RequestFailed.
    ``swespot/retrain``           no params -> RetrainResult: ask the trainer daemon to train now,
                                  whatever its schedule, by writing ``retrain.request`` (JSON, atomic) in
                                  the state dir for the daemon to consume (one still starting reads it
                                  when up). RequestFailed when background training is off or the daemon
                                  could not be started.

Notifications
    ``swespot/chatDelta``  (server -> client) ChatDelta
    ``swespot/status``     (server -> client) StatusParams, sent on start, on model or adapter change
                           (hot swap), on daemon status change, and when generation starts/stops.
    ``swespot/feedback``   (client -> server) FeedbackParams: accepted/rejected/edited-after-accept,
                           logged locally as training signal (``feedback.jsonl`` in the state dir).

Commands (``workspace/executeCommand``; also attached to code actions)
    ``swespot.explain``      [CodeActionData] -> ChatResult
    ``swespot.codeAction``   [CodeActionData] -> TaskResult (fix a diagnostic, write a test)

Inline completion items carry ``command = swespot.completionAccepted [completionId]``; a client that
runs it on accept (VS Code does) should send ``swespot/feedback`` with action ``accepted``.

Errors: a failure the user can act on is an LSP ResponseError with code RequestFailed (-32803) and a
message that says what to do; malformed parameters are InvalidParams (-32602).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import cattrs.gen
from lsprotocol import types as lsp
from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage, default_converter

# ---- method and command names ----------------------------------------------------------------------
CHAT = "swespot/chat"
CHAT_DELTA = "swespot/chatDelta"
TASK = "swespot/task"
INLINE_COMPLETION = "swespot/inlineCompletion"
GET_STATUS = "swespot/getStatus"
STATUS = "swespot/status"
FEEDBACK = "swespot/feedback"
ADAPTERS = "swespot/adapters"
ROLLBACK = "swespot/rollback"
RETRAIN = "swespot/retrain"

CMD_EXPLAIN = "swespot.explain"
CMD_CODE_ACTION = "swespot.codeAction"
CMD_COMPLETION_ACCEPTED = "swespot.completionAccepted"

REQUEST_FAILED = -32803  # LSP ErrorCodes.RequestFailed (3.17)
INVALID_PARAMS = -32602
REQUEST_CANCELLED = -32800


# ---- chat -----------------------------------------------------------------------------------------
@attrs.define
class ChatMessage:
    """One earlier turn of the conversation the client keeps (role ``user`` or ``assistant``)."""

    role: Literal["user", "assistant"]
    content: str


@attrs.define
class ChatParams:
    """A question about the workspace. The agent may use its read-only tools to answer it.

    ``chat_id`` names the stream of ``swespot/chatDelta`` notifications; ``history`` holds earlier turns;
    ``text_document``/``range`` add the editor's current file (and selection) as context."""

    chat_id: str
    prompt: str
    history: list[ChatMessage] = attrs.field(factory=list)
    text_document: lsp.TextDocumentIdentifier | None = None
    range: lsp.Range | None = None
    max_tokens: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """per model turn; default from settings"""
    max_steps: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """tool-using turns; default from settings"""


@attrs.define
class ChatDelta:
    """A piece of the reply as it is written. ``kind``: ``text`` is model output (it may contain the
    model's tool-call markup), ``tool`` is a one-line note of a tool call and its result."""

    chat_id: str
    text: str
    kind: Literal["text", "tool"] = "text"


@attrs.define
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: int = 0


@attrs.define
class ChatResult:
    """The final answer. ``exit``: ``answered`` (a plain reply or submit), or ``limits`` (a step/token
    budget or the context ran out; ``text`` is the best answer so far)."""

    chat_id: str
    text: str
    usage: Usage
    exit: str = "answered"
    adapter: str | None = None  # adapter version that answered


# ---- tasks ----------------------------------------------------------------------------------------
@attrs.define
class TaskParams:
    """Ask the agent to change the workspace. ``text_documents`` names the open documents and the
    versions the client expects the edit to apply to; the server refuses if its copy differs."""

    request: str
    text_documents: list[lsp.VersionedTextDocumentIdentifier] = attrs.field(factory=list)
    max_steps: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    task_id: str | None = None  # echoed back; also the feedback id


@attrs.define
class TaskResult:
    """``edit`` holds versioned ``TextDocumentEdit``s for open documents (version null for files that
    are not open, applied against their content on disk) and ``CreateFile``/``DeleteFile`` operations.
    ``exit``: ``submitted``, ``limits`` or ``cancelled``."""

    task_id: str
    summary: str
    exit: str
    edit: lsp.WorkspaceEdit
    diff: str
    usage: Usage
    files: list[str] = attrs.field(factory=list)  # repository-relative paths the edit touches


# ---- inline completion ----------------------------------------------------------------------------
@attrs.define
class InlineCompletionParams:
    """The custom equivalent of LSP 3.18 ``InlineCompletionParams`` (same field names)."""

    text_document: lsp.TextDocumentIdentifier
    position: lsp.Position
    context: lsp.InlineCompletionContext | None = None


@attrs.define
class InlineCompletionResult:
    items: list[lsp.InlineCompletionItem] = attrs.field(factory=list)


# ---- status ---------------------------------------------------------------------------------------
@attrs.define
class AdapterInfo:
    version: str
    commit: str | None = None  # the git commit the adapter was trained up to


@attrs.define
class DaemonInfo:
    """The trainer daemon as this server sees it: ``phase``/``progress``/``error`` come from its
    status.json; ``running`` is whether this server started it and it is alive; ``available`` is false
    when this installation cannot run ``swespot daemon`` (its extras are missing: ``DaemonUnavailable``)."""

    enabled: bool = False
    running: bool = False
    available: bool = True
    phase: str | None = None
    progress: float | None = None
    error: str | None = None


@attrs.define
class StatusParams:
    """``state``: ``starting``, ``loading``, ``ready``, ``generating`` or ``error``. ``message`` says
    what just happened in words (e.g. "switched to adapter v0003 (commit 1a2b3c4)")."""

    state: str
    model: str | None = None  # the base GGUF's file name
    adapter: AdapterInfo | None = None
    daemon: DaemonInfo = attrs.field(factory=DaemonInfo)
    message: str | None = None
    swap_ms: float | None = None  # how long the last hot swap took
    error: str | None = None


# ---- feedback -------------------------------------------------------------------------------------
@attrs.define
class FeedbackParams:
    """What the user did with something the server produced. ``id`` is a completion id, a task id or a
    chat id; ``final_text`` is the text as it ended up (for ``editedAfterAccept``)."""

    id: str
    kind: Literal["inlineCompletion", "task", "chat", "codeAction"]
    action: Literal["accepted", "rejected", "editedAfterAccept"]
    uri: str | None = None
    final_text: str | None = None


# ---- code actions ---------------------------------------------------------------------------------
@attrs.define
class CodeActionData:
    """What a SWE-Spot code action works on. ``action``: ``explain``, ``fix`` (a diagnostic) or
    ``writeTest`` (the function around ``range``)."""

    action: Literal["explain", "fix", "writeTest"]
    uri: str
    range: lsp.Range
    version: int | None = None
    diagnostic: lsp.Diagnostic | None = None
    symbol: str | None = None


# ---- the adapter store ----------------------------------------------------------------------------
@attrs.define
class AdapterVersionInfo:
    """One version folder of the store; ``problem`` says why an unusable one cannot be served."""

    version: str
    usable: bool
    commit: str | None = None
    published_at: float | None = None
    problem: str | None = None
    report: str | None = None  # its evaluation report (report.html of `swespot specialize`), when on disk


@attrs.define
class AdaptersResult:
    """``current``: what the store publishes; ``serving``: what the runtime serves now (they differ
    for a moment after a rollback, until the swap)."""

    versions: list[AdapterVersionInfo] = attrs.field(factory=list)
    current: str | None = None
    serving: str | None = None


@attrs.define
class RollbackParams:
    version: str


@attrs.define
class RetrainResult:
    message: str


# ---- wire format -----------------------------------------------------------------------------------
def camel(name: str) -> str:
    """``chat_id`` -> ``chatId``: field names on the wire (and the editor's setting keys)."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


PROTOCOL_TYPES = [ChatMessage, ChatParams, ChatDelta, Usage, ChatResult, TaskParams, TaskResult, InlineCompletionParams,
                  InlineCompletionResult, AdapterInfo, DaemonInfo, StatusParams, FeedbackParams, CodeActionData,
                  AdapterVersionInfo, AdaptersResult, RollbackParams, RetrainResult]


def register_hooks(converter) -> None:
    """camelCase on the wire, and every field present except optional ones that are null (lsprotocol's
    own hooks would also drop fields equal to a non-null default, e.g. ``kind: "text"``)."""
    for cls in PROTOCOL_TYPES:
        fields = attrs.fields(cls)
        overrides: dict[str, Any] = {f.name: cattrs.gen.override(rename=camel(f.name), omit_if_default=f.default is None) for f in fields}
        converter.register_unstructure_hook(cls, cattrs.gen.make_dict_unstructure_fn(cls, converter, **overrides))
        structure: dict[str, Any] = {f.name: cattrs.gen.override(rename=camel(f.name)) for f in fields}
        converter.register_structure_hook(cls, cattrs.gen.make_dict_structure_fn(cls, converter, **structure))


def make_converter():
    """pygls' converter plus this module's hooks (the server's ``converter_factory``). The parameters and
    results of methods lsprotocol does not know stay plain JSON objects: pygls would make namedtuples of
    them, which silently rename keys that are not Python identifiers."""
    converter = default_converter()
    for message in (JsonRPCRequestMessage, JsonRPCResponseMessage, JsonRPCNotification):
        converter.register_structure_hook(message, lambda obj, cls: cls(**obj))
    register_hooks(converter)
    return converter
