"""Parts of the server that need no client: how chat text is streamed, and how the trainer daemon is
stopped without holding up the event loop."""

from __future__ import annotations

import subprocess
import sys

from lsp_server.chat import DeltaStream
from lsp_server.daemon import DaemonProcess


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
    # a stand-in for a daemon busy with a training step: told to stop, it exits only once we close its stdin
    busy = ("import signal, sys; signal.signal(signal.SIGTERM, lambda *a: print('term', flush=True)); "
            "print('up', flush=True); sys.stdin.read()")
    daemon.proc = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   start_new_session=True)
    assert daemon.proc.stdout.readline() == b"up\n"
    stopping = daemon.enable(False)  # returns at once...
    assert daemon.proc.stdout.readline() == b"term\n"  # ...while the stop it started waits for the daemon
    assert not stopping.done() and daemon.proc.poll() is None
    daemon.proc.stdin.close()  # the step ends; the daemon exits
    stopping.result(timeout=60)
    assert not daemon.running and changes == [False]
    daemon.close()


def test_a_completion_prompt_only_grows_at_its_end_while_the_user_types_in_a_long_file():
    """KV-cache reuse needs the prompt's start to stay put: here the text before the cursor is longer
    than the prompt's window, so a window that slid with each keystroke would change every prompt's start."""
    from lsp_server.completion import PREFIX_CHARS, CompletionContext, build_prompt

    body = "".join(f"def helper_{n}(x):\n    return x + {n}\n\n\n" for n in range(400))
    assert len(body) > 3 * PREFIX_CHARS
    typed = "    total = helper_1(2) + helper_2(3)"
    prompts = [build_prompt(CompletionContext("pkg/mod.py", "python", body + typed[:n], "\n\nprint(total)\n"), [], None)
               for n in range(1, len(typed) + 1)]
    for before, after in zip(prompts, prompts[1:]):
        assert after == before + after[-1]  # one more character at the end, nothing else changed
    assert len(prompts[-1]) < 2 * PREFIX_CHARS and "def helper_0(" not in prompts[-1]  # still a bounded window


def test_the_server_log_is_rotated_so_it_cannot_grow_without_bound(tmp_path):
    import logging

    from lsp_server.logs import log_to

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        path = log_to(tmp_path / "serve.log", max_bytes=4000)
        for n in range(500):
            logging.getLogger("swespot.lsp").info("completion %d: 1035 prompt tokens, 16 generated", n)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert path.stat().st_size <= 4000 and (tmp_path / "serve.log.1").stat().st_size <= 4000
    assert "completion 499:" in path.read_text() and not (tmp_path / "serve.log.3").exists()
