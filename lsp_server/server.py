"""The SWE-Spot language server: the local model in the editor, with hot-swapped repository adapters.

``SwespotServer`` owns the lifecycle (initialize, settings, shutdown) and the state every feature reads
(settings, the llama.cpp runtime, the adapter tracker, the daemon, the open documents). The features
live in their own modules, as in pygls' example servers; each registers its thin LSP handlers
(``register(server)``) and works on the server through plain functions:

    chat.py               swespot/chat (streamed as swespot/chatDelta)
    tasks.py              swespot/task (a WorkspaceEdit, never written by the server)
    inline_completion.py  textDocument/inlineCompletion and swespot/inlineCompletion
    code_actions.py       explain / fix / write a test (code actions and their commands)
    status.py             swespot/getStatus, swespot/adapters, swespot/rollback, swespot/retrain
    feedback.py           swespot/feedback
    model_thread.py       the one thread all model work runs on, and the store watcher
    boundary.py           parameters in, errors out: the one place a failure becomes an LSP error

Never imports torch (``tests/lsp`` checks it in the running server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from agent.errors import SwespotError
from agent.runtime import LlamaRuntime
from agent.state import SERVER_LOG, state_dir
from lsp_server import boundary, chat, code_actions, feedback, inline_completion, status, tasks
from lsp_server import protocol as P
from lsp_server.adapters import AdapterTracker
from lsp_server.agents import EditorWorkspace
from lsp_server.completion import SnippetIndex, SuggestionCache
from lsp_server.daemon import DaemonProcess
from lsp_server.documents import DocumentSnapshot, check_text, is_excluded, path_of
from lsp_server.inline_completion import CompletionTicket
from lsp_server.logs import REQUEST_TAG, log_to
from lsp_server.model_thread import submit_maintenance, watch
from lsp_server.settings import SECTION, Settings, merge
from lsp_server.state_files import FeedbackLog, Heartbeat
from trainer.store import AdapterStore

log = logging.getLogger("swespot.lsp")

VERSION = "0.1.0"
T = TypeVar("T")


class SwespotServer(LanguageServer):
    def __init__(self, *, model: str | None = None, repo: str | Path | None = None) -> None:
        self.converter = P.make_converter()  # the protocol's converter: structures our types, unstructures them
        super().__init__("swespot", VERSION, protocol_cls=boundary.SwespotProtocol, converter_factory=lambda: self.converter,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.cli_model = model
        self.repo: Path | None = Path(repo).resolve() if repo else None
        self.settings = Settings()
        self.settings_error: str | None = None
        # set by configure (initialize)
        self.tracker: AdapterTracker | None = None
        self.daemon: DaemonProcess | None = None
        self.feedback: FeedbackLog | None = None
        self.heartbeat: Heartbeat | None = None
        self.snippets: SnippetIndex | None = None
        self.configured = False  # initialize succeeded: requests may be served (SwespotProtocol.handle_message)
        self.initialize_error: str | None = None
        self.client_initialized = False  # set by the ``initialized`` notification
        # the model thread's (model_thread.py)
        self.runtime: LlamaRuntime | None = None  # loaded on the model thread
        self.runtime_key: tuple | None = None
        self.failed_key: tuple | None = None  # model settings that failed to load (not retried)
        self.runtime_error: str | None = None
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swespot-model")
        self.cancels: set[threading.Event] = set()  # of the model jobs running or queued
        self.swap_pending = threading.Event()
        self.swap_ms: float | None = None  # how long the last hot swap took
        # the features'
        self.completion_tickets: dict[str, CompletionTicket] = {}  # per document uri
        self.suggestions = SuggestionCache()  # answers per position; cleared when the model or adapter changes
        self.served = feedback.ServedMemory()
        self.symbols: tuple[tuple | None, Any] = (None, None)  # (uri, version, length) -> the file's symbol index
        # lifecycle and status
        self.state = "starting"
        self.message: str | None = None
        self.stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def configure(self, params: lsp.InitializeParams) -> None:
        """Find the repository (``--repo``, else the workspace root), log into its state dir, and take
        the settings given as initializationOptions."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.repo is None:
            root = self.workspace.root_path or (params.workspace_folders[0].uri if params.workspace_folders else None)
            self.repo = path_of(root) if root and root.startswith("file:") else Path(root or ".").resolve()
        state = state_dir(self.repo)
        log_to(state / SERVER_LOG)
        log.info("serving %s (state %s)", self.repo, state)
        self.tracker = AdapterTracker(AdapterStore(state))
        self.daemon = DaemonProcess(self.repo, state, on_change=self.publish_status)
        self.heartbeat = Heartbeat(state)
        self.feedback = FeedbackLog(state)
        self.update_settings(params.initialization_options, where="initializationOptions")
        self.configured = True

    def start(self) -> None:
        """After ``initialized``: load the model, build the index, watch the store."""
        self.set_state("loading")
        submit_maintenance(self, "load")
        self.snippets = SnippetIndex(self.editor_workspace())
        self.snippets.build_in_background()
        self._watcher = threading.Thread(target=watch, args=(self,), name="swespot-watch", daemon=True)
        self._watcher.start()

    def update_settings(self, raw: Any, *, where: str) -> None:
        try:
            settings = merge(self.settings, raw, where=where)
            self.settings_error = None
        except SwespotError as exc:
            log.error("%s", exc)
            self.settings_error = str(exc)
            self.publish_status(message=f"settings ignored: {exc}")
            return
        self.settings = settings
        assert self.feedback is not None and self.daemon is not None
        self.feedback.enabled = settings.feedback_logging
        self.daemon.enable(settings.background_training)  # off the event loop: stopping takes seconds
        if self.runtime is not None and settings.model_key != self.runtime_key:
            submit_maintenance(self, "reload")
        self.publish_status()

    async def fetch_configuration(self) -> None:
        """Ask the client for the ``swespot`` section (if it can answer ``workspace/configuration``)."""
        workspace_caps = self.client_capabilities.workspace
        if not (workspace_caps and workspace_caps.configuration):
            return
        try:
            values = await self.workspace_configuration_async(
                lsp.ConfigurationParams(items=[lsp.ConfigurationItem(section=SECTION)]))
        except JsonRpcException as exc:
            log.warning("the client did not answer workspace/configuration: %s", exc)
            return
        self.update_settings(values[0] if values else None, where="workspace/configuration")

    def close(self) -> None:
        """Stop everything this server started: generation, the watcher, the daemon. Idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        for cancel in list(self.cancels) + [ticket.cancel for ticket in self.completion_tickets.values()]:
            cancel.set()
        if self.daemon is not None:
            self.daemon.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped")

    # ---- the boundary (boundary.py) ----------------------------------------------------------------
    def parse(self, raw: Any, cls: type[T], method: str) -> T:
        return boundary.parse(self.converter, raw, cls, method)

    async def serve(self, method: str, handler: Callable[[], Any]) -> Any:
        return await boundary.serve(f"{method}#{self.protocol.msg_id}", handler)

    def report_server_error(self, error: Exception, source) -> None:
        if isinstance(error, json.JSONDecodeError) and isinstance(self.protocol, boundary.SwespotProtocol):
            self.protocol.answer_unreadable(error)
        super().report_server_error(error, source)

    # ---- status -----------------------------------------------------------------------------------
    def set_state(self, state: str, *, message: str | None = None, error: str | None = None) -> None:
        self.state = state
        self.publish_status(message=message, error=error)

    def publish_status(self, message: str | None = None, error: str | None = None) -> None:
        if message:
            self.message = message
        self.notify_soon(P.STATUS, status.status(self, message, error))

    def notify_soon(self, method: str, params: Any) -> None:
        """Send a notification from any thread: writes happen on the event loop's thread only, so two
        messages never interleave on stdout. Nothing is sent before the client's ``initialized`` (LSP
        allows only log and progress messages before the initialize answer; the status that follows
        ``initialized`` says everything that happened before)."""
        if self._loop is None or not self.client_initialized:
            return
        if threading.get_ident() == self._loop_thread:
            self.protocol.notify(method, params)
            return
        try:
            self._loop.call_soon_threadsafe(self.protocol.notify, method, params)
        except RuntimeError:  # the loop is closed: the server is exiting
            pass

    @property
    def adapter_name(self) -> str | None:
        """The adapter version the runtime serves now (None: the bare base model)."""
        return self.tracker.active_name if self.tracker else None

    # ---- documents --------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        assert self.repo is not None
        try:
            return path.relative_to(self.repo).as_posix()
        except ValueError:
            raise SwespotError(f"{path} is outside the repository {self.repo}") from None

    def open_document(self, uri: str) -> TextDocument | None:
        """pygls' open document at ``uri`` (also when the client quoted the URI differently), or None."""
        return self.workspace.text_documents.get(uri) or self.workspace.text_documents.get(unquote(uri))

    def document(self, uri: str) -> DocumentSnapshot:
        """An open document the model may read (refused: unknown, outside the repo, excluded, huge, or
        not valid UTF-8)."""
        doc = self.open_document(uri)
        if doc is None:
            raise SwespotError(f"{uri} is not open in the editor (the server only works on open documents)")
        path = path_of(uri)
        rel = self.rel(path)
        if self.is_excluded(rel):
            raise SwespotError(f"{rel} is excluded from SWE-Spot by the user's settings")
        return DocumentSnapshot(uri, path, doc.version, check_text(uri, doc.source))

    def open_documents(self) -> dict[str, DocumentSnapshot]:
        """Every open document of the repository the model may read, by repository path (documents it
        may not read are left out, as if they were not open)."""
        out = {}
        for uri in list(self.workspace.text_documents):
            try:
                snap = self.document(uri)
                out[self.rel(snap.path)] = snap
            except SwespotError:
                continue
        return out

    def current_documents(self) -> dict[str, DocumentSnapshot]:
        """Every open document of the repository as it is now, unchecked (to compare versions with)."""
        out = {}
        for uri, doc in list(self.workspace.text_documents.items()):
            try:
                out[self.rel(path_of(uri))] = DocumentSnapshot(uri, path_of(uri), doc.version, doc.source)
            except SwespotError:
                continue
        return out

    def editor_workspace(self, overlay: dict[str, DocumentSnapshot] | None = None) -> EditorWorkspace:
        assert self.repo is not None
        texts = {rel: doc.text for rel, doc in (overlay or {}).items()}
        return EditorWorkspace(self.repo, overlay=texts, excluded=self.settings.excluded_paths)

    def text_in_range(self, doc: DocumentSnapshot, rng: lsp.Range) -> str:
        lines = doc.text.split("\n")
        if rng.start.line >= len(lines) or rng.start.line < 0 or rng.end.line < rng.start.line:
            raise SwespotError(f"range {rng.start.line + 1}-{rng.end.line + 1} is outside {doc.uri} ({len(lines)} lines)")
        return "\n".join(lines[rng.start.line: rng.end.line + 1])

    def read_for_snippet(self, rel: str) -> str:
        """A file as the editor shows it: the open document's text, else the file on disk."""
        doc = self.open_documents().get(rel)
        if doc is not None:
            return doc.text
        assert self.repo is not None
        return (self.repo / rel).read_text(encoding="utf-8")

    def is_excluded(self, rel: str) -> bool:
        return is_excluded(rel, self.settings.excluded_paths)


