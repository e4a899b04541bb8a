"""Training settings: one typed dataclass, with help text, internal presets, and loud failure on
unknown keys or conflicting options. Also the one profile vocabulary every command's ``--profile`` takes."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.errors import SwespotError

UNITS = ("design", "implementation", "evolution", "runtime", "feedback", "text")
# The profiles, one vocabulary for every command (specialize, experience build, train, eval, daemon):
# "tiny" sizes everything for the test model, "quick" is minutes on a CPU with the embedded model,
# "full" is under an hour on a CPU, every unit for an epoch on a GPU. What each means for a refresh is trainer.pipeline.PROFILES,
# for an evaluation trainer.evaluation.EVAL_PROFILES; the training presets below are internal.
PROFILE_NAMES = ("tiny", "quick", "full")
PRECISIONS = ("auto", "fp32", "bf16", "bf16-base")
# Once, ``swespot train --profile`` took the training presets; they are internal now.
_OLD_TRAIN_PROFILES = {"cpu": "quick (or full)", "real": "full (the GPU recipe on a CUDA device)"}
# Without ``holdout``, specialize holds out the newest first-parent commits that give the evaluation
# profile's number of line tasks (an interval worth reading), at most this many (and at most half the
# history). Here, not in trainer/specialize.py, so the command line reads it without loading the job.
MAX_HOLDOUT = {"tiny": 6, "quick": 80, "full": 300}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    # --- what ---
    base: str = field(default="default", metadata={"help": "'default' (embedded Gemma 3 270M), a local HF folder, or a GGUF transformers can load"})
    data: str = field(default="", metadata={"help": "experience folder: <unit>/<shard>.jsonl episodes"})
    out: str = field(default="", metadata={"help": "output folder for the adapter, its GGUF, manifest and report"})
    # --- how long ---
    steps: int = field(default=0, metadata={"help": "optimizer steps (0: use epochs)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the data when steps is 0"})
    min_steps: int = field(default=0, metadata={"help": "when the epochs decide: train at least this many steps (0: no floor)"})
    max_steps: int = field(default=0, metadata={"help": "when the epochs decide: train at most this many steps (0: no cap)"})
    max_trained_tokens: int | None = field(default=None, metadata={
        "help": "stop once this many target (trained) tokens were trained; replaces epochs, and with steps whichever comes first"})
    # --- optimisation (defaults: the LoRA recipe that matched full fine-tuning) ---
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to lr * this"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps spent warming up"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clipping (0: off)"})
    batch_tokens: int = field(default=8192, metadata={"help": "tokens per micro-batch (padded), length-grouped"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    packing: bool = field(default=True, metadata={
        "help": "pack each batch into one row (common prefix once, block mask, no padding) instead of padding length-grouped sequences"})
    max_len: int = field(default=4096, metadata={"help": "longest sequence; longer episodes are split at turn boundaries or dropped"})
    # --- LoRA ---
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA scaling alpha/sqrt(r)"})
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS), metadata={"help": "modules that get LoRA"})
    # --- data mix ---
    unit_weights: dict[str, float] = field(default_factory=lambda: {u: 1.0 for u in UNITS}, metadata={"help": "sampling weight per unit"})
    init_adapter: str = field(default="", metadata={"help": "continue training from this peft adapter folder"})
    replay_data: str = field(default="", metadata={"help": "earlier experience mixed in when continuing (against forgetting)"})
    replay_share: float = field(default=0.25, metadata={"help": "share of each epoch drawn from replay_data"})
    fim: bool = field(default=False, metadata={
        "help": "train the text chunks that carry a fill-in-the-middle split in the FIM layout (agent/fim.py; the manifest then "
                "declares the tokens and the server completes in that layout); off: on click a 16-step quick run made infill "
                "18.6% worse in the FIM layout than left to right"})
    # --- machinery ---
    loss_vocab: int = field(default=0, metadata={
        "help": "0: the training softmax runs over the whole vocabulary; N: over the tokens of the training data and the "
                "N lowest ids only (packed batches; on a CPU, Gemma's 262k-token projection is half of a text step; "
                "evaluation and the gate always use the whole vocabulary)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on a GPU that has it; bf16-base on a CPU with bf16 matrix instructions; else fp32), fp32, "
                "bf16 (mixed precision, autocast), bf16-base (the frozen base's weights in bf16; LoRA, optimizer and loss in fp32)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "trade compute for memory"})
    checkpoint_every: int = field(default=50, metadata={"help": "save a resumable checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and dropout"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: all cores)"})
    export_gguf: bool = field(default=True, metadata={"help": "export adapter.gguf and verify it in llama.cpp"})

    def validate(self) -> TrainConfig:
        if not self.data:
            raise SwespotError("no training data given (--data EXPERIENCE_DIR)")
        if not self.out:
            raise SwespotError("no output folder given (--out DIR)")
        if self.steps < 0 or self.epochs <= 0 and self.steps == 0:
            raise SwespotError("give a positive --steps or --epochs")
        if self.min_steps < 0 or self.max_steps < 0 or self.max_steps and self.min_steps > self.max_steps:
            raise SwespotError(f"min_steps ({self.min_steps}) and max_steps ({self.max_steps}) must be >= 0, the floor not above the cap")
        if self.max_trained_tokens is not None and self.max_trained_tokens <= 0:
            raise SwespotError(f"max_trained_tokens must be positive (got {self.max_trained_tokens})")
        if self.loss_vocab < 0:
            raise SwespotError(f"loss_vocab must be 0 (the whole vocabulary) or positive, got {self.loss_vocab}")
        if self.max_len < 32:
            raise SwespotError(f"max_len {self.max_len} is too small to hold one turn")
        if self.batch_tokens < self.max_len:
            raise SwespotError(f"batch_tokens ({self.batch_tokens}) must hold at least one sequence of max_len ({self.max_len})")
        unknown = set(self.unit_weights) - set(UNITS)
        if unknown:
            raise SwespotError(f"unknown unit(s) in unit_weights: {sorted(unknown)} (known: {', '.join(UNITS)})")
        if self.replay_data and not self.init_adapter:
            raise SwespotError("replay data only makes sense when continuing from an adapter (--init-adapter)")
        if not 0 <= self.replay_share < 1:
            raise SwespotError("replay_share must be in [0, 1)")
        if self.precision not in PRECISIONS:
            raise SwespotError(f"unknown precision {self.precision!r} ({', '.join(PRECISIONS)})")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise SwespotError(f"unknown device {self.device!r} (auto, cpu, cuda, mps)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise SwespotError(f"unknown training setting(s): {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except ValueError as exc:
            raise SwespotError(f"{path} is not valid JSON: {exc}") from exc


# Training presets, internal (no command takes their names): each profile names the one it trains with
# (trainer.pipeline.PROFILES "train_profile"). "real" is the recipe for 4B-class models on a GPU ("full" on
# a CUDA device); "cpu" keeps the embedded 270M model practical on two cores; "tiny" is for the test model.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "real": {},
    # max_len 2,048 holds a typical agentic episode in Gemma tokens (README, "Fitting the window")
    "cpu": dict(lora_r=16, lora_alpha=32, max_len=2048, batch_tokens=2048, lr=5e-4, checkpoint_every=25),
    # the test model trains in fp32 everywhere (its tests compare losses across ways of computing them)
    "tiny": dict(lora_r=8, lora_alpha=16, max_len=2048, batch_tokens=4096, lr=2e-3, lora_dropout=0.0, precision="fp32",
                 gradient_checkpointing=False, checkpoint_every=10, warmup_ratio=0.0),
}


def config_for(preset: str, **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` of a training preset with ``overrides`` (None values ignored). Commands reach it
    through a profile (``trainer.pipeline.train_config``)."""
    if preset not in TRAIN_PRESETS:
        raise SwespotError(f"unknown training preset {preset!r} (choose {', '.join(TRAIN_PRESETS)})")
    values = {**TRAIN_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values).validate()


def profile_name(value: str) -> str:
    """``--profile``'s argument type for every command: one of PROFILE_NAMES, or one line saying which."""
    if value in PROFILE_NAMES:
        return value
    if value in _OLD_TRAIN_PROFILES:
        raise argparse.ArgumentTypeError(f"{value!r} was a training preset; the profiles are {', '.join(PROFILE_NAMES)} "
                                         f"for every command: use {_OLD_TRAIN_PROFILES[value]}")
    raise argparse.ArgumentTypeError(f"unknown profile {value!r} (choose {', '.join(PROFILE_NAMES)})")


def add_profile_argument(parser: argparse.ArgumentParser, help: str, default: str | None = "quick") -> None:
    parser.add_argument("--profile", default=default, type=profile_name, metavar="{" + ",".join(PROFILE_NAMES) + "}",
                        help=help)
