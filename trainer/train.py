"""LoRA fine-tuning on Repository-Centric Experience. Reads top to bottom like a recipe:

    seed → base model → data → LoRA → (resume) → train → save → export GGUF → verify → manifest

Runs the same code on one CPU, one GPU, or several GPUs under ``accelerate launch`` (DDP): accelerate
owns device placement, mixed precision, gradient accumulation and gradient synchronisation; we shard the
length-grouped batches by process rank.
"""

from __future__ import annotations

import dataclasses
import json
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.errors import SwespotError
from agent.render import Renderer
from agent.state import write_json_atomic
from trainer import batches as B
from trainer import data as D
from trainer import schedule
from trainer.attention import blocked_attention, packable, packed_attention_masks
from trainer.checkpoints import CHECKPOINTS, STATE, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.export_check import export_and_verify
from trainer.model_io import load_model_and_tokenizer, pick_device, pick_precision, resolve_base

REPORT = "train_report.json"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class Interrupted(Exception):
    """Raised by a training ``control`` (e.g. on SIGTERM) between steps: a checkpoint is saved first, so
    a later run with the same ``out`` resumes exactly where this one stopped."""


@dataclass
class TrainResult:
    out: Path
    report: dict
    manifest: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_renderer(tokenizer):
    """The agent's renderer for this tokenizer's chat template (its own, or the documented fallback)."""
    renderer = Renderer.for_template(getattr(tokenizer, "chat_template", None))
    return renderer.render_with_spans


CHUNKED_LOSS = True  # packed_loss through losses.linear_cross_entropy (False: full logits, for comparisons)


def trained_token_loss(model, tensors: dict, vocab=None):
    """Mean cross-entropy over the trained (assistant) tokens, projecting onto the vocabulary only at the
    positions that predict one. The system prompt, tool schemas and observations are most of every
    episode, and on a 262k vocabulary (Gemma) the projection costs more than the rest of the model; the
    loss is the same as the model's own (shifted labels, mean over trained tokens). ``vocab``
    (``losses.LossVocabulary``, packed rows only): the softmax runs over that part of the vocabulary."""
    import torch

    if "predict_at" in tensors:  # a packed row
        return packed_loss(model, tensors, vocab)
    targets = tensors["labels"][:, 1:]
    keep = (targets != D.IGNORE).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:
        return model(**tensors).loss
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1),
                                             ignore_index=D.IGNORE)


