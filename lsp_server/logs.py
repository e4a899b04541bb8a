"""Logging for the language server. stdout belongs to the protocol, so logs go to a file in the state
dir (level from ``SWESPOT_LOG_LEVEL``, default INFO), and every line says which request it belongs to.

The request tag lives in a context variable: pygls runs each request handler in its own context, and
model jobs set the tag themselves when they start on a worker thread (executors do not copy contexts).
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
from pathlib import Path

REQUEST_TAG: contextvars.ContextVar[str] = contextvars.ContextVar("swespot_request", default="-")
FORMAT = "%(asctime)s %(levelname)s [%(request)s] %(name)s: %(message)s"
MAX_LOG_BYTES = 5_000_000  # then serve.log becomes serve.log.1 (two old files are kept)
EXPECTED_ERROR_CODES = (-32803, -32602)  # RequestFailed (a SwespotError), InvalidParams: answers, not faults


class _RequestTagFilter(logging.Filter):
    """Tags every record with its request, and drops pygls' traceback of an expected refusal: the
    server already logged it in one line ("refused after ..."), and a client that asks for
    completions in an excluded file would otherwise write thirty lines of ERROR per keystroke."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request = REQUEST_TAG.get()
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.name.startswith("pygls") and getattr(exc, "code", None) in EXPECTED_ERROR_CODES)


def log_level() -> int | str:
    return os.environ.get("SWESPOT_LOG_LEVEL", "INFO").upper()


def log_to(path: Path, max_bytes: int = MAX_LOG_BYTES) -> Path:
    """Send every log record of this process to ``path`` (replacing an earlier file we logged to); the
    file is rotated at ``max_bytes``, so a server left running for weeks does not fill the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)  # our earlier file, or a stderr handler: nothing else may write
        handler.close()
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=2, encoding="utf-8")
    handler.addFilter(_RequestTagFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(log_level())
    # pygls logs every message body at INFO: only worth it when debugging the protocol itself
    logging.getLogger("pygls").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    return path
