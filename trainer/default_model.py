"""The default model as a trainable transformers checkpoint.

Training must see the exact weights llama.cpp serves, so the dequantized checkpoint is made from the
embedded Q4_K_M GGUF itself: transformers 5 loads a GGUF into an fp32 model (dequantizing every tensor,
~35 s on two cores). The loaded model still carries transformers' GGUF quantizer, which marks it as
quantized and refuses training; we clear it, then save the fp32 checkpoint once (~1 GB) so later loads
take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.default_model import DEFAULT_MODEL_ID, cache_dir, ensure_default_gguf
from agent.errors import SwespotError
from agent.runtime import file_sha256
from agent.state import atomic_dir

CHECKPOINT_VERSION = 1  # bump when the way the checkpoint is made changes; old caches are rebuilt
SIDECAR = "swespot_base.json"


def default_hf_dir() -> Path:
    return cache_dir() / "models" / f"{DEFAULT_MODEL_ID}-hf-f32"


def clear_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model an ordinary fp32 model (trainable, savable without GGUF metadata)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._pre_quantization_dtype = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype


def load_gguf_as_hf(gguf_path: Path):
    """(model, tokenizer) from a GGUF that transformers can read, in fp32 with the quantizer cleared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SwespotError(f"transformers cannot load {gguf_path} as a trainable model: {exc}") from exc
    clear_gguf_quantizer(model)
    return model, tokenizer


def read_sidecar(hf_dir: Path) -> dict | None:
    try:
        return json.loads((Path(hf_dir) / SIDECAR).read_text())
    except (OSError, ValueError):
        return None


def prepare_default(progress=None) -> Path:
    """Assemble the embedded GGUF and make (once) its dequantized fp32 checkpoint. Returns the HF dir."""
    say = progress or (lambda _msg: None)
    return prepare_from_gguf(ensure_default_gguf(say), default_hf_dir(), progress=say)


def prepare_from_gguf(gguf_path: Path, target: Path | None = None, progress=None) -> Path:
    """Make (once) the dequantized fp32 checkpoint of any GGUF transformers can read. Returns the HF dir.

    The checkpoint is written into a temporary folder and renamed into place, and a sidecar records the
    GGUF's sha256: a damaged, partial or stale cache is rebuilt, never used."""
    say = progress or (lambda _msg: None)
    gguf_path = Path(gguf_path).resolve()
    gguf_sha = file_sha256(gguf_path)
    target = target or cache_dir() / "models" / f"{gguf_path.stem}-{gguf_sha[:12]}-hf-f32"
    sidecar = read_sidecar(target)
    if sidecar and sidecar.get("gguf_sha256") == gguf_sha and sidecar.get("version") == CHECKPOINT_VERSION:
        return target
    say(f"dequantizing {gguf_path.name} with transformers (once)")
    model, tokenizer = load_gguf_as_hf(gguf_path)
    try:
        with atomic_dir(target) as tmp:
            say(f"saving the fp32 checkpoint to {target}")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / SIDECAR).write_text(
                json.dumps({"version": CHECKPOINT_VERSION, "gguf": str(gguf_path), "gguf_sha256": gguf_sha}, indent=2)
            )
    except OSError as exc:
        raise SwespotError(f"could not write the dequantized checkpoint to {target}: {exc}") from exc
    return target