def packed_loss(model, tensors: dict, vocab=None):
    """``trained_token_loss`` of packed rows: the same mean over the trained tokens of their sequences.
    The vocabulary projection runs only on the final hidden states that predict a target (rows differ in
    where their targets are, so ``logits_to_keep`` cannot pick them), in fp32 chunk by chunk
    (``losses.linear_cross_entropy``) so the [targets, vocabulary] logits are never held at once; with
    ``vocab``, onto that part of the vocabulary only (training's ``loss_vocab``; evaluation never passes it)."""
    import torch

    config = model.config
    dtype = next(p for p in model.parameters()).dtype
    masks = packed_attention_masks(config, tensors["position_ids"], tensors["segment_ids"], dtype)
    # logits at no position: the model's head is not run at all (at one position, with the frozen base in bf16,
    # its product took a 1.1 s bmm and a 1.0 s copy of the transposed 262k-row weight every step on 2 cores)
    none = tensors["input_ids"].new_empty(0)
    out = model(input_ids=tensors["input_ids"], position_ids=tensors["position_ids"], attention_mask=masks,
                logits_to_keep=none, output_hidden_states=True)
    hidden = out.hidden_states[-1][tensors["predict_row"], tensors["predict_at"]]
    head = getattr(model, "module", model).get_output_embeddings()  # "module": under DDP
    targets = tensors["targets"]
    # with the frozen base in bf16 ("bf16-base"), the softmax and its gradient run in fp32 on the bf16 head's values
    to_fp32 = head.weight.dtype != torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
    if vocab is not None:  # the narrowed head's rows, kept (and cast) once while the frozen weight is unchanged
        targets = vocab.targets(targets.cpu()).to(targets.device)
        weight, bias = vocab.head(head.weight, head.bias, torch.float32 if to_fp32 else None)
    else:
        weight, bias = head.weight, head.bias
        if to_fp32:
            weight, bias = weight.float(), None if bias is None else bias.float()
    if to_fp32:
        hidden = hidden.float()
    cap = getattr(config, "final_logit_softcapping", None)
    if CHUNKED_LOSS and not cap and bias is None and hidden.dtype == weight.dtype == torch.float32 \
            and not torch.is_autocast_enabled(hidden.device.type):
        from trainer.losses import linear_cross_entropy  # lazy: trainer.losses imports torch

        return linear_cross_entropy(hidden, weight, targets)
    logits = torch.nn.functional.linear(hidden, weight, bias)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the recipe -------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, commit: str | None = None, progress: bool = True, stop_after: int | None = None,
          control=None) -> TrainResult:
    """Train (or resume) and write the adapter, its GGUF and the manifest into ``cfg.out``.
    ``stop_after`` ends the run after that many steps of this call (used to test resumption).
    ``control.between_steps(step, total)``, when given, runs after every optimizer step: it may block
    (pause training while the editor generates) or raise ``Interrupted`` (a checkpoint is saved first)."""
    import torch
    from accelerate import Accelerator

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started_at = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    # base model
    device = pick_device(cfg.device)
    precision = pick_precision(cfg.precision, device)
    base = resolve_base(cfg.base)
    model, tokenizer = load_model_and_tokenizer(base.hf_dir)

    # data, then LoRA (in this order: the adapter's initial weights come from the seeded RNG)
    data = _Data.load(cfg, tokenizer)
    model = _with_lora(cfg, model)
    fp32_base = frozen_in_bf16(model) if precision == "bf16-base" else []
    accelerator = Accelerator(
        cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.grad_accum)
    if cfg.packing and not packable(model):
        _say(f"{model.config._attn_implementation} attention takes no explicit masks: batches are padded, not packed")
        cfg = dataclasses.replace(cfg, packing=False)
    blocked_attention(model)  # the same attention, only over the keys each block of queries can see
    total_steps = schedule.total_steps(cfg, data.sequences, data.replay, accelerator.num_processes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambda(cfg, total_steps))
    state = _resume(out, cfg, base, data, model, optimizer, scheduler, total_steps)

    # the rows of the output projection (under DDP, after prepare, the model no longer answers for itself)
    vocab = data.loss_vocabulary(cfg, model.get_output_embeddings().weight.shape[0]) if cfg.packing else None
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    loop = _Loop(cfg, out, accelerator, model, optimizer, scheduler, params, state, total_steps, data, pad_id, progress, vocab)
    if loop.run(stop_after, control):
        return TrainResult(out, {"interrupted": True, "step": state["step"], "total_steps": total_steps})

    report = _report(cfg, state, total_steps, data, device, precision, accelerator.num_processes, vocab)
    if not accelerator.is_main_process:
        return TrainResult(out, report)
    restore_fp32(fp32_base)  # the export's check compares llama.cpp with the base as loaded
    manifest = _save(cfg, out, base, accelerator.unwrap_model(model), data, state, report, commit, started_at)
    return TrainResult(out, report, manifest)


@dataclass
class _Data:
    """The encoded training data (and replay data), with the fingerprints a checkpoint must match."""

    sequences: list
    replay: list
    stats: D.DataStats
    fingerprint: str
    tokenizer: str

    @classmethod
    def load(cls, cfg: TrainConfig, tokenizer) -> _Data:
        files = D.episode_files(Path(cfg.data))
        render = make_renderer(tokenizer)
        sequences, stats = D.encode_all(D.read_episodes(Path(cfg.data)), tokenizer, render, cfg.max_len, fim=cfg.fim)
        if not sequences:
            raise SwespotError(f"no trainable sequence in {cfg.data}: {stats.to_dict()}")
        replay: list = []
        if cfg.replay_data:
            replay, _ = D.encode_all(D.read_episodes(Path(cfg.replay_data)), tokenizer, render, cfg.max_len, fim=cfg.fim)
        return cls(sequences, replay, stats, D.data_fingerprint(files), D.tokenizer_fingerprint(tokenizer))

    def loss_vocabulary(self, cfg: TrainConfig, vocab_size: int):
        """The part of the vocabulary the training softmax runs over (``cfg.loss_vocab``), None: all of it."""
        if not cfg.loss_vocab or cfg.loss_vocab >= vocab_size:
            return None
        from trainer.losses import LossVocabulary  # lazy: trainer.losses imports torch

        used = {int(i) for seq in (*self.sequences, *self.replay) for i in seq.input_ids}
        return LossVocabulary(used, cfg.loss_vocab, vocab_size)


