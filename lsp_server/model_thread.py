"""The one model thread: every piece of model work (loading, adapter swaps, completions, chat and task
runs) runs here, one at a time, off the event loop, so the loop keeps reading messages —
``$/cancelRequest`` included — while the model works. Cancelling a request sets its
``threading.Event``, which the runtime checks between tokens: generation really stops.

Between two jobs the runtime is brought up to date: reloaded when the model settings changed, and
hot-swapped to the adapter the store publishes now. A watcher thread notices a newly published adapter
(or a change of the daemon) while no request comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import SwespotError
from agent.model_spec import serving_gguf_of
from agent.models import LlamaModel, model_from_spec
from agent.runtime import LlamaRuntime  # imports llama_cpp only when a runtime is created
from lsp_server.logs import REQUEST_TAG

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer

log = logging.getLogger("swespot.lsp")


def between_jobs(ls: SwespotServer, kind: str = "code") -> None:
    """Before any model work: (re)load the runtime if its settings changed, hot-swap to the store's
    current adapter if it moved, and activate that version's adapter for ``kind`` of work ("chat": its
    chat adapter when it has one). Runs on the model thread only."""
    ls.swap_pending.clear()
    if ls.runtime is None or ls.settings.model_key not in (ls.runtime_key, ls.failed_key):
        load_runtime(ls)
    assert ls.tracker is not None
    try:
        _swap(ls)
    finally:
        ls.tracker.use(ls.runtime, kind)


def _swap(ls: SwespotServer) -> None:
    assert ls.tracker is not None
    if not ls.tracker.needs_swap():
        return
    try:
        swap = ls.tracker.swap(ls.runtime)
    except SwespotError as exc:
        ls.publish_status(message=f"kept the current adapter: {exc}")
        return
    if swap is None:
        return
    ls.suggestions.clear()
    ls.swap_ms = swap.seconds * 1e3
    if swap.version is None:
        ls.publish_status(message="serving the base model (no adapter is published)")
    else:
        commit = (swap.version.commit or "")[:12]
        ls.publish_status(message=f"switched to adapter {swap.version.name}" + (f" (commit {commit})" if commit else "")
                                  + (" with its chat adapter" if ls.tracker.chat_name else "") + f" in {ls.swap_ms:.0f} ms")


def load_runtime(ls: SwespotServer) -> None:
    """Load the model the settings name. If it cannot be loaded while another one is serving, the
    old one keeps serving (the status says why) until the settings name another model."""
    settings = ls.settings
    old = ls.runtime
    ls.set_state("loading")
    try:
        path = str(serving_gguf_of(settings.model or ls.cli_model, "model"))
        runtime = LlamaRuntime(path, n_ctx=settings.context_size, n_threads=settings.threads or None,
                               n_gpu_layers=settings.gpu_layers)
    except SwespotError as exc:
        ls.runtime_error = str(exc)
        if old is not None:
            ls.failed_key = settings.model_key
            log.error("kept %s: %s", old.model_path.name, exc)
            ls.set_state("ready", message=f"kept serving {old.model_path.name}: the new model settings failed")
            return
        ls.runtime_key = None
        ls.set_state("error", error=str(exc))
        raise
    if old is not None:
        old.close()
    ls.runtime = runtime
    ls.suggestions.clear()
    ls.runtime_key = settings.model_key
    ls.failed_key = None
    ls.runtime_error = None
    assert ls.tracker is not None
    ls.tracker.reset()
    log.info("loaded %s (fim=%s)", path, runtime.has_fim)
    ls.set_state("ready", message=f"loaded {Path(path).name}")


def model_job(ls: SwespotServer, tag: str, fn: Callable[[threading.Event], Any], cancel: threading.Event,
              kind: str = "code") -> Any:
    """One request's model work on the model thread: tagged logs, runtime and adapter (for ``kind``)
    brought up to date first, heartbeat while it runs. A job cancelled while it waited does not start."""
    REQUEST_TAG.set(tag)
    if cancel.is_set():
        log.info("cancelled before it started")
        return None
    between_jobs(ls, kind)
    assert ls.heartbeat is not None
    ls.heartbeat.start()
    try:
        return fn(cancel)
    finally:
        ls.heartbeat.stop()


def maintenance_job(ls: SwespotServer, tag: str) -> None:
    """Load the model or swap the adapter while no request is waiting (its errors are in the status)."""
    REQUEST_TAG.set(tag)
    with contextlib.suppress(SwespotError):
        between_jobs(ls)
    if ls.state == "loading" and ls.runtime is not None:  # loaded earlier: "loading" must not stick
        ls.set_state("ready")


def submit_maintenance(ls: SwespotServer, tag: str) -> None:
    ls.model_pool.submit(maintenance_job, ls, tag)


def request_swap(ls: SwespotServer, tag: str) -> None:
    """Swap to the store's current adapter on the model thread, unless a swap is already queued."""
    if ls.runtime is not None and not ls.swap_pending.is_set():
        ls.swap_pending.set()
        submit_maintenance(ls, tag)


async def run_model_job(ls: SwespotServer, fn: Callable[[threading.Event], Any],
                        cancel: threading.Event | None = None, kind: str = "code") -> Any:
    """Run ``fn(cancel)`` on the model thread, with the served version's adapter for ``kind`` ("chat": the
    chat panel's questions; "code": the rest). If the request is cancelled ($/cancelRequest, shutdown)
    while it waits in the queue, it never runs; while it runs, ``cancel`` is set so the model stops
    between tokens, and the answer waits for it to stop, so the next request finds the model free."""
    cancel = cancel or threading.Event()
    ls.cancels.add(cancel)
    job = ls.model_pool.submit(model_job, ls, REQUEST_TAG.get(), fn, cancel, kind)
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
        ls.cancels.discard(cancel)


def agent_model(ls: SwespotServer, cancel: threading.Event, on_text: Callable[[str], None] | None, max_tokens: int):
    """The served runtime (with its adapter), or the configured ``agentModel`` (scripted/OpenAI)."""
    spec = ls.settings.agent_model
    if spec:
        if not spec.startswith(("scripted:", "openai:")):
            raise SwespotError(f"agentModel must be scripted:FILE or openai:URL[#model], not {spec!r}; "
                               "the served GGUF is set with the model setting")
        return model_from_spec(spec)
    if ls.runtime is None:
        raise SwespotError(ls.runtime_error or "the model is not loaded")
    return LlamaModel(ls.runtime, max_tokens=max_tokens, cancel=cancel, on_text=on_text)


def watch(ls: SwespotServer) -> None:
    """The watcher thread: between requests, notice a newly published adapter (and swap on the model
    thread), a change of the daemon's status.json, or the daemon dying. Cheap: two stat-sized reads per
    poll. Ends when the server stops."""
    REQUEST_TAG.set("watch")
    assert ls.tracker is not None and ls.daemon is not None
    daemon_alive = ls.daemon.running
    while not ls.stopping.wait(ls.settings.adapter_poll_s):
        try:
            if ls.tracker.needs_swap():
                request_swap(ls, "swap")
            changed = ls.tracker.daemon_status_if_changed() is not None
            if daemon_alive != ls.daemon.running:
                daemon_alive, changed = ls.daemon.running, True
            if changed:
                ls.publish_status()
        except RuntimeError:  # the pool is shut down: the server is stopping
            return
        except Exception:  # the watcher must survive anything a poll meets
            log.exception("watch poll failed")
