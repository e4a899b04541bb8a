"""The SWE-Spot language server: the local model in the editor, with hot-swapped repository adapters.

``SwespotServer`` owns the state (settings, the llama.cpp runtime, the adapter tracker, the daemon); the
LSP handlers at the bottom are thin and delegate to its plain methods. All model work (loading, adapter
swaps, completions, chat and task runs) is serialised on one model thread, off the event loop, so the
loop keeps reading messages — ``$/cancelRequest`` included — while the model works. Cancelling a
request sets its ``threading.Event``, which the runtime checks between tokens: generation really stops.

Errors: a ``SwespotError`` becomes an LSP ResponseError (RequestFailed) in ``_serve``, the one boundary;
malformed parameters become InvalidParams there too, or in ``SwespotProtocol`` for standard methods
whose parameters pygls could not even parse.

Never imports torch (``tests/lsp`` checks it in the running server).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import attrs
import cattrs
from cattrs.v import format_exception
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcServerNotInitialized
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from agent.errors import SwespotError
from lsp_server import protocol as P
from lsp_server.adapters import AdapterTracker
from lsp_server.agents import EditorWorkspace, final_answer, run_chat, run_task, scratch_snapshot, tool_note
from lsp_server.completion import (
    FIM_TOKENS,
    CompletionContext,
    SnippetIndex,
    SuggestionCache,
    build_prompt,
    fit_to_line_rest,
    stop_point,
    stop_strings,
    trim_completion,
    worth_completing,
)
from lsp_server.daemon import DaemonProcess
from lsp_server.documents import DocumentSnapshot, build_workspace_edit, check_text, is_excluded, path_of
from lsp_server.logs import REQUEST_TAG, log_to
from lsp_server.settings import SECTION, Settings, merge
from lsp_server.state_files import FeedbackLog, Heartbeat

log = logging.getLogger("swespot.lsp")

VERSION = "0.1.0"
SERVED_MEMORY = 256  # completions/tasks remembered for the feedback journal


def validation_reasons(exc: cattrs.ClassValidationError) -> str:
    """cattrs' reasons with their paths; a value a protocol type's validator refused keeps its message
    ("'max_steps' must be >= 1: 0"), which cattrs alone reduces to "invalid value"."""

    def describe(error: BaseException, type_) -> str:
        if type_ is None and type(error) is ValueError and str(error):
            return f"invalid value ({error})"
        return format_exception(error, type_)

    return "; ".join(cattrs.transform_error(exc, format_exception=describe))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """Free text of a request with every lone surrogate (``"\\udc80"`` in the JSON: valid JSON, not valid
    Unicode, and unencodable as UTF-8) replaced by U+FFFD, so a prompt holding one is answered instead of
    failing deep inside with -32603. (Open documents keep theirs: the text check refuses those.)"""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    return value


_BODY_ID = re.compile(r'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


class SwespotProtocol(LanguageServerProtocol):
    """pygls' protocol, with the answers a confused or hostile client is owed:

    - a request whose parameters cannot be parsed is answered with InvalidParams (pygls drops it, and the
      client would wait forever);
    - a request before ``initialize`` is answered with ServerNotInitialized (-32002, as LSP says), and a
      notification before it is dropped (pygls ran them against a server with no workspace);
    - a request without ``params`` (valid JSON-RPC) to one of our methods gets ``params: null``;
    - a ``didChange`` whose version is older than the document's is refused: versions never go back, so
      a task naming an old version is refused too.
    """

    @attrs.define
    class MalformedRequest:
        id: Any
        method: str
        reason: str
        jsonrpc: str = "2.0"

    def structure_message(self, data: dict[str, Any]):
        if (isinstance(data, dict) and "jsonrpc" in data and isinstance(data.get("method"), str) and "params" not in data
                and self.get_message_type(data["method"]) is None):
            data = {**data, "params": None}  # JSON-RPC may omit params; pygls' fallback types require them
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                reason = validation_reasons(cause) if isinstance(cause, cattrs.ClassValidationError) else str(cause or exc)
                return self.MalformedRequest(data["id"], str(data["method"]), reason)
            raise

    def handle_message(self, message):
        method = getattr(message, "method", None)
        if method is not None and not getattr(self._server, "configured", True) and method not in (lsp.INITIALIZE, lsp.EXIT):
            msg_id = getattr(message, "id", None)
            if msg_id is None:
                log.warning("dropped %s: it came before initialize", method)
                return
            why = getattr(self._server, "initialize_error", None)
            text = f"{method} before initialize: " + (f"initialize failed ({why})" if why else "send initialize first")
            log.warning("refused %s", text)
            self._send_response(msg_id, error=JsonRpcServerNotInitialized(text).to_response_error())
            return
        if isinstance(message, self.MalformedRequest):
            log.warning("malformed %s request %s: %s", message.method, message.id, message.reason)
            error = JsonRpcInvalidParams(f"invalid parameters for {message.method}: {message.reason}")
            self._send_response(message.id, error=error.to_response_error())
            return
        super().handle_message(message)

    @lsp_method(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: lsp.DidChangeTextDocumentParams):
        doc = self.workspace.text_documents.get(params.text_document.uri)
        new, old = params.text_document.version, doc.version if doc is not None else None
        if isinstance(new, int) and isinstance(old, int) and new < old:
            text = (f"refused a change of {params.text_document.uri} to version {new}: the document is at version {old} "
                    "and versions never go back (the change was not applied)")
            log.warning("%s", text)
            self.notify(lsp.WINDOW_LOG_MESSAGE, lsp.LogMessageParams(lsp.MessageType.Warning, f"SWE-Spot: {text}"))
            return
        yield from super().lsp_text_document__did_change(params)


class SwespotServer(LanguageServer):
    def __init__(self, *, model: str | None = None, repo: str | Path | None = None) -> None:
        super().__init__("swespot", VERSION, protocol_cls=SwespotProtocol, converter_factory=P.make_converter,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.cli_model = model
        self.repo: Path | None = Path(repo).resolve() if repo else None
        self.settings = Settings()
        self.settings_error: str | None = None
        self.runtime = None  # agent.runtime.LlamaRuntime, loaded on the model thread
        self.runtime_key: tuple | None = None
        self._failed_key: tuple | None = None  # model settings that failed to load (not retried)
        self.runtime_error: str | None = None
        self.tracker: AdapterTracker | None = None
        self.daemon: DaemonProcess | None = None
        self.feedback: FeedbackLog | None = None
        self.heartbeat: Heartbeat | None = None
        self.snippets: SnippetIndex | None = None
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swespot-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client_initialized = False  # set by the ``initialized`` notification
        self._loop_thread: int | None = None
        self._cancels: set[threading.Event] = set()
        self._completion_cancel: dict[str, CompletionTicket] = {}
        self.suggestions = SuggestionCache()  # answers per position; cleared when the model or adapter changes
        self._served: OrderedDict[str, dict] = OrderedDict()
        self._symbols: tuple[tuple | None, Any] = (None, None)  # (uri, version, length) -> the file's symbol index
        self._swap_pending = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._state = "starting"
        self._message: str | None = None
        self._swap_ms: float | None = None
        self._ids = itertools.count(1)
        self.configured = False  # initialize succeeded: requests may be served (SwespotProtocol.handle_message)
        self.initialize_error: str | None = None

    # ---- set-up -----------------------------------------------------------------------------------
    def configure(self, params: lsp.InitializeParams) -> None:
        """Find the repository (``--repo``, else the workspace root), log into its state dir, and take
        the settings given as initializationOptions."""
        from trainer.store import AdapterStore, state_dir

        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.repo is None:
            root = self.workspace.root_path or (params.workspace_folders[0].uri if params.workspace_folders else None)
            self.repo = path_of(root) if root and root.startswith("file:") else Path(root or ".").resolve()
        state = state_dir(self.repo)
        log_to(state / "serve.log")
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
        self.model_pool.submit(self._maintenance_job, "load")
        self.snippets = SnippetIndex(self.editor_workspace())
        self.snippets.build_in_background()
        self._watcher = threading.Thread(target=self._watch, name="swespot-watch", daemon=True)
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
            self.model_pool.submit(self._maintenance_job, "reload")
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

    # ---- the model thread --------------------------------------------------------------------------
    def _between_jobs(self) -> None:
        """Before any model work: (re)load the runtime if its settings changed, and hot-swap to the
        store's current adapter if it moved. Runs on the model thread only."""
        self._swap_pending.clear()
        if self.runtime is None or self.settings.model_key not in (self.runtime_key, self._failed_key):
            self._load_runtime()
        assert self.tracker is not None
        if self.tracker.needs_swap():
            try:
                swap = self.tracker.swap(self.runtime)
            except SwespotError as exc:
                self.publish_status(message=f"kept the current adapter: {exc}")
                return
            if swap is not None:
                self.suggestions.clear()
                self._swap_ms = swap.seconds * 1e3
                if swap.version is None:
                    self.publish_status(message="serving the base model (no adapter is published)")
                else:
                    commit = (swap.version.commit or "")[:12]
                    self.publish_status(message=f"switched to adapter {swap.version.name}"
                                                + (f" (commit {commit})" if commit else "")
                                                + f" in {self._swap_ms:.0f} ms")

    def _load_runtime(self) -> None:
        """Load the model the settings name. If it cannot be loaded while another one is serving, the
        old one keeps serving (the status says why) until the settings name another model."""
        from agent.runtime import LlamaRuntime

        settings = self.settings
        old = self.runtime
        self.set_state("loading")
        try:
            path = settings.model or self.cli_model or self._default_model()
            runtime = LlamaRuntime(path, n_ctx=settings.context_size, n_threads=settings.threads or None,
                                   n_gpu_layers=settings.gpu_layers)
        except SwespotError as exc:
            self.runtime_error = str(exc)
            if old is not None:
                self._failed_key = settings.model_key
                log.error("kept %s: %s", old.model_path.name, exc)
                self.set_state("ready", message=f"kept serving {old.model_path.name}: the new model settings failed")
                return
            self.runtime_key = None
            self.set_state("error", error=str(exc))
            raise
        if old is not None:
            old.close()
        self.runtime = runtime
        self.suggestions.clear()
        self.runtime_key = settings.model_key
        self._failed_key = None
        self.runtime_error = None
        assert self.tracker is not None
        self.tracker.reset()
        log.info("loaded %s (fim=%s)", path, runtime.has_fim)
        self.set_state("ready", message=f"loaded {Path(path).name}")

    @staticmethod
    def _default_model() -> str:
        from agent.default_model import ensure_default_gguf

        return str(ensure_default_gguf())

    def _model_job(self, tag: str, fn: Callable[[threading.Event], Any], cancel: threading.Event) -> Any:
        """One request's model work on the model thread: tagged logs, runtime and adapter brought up to
        date first, heartbeat while it runs. A job cancelled while it waited does not start."""
        REQUEST_TAG.set(tag)
        if cancel.is_set():
            log.info("cancelled before it started")
            return None
        self._between_jobs()
        assert self.heartbeat is not None
        self.heartbeat.start()
        try:
            return fn(cancel)
        finally:
            self.heartbeat.stop()

    def _maintenance_job(self, tag: str) -> None:
        """Load the model or swap the adapter while no request is waiting (its errors are in the status)."""
        REQUEST_TAG.set(tag)
        try:
            self._between_jobs()
        except SwespotError:
            pass
        if self._state == "loading" and self.runtime is not None:  # loaded earlier: "loading" must not stick
            self.set_state("ready")

    async def run_model_job(self, fn: Callable[[threading.Event], Any], cancel: threading.Event | None = None) -> Any:
        """Run ``fn(cancel)`` on the model thread. If the request is cancelled ($/cancelRequest, shutdown)
        while it waits in the queue, it never runs; while it runs, ``cancel`` is set so the model stops
        between tokens, and the answer waits for it to stop, so the next request finds the model free."""
        cancel = cancel or threading.Event()
        self._cancels.add(cancel)
        job = self.model_pool.submit(self._model_job, REQUEST_TAG.get(), fn, cancel)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            cancel.set()
            if job.cancel():
                log.info("cancelled while queued: it never ran")
                raise
            log.info("cancelling: the model stops at its next token")
            with contextlib.suppress(Exception):  # the request is cancelled: how the job ended does not matter
                await asyncio.wrap_future(job)
            raise
        finally:
            self._cancels.discard(cancel)

    # ---- watching the store and the daemon --------------------------------------------------------
    def _watch(self) -> None:
        """Between requests, notice a newly published adapter (and swap on the model thread), a change of
        the daemon's status.json, or the daemon dying. Cheap: two stat-sized reads per poll."""
        REQUEST_TAG.set("watch")
        assert self.tracker is not None and self.daemon is not None
        daemon_alive = self.daemon.running
        while not self._stop.wait(self.settings.adapter_poll_s):
            try:
                if self.runtime is not None and self.tracker.needs_swap() and not self._swap_pending.is_set():
                    self._swap_pending.set()
                    self.model_pool.submit(self._maintenance_job, "swap")
                changed = self.tracker.daemon_status_if_changed() is not None
                if daemon_alive != self.daemon.running:
                    daemon_alive, changed = self.daemon.running, True
                if changed:
                    self.publish_status()
            except RuntimeError:  # the pool is shut down: the server is stopping
                return
            except Exception:  # noqa: BLE001 - the watcher must survive anything a poll meets
                log.exception("watch poll failed")

    # ---- status -----------------------------------------------------------------------------------
    def set_state(self, state: str, *, message: str | None = None, error: str | None = None) -> None:
        self._state = state
        self.publish_status(message=message, error=error)

    def status(self, message: str | None = None, error: str | None = None) -> P.StatusParams:
        from trainer.store import read_status

        adapter = None
        if self.tracker is not None and self.tracker.active is not None:
            adapter = P.AdapterInfo(self.tracker.active.name, self.tracker.active.commit)
        daemon = P.DaemonInfo(enabled=self.settings.background_training)
        if self.daemon is not None and self.tracker is not None:
            info = read_status(self.tracker.store.state)
            progress = info.get("progress")
            daemon = P.DaemonInfo(
                enabled=self.settings.background_training, running=self.daemon.running,
                available=not (self.daemon.error or "").startswith("background training needs"),
                phase=info.get("phase"), progress=float(progress) if isinstance(progress, (int, float)) else None,
                error=self.daemon.error or info.get("error") or info.get("last_error"))
        model = self.runtime.model_path.name if self.runtime is not None else None
        return P.StatusParams(state=self._state, model=model, adapter=adapter, daemon=daemon,
                              message=message or self._message, swap_ms=self._swap_ms,
                              error=error or self.runtime_error or self.settings_error)

    def publish_status(self, message: str | None = None, error: str | None = None) -> None:
        if message:
            self._message = message
        self.notify_soon(P.STATUS, self.status(message, error))

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

    # ---- the adapter store and training ------------------------------------------------------------
    def adapters(self) -> P.AdaptersResult:
        assert self.tracker is not None
        versions = [P.AdapterVersionInfo(name, version is not None, version.commit if version else None,
                                         version.manifest.get("published_at") if version else None, why,
                                         _report_of(version.manifest) if version else None)
                    for name, version, why in self.tracker.store.versions()]
        return P.AdaptersResult(versions, self.tracker.store.current_name(), self._adapter_name())

    def rollback(self, params: P.RollbackParams) -> P.AdapterInfo:
        """Publish an older version as current; the swap itself happens on the model thread."""
        assert self.tracker is not None
        version = self.tracker.store.rollback(params.version)  # refuses unknown or damaged versions
        self.tracker.failed.pop(version.name, None)  # the user asked for it: try it again
        log.info("rolled back to %s", version.name)
        if self.runtime is not None and not self._swap_pending.is_set():
            self._swap_pending.set()
            self.model_pool.submit(self._maintenance_job, "rollback")
        return P.AdapterInfo(version.name, version.commit)

    def retrain(self) -> P.RetrainResult:
        from trainer.store import write_atomic

        assert self.tracker is not None and self.daemon is not None
        if not self.settings.background_training:
            raise SwespotError("background training is paused; resume it (swespot.backgroundTraining) to retrain")
        if self.daemon.error:  # it could not be started; one that is still starting reads the request when up
            raise SwespotError(self.daemon.error)
        request = self.tracker.store.state / "retrain.request"
        write_atomic(request, json.dumps({"requested_at": time.time(), "by": "swespot serve"}).encode())
        log.info("asked the trainer daemon to retrain (%s)", request)
        return P.RetrainResult("asked the trainer daemon to retrain now")

    # ---- documents --------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        assert self.repo is not None
        try:
            return path.relative_to(self.repo).as_posix()
        except ValueError:
            raise SwespotError(f"{path} is outside the repository {self.repo}") from None

    def document(self, uri: str) -> DocumentSnapshot:
        """An open document the model may read (refused: unknown, outside the repo, excluded, huge, or
        not valid UTF-8)."""
        doc = self.workspace.text_documents.get(uri) or self.workspace.text_documents.get(_unquote(uri))
        if doc is None:
            raise SwespotError(f"{uri} is not open in the editor (the server only works on open documents)")
        path = path_of(uri)
        rel = self.rel(path)
        if is_excluded(rel, self.settings.excluded_paths):
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

    def editor_workspace(self, overlay: dict[str, DocumentSnapshot] | None = None) -> EditorWorkspace:
        assert self.repo is not None
        texts = {rel: doc.text for rel, doc in (overlay or {}).items()}
        return EditorWorkspace(self.repo, overlay=texts, excluded=self.settings.excluded_paths)

    # ---- the agent's model ------------------------------------------------------------------------
    def agent_model(self, cancel: threading.Event, on_text: Callable[[str], None] | None, max_tokens: int):
        """The served runtime (with its adapter), or the configured ``agentModel`` (scripted/OpenAI)."""
        spec = self.settings.agent_model
        if spec:
            if not spec.startswith(("scripted:", "openai:")):
                raise SwespotError(f"agentModel must be scripted:FILE or openai:URL[#model], not {spec!r}; "
                                   "the served GGUF is set with the model setting")
            from agent.models import model_from_spec

            return model_from_spec(spec)
        from agent.models import LlamaModel

        if self.runtime is None:
            raise SwespotError(self.runtime_error or "the model is not loaded")
        return LlamaModel(self.runtime, max_tokens=max_tokens, cancel=cancel, on_text=on_text)

    # ---- chat -------------------------------------------------------------------------------------
    async def chat(self, params: P.ChatParams) -> P.ChatResult:
        question = params.prompt
        if params.text_document is not None:
            doc = self.document(params.text_document.uri)
            question = f"{question}\n\n{self._document_context(doc, params.range)}"
        history = [{"role": m.role, "content": m.content} for m in params.history]
        max_steps = params.max_steps or self.settings.chat_max_steps
        max_tokens = params.max_tokens or self.settings.chat_max_tokens

        def job(cancel: threading.Event) -> P.ChatResult | None:
            stream = DeltaStream(lambda text, kind: self.notify_soon(P.CHAT_DELTA, P.ChatDelta(params.chat_id, text, kind)))
            model = self.agent_model(cancel, stream.push, max_tokens)
            streams = self.settings.agent_model == ""
            seen: list[dict] = []

            def on_message(message: dict) -> None:
                seen.append(message)
                if message["role"] == "tool":
                    stream.push(tool_note(seen, message) or "", "tool")
                elif message["role"] == "assistant" and not streams:
                    stream.push(message.get("content") or "")  # backends that do not stream: the whole turn
                stream.flush()
                self.heartbeat.beat()

            self.set_state("generating")
            try:
                result = run_chat(model, self.editor_workspace(self.open_documents()), question, history=history,
                                  max_steps=max_steps, cancel=cancel, on_message=on_message)
            finally:
                stream.flush()
                self.set_state("ready")
            if result.exit == "cancelled":
                return None
            usage = P.Usage(result.prompt_tokens, result.completion_tokens, result.steps)
            exit = "answered" if result.exit == "submitted" else result.exit
            return P.ChatResult(params.chat_id, final_answer(result), usage, exit, self._adapter_name())

        result = await self.run_model_job(job)
        if result is None:
            raise asyncio.CancelledError()
        self._remember(params.chat_id, {"kind": "chat", "prompt": params.prompt, "text": result.text,
                                        "adapter": result.adapter})
        return result

    def _document_context(self, doc: DocumentSnapshot, rng: lsp.Range | None) -> str:
        rel = self.rel(doc.path)
        if rng is None:
            return f"The user has {rel} open."
        text = self._text_in_range(doc, rng)
        return f"The user selected lines {rng.start.line + 1}-{rng.end.line + 1} of {rel}:\n```\n{text}\n```"

    def _text_in_range(self, doc: DocumentSnapshot, rng: lsp.Range) -> str:
        lines = doc.text.split("\n")
        if rng.start.line >= len(lines) or rng.start.line < 0 or rng.end.line < rng.start.line:
            raise SwespotError(f"range {rng.start.line + 1}-{rng.end.line + 1} is outside {doc.uri} ({len(lines)} lines)")
        return "\n".join(lines[rng.start.line: rng.end.line + 1])

    def _adapter_name(self) -> str | None:
        return self.tracker.active_name if self.tracker else None

    # ---- tasks ------------------------------------------------------------------------------------
    async def task(self, params: P.TaskParams) -> P.TaskResult:
        task_id = params.task_id or f"task-{uuid.uuid4().hex[:12]}"
        self.check_versions(params.text_documents)
        snapshots = self.open_documents()
        source = self.editor_workspace(snapshots)
        max_steps = params.max_steps or self.settings.task_max_steps

        def job(cancel: threading.Event):
            model = self.agent_model(cancel, None, self.settings.chat_max_tokens)
            self.set_state("generating")
            try:
                with scratch_snapshot(source, snapshots) as scratch:
                    return run_task(model, scratch, params.request, max_steps=max_steps, cancel=cancel,
                                    on_message=lambda _m: self.heartbeat.beat())
            finally:
                self.set_state("ready")

        run = await self.run_model_job(job)
        if run is None or run.result.exit == "cancelled":
            raise asyncio.CancelledError()
        assert self.repo is not None
        # the versions are checked against the documents as they are *now*, after the agent's run
        edit = build_workspace_edit(self.repo, run.changes, snapshots, self._current_documents(),
                                    self.workspace.position_encoding or lsp.PositionEncodingKind.Utf16)
        result = run.result
        self._remember(task_id, {"kind": "task", "request": params.request, "diff": result.diff})
        return P.TaskResult(task_id, result.summary, result.exit, edit, result.diff,
                            P.Usage(result.prompt_tokens, result.completion_tokens, result.steps),
                            [c.rel for c in run.changes])

    def check_versions(self, expected: list[lsp.VersionedTextDocumentIdentifier]) -> None:
        """Refuse a task when the client's idea of a document's version is not the server's."""
        for item in expected:
            doc = self.workspace.text_documents.get(item.uri) or self.workspace.text_documents.get(_unquote(item.uri))
            if doc is None:
                raise SwespotError(f"{item.uri} is not open in the editor")
            if doc.version != item.version:
                raise SwespotError(f"{item.uri} is at version {doc.version} on the server, not {item.version}: the "
                                   "document changed since the request was made; try again")

    def _current_documents(self) -> dict[str, DocumentSnapshot]:
        out = {}
        for uri, doc in list(self.workspace.text_documents.items()):
            try:
                out[self.rel(path_of(uri))] = DocumentSnapshot(uri, path_of(uri), doc.version, doc.source)
            except SwespotError:
                continue
        return out

    # ---- inline completion ------------------------------------------------------------------------
    async def inline_completion(self, uri: str, position: lsp.Position) -> list[lsp.InlineCompletionItem]:
        doc = self.document(uri)
        ctx = self._completion_context(doc, position)
        why_not = worth_completing(ctx)
        if why_not:
            log.debug("no completion: %s", why_not)
            return []
        # a newer request for the same document supersedes an older one still waiting or generating
        mine = CompletionTicket()
        previous = self._completion_cancel.get(uri)
        if previous is not None:
            previous.supersede()
        cached = self.suggestions.get(uri, ctx)  # typing along a shown suggestion, or a position seen before
        if cached is not None:
            log.info("completion from the cache (%d chars): no model call", len(cached))
            return self._inline_item(uri, ctx, position, cached, cached=True) if cached else []
        self._completion_cancel[uri] = mine
        try:
            if self.settings.completion_debounce_ms > 0 and await mine.superseded_within(self.settings.completion_debounce_ms / 1e3):
                return []
            text = await self.run_model_job(lambda cancel: self._complete(ctx, cancel), mine.cancel)
        finally:
            if self._completion_cancel.get(uri) is mine:
                del self._completion_cancel[uri]
        if text is None or mine.cancel.is_set():
            return []
        self.suggestions.put(uri, ctx, text)
        return self._inline_item(uri, ctx, position, text, cached=False) if text else []

    def _inline_item(self, uri: str, ctx: CompletionContext, position: lsp.Position, text: str, *,
                     cached: bool) -> list[lsp.InlineCompletionItem]:
        """The suggestion as an insertion at the cursor (an empty range: it never replaces what follows)."""
        completion_id = f"c{next(self._ids)}"
        self._remember(completion_id, {"kind": "inlineCompletion", "uri": uri, "text": text, "adapter": self._adapter_name(),
                                       "prefix_tail": ctx.prefix[-200:], "cached": cached})
        accepted = lsp.Command(title="SWE-Spot: completion accepted", command=P.CMD_COMPLETION_ACCEPTED, arguments=[completion_id])
        return [lsp.InlineCompletionItem(insert_text=text, range=lsp.Range(position, position), command=accepted)]

    def _completion_context(self, doc: DocumentSnapshot, position: lsp.Position) -> CompletionContext:
        pygls_doc = self.workspace.text_documents.get(doc.uri) or self.workspace.get_text_document(doc.uri)
        lines = doc.text.split("\n")
        if position.line < 0 or position.line > len(lines) or position.character < 0:
            raise SwespotError(f"position {position.line}:{position.character} is outside {doc.uri}")
        offset = min(pygls_doc.offset_at_position(position), len(doc.text))
        return CompletionContext(self.rel(doc.path), pygls_doc.language_id or "", doc.text[:offset], doc.text[offset:])

    def _complete(self, ctx: CompletionContext, cancel: threading.Event) -> str | None:
        """The model's suggestion (None when cancelled). Generation stops at the stop rules
        (``stop_point``: the line's end mid-line, the indented block's end otherwise) and once
        ``completionMaxMs`` of model work has passed, keeping what came."""
        started = time.perf_counter()
        runtime = self.runtime
        fim = self._fim_tokens(runtime)
        snippets = self.snippets.snippets(ctx, self._read_for_snippet, self._is_excluded, budget_tokens=self.settings.completion_context_tokens,
                                          count_tokens=lambda text: len(runtime.tokenize(text, special=False))) if self.snippets else []
        prompt = build_prompt(ctx, snippets, fim)
        stats: dict = {}
        budget = self.settings.completion_max_ms / 1e3
        text, ended = "", None
        stream = runtime.generate(prompt, max_tokens=self.settings.completion_max_tokens, stop=stop_strings(fim),
                                  cancel=cancel, stats=stats)
        try:
            for piece in stream:
                text += piece
                self.heartbeat.beat()
                cut = stop_point(text, ctx)
                if cut is not None:
                    text, ended = text[:cut], "stop rule"
                    break
                if budget and time.perf_counter() - started >= budget:
                    ended = "time budget"
                    break
        finally:
            stream.close()  # releases the model at once when a stop rule or the budget ended it
        log.info("completion: %d prompt tokens, %d generated, %s in %.0f ms", stats.get("prompt_tokens", 0),
                 stats.get("completion_tokens", 0), ended or stats.get("finish_reason"), (time.perf_counter() - started) * 1e3)
        if stats.get("finish_reason") == "cancelled":
            return None
        return trim_completion(fit_to_line_rest(text, ctx), ctx)

    def _fim_tokens(self, runtime) -> tuple[str, str, str] | None:
        """The FIM token texts of this model, if it has FIM tokens at all (``runtime.has_fim``): the
        first known family whose three markers are single tokens of its vocabulary."""
        if not runtime.has_fim:
            return None
        for family in FIM_TOKENS:
            if all(len(runtime.tokenize(t, special=True)) == 1 for t in family):
                return family
        return None

    def _read_for_snippet(self, rel: str) -> str:
        doc = self.open_documents().get(rel)
        if doc is not None:
            return doc.text
        assert self.repo is not None
        return (self.repo / rel).read_text(encoding="utf-8")

    def _is_excluded(self, rel: str) -> bool:
        return is_excluded(rel, self.settings.excluded_paths)

    # ---- code actions -----------------------------------------------------------------------------
    def code_actions(self, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        """Cheap: the actions are listed without running anything; the agent runs when one is resolved
        (``codeAction/resolve``) or its command is executed."""
        uri = params.text_document.uri
        try:
            doc = self.document(uri)
        except SwespotError:
            return []  # not ours to act on: no actions, not an error (clients ask on every cursor move)
        wanted = params.context.only
        resolve = self._client_resolves_edits()
        actions = []

        def offer(title: str, kind: str, data: P.CodeActionData, diagnostics=None) -> None:
            if wanted and not any(kind == w or kind.startswith(f"{w}.") for w in wanted):
                return
            raw = self.protocol._converter.unstructure(data)
            if data.action == "explain":
                actions.append(lsp.CodeAction(title=title, kind=kind, command=lsp.Command(title=title, command=P.CMD_EXPLAIN, arguments=[raw])))
            elif resolve:
                actions.append(lsp.CodeAction(title=title, kind=kind, diagnostics=diagnostics, data=raw))
            else:
                actions.append(lsp.CodeAction(title=title, kind=kind, diagnostics=diagnostics,
                                              command=lsp.Command(title=title, command=P.CMD_CODE_ACTION, arguments=[raw])))

        offer("SWE-Spot: Explain this", "refactor.swespot.explain",
              P.CodeActionData("explain", uri, params.range, doc.version))
        for diagnostic in params.context.diagnostics:
            offer(f"SWE-Spot: Fix “{diagnostic.message[:60]}”", lsp.CodeActionKind.QuickFix,
                  P.CodeActionData("fix", uri, diagnostic.range, doc.version, diagnostic=diagnostic), [diagnostic])
        symbol = self._function_at(doc, params.range.start.line + 1)
        if symbol is not None:
            offer(f"SWE-Spot: Write a test for {symbol.qualname}", "refactor.swespot.writeTest",
                  P.CodeActionData("writeTest", uri, params.range, doc.version, symbol=symbol.qualname))
        return actions

    def _client_resolves_edits(self) -> bool:
        caps = self.client_capabilities.text_document
        support = caps.code_action.resolve_support if caps and caps.code_action else None
        return bool(support and "edit" in support.properties)

    def _function_at(self, doc: DocumentSnapshot, line: int):
        """The function or method around ``line``. Editors ask for code actions at every cursor move, so
        the document's symbols are parsed once per version (parsing holds the GIL: 5-20 ms a file)."""
        from agent.index import parse_file

        key = (doc.uri, doc.version, len(doc.text))
        if self._symbols[0] != key:
            try:
                index = parse_file(self.rel(doc.path), doc.text)
            except Exception:  # noqa: BLE001 - no parser for this language: no test action
                index = None
            self._symbols = (key, index)
        index = self._symbols[1]
        symbol = index.enclosing(line) if index is not None else None
        return symbol if symbol is not None and symbol.kind in ("function", "method") else None

    async def resolve_code_action(self, action: lsp.CodeAction) -> lsp.CodeAction:
        data = self.parse(action.data, P.CodeActionData, "codeAction/resolve")
        result = await self.run_code_action(data)
        action.edit = result.edit
        return action

    async def run_code_action(self, data: P.CodeActionData) -> P.TaskResult:
        doc = self.document(data.uri)
        rel = self.rel(doc.path)
        code = self._text_in_range(doc, data.range)
        if data.action == "fix":
            diagnostic = data.diagnostic
            message = diagnostic.message if diagnostic else "the problem"
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
        return await self.task(P.TaskParams(request=request, text_documents=versions))

    async def explain(self, data: P.CodeActionData) -> P.ChatResult:
        chat = P.ChatParams(chat_id=f"explain-{uuid.uuid4().hex[:8]}", prompt="Explain what this code does and why.",
                            text_document=lsp.TextDocumentIdentifier(data.uri), range=data.range)
        return await self.chat(chat)

    # ---- feedback ---------------------------------------------------------------------------------
    def record_feedback(self, params: P.FeedbackParams) -> None:
        assert self.feedback is not None
        served = self._served.get(params.id, {})
        entry = {**self.protocol._converter.unstructure(params), "served": served,
                 "model": self.runtime.model_path.name if self.runtime else None, "adapter": self._adapter_name()}
        if self.feedback.record(entry):
            log.info("feedback %s %s %s", params.kind, params.id, params.action)

    def _remember(self, key: str, value: dict) -> None:
        self._served[key] = value
        while len(self._served) > SERVED_MEMORY:
            self._served.popitem(last=False)

    # ---- the boundary -----------------------------------------------------------------------------
    def parse(self, raw: Any, cls: type, method: str):
        """Parameters of a custom method as a protocol type; InvalidParams with the reasons otherwise."""
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, dict):
            raise JsonRpcInvalidParams(f"invalid parameters for {method}: expected an object, got {type(raw).__name__}")
        try:
            return self.protocol._converter.structure(replace_lone_surrogates(raw), cls)
        except cattrs.ClassValidationError as exc:
            raise JsonRpcInvalidParams(f"invalid parameters for {method}: {validation_reasons(exc)}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise JsonRpcInvalidParams(f"invalid parameters for {method}: {exc}") from exc

    async def serve(self, method: str, handler: Callable[[], Any]) -> Any:
        """Every request passes here: tagged with its id in the log, timed, and its SwespotError (the one
        expected failure) turned into an LSP error the client can show."""
        REQUEST_TAG.set(f"{method}#{self.protocol.msg_id}")
        started = time.perf_counter()
        try:
            result = handler()
            if inspect.isawaitable(result):
                result = await result
        except SwespotError as exc:
            log.info("refused after %.0f ms: %s", (time.perf_counter() - started) * 1e3, exc)
            raise JsonRpcException(message=str(exc), code=P.REQUEST_FAILED) from exc
        except JsonRpcInvalidParams as exc:
            log.info("refused after %.0f ms: %s", (time.perf_counter() - started) * 1e3, exc)
            raise
        except asyncio.CancelledError:
            log.info("cancelled after %.0f ms", (time.perf_counter() - started) * 1e3)
            raise
        log.info("answered in %.0f ms", (time.perf_counter() - started) * 1e3)
        return result

    def report_server_error(self, error: Exception, source) -> None:
        """A message pygls could not read (a body cut by a wrong Content-Length, or not JSON): answer its
        request, if its id can still be read, with a parse error (-32700), so the client does not wait
        forever; and show the client what happened."""
        if isinstance(error, json.JSONDecodeError):
            found = _BODY_ID.search(error.doc or "")
            log.warning("unreadable message (%s)%s", error, f", answering id {found.group(1)}" if found else "")
            if found:
                msg_id = json.loads(found.group(1))
                self.protocol._send_response(msg_id, error=lsp.ResponseError(
                    code=-32700, message=f"the message could not be read ({error.msg}): was its Content-Length right?"))
        super().report_server_error(error, source)

    # ---- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything this server started: generation, the watcher, the daemon. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        for cancel in list(self._cancels) + [ticket.cancel for ticket in self._completion_cancel.values()]:
            cancel.set()
        if self.daemon is not None:
            self.daemon.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped")


class CompletionTicket:
    """One inline-completion request of a document. A newer request for the document supersedes it at
    once, whether it still waits out its debounce (it answers with no items) or already generates
    (``cancel`` stops the model between tokens)."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self._woken = asyncio.Event()

    def supersede(self) -> None:  # on the event loop's thread
        self.cancel.set()
        self._woken.set()

    async def superseded_within(self, seconds: float) -> bool:
        """Wait out the debounce; True as soon as a newer request supersedes this one."""
        with contextlib.suppress(asyncio.TimeoutError):  # (not the builtin TimeoutError before Python 3.11)
            await asyncio.wait_for(self._woken.wait(), seconds)
        return self.cancel.is_set()


class DeltaStream:
    """Coalesces streamed pieces (one per token) into a notification at most every ``interval`` seconds:
    a client drawing a chat gains nothing from 1000 messages a second, and would fall behind. The first
    piece goes out at once: the time to the first token is what the user feels."""

    def __init__(self, send: Callable[[str, str], None], interval: float = 0.03) -> None:
        self.send = send
        self.interval = interval
        self.text = ""
        self.kind = "text"
        self.last = float("-inf")

    def push(self, text: str, kind: str = "text") -> None:
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


def _unquote(uri: str) -> str:
    from urllib.parse import unquote

    return unquote(uri)


# ---- LSP handlers: thin, each one delegates to a plain method of the server ------------------------
def create_server(*, model: str | None = None, repo: str | Path | None = None) -> SwespotServer:
    server = SwespotServer(model=model, repo=repo)

    @server.feature(lsp.INITIALIZE)
    def on_initialize(ls: SwespotServer, params: lsp.InitializeParams) -> None:
        REQUEST_TAG.set("initialize")
        try:
            ls.configure(params)
        except SwespotError as exc:
            ls.initialize_error = str(exc)
            raise JsonRpcException(message=str(exc), code=P.REQUEST_FAILED) from exc

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

    @server.feature(P.CHAT)
    async def on_chat(ls: SwespotServer, params: Any) -> P.ChatResult:
        return await ls.serve(P.CHAT, lambda: ls.chat(ls.parse(params, P.ChatParams, P.CHAT)))

    @server.feature(P.TASK)
    async def on_task(ls: SwespotServer, params: Any) -> P.TaskResult:
        return await ls.serve(P.TASK, lambda: ls.task(ls.parse(params, P.TaskParams, P.TASK)))

    @server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
    async def on_inline_completion(ls: SwespotServer, params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList:
        items = await ls.serve(lsp.TEXT_DOCUMENT_INLINE_COMPLETION,
                               lambda: ls.inline_completion(params.text_document.uri, params.position))
        return lsp.InlineCompletionList(items=items)

    @server.feature(P.INLINE_COMPLETION)
    async def on_custom_inline_completion(ls: SwespotServer, params: Any) -> P.InlineCompletionResult:
        async def run() -> P.InlineCompletionResult:
            parsed = ls.parse(params, P.InlineCompletionParams, P.INLINE_COMPLETION)
            return P.InlineCompletionResult(await ls.inline_completion(parsed.text_document.uri, parsed.position))

        return await ls.serve(P.INLINE_COMPLETION, run)

    @server.feature(P.GET_STATUS)
    async def on_get_status(ls: SwespotServer, _params: Any) -> P.StatusParams:
        return await ls.serve(P.GET_STATUS, ls.status)

    @server.feature(P.ADAPTERS)
    async def on_adapters(ls: SwespotServer, _params: Any) -> P.AdaptersResult:
        return await ls.serve(P.ADAPTERS, ls.adapters)

    @server.feature(P.ROLLBACK)
    async def on_rollback(ls: SwespotServer, params: Any) -> P.AdapterInfo:
        return await ls.serve(P.ROLLBACK, lambda: ls.rollback(ls.parse(params, P.RollbackParams, P.ROLLBACK)))

    @server.feature(P.RETRAIN)
    async def on_retrain(ls: SwespotServer, _params: Any) -> P.RetrainResult:
        return await ls.serve(P.RETRAIN, ls.retrain)

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION, lsp.CodeActionOptions(
        code_action_kinds=[lsp.CodeActionKind.QuickFix, "refactor.swespot"], resolve_provider=True))
    async def on_code_action(ls: SwespotServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
        return await ls.serve(lsp.TEXT_DOCUMENT_CODE_ACTION, lambda: ls.code_actions(params))

    @server.feature(lsp.CODE_ACTION_RESOLVE)
    async def on_code_action_resolve(ls: SwespotServer, action: lsp.CodeAction) -> lsp.CodeAction:
        return await ls.serve(lsp.CODE_ACTION_RESOLVE, lambda: ls.resolve_code_action(action))

    @server.command(P.CMD_EXPLAIN)
    async def on_explain(ls: SwespotServer, *args: Any) -> P.ChatResult:
        return await ls.serve(P.CMD_EXPLAIN, lambda: ls.explain(ls.parse(_first(args), P.CodeActionData, P.CMD_EXPLAIN)))

    @server.command(P.CMD_CODE_ACTION)
    async def on_run_code_action(ls: SwespotServer, *args: Any) -> P.TaskResult:
        return await ls.serve(P.CMD_CODE_ACTION,
                              lambda: ls.run_code_action(ls.parse(_first(args), P.CodeActionData, P.CMD_CODE_ACTION)))

    @server.feature(P.FEEDBACK)
    def on_feedback(ls: SwespotServer, params: Any) -> None:
        REQUEST_TAG.set(P.FEEDBACK)
        try:
            ls.record_feedback(ls.parse(params, P.FeedbackParams, P.FEEDBACK))
        except (JsonRpcException, SwespotError) as exc:  # a notification has no reply: the log says why
            log.warning("feedback not recorded: %s", exc)

    return server


def _first(args: tuple) -> Any:
    return args[0] if args else None


def _report_of(manifest: dict) -> str | None:
    """The evaluation report a version's gate wrote (``swespot specialize``), if it is still on disk."""
    gate = manifest.get("gate")
    report = gate.get("report") if isinstance(gate, dict) else None
    return report if isinstance(report, str) and os.path.isfile(report) else None