def _with_lora(cfg: TrainConfig, model):
    """The model with LoRA: a new adapter, or the one training continues from (``init_adapter``)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.init_adapter:
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(
            # peft annotates lora_alpha as int; it is a float scale (alpha / r), and configs may give one
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, use_rslora=cfg.rslora,  # type: ignore[arg-type]
            target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def frozen_in_bf16(model) -> list:
    """``precision="bf16-base"``: the frozen base's weights in bf16, the LoRA weights, their gradients, the
    optimizer and the training softmax in fp32 (peft runs each LoRA branch in its weights' dtype and adds it
    to the bf16 base output). On a CPU with bf16 matrix instructions (AVX512-BF16, AMX) the base's matrix
    products run ~2.5x faster than in fp32; autocast instead casts every weight at every step (7% faster than
    fp32 on the Xeon VM, README; slower than fp32 in a one-off on the Zen 4 VM). Returns the (parameter, fp32 tensor) pairs ``restore_fp32`` puts back."""
    import torch

    kept = []
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32:
            kept.append((param, param.data))
            param.data = param.data.to(torch.bfloat16)
    return kept


def restore_fp32(kept: list) -> None:
    for param, data in kept:
        param.data = data


def _resume(out: Path, cfg: TrainConfig, base, data: _Data, model, optimizer, scheduler, total_steps: int) -> dict:
    """The loop's state: from the latest checkpoint in ``out`` (which must have been made with the same
    tokenizer and data), else a fresh one."""
    state: dict[str, Any] = {"step": 0, "epoch": 0, "index": 0, "tokens": 0, "trained_tokens": 0, "loss_curve": [], "seconds": 0.0,
                             "base": base.name, "tokenizer": data.tokenizer, "data": data.fingerprint, "config": cfg.to_dict()}
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return state
    saved = json.loads((ckpt / STATE).read_text())
    if saved.get("tokenizer") != data.tokenizer:
        raise SwespotError(f"the checkpoint in {ckpt} was made with another tokenizer/base model; use a new --out or delete it")
    if saved.get("data") != data.fingerprint:
        raise SwespotError(f"the checkpoint in {ckpt} was trained on other data; use a new --out or delete it")
    state = load_checkpoint(ckpt, model, optimizer, scheduler)
    _say(f"resuming from {ckpt.name} (step {state['step']}/{total_steps})")
    return state


class _Loop:
    """The optimizer loop: this rank's batches in their deterministic order (resumed at the saved epoch
    and index), gradient accumulation, a checkpoint every ``checkpoint_every`` steps and at the end, and
    the two ways to stop early (``stop_after``, ``control``)."""

    def __init__(self, cfg: TrainConfig, out: Path, accelerator, model, optimizer, scheduler, params: list, state: dict,
                 total_steps: int, data: _Data, pad_id: int, progress: bool, vocab=None) -> None:
        self.cfg, self.out, self.accelerator, self.model, self.vocab = cfg, out, accelerator, model, vocab
        self.optimizer, self.scheduler, self.params, self.state = optimizer, scheduler, params, state
        self.total_steps, self.data, self.pad_id = total_steps, data, pad_id
        self.bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
                        disable=not progress or not accelerator.is_main_process, file=sys.stderr, dynamic_ncols=True)

    def run(self, stop_after: int | None, control) -> bool:
        """Train to ``total_steps``; True when ``stop_after`` ended the run first (a checkpoint saved)."""
        cfg, accelerator, state, data = self.cfg, self.accelerator, self.state, self.data
        run_started, steps_this_call = time.perf_counter(), 0
        seconds_before = state["seconds"]
        epoch, index = state.get("epoch", 0), state.get("index", 0)
        batches = B.epoch_batches(data.sequences, data.replay, cfg, epoch)
        window_loss, window_tokens = 0.0, 0
        while state["step"] < self.total_steps:
            if index >= len(batches):  # next epoch: a new deterministic shuffle
                epoch, index = epoch + 1, 0
                batches = B.epoch_batches(data.sequences, data.replay, cfg, epoch)
                continue
            batch = batches[index]
            index += 1
            if (index - 1) % accelerator.num_processes != accelerator.process_index:
                continue  # another rank's batch
            loss, n_trained = self.forward_backward(batch)
            window_loss += loss * n_trained
            window_tokens += n_trained
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            state["epoch"], state["index"] = epoch, index
            steps_this_call += 1
            step_loss = window_loss / max(1, window_tokens)
            window_loss, window_tokens = 0.0, 0
            state["seconds"] = seconds_before + time.perf_counter() - run_started
            state["loss_curve"].append([state["step"], round(step_loss, 5)])
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{state['tokens'] / max(state['seconds'], 1e-9):.0f}")
            if self.after_step(stop_after is not None and steps_this_call >= stop_after, control):
                return True
        self.bar.close()
        return False

    def forward_backward(self, batch: list) -> tuple[float, int]:
        """One batch's loss and gradient (the optimizer steps when the accumulation window is full); returns
        the loss and the batch's trained tokens, and counts the tokens in the state."""
        cfg, accelerator, model, state = self.cfg, self.accelerator, self.model, self.state
        collated = B.collate_packed(batch, cfg.max_len) if cfg.packing else D.collate(batch, self.pad_id)
        tensors = {k: v.to(accelerator.device) for k, v in collated.items()}
        with accelerator.accumulate(model):
            loss = trained_token_loss(model, tensors, self.vocab)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip:
                accelerator.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        n_trained = sum(s.trained_tokens for s in batch)
        state["tokens"] += sum(D.trained_end(s) for s in batch)  # what each sequence's loss saw
        state["computed_tokens"] = state.get("computed_tokens", 0) + tensors["input_ids"].numel()
        state["trained_tokens"] += n_trained
        return loss.detach().item(), n_trained

    def after_step(self, stop_now: bool, control) -> bool:
        """Checkpoint when due; True when ``stop_now`` (``stop_after`` reached) ends the run here;
        ``control`` may raise ``Interrupted``, after a checkpoint."""
        state, total = self.state, self.total_steps
        last = state["step"] >= total
        interrupted = stop_now and not last
        due = state["step"] % self.cfg.checkpoint_every == 0 or last
        if self.accelerator.is_main_process and (due or interrupted):
            self.checkpoint()
        if interrupted:
            self.bar.close()
            return True
        if control is not None:
            try:
                control.between_steps(state["step"], total)
            except Interrupted:
                if self.accelerator.is_main_process and not due:
                    self.checkpoint()
                self.bar.close()
                raise
        return False

    def checkpoint(self) -> None:
        save_checkpoint(self.out, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler, self.state,
                        self.cfg.keep_checkpoints)


