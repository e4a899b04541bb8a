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

import ctypes
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import SwespotError
from agent.generation import Completion, Generation
from agent.gguf_meta import adapter_metadata, check_gguf_file, file_sha256
from agent.llama_log import LOG_BRIDGE
from agent.threads import choose_threads, default_threads

# Completion, file_sha256 and the thread choice have their homes in generation, gguf_meta and threads; importable from here
__all__ = ["Completion", "LlamaRuntime", "LoadedAdapter", "choose_threads", "default_threads", "file_sha256"]

log = logging.getLogger(__name__)

GGML_TYPE_F32 = 0  # ggml_type enum value; f32 KV cache makes logits comparable to transformers

# llama.cpp's AMX kernels crash (SIGSEGV at ldtilecfg in ggml_backend_amx_mul_mat, llama.cpp issue #20824) on AMX CPUs
# such as this project's 2-core Xeon VM; ./scripts/setup builds llama-cpp-python without them there. A build installed
# some other way still has them, and llama-cpp-python 0.3.36 cannot turn them off at run time (its Llama does not
# pass use_extra_bufts), so the user gets one warning line naming the cause before the crash can happen.
AMX_WARNING = ("this llama.cpp build uses its AMX kernels, which crash (SIGSEGV) on some AMX CPUs (llama.cpp issue "
               "#20824); if swespot dies with a segmentation fault, reinstall with ./scripts/setup, which builds it without them")
_amx_checked = False


def uses_amx_kernels(system_info: str) -> bool:
    """Whether llama.cpp's ``llama_print_system_info()`` text says its AMX kernels are built in (and so in use)."""
    return re.search(r"(?<!\w)AMX_INT8 = 1(?!\d)", system_info) is not None


def _warn_once_about_amx(llama_cpp) -> None:
    global _amx_checked
    if _amx_checked:
        return
    _amx_checked = True
    if uses_amx_kernels(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")):
        log.warning(AMX_WARNING)


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    handle: Any  # llama_adapter_lora pointer as returned by llama_cpp (a ctypes pointer)
    metadata: dict[str, str]


class LlamaRuntime(Generation):
    """A loaded base model plus any number of loaded LoRA adapters, of which a weighted set is active; generation
    (``generate``, ``complete``, ``set_threads``) is ``agent.generation.Generation``'s."""

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
        _warn_once_about_amx(llama_cpp)
        threads = choose_threads(n_threads or 0)  # one reading of the load for generation and prompt batches
        kwargs: dict = dict(
            model_path=str(self.model_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
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
        self._init_generation(max(0, n_threads or 0), kwargs["n_threads"])
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
        Needs no ``logits_all``; starts from an empty cache and leaves ``tokens[:first]`` cached (llama-cpp-python's
        bookkeeping too), so a completion of that prefix, as the evaluation's next call, reads only its last token."""
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
            except BaseException:
                self.reset_cache()
                raise
            memory = self._llama_cpp.llama_get_memory(llm.ctx)
            if memory is None or not self._llama_cpp.llama_memory_seq_rm(memory, 0, first, -1):
                self.reset_cache()  # the targets cannot be dropped from this cache: leave it empty
            else:  # reset_cache left llama-cpp-python's "requires eval" set: it reads the prefix's last token again
                llm.input_ids[:first] = tokens[:first]
                llm.n_tokens = first
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

    def close(self) -> None:
        with self._lock:
            for name in list(self._adapters):
                self.unload_adapter(name)
            self._llm.close()

    def __enter__(self) -> LlamaRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
