"""How long a run trains and at what rate: the learning-rate schedule and the step at which a token budget
is spent (both known before the first step, so a resumed run follows the same schedule to the same stop)."""

from __future__ import annotations

import math

from trainer import batches as B
from trainer.config import TrainConfig


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine from lr down to lr * min_lr_ratio."""
    warmup = int(cfg.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def steps_for_budget(cfg: TrainConfig, sequences, replay, processes: int) -> int:
    """The optimizer step at which ``cfg.max_trained_tokens`` target tokens have been trained (or
    ``cfg.steps``, when it comes first). The batch order is a function of (seed, epoch), so the stop is
    known before training starts: the learning-rate schedule decays exactly to it, and a resumed run
    stops at the same step. One step takes ``processes * grad_accum`` batches from the epochs in order."""
    assert cfg.max_trained_tokens is not None  # called only for a token budget
    per_step = processes * cfg.grad_accum
    trained, batches_done, steps, epoch = 0, 0, 0, 0
    while True:
        for batch in B.epoch_batches(sequences, replay, cfg, epoch):
            trained += sum(s.trained_tokens for s in batch)
            batches_done += 1
            if batches_done % per_step:
                continue
            steps += 1
            if trained >= cfg.max_trained_tokens or (cfg.steps and steps >= cfg.steps):
                return steps
        epoch += 1


def total_steps(cfg: TrainConfig, sequences, replay, processes: int) -> int:
    """The run's optimizer steps: ``cfg.steps``, else its epochs' worth of batches, else (a token budget)
    ``steps_for_budget``."""
    per_epoch = len(B.epoch_batches(sequences, replay, cfg, 0))
    steps = B.steps_for(cfg, max(1, per_epoch // processes))
    if cfg.max_trained_tokens:
        steps = steps_for_budget(cfg, sequences, replay, processes)
    return steps
