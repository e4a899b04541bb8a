"""HF checkpoint → GGUF for the Qwen3, Qwen2 and Llama families, written with the ``gguf`` package.

Why our own converter instead of llama.cpp's ``convert_hf_to_gguf.py``: the script is not shipped with
llama-cpp-python, and the LoRA exporter must name and transform its tensors *exactly* as the base was
converted. So the three pieces that decide that — ``gguf_arch``, ``gguf_tensor_name`` and
``transform_for_gguf`` — live here and are shared.

What llama.cpp needs and where it comes from:

* hyper-parameters from ``config.json`` (read through transformers, which normalises old rope keys);
* the byte-level BPE vocabulary from ``tokenizer.json``: tokens, token types (added tokens that are
  special or look special are CONTROL, other added tokens USER_DEFINED), merges, and the pre-tokenizer
  *name*, recognised from the split regex (llama.cpp re-implements each known regex under a name);
  special token ids, add_bos/add_eos and the chat template through ``gguf.SpecialVocab`` (all of it in
  ``trainer.gguf_vocab``);
* tensors renamed with ``gguf.TensorNameMap``; Llama's q/k rows permuted from HF's rotate-half layout
  to the interleaved pairs llama.cpp's rope expects.

Quantized outputs are written losslessly first and then quantized in-process by llama.cpp itself
(``llama_model_quantize``), so q8_0/q4_k_m are bit-identical to what ``llama-quantize`` would produce.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from agent.errors import SwespotError
from agent.state import atomic_path
from trainer.gguf_vocab import add_vocab, load_tokenizer_json

# HF model_type → GGUF architecture name. gemma3 is known for naming (adapters for the default model)
# but full conversion is only offered for the families below.
_ARCH_BY_MODEL_TYPE = {
    "qwen3": "qwen3",
    "qwen2": "qwen2",
    "llama": "llama",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}
CONVERTIBLE_ARCHS = ("qwen3", "qwen2", "llama")

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
_QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


# ---------------------------------------------------------------------------------------------------
# Shared with the LoRA exporter: architecture, tensor names, tensor transforms
# ---------------------------------------------------------------------------------------------------


def _hparam(config: Any, key: str, default: Any = None) -> Any:
    """Read a hyper-parameter from a transformers config object or a plain ``config.json`` dict."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    value = getattr(config, key, default)
    return default if value is None else value


def gguf_arch(config: Any) -> str:
    """The GGUF architecture name for a transformers config (or config dict)."""
    model_type = _hparam(config, "model_type")
    arch = _ARCH_BY_MODEL_TYPE.get(model_type)
    if arch is None:
        supported = ", ".join(sorted(set(_ARCH_BY_MODEL_TYPE)))
        raise SwespotError(f"unsupported model architecture {model_type!r}; supported: {supported}")
    return arch


def _model_arch(arch: str):
    for member, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return member
    raise SwespotError(f"gguf does not know the architecture {arch!r}")


def _canonical_hf_name(hf_name: str) -> str:
    """Strip wrappers that do not change the tensor's meaning (peft's ``base_model.model.``, the
    ``language_model.`` level of multimodal checkpoints)."""
    if hf_name.startswith("base_model.model."):
        hf_name = hf_name[len("base_model.model.") :]
    return hf_name.replace("model.language_model.", "model.", 1)


def gguf_tensor_name(arch: str, n_layers: int, hf_name: str) -> str:
    """The GGUF tensor name of an HF parameter, e.g. ``model.layers.3.self_attn.q_proj.weight`` →
    ``blk.3.attn_q.weight`` (with the architecture-specific map: Gemma 3's post-attention norm differs)."""
    name_map = gguf.get_tensor_name_map(_model_arch(arch), n_layers)
    name = name_map.get_name(_canonical_hf_name(hf_name), try_suffixes=(".weight", ".bias"))
    if name is None:
        raise SwespotError(f"no GGUF tensor name for {hf_name!r} in architecture {arch!r}")
    return name


