"""Export a trained adapter to GGUF and prove llama.cpp applies it as transformers+peft does.

On an f32 serving GGUF the logits must agree within 1e-3 (the toolkit's own tests hold 1e-4; the
margin absorbs long probes). On a quantized serving GGUF, quantized matmuls differ from the fp32
training model by far more than any adapter effect we could check, so there the adapter must load and
give finite logits, and the measured agreement is recorded in the manifest for the record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.default_model import cache_dir
from agent.errors import SwespotError
from agent.gguf_meta import read_header_fields
from agent.model_spec import resolve_model, serving_gguf_of
from agent.runtime import LlamaRuntime, file_sha256
from trainer.convert import convert_hf_to_gguf
from trainer.lora_export import export_lora_to_gguf

STRICT_TOL = 1e-3
SMALL_MODEL_PARAMS = 50_000_000  # below this, serve tests/experiments from an exact f32 GGUF


def serving_gguf(base, model_params: int) -> Path:
    """The GGUF llama.cpp serves for this base: the given one, or a conversion cached by content."""
    if base.serve_gguf is not None:
        return Path(base.serve_gguf)
    return converted_gguf(Path(base.hf_dir), model_params)


def converted_gguf(hf_dir: Path, model_params: int) -> Path:
    """An HF folder converted to GGUF once (f32 for small models), cached by its weights' content."""
    weights = sorted(hf_dir.glob("*.safetensors"))
    key = file_sha256(weights[0])[:12] if weights else "noweights"
    outtype = "f32" if model_params < SMALL_MODEL_PARAMS else "f16"
    target = cache_dir() / "models" / f"{hf_dir.name}-{key}-{outtype}.gguf"
    if not target.exists():
        convert_hf_to_gguf(hf_dir, target, outtype=outtype)
    return target


def serving_base(base: str) -> Path:
    """The GGUF llama.cpp serves for the model spec ``base`` (``agent.model_spec``): the embedded
    model's, the file itself, or a folder's conversion (cached by content; torch-free for the first two)."""
    ref = resolve_model(base, "base model")
    if ref.kind != "hf":
        return serving_gguf_of(base, "base model")
    assert ref.path is not None
    size = sum(f.stat().st_size for f in ref.path.glob("*.safetensors"))
    return converted_gguf(ref.path, size // 4)


def gguf_is_f32(path: Path) -> bool:
    return read_header_fields(path).get("general.file_type") == 0  # 0 = LLAMA_FTYPE_ALL_F32


def export_and_verify(out: Path, base, peft_model, probe_ids: list[int]) -> dict:
    import torch

    n_params = sum(p.numel() for p in peft_model.parameters())
    gguf_path = serving_gguf(base, n_params)
    sha = file_sha256(gguf_path)
    report = export_lora_to_gguf(out, base.hf_dir, out / "adapter.gguf", base_gguf_sha256=sha)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([probe_ids], device=peft_model.device)).logits[0].float().cpu().numpy()
    with LlamaRuntime(gguf_path, n_ctx=max(128, len(probe_ids) + 8), f32_kv=True, logits_all=True) as rt:
        rt.set_adapters({rt.load_adapter(report.out_path): 1.0})
        served = rt.logits(probe_ids)
    if not np.isfinite(served).all():
        raise SwespotError(f"llama.cpp gives non-finite logits with the exported adapter {report.out_path}")
    max_diff = float(np.abs(served - expected).max())
    strict = gguf_is_f32(gguf_path)
    if strict and max_diff > STRICT_TOL:
        raise SwespotError(
            f"the exported adapter does not reproduce the trained model in llama.cpp (max logit diff {max_diff:.2e}"
            f" > {STRICT_TOL}); not publishing it"
        )
    return {
        "adapter_gguf": str(report.out_path), "lora_pairs": report.tensors, "base_gguf": str(gguf_path),
        "base_sha256": sha, "verified": "exact" if strict else "loads", "max_logit_diff": max_diff,
        "probe_tokens": len(probe_ids),
    }
