"""Following the adapter store: which published version the runtime serves, and the swap to a new one.

Checking is cheap (one read of the small ``current`` file), so the server checks before every model
job and from a watcher thread while idle; the swap itself runs on the model thread, between jobs, so a
generation never sees two adapters. A version that fails to load (another base model, a damaged file)
is remembered and not retried until ``current`` names something else.

A version may hold a chat adapter beside its code adapter (``Version.chat_gguf``, trainer/pipeline.py):
both are loaded, and ``use`` activates the one for the kind of request about to run — the chat adapter for
the chat panel's questions, the code adapter for everything else. A chat adapter that fails to load is
logged and the version is served with its code adapter alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SwespotError
from agent.state import Status, read_status, status_path
from trainer.store import AdapterStore, Version

log = logging.getLogger(__name__)


@dataclass
class SwapResult:
    version: Version | None  # None: back to the bare base model
    seconds: float
    previous: str | None


class AdapterTracker:
    def __init__(self, store: AdapterStore) -> None:
        self.store = store
        self.active: Version | None = None
        self.failed: dict[str, str] = {}  # version name -> why it could not be loaded
        self.chat_name: str | None = None  # the active version's chat adapter, as loaded on the runtime
        self._status_mtime: float | None = None

    @property
    def active_name(self) -> str | None:
        return self.active.name if self.active else None

    def wanted_name(self) -> str | None:
        """The name ``current`` points at (no validation: that happens when swapping)."""
        return self.store.current_name()

    def needs_swap(self) -> bool:
        wanted = self.wanted_name()
        return wanted != self.active_name and wanted not in self.failed

    def swap(self, runtime) -> SwapResult | None:
        """Make the runtime serve the store's current version; None when it already does. Raises
        SwespotError (and remembers the version as failed) when the adapter cannot be loaded."""
        if not self.needs_swap():
            return None
        wanted_name = self.wanted_name()
        version = self.store.current()  # validates; may fall back to an older whole version
        if version is not None and version.name == self.active_name:
            return None
        started = time.perf_counter()
        previous = self.active
        try:
            if version is None:
                runtime.set_adapters(None)
            else:
                runtime.set_adapters({runtime.load_adapter(version.gguf, name=version.name): 1.0})
        except SwespotError as exc:
            self.failed[wanted_name or "?"] = str(exc)
            log.error("cannot serve adapter %s: %s", wanted_name, exc)
            raise
        if previous is not None and (version is None or previous.name != version.name):
            runtime.unload_adapter(previous.name)  # its memory is freed; the store keeps the file
            if self.chat_name is not None:
                runtime.unload_adapter(self.chat_name)
        self.chat_name = None
        if version is not None and version.chat_gguf is not None:
            try:
                self.chat_name = runtime.load_adapter(version.chat_gguf, name=f"{version.name}:chat")
            except SwespotError as exc:
                log.warning("serving %s without its chat adapter: %s", version.name, exc)
        self.active = version
        seconds = time.perf_counter() - started
        log.info("now serving adapter %s (was %s) after %.1f ms", self.active_name, previous.name if previous else None, seconds * 1e3)
        return SwapResult(version, seconds, previous.name if previous else None)

    def use(self, runtime, kind: str) -> None:
        """Activate the served version's adapter for a request of ``kind``: "chat" gets the chat adapter when
        the version has one; any other kind (and chat without one) the code adapter. A switch clears the
        runtime's prompt cache, so it happens only when the kind changes."""
        if self.active is None:
            return
        name = self.chat_name if kind == "chat" and self.chat_name else self.active.name
        if runtime.active_adapters != [(name, 1.0)]:
            runtime.set_adapters({name: 1.0})

    def reset(self) -> None:
        """The runtime was reloaded: no adapter is active on it any more."""
        self.active = None
        self.chat_name = None
        self.failed.clear()

    def daemon_status_if_changed(self) -> Status | None:
        """status.json's content when it changed since the last call (by mtime), else None."""
        path: Path = status_path(self.store.state)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self._status_mtime:
            return None
        self._status_mtime = mtime
        return read_status(self.store.state)
