"""llama.cpp's own log lines, routed into Python logging (logger ``swespot.llama_cpp``). The runtime
(``agent.runtime``, the one module that imports llama_cpp) installs the bridge with its llama_cpp module."""

from __future__ import annotations

import ctypes
import logging


class LlamaLogBridge:
    """Routes llama.cpp's own log lines into Python logging (logger ``swespot.llama_cpp``) instead of
    stderr, and remembers the latest error lines so a refusal can be explained to the user."""

    # ggml_log_level in this llama.cpp: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
    LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
    # warnings that are expected on every CPU run and say nothing the user can act on: an adapter on a
    # repacked (Q4) base takes the plain CPU path, and Gemma's sliding-window cache is kept whole
    ROUTINE = ("cannot use buft", "using full-size SWA cache")

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._callback = None
        self._last_level = logging.DEBUG
        self._log = logging.getLogger("swespot.llama_cpp")

    def install(self, llama_cpp) -> None:
        if self._callback is not None:
            return

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, _user_data) -> None:
            # level 5 continues the previous line at its level
            pylevel = self._last_level if level == 5 else self.LEVELS.get(level, logging.DEBUG)
            self._last_level = pylevel
            line = text.decode("utf-8", errors="replace").rstrip()
            if pylevel >= logging.ERROR and line:
                self.errors = (self.errors + [line])[-5:]
            if pylevel == logging.WARNING and any(r in line for r in self.ROUTINE):
                pylevel = logging.DEBUG
            if line:
                self._log.log(pylevel, "%s", line)

        self._callback = callback  # keep a reference: llama.cpp holds only the C pointer
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


LOG_BRIDGE = LlamaLogBridge()
