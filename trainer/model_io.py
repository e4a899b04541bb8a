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
    """bf16 on a GPU that has it; fp32 on CPU (bf16 matmuls are slow on most CPUs and less exact)."""
    import torch

    if requested == "bf16":
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise SwespotError("bf16 requested but this GPU does not support it")
        return "bf16"
    if requested == "fp32":
        return "fp32"
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


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
