"""stdin for pygls' message loop that survives a broken client: bytes that are not UTF-8, and a wrong
``Content-Length``.

pygls reads a header line at a time (``readline``) and then exactly ``Content-Length`` bytes (``read``).
One wrong length used to desynchronise the stream for good: too small, and the rest of the body was
taken for a header, swallowing the next message's header with it, and the next, and so on; too large,
and the server waited for bytes that never came, with the client waiting for an answer. This reader
resynchronises on the next ``Content-Length:`` header instead:

- a header line with junk before ``Content-Length:`` (the tail of a body that was cut short) loses the
  junk;
- a body that holds the start of the next message (its length was too large) ends where that header
  starts, and the header is read next;
- a body that stops arriving for ``idle_s`` seconds (its length was too large and nothing follows) is
  handed over as it is.

A body cut this way is usually not JSON; ``SwespotServer.report_server_error`` then answers its request
id, if one can be read from it, with a parse error, and shows the client a message. A JSON string cannot
hold a raw CR LF, so ``Content-Length: N\\r\\n`` never occurs inside a well-formed body.
"""

from __future__ import annotations

import logging
import os
import re
import select

log = logging.getLogger("swespot.lsp")

HEADER = re.compile(rb"Content-Length:[ \t]*\d+[ \t]*\r\n", re.I)


class FramedStdin:
    def __init__(self, raw, idle_s: float = 5.0) -> None:
        self.fd = raw.fileno()
        self.idle_s = idle_s
        self.buf = bytearray()
        self.eof = False
        self.resyncs = 0

    def _fill(self, timeout: float | None = None) -> bool:
        """Read what the pipe has (waiting at most ``timeout`` seconds); False at EOF or timeout."""
        if self.eof:
            return False
        if timeout is not None:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return False
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self) -> bytes:
        while b"\n" not in self.buf and self._fill():
            pass
        end = self.buf.find(b"\n")
        end = len(self.buf) if end < 0 else end + 1
        line = bytes(self.buf[:end])
        del self.buf[:end]
        at = line.lower().find(b"content-length:")
        if at > 0:  # the tail of a body whose Content-Length was too small, then the next header
            self.resyncs += 1
            log.warning("framing: skipped %d bytes before a Content-Length header (a wrong length earlier)", at)
            line = line[at:]
        return line

    def read(self, n: int) -> bytes | str:
        scanned = 0
        while len(self.buf) < n:
            # stop waiting as soon as the next message's header shows up (a huge wrong length must not
            # hold a chatty client's messages back); new bytes only, with room for a header cut in two
            if HEADER.search(self.buf, max(0, scanned - 64)):
                break
            scanned = len(self.buf)
            if not self._fill(self.idle_s):
                break
        if len(self.buf) < n and not self.eof:
            log.warning("framing: the body stopped after %d of the %d bytes its Content-Length announced", len(self.buf), n)
        body = bytes(self.buf[:n])
        cut = next_header_at(body)
        if cut is not None:  # the next message began inside this body: its Content-Length was too large
            self.resyncs += 1
            log.warning("framing: a body of %d announced bytes held the next message's header at byte %d", n, cut)
            body = body[:cut]
        del self.buf[:len(body)]
        return tolerant_utf8(body)


def next_header_at(body: bytes) -> int | None:
    """Where the next message's header starts inside ``body``: a whole ``Content-Length: N\\r\\n`` line,
    or the beginning of one after the body's closing bracket (a JSON body ends with ``}`` or ``]``)."""
    whole = HEADER.search(body)
    if whole is not None:
        return whole.start()
    end = max(body.rfind(b"}"), body.rfind(b"]")) + 1
    tail = body[end:].lstrip()
    if not tail:
        return None
    low, word = tail.lower(), b"content-length:"
    if word.startswith(low) or (low.startswith(word) and re.fullmatch(rb"[ \t]*\d*\r?", low[len(word):])):
        return len(body) - len(tail)
    return None


def tolerant_utf8(body: bytes) -> bytes | str:
    """A body that is not UTF-8 is decoded with ``surrogateescape`` (the bad bytes become lone
    surrogates), so the message is still handled and the text check refuses the document with a clear
    error, instead of the connection dying."""
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        log.warning("a message held bytes that are not UTF-8")
        return body.decode("utf-8", errors="surrogateescape")