# ---- the lifecycle's LSP handlers; each feature module registers its own ---------------------------
def create_server(*, model: str | None = None, repo: str | Path | None = None) -> SwespotServer:
    server = SwespotServer(model=model, repo=repo)

    @server.feature(lsp.INITIALIZE)
    def on_initialize(ls: SwespotServer, params: lsp.InitializeParams) -> None:
        REQUEST_TAG.set("initialize")
        try:
            ls.configure(params)
        except SwespotError as exc:
            ls.initialize_error = str(exc)
            raise boundary.to_lsp_error(exc) from exc

    @server.feature(lsp.INITIALIZED)
    async def on_initialized(ls: SwespotServer, _params: lsp.InitializedParams) -> None:
        REQUEST_TAG.set("initialized")
        ls.client_initialized = True
        await ls.fetch_configuration()
        ls.start()

    @server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def on_configuration(ls: SwespotServer, params: lsp.DidChangeConfigurationParams) -> None:
        settings = params.settings.get(SECTION) if isinstance(params.settings, dict) else None
        if settings is not None:
            ls.update_settings(settings, where="workspace/didChangeConfiguration")
        else:
            await ls.fetch_configuration()

    @server.feature(lsp.SHUTDOWN)
    def on_shutdown(ls: SwespotServer, *_args) -> None:
        ls.close()

    for feature in (chat, tasks, inline_completion, code_actions, status, feedback):
        feature.register(server)
    return server
