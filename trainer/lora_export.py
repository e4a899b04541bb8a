"""peft LoRA adapter → llama.cpp GGUF adapter.

llama.cpp applies ``W x + scale * B (A x)`` with ``scale = adapter_scale * alpha / rank`` per tensor
(``alpha = 0`` meaning ``scale = adapter_scale``). peft's scaling is per module and depends on the
variant: ``alpha / r`` for plain LoRA, ``alpha / sqrt(r)`` for rsLoRA, with per-module ranks and alphas
from ``rank_pattern`` / ``alpha_pattern``. One global ``adapter.lora.alpha`` cannot express that, so we
fold each module's own scaling into its ``lora_b`` and write ``adapter.lora.alpha = 0``: every variant
then comes out exact (llama.cpp's own converter gets rsLoRA wrong by writing ``alpha`` alone).

Tensors: ``blk.N.<name>.weight.lora_a`` with numpy shape (r, in) and ``.lora_b`` with (out, r), named
through the same tensor-name map as the base conversion (``trainer.convert``), and transformed the same
way (e.g. Llama's q/k row permutation applies to ``lora_b``'s rows).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from agent.errors import SwespotError
from agent.state import atomic_path
from trainer.convert import gguf_arch, gguf_tensor_name, transform_for_gguf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# Modules llama.cpp cannot patch with a LoRA pair in a way we export (embeddings have flipped shapes,
# the head is tied on most small models): refuse instead of silently dropping them.
_UNSUPPORTED_TARGETS = ("embed_tokens", "lm_head", "wte", "embed_in")


@dataclass
class ExportReport:
    out_path: Path
    architecture: str
    tensors: int  # lora pairs written
    ranks: dict[str, int] = field(default_factory=dict)
    scalings: dict[str, float] = field(default_factory=dict)


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        raise SwespotError(f"{adapter_dir} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise SwespotError(f"{path} is not valid JSON: {exc}") from exc


def check_exportable(cfg: dict) -> None:
    """Refuse, with a reason, every adapter feature llama.cpp cannot apply exactly."""
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SwespotError(f"only LoRA adapters can be exported to llama.cpp, this one is {cfg.get('peft_type')}")
    if cfg.get("use_dora"):
        raise SwespotError("DoRA adapters cannot be exported: llama.cpp applies plain LoRA only (retrain with use_dora=False)")
    if cfg.get("modules_to_save"):
        raise SwespotError(
            f"the adapter fully retrains {cfg['modules_to_save']} (modules_to_save); llama.cpp adapters can only hold LoRA pairs"
        )
    if cfg.get("bias", "none") != "none":
        raise SwespotError(f"the adapter trains biases (bias={cfg['bias']!r}); llama.cpp adapters cannot hold them")
    for key in ("use_qalora", "lora_bias"):
        if cfg.get(key):
            raise SwespotError(f"the adapter uses {key}, which llama.cpp cannot apply")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "eva", "loftq")):
        # these modify the base weights themselves; the adapter alone is not the whole difference
        raise SwespotError(f"the adapter was initialised with {init!r}, which changes the base weights; cannot export")


def module_scaling(cfg: dict, module: str, rank: int) -> float:
    """peft's scaling for one module: alpha / r, or alpha / sqrt(r) with rsLoRA; patterns override."""
    from peft.utils.other import get_pattern_key

    alpha = cfg.get("lora_alpha", 8)
    alpha_pattern = cfg.get("alpha_pattern") or {}
    if alpha_pattern:
        key = get_pattern_key(list(alpha_pattern), module)
        alpha = alpha_pattern.get(key, alpha)
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def load_lora_pairs(adapter_dir: Path) -> dict:
    """{module name: (A, B)} as float32 torch tensors, from adapter_model.safetensors."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.exists():
        raise SwespotError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
    pairs: dict[str, dict[str, object]] = {}
    for key, tensor in load_file(str(path)).items():
        match = _KEY.match(key)
        if not match:
            raise SwespotError(f"unexpected tensor {key!r} in {path}: only LoRA A/B pairs can be exported")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor.float()
    out = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise SwespotError(f"LoRA pair for {module} is missing its {'B' if 'A' in ab else 'A'} matrix")
        if any(part in module.split(".") for part in _UNSUPPORTED_TARGETS):
            raise SwespotError(f"LoRA on {module} cannot be exported: llama.cpp adapters here cover linear layers only")
        out[module] = (ab["A"], ab["B"])
    if not out:
        raise SwespotError(f"{path} holds no LoRA weights")
    return out


def export_lora_to_gguf(
    adapter_dir: str | os.PathLike,
    base_hf_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    base_gguf_sha256: str | None = None,
) -> ExportReport:
    """Write the GGUF adapter for a peft LoRA trained on ``base_hf_dir``. Written to a temporary file
    and renamed, so a crash never leaves a half-written adapter at ``out_path``."""
    from transformers import AutoConfig

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    cfg = read_adapter_config(adapter_dir)
    check_exportable(cfg)
    try:
        config = AutoConfig.from_pretrained(base_hf_dir)
    except (OSError, ValueError) as exc:
        raise SwespotError(f"cannot read the base model config in {base_hf_dir}: {exc}") from exc
    config = getattr(config, "text_config", None) or config
    arch = gguf_arch(config)
    n_layers = config.num_hidden_layers
    pairs = load_lora_pairs(adapter_dir)

    report = ExportReport(out_path=out_path, architecture=arch, tensors=0)
    try:
        with atomic_path(out_path) as tmp:
            writer = gguf.GGUFWriter(str(tmp), arch)
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            # 0 = "scales are already folded into lora_b" (llama.cpp then uses the user's scale as is)
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
            writer.add_string("swespot.lora.scaling", "folded")
            writer.add_uint32("swespot.lora.r", int(cfg.get("r", 8)))
            writer.add_float32("swespot.lora.alpha", float(cfg.get("lora_alpha", 8)))
            writer.add_bool("swespot.lora.rslora", bool(cfg.get("use_rslora")))
            if base_gguf_sha256:
                writer.add_string("swespot.base.sha256", base_gguf_sha256)
            for module, (a, b) in pairs.items():
                if cfg.get("fan_in_fan_out"):  # Conv1D-style weights store (in, out)
                    a, b = b.T.contiguous(), a.T.contiguous()
                rank = a.shape[0]
                scale = module_scaling(cfg, module, rank)
                name = gguf_tensor_name(arch, n_layers, module + ".weight")
                b_scaled = transform_for_gguf(arch, name, b * scale, config)
                writer.add_tensor(name + ".lora_a", a.numpy().astype("float32"))
                writer.add_tensor(name + ".lora_b", b_scaled.numpy().astype("float32"))
                report.ranks[name] = rank
                report.scalings[name] = scale
                report.tensors += 1
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as exc:
        raise SwespotError(f"could not write {out_path}: {exc}") from exc
    return report