def llama_permute(tensor: Any, n_head: int) -> Any:
    """HF's rotate-half q/k layout → llama.cpp's interleaved rope pairs, on the output rows.

    Within each head, row ``i`` of the first half and row ``i`` of the second half become rows ``2i``
    and ``2i+1``. Works for numpy arrays and torch tensors, and for any number of trailing dimensions,
    so it applies equally to a weight, a bias, or a LoRA ``lora_b`` (out × r)."""
    rows = tensor.shape[0]
    return (
        tensor.reshape(n_head, 2, rows // n_head // 2, *tensor.shape[1:])
        .swapaxes(1, 2)
        .reshape(tensor.shape)
    )


def transform_for_gguf(arch: str, gguf_name: str, tensor: Any, config: Any) -> Any:
    """Whatever llama.cpp's converter does to a tensor's values besides renaming it.

    * llama: q and k (weights and biases) are permuted on the output rows (``llama_permute``); apply it
      to ``lora_b`` of a q/k adapter too, since ``B @ A`` then permutes exactly like the weight.
    * gemma3: RMSNorm weights are stored as ``1 + w`` (HF computes ``x * (1 + w)``).
    * qwen2/qwen3: nothing."""
    if arch == "llama":
        n_head = int(_hparam(config, "num_attention_heads"))
        n_kv_head = int(_hparam(config, "num_key_value_heads", n_head))
        if gguf_name.endswith((".attn_q.weight", ".attn_q.bias")):
            return llama_permute(tensor, n_head)
        if gguf_name.endswith((".attn_k.weight", ".attn_k.bias")):
            return llama_permute(tensor, n_kv_head)
    elif arch == "gemma3" and gguf_name.endswith("norm.weight"):
        return tensor + 1
    return tensor


# ---------------------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------------------


def load_config(hf_dir: Path) -> Any:
    """The model's transformers config; clear errors for a missing directory or config."""
    if not hf_dir.exists():
        raise SwespotError(f"model directory not found: {hf_dir}")
    if not hf_dir.is_dir():
        raise SwespotError(f"not a directory (expected a Hugging Face model folder): {hf_dir}")
    if not (hf_dir / "config.json").is_file():
        raise SwespotError(f"no config.json in {hf_dir}: not a Hugging Face model folder")
    raw = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    arch = gguf_arch(raw)  # refuse unknown architectures before transformers has a say
    if arch not in CONVERTIBLE_ARCHS:
        raise SwespotError(
            f"conversion of {arch!r} checkpoints is not supported; supported: {', '.join(CONVERTIBLE_ARCHS)}"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(hf_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise SwespotError(f"cannot read {hf_dir / 'config.json'}: {exc}") from exc


def safetensors_files(hf_dir: Path) -> list[Path]:
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise SwespotError(f"no *.safetensors weights in {hf_dir} (only safetensors checkpoints are supported)")
    return files


def iter_tensors(hf_dir: Path):
    """(name, float32 numpy array) for every tensor of the checkpoint, one at a time (bf16-safe)."""
    import torch
    from safetensors import safe_open

    for path in safetensors_files(hf_dir):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).to(torch.float32).numpy()


def source_dtype(hf_dir: Path) -> str:
    """The checkpoint's floating dtype ("f32", "f16" or "bf16"): quantization starts from it losslessly."""
    from safetensors import safe_open

    seen = set()
    for path in safetensors_files(hf_dir):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                seen.add(str(fh.get_slice(name).get_dtype()))
    if seen <= {"F16"}:
        return "f16"
    if seen <= {"BF16"}:
        return "bf16"
    return "f32"


# ---------------------------------------------------------------------------------------------------
# Hyper-parameters
# ---------------------------------------------------------------------------------------------------


def rope_parameters(config: Any) -> dict:
    """Rope settings as one dict (transformers 5 ``rope_parameters``, or the older ``rope_theta`` +
    ``rope_scaling`` keys)."""
    params = _hparam(config, "rope_parameters")
    if isinstance(params, Mapping) and params:
        return dict(params)
    params = dict(_hparam(config, "rope_scaling") or {})
    params.setdefault("rope_theta", _hparam(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def head_dim(config: Any) -> int:
    return int(_hparam(config, "head_dim") or _hparam(config, "hidden_size") // _hparam(config, "num_attention_heads"))


def add_hparams(writer: Any, config: Any, arch: str) -> None:
    """Everything llama.cpp reads from ``<arch>.*`` keys to build the graph."""
    n_head = int(_hparam(config, "num_attention_heads"))
    writer.add_context_length(int(_hparam(config, "max_position_embeddings")))
    writer.add_embedding_length(int(_hparam(config, "hidden_size")))
    writer.add_block_count(int(_hparam(config, "num_hidden_layers")))
    writer.add_feed_forward_length(int(_hparam(config, "intermediate_size")))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(_hparam(config, "num_key_value_heads", n_head)))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_layer_norm_rms_eps(float(_hparam(config, "rms_norm_eps")))
    writer.add_vocab_size(int(_hparam(config, "vocab_size")))

    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise SwespotError(f"unsupported rope scaling {rope_type!r}; supported: {', '.join(_ROPE_TYPES)}")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type == "llama3" and arch != "llama":
        raise SwespotError(f"llama3 rope scaling is only supported for llama checkpoints, not {arch!r}")


def llama3_rope_factors(config: Any) -> Any:
    """Per-frequency rope factors of Llama 3.1+'s ``llama3`` scaling, stored as ``rope_freqs.weight``
    (the same formula as transformers' ``_compute_llama3_parameters`` and llama.cpp's converter)."""
    rope = rope_parameters(config)
    dim = head_dim(config)
    freqs = 1.0 / (float(rope.get("rope_theta", 10000.0)) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Tensors and the file
# ---------------------------------------------------------------------------------------------------


def _file_type(outtype: str) -> int:
    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[outtype]


def _encode(data: Any, outtype: str) -> tuple[Any, Any]:
    """(array, raw ggml type or None): 1-d tensors (norms, biases) always stay f32, as in llama.cpp."""
    if data.ndim <= 1 or outtype == "f32":
        return data.astype(np.float32), None
    if outtype == "f16":
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def add_tensors(writer: Any, hf_dir: Path, config: Any, arch: str, outtype: str) -> None:
    n_layers = int(_hparam(config, "num_hidden_layers"))
    tied = bool(_hparam(config, "tie_word_embeddings", False))
    for hf_name, data in iter_tensors(hf_dir):
        if hf_name.endswith(("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")):
            continue  # recomputed by llama.cpp from rope_freq_base
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = gguf_tensor_name(arch, n_layers, hf_name)
        array, raw_dtype = _encode(transform_for_gguf(arch, name, data, config), outtype)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    if arch == "llama" and rope_parameters(config).get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(config))


def write_gguf(hf_dir: Path, out_path: Path, config: Any, outtype: str) -> None:
    """Write an unquantized (f32/f16/bf16) GGUF."""
    arch = gguf_arch(config)
    writer = gguf.GGUFWriter(str(out_path), arch, use_temp_file=True)  # spool tensors: bounded memory
    try:
        writer.add_name(hf_dir.name)
        writer.add_file_type(_file_type(outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hparams(writer, config, arch)
        add_vocab(writer, hf_dir, int(_hparam(config, "vocab_size")))
        add_tensors(writer, hf_dir, config, arch, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def quantize_gguf(src: Path, dst: Path, outtype: str) -> None:
    """Quantize with llama.cpp in-process (the same code as ``llama-quantize``)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _QUANT_FTYPES[outtype])
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SwespotError(f"llama.cpp failed to quantize {src} to {outtype} (code {rc})")


def convert_hf_to_gguf(hf_dir: str | os.PathLike, out_path: str | os.PathLike, *, outtype: str = "f16") -> Path:
    """Convert a local Qwen3/Qwen2/Llama HF checkpoint to one GGUF file at ``out_path``.

    ``outtype``: f32, f16, bf16 (1-d tensors stay f32), q8_0 or q4_k_m (quantized by llama.cpp from a
    lossless temporary GGUF in the checkpoint's own precision). The file appears atomically."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise SwespotError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    config = load_config(hf_dir)
    load_tokenizer_json(hf_dir)  # fail on the tokenizer before spending time on tensors
    with atomic_path(out_path) as tmp:
        if outtype in _QUANT_FTYPES:
            lossless = tmp.with_suffix(".src.tmp")
            try:
                write_gguf(hf_dir, lossless, config, source_dtype(hf_dir))
                quantize_gguf(lossless, tmp, outtype)
            finally:
                lossless.unlink(missing_ok=True)
        else:
            write_gguf(hf_dir, tmp, config, outtype)
    return out_path
