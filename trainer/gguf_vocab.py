"""The tokenizer half of the HF → GGUF conversion (``trainer.convert``): the byte-level BPE vocabulary of
``tokenizer.json`` (tokens, token types, merges), the llama.cpp pre-tokenizer *name* recognised from the split
regex (llama.cpp re-implements each known regex under a name), and special ids, add_bos/add_eos and the chat
template through ``gguf.SpecialVocab``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from agent.errors import SwespotError

# Split regexes of HF tokenizer.json files, and the llama.cpp pre-tokenizer that reproduces each.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_BY_PATTERN = {QWEN2_PATTERN: "qwen2", LLAMA3_PATTERN: "llama-bpe"}
# llama.cpp hard-codes ignore_merges per pre-tokenizer; a tokenizer.json that disagrees would tokenize
# differently, so it is refused rather than converted into a subtly wrong model.
_IGNORE_MERGES_BY_PRE = {"qwen2": False, "llama-bpe": True}


def load_tokenizer_json(hf_dir: Path) -> dict:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        if (hf_dir / "tokenizer.model").is_file():
            raise SwespotError(
                f"{hf_dir} has a sentencepiece tokenizer (tokenizer.model); only byte-level BPE "
                "tokenizers (tokenizer.json) are supported"
            )
        raise SwespotError(f"no tokenizer.json in {hf_dir}")
    return json.loads(path.read_text(encoding="utf-8"))


def _split_patterns(pre_tokenizer: dict | None) -> list[str]:
    if not pre_tokenizer:
        return []
    steps = (pre_tokenizer.get("pretokenizers") or []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    return [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]


def detect_pre_tokenizer(tokenizer: dict) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE ``tokenizer.json``, by its split regex."""
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise SwespotError(
            f"unsupported tokenizer model {model.get('type')!r}"
            f"{' with byte_fallback (sentencepiece-style)' if model.get('byte_fallback') else ''}; "
            "only byte-level BPE tokenizers are supported"
        )
    patterns = _split_patterns(tokenizer.get("pre_tokenizer"))
    if len(patterns) != 1 or patterns[0] not in _PRE_TOKENIZER_BY_PATTERN:
        known = ", ".join(_PRE_TOKENIZER_BY_PATTERN.values())
        raise SwespotError(
            f"unrecognised pre-tokenizer (split regex {patterns!r}); llama.cpp would tokenize differently. "
            f"Recognised: {known}"
        )
    pre = _PRE_TOKENIZER_BY_PATTERN[patterns[0]]
    ignore_merges = model.get("ignore_merges")
    if ignore_merges is not None and bool(ignore_merges) != _IGNORE_MERGES_BY_PRE[pre]:
        raise SwespotError(
            f"tokenizer.json sets ignore_merges={ignore_merges} but llama.cpp's {pre!r} pre-tokenizer "
            f"uses {_IGNORE_MERGES_BY_PRE[pre]}: the tokenization would differ"
        )
    return pre


def _looks_special(text: str) -> bool:
    """llama.cpp's converter marks ``<|...|>`` added tokens CONTROL even when HF does not call them special."""
    return text.startswith("<|") and text.endswith("|>")


def vocab_tokens(tokenizer: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and GGUF token types for ids ``0..vocab_size-1``.

    Added tokens are CONTROL when special (or ``<|...|>``), else USER_DEFINED — USER_DEFINED ones are
    rendered as text by llama.cpp's detokenizer, which is why Qwen's ``<tool_call>`` and ``<think>`` are
    not special. Ids the tokenizer does not use (the config's vocab is often padded) become UNUSED."""
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in tokenizer["model"]["vocab"].items()}
    for added in tokenizer.get("added_tokens", []):
        special = added.get("special") or _looks_special(added["content"])
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise SwespotError(f"the tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


def add_vocab(writer: Any, hf_dir: Path, vocab_size: int) -> None:
    """Vocabulary, merges, pre-tokenizer, special ids, add_bos/add_eos and chat template."""
    tokenizer = load_tokenizer_json(hf_dir)
    pre = detect_pre_tokenizer(tokenizer)
    tokens, types = vocab_tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise SwespotError(f"tokenizer.json in {hf_dir} has no BPE merges")
    # llama.cpp's defaults differ per pre-tokenizer (llama-bpe adds BOS): always say it explicitly.
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)

