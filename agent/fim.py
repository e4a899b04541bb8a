"""Fill-in-the-middle: which three marker tokens a model uses, and the one layout training and serving share.

A base with its own FIM tokens (Qwen2.5-Coder, StarCoder, ...) uses them. A base without them (the embedded
Gemma 3 270M) has tokens it reserves and never uses (Gemma's ``<unused0>`` … ``<unused98>``, Llama 3's
``<|reserved_special_token_N|>``): special tokens that plain text never tokenizes to, so an adapter can
teach them a meaning. With ``TrainConfig.fim`` (off by default) the text unit trains some chunks in the FIM layout
(``trainer/data.py``), the adapter's manifest records the three tokens (``manifest["fim"]``), and the
language server uses the FIM layout only while it serves an adapter that declares it.

The layout is PSM (prefix, suffix, middle), with the text unit's path header at the start of the prefix::

    <prefix>{header}{code before}<suffix>{code after}<middle>{the missing code}<eos>

Torch-free: the language server imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (prefix, suffix, middle) token texts of the FIM families we know
FIM_FAMILIES = [
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),  # DeepSeek-Coder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
]
# special tokens a vocabulary reserves for later use: never produced from text, free to be given a meaning
RESERVED = re.compile(r"<unused\d+>|<\|reserved_special_token_\d+\|>|<extra_id_\d+>")


@dataclass(frozen=True)
class FimTokens:
    prefix: str
    suffix: str
    middle: str
    source: str = "model"  # "model": the base's own FIM tokens; "reserved": reserved tokens an adapter teaches

    @property
    def markers(self) -> tuple[str, str, str]:
        return (self.prefix, self.suffix, self.middle)

    def to_manifest(self) -> dict:
        return {"prefix": self.prefix, "suffix": self.suffix, "middle": self.middle, "source": self.source}

    @classmethod
    def from_manifest(cls, fim) -> FimTokens | None:
        """The tokens an adapter manifest declares (``manifest["fim"]``), or None when it declares none."""
        if not isinstance(fim, dict) or not all(isinstance(fim.get(k), str) and fim.get(k) for k in ("prefix", "suffix", "middle")):
            return None
        return cls(fim["prefix"], fim["suffix"], fim["middle"], str(fim.get("source", "model")))


def for_tokenizer(tokenizer) -> FimTokens | None:
    """The FIM tokens to train with for a Hugging Face tokenizer: its own family when it has one, else the
    first three reserved special tokens (by id), else None. Every marker is checked to be one token."""

    def single(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1

    vocab = tokenizer.get_vocab()
    for family in FIM_FAMILIES:
        if all(t in vocab for t in family) and all(single(t) for t in family):
            return FimTokens(*family, source="model")
    reserved = sorted((tid, tok.content) for tid, tok in tokenizer.added_tokens_decoder.items()
                      if tok.special and RESERVED.fullmatch(tok.content))
    chosen = [text for _tid, text in reserved if single(text)][:3]
    return FimTokens(chosen[0], chosen[1], chosen[2], source="reserved") if len(chosen) == 3 else None


def for_runtime(runtime, declared: FimTokens | None) -> FimTokens | None:
    """The FIM tokens to serve with on a llama.cpp runtime: those the served adapter declares (when each
    is one token of this vocabulary), else the base's own family when it has FIM tokens, else None
    (complete left to right)."""
    def single(text: str) -> bool:
        return len(runtime.tokenize(text, special=True)) == 1

    if declared is not None and all(single(t) for t in declared.markers):
        return declared
    if getattr(runtime, "has_fim", False):
        for family in FIM_FAMILIES:
            if all(single(t) for t in family):
                return FimTokens(*family, source="model")
    return None


def psm(tokens: FimTokens, prefix: str, suffix: str) -> str:
    """The prompt text of the FIM layout: the model writes the middle after it (and then its end token)."""
    return f"{tokens.prefix}{prefix}{tokens.suffix}{suffix}{tokens.middle}"


def contains_marker(text: str, tokens: FimTokens | None = None) -> bool:
    """Whether ``text`` spells one of the markers (such text is never turned into a FIM sample)."""
    if tokens is not None:
        return any(t in text for t in tokens.markers)
    return bool(RESERVED.search(text)) or any(t in text for family in FIM_FAMILIES for t in family)
