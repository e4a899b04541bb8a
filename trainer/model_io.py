"""Loading a base model for training, never from the network: the embedded default, a local HF folder,
or a GGUF that transformers can read. Also device and precision selection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.default_model import ensure_default_gguf
from agent.errors import SwespotError
from agent.model_spec import resolve_model
from trainer.default_model import prepare_default, prepare_from_gguf


@dataclass
class BaseModel:
    """A resolved base: where its HF checkpoint is, and the GGUF it is served from (if known)."""

    hf_dir: Path
    serve_gguf: Path | None  # the file llama.cpp serves; None until converted
    name: str


def resolve_base(base: str) -> BaseModel:
    """'default' → the embedded Gemma (prepared once); a folder → HF checkpoint; a .gguf → dequantized
    into a cached HF checkpoint next to the default's. The spec is read by ``agent.model_spec``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, whatever a config says
    ref = resolve_model(base, "base model")
    if ref.path is None:
        return BaseModel(prepare_default(), ensure_default_gguf(), ref.name)
    if ref.kind == "hf":
        return BaseModel(ref.path, None, ref.name)
    return BaseModel(prepare_from_gguf(ref.path), ref.path, ref.name)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise SwespotError("--device cuda requested but no CUDA GPU is available")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise SwespotError("--device mps requested but MPS is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(requested: str, device: str) -> str:
    """``auto``: bf16 mixed precision on a GPU that has it; on a CPU with bf16 matrix instructions
    (AVX512-BF16 or AMX) the frozen base in bf16 ("bf16-base", ``train.frozen_in_bf16``), else fp32 (bf16
    matrix products are emulated, and slow, on other CPUs)."""
    import torch

    if requested == "bf16":
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise SwespotError("bf16 requested but this GPU does not support it")
        return "bf16"
    if requested in ("fp32", "bf16-base"):
        return requested
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device == "cpu" and cpu_has_bf16():
        return "bf16-base"
    return "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX tiles), as torch sees it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def load_model_and_tokenizer(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SwespotError(f"cannot load the base model from {hf_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise SwespotError(f"the tokenizer in {hf_dir} is not a fast tokenizer; the label mask needs character offsets")
    return model, tokenizer
