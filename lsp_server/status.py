"""Status and the adapter store: ``swespot/getStatus`` (and the ``swespot/status`` notification's
content), ``swespot/adapters``, ``swespot/rollback`` and ``swespot/retrain``."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from agent.errors import SwespotError
from agent.state import read_status, request_retrain
from lsp_server import protocol as P
from lsp_server.model_thread import request_swap

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer

log = logging.getLogger("swespot.lsp")


def status(ls: SwespotServer, message: str | None = None, error: str | None = None) -> P.StatusParams:
    """What the server serves and what the daemon does, as the client shows it."""
    adapter = None
    if ls.tracker is not None and ls.tracker.active is not None:
        adapter = P.AdapterInfo(ls.tracker.active.name, ls.tracker.active.commit)
    daemon = P.DaemonInfo(enabled=ls.settings.background_training)
    if ls.daemon is not None and ls.tracker is not None:
        info = read_status(ls.tracker.store.state)
        progress = info.get("progress")
        daemon = P.DaemonInfo(
            enabled=ls.settings.background_training, running=ls.daemon.running,
            available=ls.daemon.available,
            phase=info.get("phase"), progress=float(progress) if isinstance(progress, (int, float)) else None,
            error=ls.daemon.error or info.get("error") or info.get("last_error"))
    model = ls.runtime.model_path.name if ls.runtime is not None else None
    return P.StatusParams(state=ls.state, model=model, adapter=adapter, daemon=daemon,
                          message=message or ls.message, swap_ms=ls.swap_ms,
                          error=error or ls.runtime_error or ls.settings_error)


def adapters(ls: SwespotServer) -> P.AdaptersResult:
    assert ls.tracker is not None
    versions = [P.AdapterVersionInfo(name, version is not None, version.commit if version else None,
                                     version.manifest.get("published_at") if version else None, why,
                                     report_of(version.manifest) if version else None)
                for name, version, why in ls.tracker.store.versions()]
    return P.AdaptersResult(versions, ls.tracker.store.current_name(), ls.adapter_name)


def report_of(manifest: dict) -> str | None:
    """The evaluation report a version's gate wrote (``swespot specialize``), if it is still on disk."""
    gate = manifest.get("gate")
    report = gate.get("report") if isinstance(gate, dict) else None
    return report if isinstance(report, str) and os.path.isfile(report) else None


def rollback(ls: SwespotServer, params: P.RollbackParams) -> P.AdapterInfo:
    """Publish an older version as current; the swap itself happens on the model thread."""
    assert ls.tracker is not None
    version = ls.tracker.store.rollback(params.version)  # refuses unknown or damaged versions
    ls.tracker.failed.pop(version.name, None)  # the user asked for it: try it again
    log.info("rolled back to %s", version.name)
    request_swap(ls, "rollback")
    return P.AdapterInfo(version.name, version.commit)


def retrain(ls: SwespotServer) -> P.RetrainResult:
    """Ask the trainer daemon to train now (it consumes ``retrain.request``; one still starting reads it
    when up)."""
    assert ls.tracker is not None and ls.daemon is not None
    if not ls.settings.background_training:
        raise SwespotError("background training is paused; resume it (swespot.backgroundTraining) to retrain")
    if ls.daemon.failure is not None:  # it could not be started
        raise ls.daemon.failure
    request = request_retrain(ls.tracker.store.state, by="swespot serve")
    log.info("asked the trainer daemon to retrain (%s)", request)
    return P.RetrainResult("asked the trainer daemon to retrain now")


def register(server: SwespotServer) -> None:
    @server.feature(P.GET_STATUS)
    async def on_get_status(ls: SwespotServer, _params: Any) -> P.StatusParams:
        return await ls.serve(P.GET_STATUS, lambda: status(ls))

    @server.feature(P.ADAPTERS)
    async def on_adapters(ls: SwespotServer, _params: Any) -> P.AdaptersResult:
        return await ls.serve(P.ADAPTERS, lambda: adapters(ls))

    @server.feature(P.ROLLBACK)
    async def on_rollback(ls: SwespotServer, params: Any) -> P.AdapterInfo:
        return await ls.serve(P.ROLLBACK, lambda: rollback(ls, ls.parse(params, P.RollbackParams, P.ROLLBACK)))

    @server.feature(P.RETRAIN)
    async def on_retrain(ls: SwespotServer, _params: Any) -> P.RetrainResult:
        return await ls.serve(P.RETRAIN, lambda: retrain(ls))
