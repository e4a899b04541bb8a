"""Streaming generation, the half of ``LlamaRuntime`` (``agent.runtime``) that writes text: the prompt read in
batches that a cancel can interrupt (what was read stays in the KV cache for the next call), tokens until
an end-of-generation token, a stop string, ``max_tokens``, a cancel or the deadline, text held
back while it could still grow into a stop string, and the thread count re-chosen between generations.
It calls llama.cpp only through the runtime's objects: ``agent.runtime`` stays the one module that imports it.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import SwespotError
from agent.threads import choose_threads

log = logging.getLogger("agent.runtime")  # the runtime's own log, as before the split
THREAD_REFIT_S = 5.0  # how often an automatic thread count is re-chosen (between generations)
SPEED_WEIGHT = 0.3  # weight of the newest measurement in the running per-token time of generation
clock = time.perf_counter  # what deadlines are measured with (a test may stand in a slower machine's)


@dataclass
class Completion:
    """The result of a non-streaming generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"


class Generation:
    """Generation over the model ``LlamaRuntime`` loaded (a base class of it: it owns the state set here)."""

    # set by LlamaRuntime.__init__
    _lock: threading.RLock
    _llm: Any  # llama_cpp.Llama
    _llama_cpp: Any  # the llama_cpp module
    _vocab: Any

    if TYPE_CHECKING:  # LlamaRuntime's

        @property
        def n_ctx(self) -> int: ...

        def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]: ...

    def _init_generation(self, thread_setting: int, n_threads: int) -> None:
        # 0: the thread count follows the machine's load (re-chosen between generations); >0: fixed
        self.thread_setting = thread_setting
        self.n_threads = n_threads
        self._fitted_at = time.monotonic()
        self._token_s = 0.0  # seconds per generated token, as measured lately: what a deadline plans with

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        cancel: threading.Event | None = None,
        stats: dict | None = None,
        deadline: float | None = None,
    ) -> Generator[str, None, None]:
        """Stream the completion of ``prompt`` as text pieces. Stops at end-of-generation tokens, at
        any ``stop`` string (which is not returned), after ``max_tokens``, or when ``cancel`` is set
        (checked between tokens, so cancellation really stops the model). ``stats``, if given, is
        filled with prompt_tokens, cached_tokens (reused from the KV cache), completion_tokens and
        finish_reason.

        ``deadline`` (``clock()`` time) is when the text is due: no token after the first is started that
        would come after it (finish_reason "deadline"). The prompt is read whole whatever the time and its
        first token always comes: reading a prompt only up to the deadline (the next call going on from what
        was read) left an inline completion's next keystrokes without a suggestion and cost ~5% of the
        characters saved on click (README); a caller keeps its prompts short enough instead."""
        tokens = self._prompt_tokens(prompt)
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        stats = stats if stats is not None else {}
        stats.update(prompt_tokens=len(tokens), completion_tokens=0, finish_reason="length")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted = "", 0
        hold = max((len(s) for s in stop), default=0)
        with self._lock:
            self._refit_threads()
            stats["cached_tokens"] = self._cached_prefix(tokens[:-1])
            if cancel is not None and not self._prefill(tokens[:-1], cancel):
                stats["finish_reason"] = "cancelled"
                return
            with contextlib.closing(self._sampled(tokens, temperature, cancel, deadline, stats)) as sampled:
                for token in sampled:
                    stats["completion_tokens"] += 1
                    text += decoder.decode(self._llm.detokenize([token], special=True))
                    cut = _first_stop(text, stop)
                    if cut is not None:
                        text = text[:cut]
                        stats["finish_reason"] = "stop"
                        break
                    # hold back a tail that could still grow into a stop string
                    safe = len(text) - hold if hold else len(text)
                    if safe > emitted:
                        yield text[emitted:safe]
                        emitted = safe
                    if stats["completion_tokens"] >= max_tokens:
                        break
            if stats["finish_reason"] != "stop" or _first_stop(text, stop) is None:
                text += decoder.decode(b"", final=True)
            if len(text) > emitted:
                yield text[emitted:]

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        # add_bos=True means "add the special tokens this vocabulary asks for" (llama.cpp checks add_bos)
        tokens = self.tokenize(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            tokens = [self._llm.token_bos()] if self._llm.token_bos() >= 0 else []
        if len(tokens) >= self.n_ctx:
            raise SwespotError(f"prompt has {len(tokens)} tokens, the context holds {self.n_ctx}")
        return tokens

    def _sampled(self, tokens: list[int], temperature: float, cancel: threading.Event | None, deadline: float | None,
                 stats: dict) -> Generator[int, None, None]:
        """llama.cpp's next tokens after ``tokens``, each timed into the running per-token time a deadline plans
        with. Ends at a cancel, at an end-of-generation token (finish_reason "stop"), or when the next token
        would come after ``deadline``; closing it releases llama.cpp's generator."""
        gen = self._llm.generate(tokens, temp=temperature, top_k=40 if temperature > 0 else 1, repeat_penalty=1.0)
        last = None  # the first token's time holds the prompt's last batch: not a token's time
        try:
            for token in gen:
                now = clock()
                if last is not None:
                    self._token_s = _running(self._token_s or None, now - last)
                last = now
                if cancel is not None and cancel.is_set():
                    stats["finish_reason"] = "cancelled"
                    return
                if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    stats["finish_reason"] = "stop"
                    return
                yield token
                if deadline is not None and clock() + self._token_s > deadline:
                    stats["finish_reason"] = "deadline"  # the next token would come too late
                    return
        finally:
            gen.close()

    def _refit_threads(self) -> None:
        """Before one generation: re-choose the thread count (at most every THREAD_REFIT_S, and only when no
        count was set; this process's own part of the load is measured from its CPU time,
        ``agent.threads.own_load``, so its own generation does not push it down)."""
        now = time.monotonic()
        if not self.thread_setting and now - self._fitted_at >= THREAD_REFIT_S:
            self._fitted_at = now
            self.set_threads(choose_threads())

    def set_threads(self, n: int) -> None:
        """Use ``n`` threads for generation and prompt batches from the next token on."""
        n = max(1, n)
        if n != self.n_threads:
            with self._lock:
                self._llama_cpp.llama_set_n_threads(self._llm.ctx, n, n)
                log.info("llama.cpp threads: %d -> %d", self.n_threads, n)
                self.n_threads = n

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens``' first tokens the KV cache holds already (llama.cpp reuses them)."""
        llm, keep = self._llm, 0
        for cached, wanted in zip(llm.input_ids[: llm.n_tokens], tokens):
            if cached != wanted:
                break
            keep += 1
        return keep

    def prefill(self, prompt: str | Sequence[int], cancel: threading.Event, *, batch: int = 64) -> tuple[int, int, int]:
        """Read ``prompt`` into the KV cache ahead of its generation (all but its last token, as ``generate``
        reads it), in batches of ``batch`` tokens, checking ``cancel`` between them: a later ``generate``
        of the same prompt, or of one that goes on from it, then reads only what is left. Returns the
        prompt's tokens and how many of them were cached before and are after (a cancel keeps what was read)."""
        tokens = self._prompt_tokens(prompt)
        with self._lock:
            self._refit_threads()
            before = self._cached_prefix(tokens[:-1])
            self._prefill(tokens[:-1], cancel, batch)
            return len(tokens), before, self._cached_prefix(tokens[:-1])

    def _prefill(self, tokens: list[int], cancel: threading.Event, batch: int | None = None) -> bool:
        """Evaluate a long prompt batch by batch, checking ``cancel`` between batches (llama.cpp's own
        generate evaluates the whole prompt before the first token, which on a cold 1,000-token prompt
        is seconds the user cannot interrupt). Reuses the cached prefix as generate does, and leaves the
        cache consistent, so generate then evaluates only what is left. False when cancelled (what was
        evaluated stays cached). Without ``batch``, a prompt left to read in one batch is left to generate."""
        llm = self._llm
        keep = self._cached_prefix(tokens)
        step = batch or llm.n_batch
        if batch is None and len(tokens) - keep <= step:
            return not cancel.is_set()  # one batch: nothing to interrupt
        llm.n_tokens = keep  # eval() drops the cache after n_tokens first
        for start in range(keep, len(tokens), step):
            if cancel.is_set():
                return False
            llm.eval(tokens[start: start + step])
        return not cancel.is_set()

    def complete(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        cancel: threading.Event | None = None,
    ) -> Completion:
        stats: dict = {}
        text = "".join(
            self.generate(prompt, max_tokens=max_tokens, stop=stop, temperature=temperature, cancel=cancel, stats=stats)
        )
        return Completion(text, stats["prompt_tokens"], stats["completion_tokens"], stats["finish_reason"])


def _running(previous: float | None, sample: float) -> float:
    """A running per-token time: the newest sample weighted SPEED_WEIGHT (the first one as it is)."""
    return sample if previous is None else (1 - SPEED_WEIGHT) * previous + SPEED_WEIGHT * sample


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None
