"""The llama.cpp runtime: the only module of ``agent/`` and ``lsp_server/`` that imports llama_cpp.

One base GGUF is loaded once; LoRA adapters (GGUF adapters written by ``trainer.lora_export``) are
loaded with ``llama_adapter_lora_init`` and switched on the context with ``llama_set_adapters_lora``,
so a freshly trained adapter goes live in milliseconds without reloading the base. After every switch
the KV cache and llama-cpp-python's prefix cache are reset: cached keys/values were computed with the
old weights and would silently mix two models.

All access to the context goes through one re-entrant lock, so the language server may call from
worker threads. Nothing here imports torch.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import SwespotError
from agent.gguf_meta import adapter_metadata, check_gguf_file, file_sha256
from agent.llama_log import LOG_BRIDGE
from agent.threads import choose_threads, default_threads

# file_sha256 and the thread choice have their homes in gguf_meta and threads; importable from here as before
__all__ = ["Completion", "LlamaRuntime", "LoadedAdapter", "choose_threads", "default_threads", "file_sha256"]

log = logging.getLogger(__name__)
THREAD_REFIT_S = 5.0  # how often an automatic thread count is re-chosen (between generations)
PROBE_BATCH = 32  # prompt tokens evaluated to learn the model's speed before a deadline's first batch is sized
SPEED_WEIGHT = 0.3  # weight of the newest measurement in the running per-token times (prompt and generation)
clock = time.perf_counter  # what deadlines are measured with (a test may stand in a slower machine's)

GGML_TYPE_F32 = 0  # ggml_type enum value; f32 KV cache makes logits comparable to transformers


@dataclass
class Completion:
    """The result of a non-streaming generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    handle: Any  # llama_adapter_lora pointer as returned by llama_cpp (a ctypes pointer)
    metadata: dict[str, str]


