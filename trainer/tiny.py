"""A tiny Qwen3-architecture model with a real byte-level BPE tokenizer, built locally in seconds.

Tests (conversion, LoRA export, runtime) need a model that exercises exactly the code paths of a real
Qwen3 checkpoint — q/k norms, grouped-query attention, tied embeddings, the Qwen2 pre-tokenizer, special
tokens and a chat template — without downloading anything. Two choices make the comparisons meaningful:

* The tokenizer is trained with ``tokenizers`` on Python source from the running interpreter's stdlib,
  with the *exact* Qwen2 split regex, so llama.cpp's ``qwen2`` pre-tokenizer must reproduce its ids.
* Weights are drawn with a larger std than usual (and norm weights are perturbed away from 1), so the
  logits are far from uniform and a wrong permutation or a swapped norm changes them visibly.

The build is deterministic given the seed and the inputs; ``tiny_model_dir`` caches it under a key made
of a version string and a hash of every input (this file, the corpus, the chat template, library versions).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from agent.errors import SwespotError
from trainer import convert, gguf_vocab

# Bump when the output changes in a way the input hash does not see.
TINY_VERSION = "tiny-qwen3-v1"

# The split regex of Qwen2/Qwen3's tokenizer.json, byte for byte; llama.cpp's "qwen2" pre-tokenizer.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ENDOFTEXT = "<|endoftext|>"
# As in Qwen3: the chat delimiters are special (CONTROL in llama.cpp, never rendered as text), while the
# tool-call and thinking markers are added but *not* special, so that llama.cpp's detokenizer and HF's
# ``decode(skip_special_tokens=True)`` both keep them in the text the agent parses.
CONTROL_TOKENS = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"]
MARKER_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
SPECIAL_TOKENS = CONTROL_TOKENS + MARKER_TOKENS
VOCAB_SIZE = 4096  # BPE pieces plus the special tokens above
CORPUS_BYTES = 3_000_000

CHAT_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "agent" / "templates" / "qwen3.jinja"

MODEL_CONFIG: dict[str, Any] = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=768,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    initializer_range=0.1,
)
ROPE_THETA = 1_000_000.0
WEIGHT_STD = 0.1  # ~10x a real init: logits spread over several units instead of near-uniform
NORM_JITTER = 0.1  # norm weights become 1 + N(0, 0.1): a mis-mapped norm shows up in the logits


def corpus_files(limit_bytes: int = CORPUS_BYTES) -> list[Path]:
    """A fixed, sorted subset of this interpreter's stdlib ``.py`` files, about ``limit_bytes`` in all.

    Sorted relative paths (top level only, no tests) make the choice deterministic for a given Python."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chosen: list[Path] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith("test"):
            continue
        chosen.append(path)
        total += path.stat().st_size
        if total >= limit_bytes:
            break
    if total < limit_bytes // 4:
        raise SwespotError(f"too little Python source under {stdlib} to train the tiny tokenizer ({total} bytes)")
    return chosen


def read_chat_template() -> str:
    """The Qwen3 chat template that ``agent/`` renders and parses with (one source of truth)."""
    if not CHAT_TEMPLATE_PATH.is_file():
        raise SwespotError(f"chat template not found: {CHAT_TEMPLATE_PATH}")
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def train_tokenizer(files: list[Path]):
    """Train a byte-level BPE with Qwen2's normalizer, split regex, and decoder; add the special tokens.

    The special tokens are added after training, so (as in Qwen) they get the last ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    return tokenizer


def save_tokenizer(tokenizer, out_dir: Path, chat_template: str) -> None:
    """Save as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json) with the template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    hf.chat_template = chat_template
    hf.save_pretrained(str(out_dir))


def init_weights(model, seed: int) -> None:
    """Redraw every parameter from a seeded generator, independent of transformers' init code.

    Norm weights get 1 + N(0, NORM_JITTER); matrices and biases get N(0, WEIGHT_STD). Also used by tests
    that build Llama/Qwen2 variants of the tiny model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.ndim == 1 and "norm" in name:
                param.copy_(1.0 + NORM_JITTER * noise)
            else:
                param.copy_(WEIGHT_STD * noise)


def build_model(out_dir: Path, vocab_size: int, special_ids: dict[str, int], seed: int) -> None:
    """A randomly initialised Qwen3ForCausalLM saved as fp32 safetensors with a generation config."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eos = special_ids[ENDOFTEXT]
    config = Qwen3Config(
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=eos,  # Qwen has no BOS of its own; its config points at <|endoftext|>
        eos_token_id=eos,
        pad_token_id=eos,
        **MODEL_CONFIG,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).float()
    init_weights(model, seed)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos,
        eos_token_id=[special_ids["<|im_end|>"], eos],
        pad_token_id=eos,
        do_sample=False,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)


def build_tiny(out_dir: Path, *, seed: int = 0) -> Path:
    """Build the tiny model and tokenizer into ``out_dir`` (created; must be empty or absent)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SwespotError(f"output directory is not empty: {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    chat_template = read_chat_template()
    tokenizer = train_tokenizer(corpus_files())
    save_tokenizer(tokenizer, out_dir, chat_template)
    special_ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    build_model(out_dir, tokenizer.get_vocab_size(), special_ids, seed)
    return out_dir


def inputs_hash(seed: int = 0) -> str:
    """A hash of everything the build depends on: this file, the corpus, the template, library versions."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256()
    digest.update(TINY_VERSION.encode())
    digest.update(f"seed={seed}".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(read_chat_template().encode("utf-8"))
    for path in corpus_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for module in (tokenizers, torch, transformers):
        digest.update(f"{module.__name__}={module.__version__}".encode())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where built test artefacts live: ``$SWESPOT_TEST_CACHE`` or ``~/.cache/swespot-tests``."""
    env = os.environ.get("SWESPOT_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "swespot-tests"


def tiny_model_dir(cache_dir: Path | None = None, *, seed: int = 0) -> Path:
    """The tiny model, built once per input hash under ``cache_dir`` and reused afterwards.

    Built in a temporary sibling and renamed into place, so a crash never leaves a half-built cache
    and two concurrent builders both end with a complete directory."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{TINY_VERSION}-{inputs_hash(seed)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        build_tiny(staging / "model", seed=seed)
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to a complete build: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_gguf(outtype: str = "f32", cache_dir: Path | None = None, *, seed: int = 0) -> Path:
    """The tiny model converted to GGUF (``outtype`` as in ``trainer.convert``), cached next to it.

    Keyed by the model's own key plus a hash of the converter's source and the gguf/llama.cpp versions,
    so a change to the converter re-converts while an unchanged one reuses the file."""

    hf_dir = tiny_model_dir(cache_dir, seed=seed)
    digest = hashlib.sha256(Path(convert.__file__).read_bytes() + Path(gguf_vocab.__file__).read_bytes())
    digest.update(f"gguf={version('gguf')} llama_cpp={version('llama-cpp-python')}".encode())
    target = hf_dir.parent / f"{hf_dir.name}-gguf-{digest.hexdigest()[:12]}" / f"tiny-{outtype}.gguf"
    if not target.is_file():
        convert.convert_hf_to_gguf(hf_dir, target, outtype=outtype)  # atomic: temp file + rename
    return target
