"""``swespot/feedback``: what the user did with something the server produced (accepted, rejected,
edited after accepting), appended to ``feedback.jsonl`` with what was served, as training signal."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from pygls.exceptions import JsonRpcException

from agent.errors import SwespotError
from lsp_server import protocol as P
from lsp_server.logs import REQUEST_TAG

if TYPE_CHECKING:
    from lsp_server.server import SwespotServer

log = logging.getLogger("swespot.lsp")

SERVED_MEMORY = 256  # completions/tasks/chats remembered for the feedback journal


class ServedMemory:
    """The last SERVED_MEMORY things the server produced, by the id the client's feedback names."""

    def __init__(self, size: int = SERVED_MEMORY) -> None:
        self.size = size
        self._served: OrderedDict[str, dict] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def remember(self, key: str, value: dict) -> None:
        with self._lock:
            self._served[key] = value
            while len(self._served) > self.size:
                self._served.popitem(last=False)

    def get(self, key: str) -> dict:
        with self._lock:
            return self._served.get(key, {})


def record_feedback(ls: SwespotServer, params: P.FeedbackParams) -> None:
    assert ls.feedback is not None
    entry = {**ls.converter.unstructure(params), "served": ls.served.get(params.id),
             "model": ls.runtime.model_path.name if ls.runtime else None, "adapter": ls.adapter_name}
    if ls.feedback.record(entry):
        log.info("feedback %s %s %s", params.kind, params.id, params.action)


def register(server: SwespotServer) -> None:
    @server.feature(P.FEEDBACK)
    def on_feedback(ls: SwespotServer, params: Any) -> None:
        REQUEST_TAG.set(P.FEEDBACK)
        try:
            record_feedback(ls, ls.parse(params, P.FeedbackParams, P.FEEDBACK))
        except (JsonRpcException, SwespotError) as exc:  # a notification has no reply: the log says why
            log.warning("feedback not recorded: %s", exc)
