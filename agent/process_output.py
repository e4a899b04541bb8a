"""A process's output read as it comes, keeping at most a given number of bytes (the head and the tail:
a failing command prints its summary last), never the whole. Used by ``agent.sandbox.run_limited``."""

from __future__ import annotations

import os
import selectors
import subprocess
import time


class CappedOutput:
    """Bytes kept from a stream: the first ``limit // 2`` and the last ``limit - limit // 2``."""

    def __init__(self, limit: int) -> None:
        self.head_limit = max(0, limit // 2)
        self.tail_limit = max(0, limit - self.head_limit)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_limit:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit:  # trimmed now and then, not at every chunk
                del self.tail[:-self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.head_limit + self.tail_limit

    def text(self) -> str:
        tail = bytes(self.tail[-self.tail_limit:]) if self.tail_limit else b""
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        cut = self.total - len(self.head) - len(tail)
        return (f"{bytes(self.head).decode('utf-8', errors='replace')}\n... [{cut} characters cut] ...\n"
                f"{tail.decode('utf-8', errors='replace')}")


def pump(proc: subprocess.Popen, out: CappedOutput, deadline: float) -> bool:
    """Read the process's output until it ends or the deadline passes; True when it passed."""
    assert proc.stdout is not None  # started with stdout=PIPE
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if not sel.select(timeout=left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out.add(chunk)
    try:  # the output closed; the process may still be running
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    return False
