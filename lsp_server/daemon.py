"""The trainer daemon as a child of the language server: started when background training is enabled,
stopped on shutdown. The daemon is its own process (training never blocks the editor) and talks to us
only through the adapter store and status.json.

Starting and stopping happen on a thread of their own (``enable``): a daemon asked to stop finishes its
training step and saves a checkpoint first, which takes seconds, and the server's event loop must keep
answering the editor meanwhile."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10


def daemon_command_available() -> bool:
    """Whether this installation has ``swespot daemon`` (a later issue may not have landed): asks the
    CLI's own parser, whose subcommand modules are import-light, instead of spawning a process."""
    import argparse

    from agent.cli import build_parser

    # argparse has no public way to list subcommands; its subparsers action holds them in ``choices``
    return any(isinstance(action, argparse._SubParsersAction) and "daemon" in action.choices
               for action in build_parser()._actions)


class DaemonProcess:
    """``python -m agent.cli daemon --repo REPO``, its output appended to ``daemon.log`` in the state dir."""

    def __init__(self, repo: Path, state: Path, on_change: Callable[[], None] | None = None) -> None:
        self.repo = repo
        self.state = state
        self.on_change = on_change  # called (on the daemon thread) after a start or stop
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swespot-daemon")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        if not daemon_command_available():
            self.error = "background training needs `swespot daemon`, which this installation does not have yet"
            log.warning(self.error)
            return False
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.state / "daemon.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "daemon", "--repo", str(self.repo)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            self.error = f"could not start the trainer daemon: {exc}"
            log.error(self.error)
            return False
        finally:
            out.close()
        self.error = None
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
