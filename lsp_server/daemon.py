"""The trainer daemon as a child of the language server: started when background training is enabled,
stopped on shutdown. The daemon is its own process (training never blocks the editor) and talks to us
only through the adapter store and status.json.

Starting and stopping happen on a thread of their own (``enable``): a daemon asked to stop finishes its
training step and saves a checkpoint first, which takes seconds, and the server's event loop must keep
answering the editor meanwhile."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from agent.errors import DaemonUnavailable, SwespotError
from agent.state import DAEMON_LOG

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10


# What ``swespot daemon`` needs beyond the language server's own install: module -> the extra providing it
DAEMON_NEEDS = {"watchdog": "daemon", "torch": "train"}


def daemon_command(repo: Path) -> list[str]:
    """The documented command that runs the trainer daemon for ``repo`` (``swespot daemon``, README)."""
    return [sys.executable, "-m", "swespot", "daemon", "--repo", str(repo)]


def check_daemon_installed() -> None:
    """Raise ``DaemonUnavailable`` when this installation lacks the daemon's extras (the language server
    runs without them; the daemon watches git with watchdog and trains with torch). Finds, never imports."""
    missing = sorted({extra for module, extra in DAEMON_NEEDS.items() if importlib.util.find_spec(module) is None})
    if missing:
        raise DaemonUnavailable(f"background training needs the {' and '.join(missing)} extra"
                                f"{'s' if len(missing) > 1 else ''}: pip install 'swespot[{','.join(missing)}]'")


class DaemonProcess:
    """``daemon_command(repo)``, its output appended to ``DAEMON_LOG`` in the state dir. ``failure`` says why
    it could not be started (``DaemonUnavailable`` when this installation cannot run it at all)."""

    def __init__(self, repo: Path, state: Path, on_change: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.state = state
        self.on_change = on_change  # called (on the daemon thread) after a start or stop
        self.proc: subprocess.Popen | None = None
        self.failure: SwespotError | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swespot-daemon")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def error(self) -> str | None:
        """Why the daemon could not be started, in one line; None when nothing failed."""
        return str(self.failure) if self.failure is not None else None

    @property
    def available(self) -> bool:
        """False when this installation cannot run the daemon at all (not when one start failed)."""
        return not isinstance(self.failure, DaemonUnavailable)

    def enable(self, on: bool) -> Future:
        """Start or stop the daemon without waiting for it (requests are handled in order)."""

        def change() -> None:
            before = (self.running, self.error)
            self.start() if on else self.stop()
            if self.on_change is not None and (self.running, self.error) != before:
                self.on_change()

        return self._worker.submit(change)

    def close(self) -> None:
        """Shutdown: let a pending start or stop finish, then stop the daemon and wait for it."""
        self._worker.shutdown(wait=True)
        self.stop()

    def start(self) -> bool:
        """Start the daemon unless it runs; False (with ``error`` set) when it cannot be started."""
        if self.running:
            return True
        try:
            check_daemon_installed()
        except DaemonUnavailable as exc:
            self.failure = exc
            log.warning("%s", exc)
            return False
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.state / DAEMON_LOG, "ab")
        try:
            self.proc = subprocess.Popen(
                daemon_command(self.repo),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            self.failure = SwespotError(f"could not start the trainer daemon: {exc}")
            log.error("%s", self.failure)
            return False
        finally:
            out.close()
        self.failure = None
        log.info("started the trainer daemon (pid %d)", self.proc.pid)
        return True

    def stop(self) -> None:
        """SIGTERM the daemon's process group (it checkpoints and exits), SIGKILL it after a timeout.
        Blocks until it is gone: call it through ``enable(False)`` from the event loop."""
        if not self.running:
            self.proc = None
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the trainer daemon did not stop in %ds; killing it", STOP_TIMEOUT_S)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        log.info("stopped the trainer daemon")
        self.proc = None