def _report(cfg: TrainConfig, state: dict, total_steps: int, data: _Data, device: str, precision: str, processes: int,
            vocab=None) -> dict:
    """``train_report.json``: how much was trained, how fast, in how much memory, and the loss curve (over
    ``loss_vocab_size`` tokens of the vocabulary when ``loss_vocab`` narrowed the softmax)."""
    minutes = max(state["seconds"], 1e-9) / 60
    return {
        "steps": state["step"], "total_steps": total_steps, "max_trained_tokens": cfg.max_trained_tokens,
        "tokens": state["tokens"], "trained_tokens": state["trained_tokens"], "seconds": round(state["seconds"], 2),
        "computed_tokens": state.get("computed_tokens", 0), "packing": cfg.packing,
        "tokens_per_s": round(state["tokens"] / max(state["seconds"], 1e-9), 1),
        "tokens_per_min": round(state["tokens"] / minutes, 1),
        "trained_tokens_per_min": round(state["trained_tokens"] / minutes, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1), "device": device, "precision": precision,
        "processes": processes, "loss_vocab_size": len(vocab) if vocab is not None else None,
        "loss_curve": state["loss_curve"], "data": data.stats.to_dict(),
    }


def _save(cfg: TrainConfig, out: Path, base, model, data: _Data, state: dict, report: dict, commit: str | None,
          started_at: float) -> dict:
    """Save the adapter, export and verify its GGUF, write the report and the manifest (last: a folder
    with a manifest is a finished adapter) and drop the checkpoints. Returns the manifest."""
    model.save_pretrained(out)
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "base": {"name": base.name, "hf_dir": str(base.hf_dir), "gguf": str(base.serve_gguf) if base.serve_gguf else None},
        "commit": commit,
        "data": {"dir": str(cfg.data), "fingerprint": data.fingerprint, **data.stats.to_dict()},
        "fim": data.stats.declared_fim(),  # the FIM layout this adapter taught (agent/fim.py), None: left to right only
        "config": cfg.to_dict(),
        "train": {k: v for k, v in report.items() if k != "loss_curve"},
        "final_loss": state["loss_curve"][-1][1] if state["loss_curve"] else None,
        "started_at": started_at, "finished_at": time.time(),
    }
    if cfg.export_gguf:
        manifest["export"] = export_and_verify(out, base, model, data.sequences[0].input_ids[:64])
        manifest["base"]["gguf"] = manifest["export"]["base_gguf"]
        manifest["base"]["sha256"] = manifest["export"]["base_sha256"]
    (out / REPORT).write_text(json.dumps(report, indent=2))
    write_json_atomic(out / MANIFEST, manifest)  # an OSError stays one: the pipeline reports it as a failed run
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # finished: the adapter itself is the result
    return manifest