class LlamaRuntime:
    """A loaded base model plus any number of loaded LoRA adapters, of which a weighted set is active."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        f32_kv: bool = False,
        logits_all: bool = False,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.model_path = Path(model_path).expanduser().resolve()
        check_gguf_file(self.model_path, "model file")
        import llama_cpp  # the one place this package imports llama.cpp

        self._llama_cpp = llama_cpp
        LOG_BRIDGE.install(llama_cpp)
        kwargs: dict = dict(
            model_path=str(self.model_path),
            n_ctx=n_ctx,
            n_threads=choose_threads(n_threads or 0),
            n_threads_batch=choose_threads(n_threads or 0),
            n_gpu_layers=n_gpu_layers,
            logits_all=logits_all,
            seed=seed,
            verbose=verbose,
        )
        if f32_kv:
            kwargs.update(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise SwespotError(
                f"llama.cpp could not load {self.model_path}: {exc}. The file may be truncated, of an "
                "architecture this llama.cpp build does not know, or not a model (an adapter?)."
            ) from exc
        self._lock = threading.RLock()
        # 0: the thread count follows the machine's load (re-chosen between generations); >0: fixed
        self.thread_setting = max(0, n_threads or 0)
        self.n_threads = kwargs["n_threads"]
        self._own_load, self._own_at, self._fitted_at = 0.0, time.monotonic(), time.monotonic()
        # seconds per prompt token (batched) and per generated token, as measured lately: what a deadline plans with
        self._prompt_token_s: float | None = None
        self._token_s = 0.0
        self._adapters: dict[str, LoadedAdapter] = {}
        self._active: list[tuple[str, float]] = []
        self._sha256: str | None = None
        # llama-cpp-python's public surface only: the Llama object and the C API's functions on its
        # ``ctx``/``model`` pointers (its ``_ctx``/``_model``/``_input_ids`` are private and move between releases)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.logits_all = logits_all
        self.metadata: dict[str, str] = dict(self._llm.metadata)
        self.architecture = self.metadata.get("general.architecture", "")
        self.chat_template: str | None = self.metadata.get("tokenizer.chat_template")
        self.bos_token = self._token_text(self._llm.token_bos())
        self.eos_token = self._token_text(self._llm.token_eos())
        self.has_fim = self._fim_tokens_present()

    # ---- identity -------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    @property
    def n_vocab(self) -> int:
        return self._llm.n_vocab()

    @property
    def n_batch(self) -> int:
        """Prompt tokens llama.cpp evaluates in one batch (a longer prompt is read in several)."""
        return self._llm.n_batch

    @property
    def n_cached(self) -> int:
        """Tokens the KV cache holds now (what the next prompt with the same start reuses)."""
        return self._llm.n_tokens

    @property
    def sha256(self) -> str:
        """Identity of the base model (file hash), as recorded in adapter manifests."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path)
        return self._sha256

    def _token_text(self, token: int) -> str | None:
        if token < 0:
            return None
        return self._llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8")

    def _fim_tokens_present(self) -> bool:
        pre = self._llama_cpp.llama_vocab_fim_pre(self._vocab)
        suf = self._llama_cpp.llama_vocab_fim_suf(self._vocab)
        mid = self._llama_cpp.llama_vocab_fim_mid(self._vocab)
        return min(pre, suf, mid) >= 0

    # ---- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        with self._lock:
            return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self._llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    # ---- adapters -------------------------------------------------------------------------------
    def load_adapter(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load a GGUF LoRA adapter (not yet active). Returns its name. Fails with a clear message if
        the file is not an adapter or was made for another base model."""
        path = Path(path).expanduser().resolve()
        check_gguf_file(path, "adapter file")
        metadata = adapter_metadata(path, architecture=self.architecture, base_sha256=lambda: self.sha256, base_name=self.model_path.name)
        name = name or str(path)
        with self._lock:
            if name in self._adapters:
                return name
            LOG_BRIDGE.errors.clear()
            handle = self._llama_cpp.llama_adapter_lora_init(self._llm.model, str(path).encode())
            if not handle:
                reason = "; ".join(LOG_BRIDGE.errors) or "see the log for details"
                raise SwespotError(f"llama.cpp could not load the adapter {path}: {reason}")
            self._adapters[name] = LoadedAdapter(name, path, handle, metadata)
        log.info("loaded adapter %s from %s", name, path)
        return name

    def set_adapters(self, adapters: dict[str, float] | Sequence[tuple[str, float]] | None) -> None:
        """Make exactly these adapters active with these scales (empty or None: the bare base)."""
        pairs = list(adapters.items()) if isinstance(adapters, dict) else list(adapters or [])
        with self._lock:
            for name, _ in pairs:
                if name not in self._adapters:
                    raise SwespotError(f"adapter {name!r} is not loaded (call load_adapter first)")
            n = len(pairs)
            handles = (self._llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(
                *[self._adapters[name].handle for name, _ in pairs]
            )
            scales = (ctypes.c_float * max(n, 1))(*[float(s) for _, s in pairs])
            rc = self._llama_cpp.llama_set_adapters_lora(self._llm.ctx, handles if n else None, n, scales if n else None)
            if rc != 0:
                raise SwespotError(f"llama.cpp refused to activate adapters {[p[0] for p in pairs]} (code {rc})")
            self._active = pairs
            self.reset_cache()

    @property
    def active_adapters(self) -> list[tuple[str, float]]:
        return list(self._active)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if any(active == name for active, _ in self._active):
                self.set_adapters([p for p in self._active if p[0] != name])
            adapter = self._adapters.pop(name, None)
            if adapter is not None:
                self._llama_cpp.llama_adapter_lora_free(adapter.handle)

    def reset_cache(self) -> None:
        """Forget every cached key/value (and llama-cpp-python's prefix bookkeeping)."""
        with self._lock:
            self._llm.reset()
            memory = self._llama_cpp.llama_get_memory(self._llm.ctx)
            if memory is not None:  # (a model without a KV cache has none)
                self._llama_cpp.llama_memory_clear(memory, True)

    # ---- evaluation ----------------------------------------------------------------------------
    def logits(self, tokens: Sequence[int]):
        """Next-token logits at every position of ``tokens`` (numpy array [n, vocab]). Needs
        ``logits_all=True`` at construction. Always evaluates from an empty cache."""
        if not self.logits_all:
            raise SwespotError("logits() needs a runtime created with logits_all=True")
        with self._lock:
            self.reset_cache()
            self._llm.eval(list(tokens))
            out = self._llm.scores[: len(tokens)].copy()
            self.reset_cache()
            return out

    def target_logprobs(self, tokens: Sequence[int], first: int):
        """Log-probability of each of ``tokens[first:]`` given everything before it (numpy float64
        array). One decode pass in batches, asking llama.cpp for logits only at the positions that
        predict a target token: on a 262k vocabulary the full logits would cost more than the model.
        Needs no ``logits_all``; starts from and leaves an empty cache."""
        tokens = list(tokens)
        if not 1 <= first < len(tokens):
            raise SwespotError(f"target start {first} is outside 1..{len(tokens) - 1}")
        if len(tokens) > self.n_ctx:
            raise SwespotError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}")
        llm, out = self._llm, []
        with self._lock:
            self.reset_cache()
            try:
                step = llm.n_batch
                for start in range(0, len(tokens), step):
                    chunk = tokens[start: start + step]
                    wanted = [first - 1 <= start + i < len(tokens) - 1 for i in range(len(chunk))]
                    self._decode(chunk, start, wanted)
                    for i in (i for i, flag in enumerate(wanted) if flag):
                        row = np.ctypeslib.as_array(self._llama_cpp.llama_get_logits_ith(llm.ctx, i),
                                                    shape=(self.n_vocab,)).astype(np.float64)
                        peak = row.max()
                        out.append(row[tokens[start + i + 1]] - peak - np.log(np.exp(row - peak).sum()))
            finally:
                self.reset_cache()
        return np.array(out)

    def _decode(self, tokens: Sequence[int], n_past: int, want_logits: Sequence[bool]) -> None:
        """Evaluate ``tokens`` at positions ``n_past``... into the cache, with logits only where
        ``want_logits`` asks (a batch of the C API: llama-cpp-python's own batch object is private)."""
        lib = self._llama_cpp
        batch = lib.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for i, (token, want) in enumerate(zip(tokens, want_logits)):
                batch.token[i] = token
                batch.pos[i] = n_past + i
                batch.seq_id[i][0] = 0
                batch.n_seq_id[i] = 1
                batch.logits[i] = want
            rc = lib.llama_decode(self._llm.ctx, batch)
        finally:
            lib.llama_batch_free(batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    # ---- generation ----------------------------------------------------------------------------
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

        ``deadline``  is when the text is due: the prompt is evaluated
        in batches sized to end before it, and no token is started that would come after it
        (finish_reason "deadline"). A prompt that does not fit in time yields nothing, but what was
        evaluated stays in the KV cache, so the next call with the same start goes on from there."""
        # add_bos=True means "add the special tokens this vocabulary asks for" (llama.cpp checks add_bos)
        tokens = self.tokenize(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            tokens = [self._llm.token_bos()] if self._llm.token_bos() >= 0 else []
        if len(tokens) >= self.n_ctx:
            raise SwespotError(f"prompt has {len(tokens)} tokens, the context holds {self.n_ctx}")
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        stats = stats if stats is not None else {}
        stats.update(prompt_tokens=len(tokens), completion_tokens=0, finish_reason="length")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, emitted = "", 0
        hold = max((len(s) for s in stop), default=0)
        with self._lock, self._busy():
            stats["cached_tokens"] = self._cached_prefix(tokens[:-1])
            if (cancel is not None or deadline is not None) and not self._prefill(tokens[:-1], cancel, deadline):
                stats["finish_reason"] = "cancelled" if cancel is not None and cancel.is_set() else "deadline"
                return
            if deadline is not None and clock() + self._token_s > deadline:
                stats["finish_reason"] = "deadline"
                return
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
                        break
                    if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        stats["finish_reason"] = "stop"
                        break
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
                    if deadline is not None and clock() + self._token_s > deadline:
                        stats["finish_reason"] = "deadline"  # the next token would come too late
                        break
            finally:
                gen.close()
            if stats["finish_reason"] != "stop" or _first_stop(text, stop) is None:
                text += decoder.decode(b"", final=True)
            if len(text) > emitted:
                yield text[emitted:]

    @contextlib.contextmanager
    def _busy(self):
        """Around one generation: re-choose the thread count first (at most every THREAD_REFIT_S, and
        only when no count was set), and afterwards count the time spent into this process's own share
        of the load average (decayed like the kernel's 1-minute average)."""
        now = time.monotonic()
        if not self.thread_setting and now - self._fitted_at >= THREAD_REFIT_S:
            self._fitted_at = now
            self.set_threads(choose_threads(own=self._own_share(now)))
        try:
            yield
        finally:
            end = time.monotonic()
            self._own_load = self._own_share(end) + self.n_threads * (1 - math.exp(-(end - now) / 60))
            self._own_at = end

    def _own_share(self, now: float) -> float:
        return self._own_load * math.exp(-(now - self._own_at) / 60)

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

    def _prefill(self, tokens: list[int], cancel: threading.Event | None, deadline: float | None = None) -> bool:
        """Evaluate a long prompt batch by batch, checking ``cancel`` between batches (llama.cpp's own
        generate evaluates the whole prompt before the first token, which on a cold 1,000-token prompt
        is seconds the user cannot interrupt). Reuses the cached prefix as generate does, and leaves the
        cache consistent, so generate then evaluates only what is left. With a ``deadline``, each batch
        is sized to end before it (leaving one token's time to generate), at the prompt speed measured
        lately. False when cancelled or out of time (what was evaluated stays cached)."""
        llm = self._llm
        keep = self._cached_prefix(tokens)
        if deadline is None and len(tokens) - keep <= llm.n_batch:
            return cancel is None or not cancel.is_set()  # one batch: nothing to interrupt
        llm.n_tokens = keep  # eval() drops the cache after n_tokens first
        start = keep
        while start < len(tokens):
            if cancel is not None and cancel.is_set():
                return False
            size = llm.n_batch
            if deadline is not None:
                left = deadline - clock() - self._token_s
                size = min(size, PROBE_BATCH if self._prompt_token_s is None else int(left / self._prompt_token_s))
                if left <= 0 or size < min(PROBE_BATCH, len(tokens) - start):
                    return False  # a batch worth its overhead no longer fits: the next call goes on from here
            begun = clock()
            batch = tokens[start: start + size]
            llm.eval(batch)
            self._prompt_token_s = _running(self._prompt_token_s, (clock() - begun) / len(batch))
            start += len(batch)
        return cancel is None or not cancel.is_set()

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

    def close(self) -> None:
        with self._lock:
            for name in list(self._adapters):
                self.unload_adapter(name)
            self._llm.close()

    def __enter__(self) -> LlamaRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _running(previous: float | None, sample: float) -> float:
    """A running per-token time: the newest sample weighted SPEED_WEIGHT (the first one as it is)."""
    return sample if previous is None else (1 - SPEED_WEIGHT) * previous + SPEED_WEIGHT * sample


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None
