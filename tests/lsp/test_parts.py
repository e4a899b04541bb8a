"""Parts of the server that need no client: how chat text is streamed, and how the trainer daemon is
stopped without holding up the event loop."""

from __future__ import annotations

import subprocess
import sys

from lsp_server.daemon import DaemonProcess
from lsp_server.server import DeltaStream


def test_the_first_chat_delta_is_sent_at_once_and_later_ones_are_coalesced():
    sent = []
    stream = DeltaStream(lambda text, kind: sent.append((text, kind)), interval=3600)
    stream.push("Hel")
    assert sent == [("Hel", "text")]  # time to first token is what the user feels
    stream.push("lo")
    stream.push(" world")
    assert sent == [("Hel", "text")]
    stream.push("read_file: 1: x", "tool")  # another kind flushes what was held
    stream.flush()
    assert sent == [("Hel", "text"), ("lo world", "text"), ("read_file: 1: x", "tool")]


def test_disabling_background_training_does_not_wait_for_the_daemon_to_finish_its_step(tmp_path):
    """The daemon checkpoints before it exits on SIGTERM (seconds); ``enable(False)`` must return at once."""
    changes = []
    daemon = DaemonProcess(tmp_path, tmp_path / "state", on_change=lambda: changes.append(daemon.running))
    # a stand-in for a daemon busy with a training step: it exits only once we close its stdin
    busy = "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: None); print('up', flush=True); sys.stdin.read()"
    daemon.proc = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   start_new_session=True)
    assert daemon.proc.stdout.readline() == b"up\n"
    stopping = daemon.enable(False)
    assert not stopping.done() and daemon.proc.poll() is None  # returned while the daemon still works
    daemon.proc.stdin.close()  # the step ends; the daemon exits
    stopping.result(timeout=60)
    assert not daemon.running and changes == [False]
    daemon.close()
