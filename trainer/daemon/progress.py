"""How far a run is: which phase, the share of the run done and an ETA (from the last run's phase
times, else defaults), and status.json writes that are cheap enough to make on every training step."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import SwespotError
from agent.state import PHASES, Status, write_status

log = logging.getLogger(__name__)

# share of a run's time per phase before a run has been measured (then the last run's times are used)
DEFAULT_PHASE_SECONDS = {"experience": 10.0, "train": 60.0, "export": 10.0, "chat": 0.0, "gate": 10.0, "publish": 1.0}


def expected_seconds(previous: Status) -> dict[str, float]:
    """Seconds per phase to expect: the last run's (status.json's ``last_result``), else the defaults."""
    last = (previous.get("last_result") or {}).get("phase_seconds") or {}
    return {p: float(last.get(p, DEFAULT_PHASE_SECONDS[p])) for p in PHASES}


@dataclass
class Run:
    """The refresh in progress, as the daemon times it (monotonic seconds)."""

    commit: str
    started: float
    phase: str | None = None
    phase_started: float = 0.0
    paused_s: float = 0.0  # paused time in the current phase (not work: kept out of the ETA)
    steps_seen: int = 0
    done: dict[str, float] = field(default_factory=dict)  # phase -> seconds of work

    def enter(self, phase: str) -> bool:
        """Time ``phase`` from now on; False when it is already the current phase."""
        if phase == self.phase:
            return False
        if self.phase is not None:
            self.done[self.phase] = time.monotonic() - self.phase_started - self.paused_s
        self.phase, self.phase_started, self.paused_s = phase, time.monotonic(), 0.0
        return True

    def progress_and_eta(self, phase: str, fraction: float | None, expected: dict[str, float]) -> tuple[float | None, float | None]:
        """(share of the whole run done, seconds left); ``fraction``: how far ``phase`` is, when known."""
        if phase not in PHASES:
            return None, None
        elapsed = max(0.0, time.monotonic() - self.phase_started - self.paused_s)
        this_total = elapsed / fraction if fraction and fraction > 0.02 else max(expected[phase], elapsed)
        later = sum(expected[p] for p in PHASES[PHASES.index(phase) + 1:])
        remaining = max(0.0, this_total - elapsed) + later
        done = sum(self.done.values()) + elapsed
        return round(done / max(done + remaining, 1e-9), 4), round(remaining, 1)


class StatusWriter:
    """The daemon's status.json writes: unchanged fields are not rewritten (the language server re-reads
    the file when it changes), ``throttle``d writes (progress) happen at most every ``interval_s``, and a
    failure to write (a full disk) is logged once per cause, never raised: it must not kill the daemon
    that reports it."""

    def __init__(self, state: Path, interval_s: float = 0.5) -> None:
        self.state = state
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last_write = float("-inf")
        self._written: dict = {}
        self._failure: str | None = None

    def write(self, *, throttle: bool = False, **fields: object) -> None:
        now = time.monotonic()
        if throttle and now - self._last_write < self.interval_s:
            return
        with self._lock:
            if all(k in self._written and self._written[k] == v for k, v in fields.items()):
                return
            self._last_write = now
            try:
                write_status(self.state, **fields)
                self._written.update(fields)
                self._failure = None
            except (SwespotError, OSError) as exc:
                if str(exc) != self._failure:
                    log.warning("could not update status.json: %s", exc)
                self._failure = str(exc)
