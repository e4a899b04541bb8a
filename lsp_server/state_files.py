"""The two files the server writes in the repository's state dir besides its log: the heartbeat the
trainer daemon reads to pause training while the user waits on the model, and the feedback journal
(training signal, never sent anywhere)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from agent.errors import SwespotError
from agent.state import FEEDBACK_FILE, HEARTBEAT_FILE, write_heartbeat

log = logging.getLogger(__name__)


class Heartbeat:
    """``heartbeat.json``: ``{"pid", "generating", "since", "updated_at"}``, rewritten when generation
    starts and stops and at most every ``interval`` seconds while it runs (``beat``). The daemon treats
    a recent ``updated_at`` with ``generating: true`` as "the editor is busy"."""

    def __init__(self, state: Path, interval: float = 1.0) -> None:
        self.state = Path(state)
        self.path = self.state / HEARTBEAT_FILE
        self.interval = interval
        self._since: float | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._since = time.time()
            self._write(True)

    def beat(self) -> None:
        if self._since is not None and time.time() - self._last >= self.interval:
            with self._lock:
                self._write(True)

    def stop(self) -> None:
        with self._lock:
            self._since = None
            self._write(False)

    def _write(self, generating: bool) -> None:
        self._last = time.time()
        try:
            write_heartbeat(self.state, generating, self._since)
        except SwespotError as exc:
            log.warning("could not write the heartbeat %s: %s", self.path, exc)


class FeedbackLog:
    """Appends one JSON object per line to ``feedback.jsonl``; ``enabled`` False writes nothing."""

    def __init__(self, state: Path, enabled: bool = True) -> None:
        self.path = Path(state) / FEEDBACK_FILE
        self.enabled = enabled
        self._lock = threading.Lock()

    def record(self, entry: dict) -> bool:
        if not self.enabled:
            return False
        line = json.dumps({"time": time.time(), **entry}, ensure_ascii=False)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
        except OSError as exc:
            raise SwespotError(f"could not write feedback to {self.path}: {exc}") from exc
        return True
