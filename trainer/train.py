"""LoRA fine-tuning on Repository-Centric Experience. Reads top to bottom like a recipe:

    seed → base model → data → LoRA → (resume) → train → save → export GGUF → verify → manifest

Runs the same code on one CPU, one GPU, or several GPUs under ``accelerate launch`` (DDP): accelerate
owns device placement, mixed precision, gradient accumulation and gradient synchronisation; we shard the
length-grouped batches by process rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from agent.state import atomic_dir, atomic_open
from trainer import data as D
from trainer.config import TrainConfig
from trainer.export_check import export_and_verify
from trainer.model_io import load_model_and_tokenizer, pick_device, pick_precision, resolve_base

CHECKPOINTS = "checkpoints"
STATE = "state.json"
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


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine from lr down to lr * min_lr_ratio."""
    warmup = int(cfg.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def packed_attention_masks(config, position_ids, segment_ids, dtype) -> dict:
    """The attention masks of a packed row (``data.collate_packed``), one per layer type, as the model's
    forward takes them ready-made: a query sees a key when the key is on the shared prefix or in its own
    segment, at a position not after its own, and, on sliding-window layers, less than the window back.
    Explicit 4-D masks run on every device with eager and sdpa attention (varlen kernels are GPU-only)."""
    import torch

    pos_q, pos_k = position_ids[:, None, :, None], position_ids[:, None, None, :]
    seg_q, seg_k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]
    visible = (pos_k <= pos_q) & ((seg_k == seg_q) | (seg_k == 0))
    masks = {}
    for kind in set(getattr(config, "layer_types", None) or ["full_attention"]):
        mask = visible
        if kind == "sliding_attention":
            mask = visible & (pos_k > pos_q - config.sliding_window)
        elif kind != "full_attention":
            raise SwespotError(f"packing does not know attention layers of type {kind!r}; train with packing off")
        if attention_kind(config) == "eager":  # additive
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        masks[kind] = mask
    return masks


def attention_kind(config) -> str:
    """The model's attention implementation, seen through ``blocked_attention``'s wrapper."""
    impl = config._attn_implementation or "eager"
    return impl.rsplit(":", 1)[-1] if impl.startswith(BLOCKED) else impl


def packable(model) -> bool:
    """Whether the model takes explicit 4-D masks: eager or sdpa attention (not flash/flex kernels)."""
    return attention_kind(model.config) in ("eager", "sdpa")


# ---- attention over the visible blocks only -------------------------------------------------------
BLOCKED = "swespot-blocked"
BLOCK = 256  # query positions per block of ``blocked_attention`` (0: off, the model's own attention)
CHUNKED_LOSS = True  # packed_loss through losses.linear_cross_entropy (False: full logits, for comparisons)


def _blocked(block: int):
    """An sdpa attention function that attends per block of ``block`` queries over the keys that block
    can see (from the first key block holding a visible key to the last). A 4-D mask (the packed one,
    or the model's own) says what is visible; a key outside the range is masked for every query of the
    block, so the result is the same attention without the scores the mask would throw away: on a
    2,048-token row about half of them on causal layers and three quarters on Gemma 3's 512-token
    sliding windows. Queries and keys are split once (``split``/``cat`` backward is a copy per block;
    slicing the full tensors per block would zero-fill a full-size gradient each time)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    def attend(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        length = query.shape[2]
        if attention_mask is None or attention_mask.dim() != 4 or length <= block or key.shape[2] != length \
                or kwargs.get("softcap") is not None or kwargs.get("output_attentions"):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if attention_mask.dtype == torch.bool:
            visible = attention_mask.any(dim=1).any(dim=0)  # [queries, keys], over batch and heads
        else:  # additive: visible where not (close to) the dtype's minimum
            visible = (attention_mask > torch.finfo(attention_mask.dtype).min / 2).any(dim=1).any(dim=0)
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        keys, values = key.split(block, dim=2), value.split(block, dim=2)
        outs = []
        for i, q in enumerate(query.split(block, dim=2)):
            start = i * block
            cols = visible[start : start + q.shape[2]].any(dim=0).nonzero()
            first, last = (int(cols[0]) // block, int(cols[-1]) // block + 1) if cols.numel() else (i, i + 1)
            k = keys[first] if last - first == 1 else torch.cat(keys[first:last], dim=2)
            v = values[first] if last - first == 1 else torch.cat(values[first:last], dim=2)
            mask = attention_mask[:, :, start : start + q.shape[2], first * block : first * block + k.shape[2]]
            outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling))
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None  # [batch, queries, heads, head_dim]

    return attend


def blocked_attention(model, block: int | None = None) -> bool:
    """Switch ``model`` from sdpa attention to ``_blocked``: same attention, computed only where the
    mask lets a block of queries see (``block`` queries at a time, default ``BLOCK``). Returns whether
    it was switched (eager attention, slower on Gemma here, and other kernels are left alone)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    block = BLOCK if block is None else block
    if not block or attention_kind(model.config) != "sdpa":
        return False
    name = f"{BLOCKED}-{block}:sdpa"
    ALL_ATTENTION_FUNCTIONS.register(name, _blocked(block))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the model's own masks
    model.set_attn_implementation(name)
    return True


def trained_token_loss(model, tensors: dict):
    """Mean cross-entropy over the trained (assistant) tokens, projecting onto the vocabulary only at the
    positions that predict one. The system prompt, tool schemas and observations are most of every
    episode, and on a 262k vocabulary (Gemma) the projection costs more than the rest of the model; the
    loss is the same as the model's own (shifted labels, mean over trained tokens)."""
    import torch

    if "predict_at" in tensors:  # a packed row
        return packed_loss(model, tensors)
    targets = tensors["labels"][:, 1:]
    keep = (targets != D.IGNORE).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:
        return model(**tensors).loss
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1),
                                             ignore_index=D.IGNORE)


def steps_for_budget(cfg: TrainConfig, sequences, replay, processes: int) -> int:
    """The optimizer step at which ``cfg.max_trained_tokens`` target tokens have been trained (or
    ``cfg.steps``, when it comes first). The batch order is a function of (seed, epoch), so the stop is
    known before training starts: the learning-rate schedule decays exactly to it, and a resumed run
    stops at the same step. One step takes ``processes * grad_accum`` batches from the epochs in order."""
    assert cfg.max_trained_tokens is not None  # called only for a token budget
    per_step = processes * cfg.grad_accum
    trained, batches_done, steps, epoch = 0, 0, 0, 0
    while True:
        for batch in D.epoch_batches(sequences, replay, cfg, epoch):
            trained += sum(s.trained_tokens for s in batch)
            batches_done += 1
            if batches_done % per_step:
                continue
            steps += 1
            if trained >= cfg.max_trained_tokens or (cfg.steps and steps >= cfg.steps):
                return steps
        epoch += 1


def packed_loss(model, tensors: dict):
    """``trained_token_loss`` of packed rows: the same mean over the trained tokens of their sequences.
    The vocabulary projection runs only on the final hidden states that predict a target (rows differ in
    where their targets are, so ``logits_to_keep`` cannot pick them), in fp32 chunk by chunk
    (``losses.linear_cross_entropy``) so the [targets, vocabulary] logits are never held at once."""
    import torch

    config = model.config
    dtype = next(p for p in model.parameters()).dtype
    masks = packed_attention_masks(config, tensors["position_ids"], tensors["segment_ids"], dtype)
    out = model(input_ids=tensors["input_ids"], position_ids=tensors["position_ids"], attention_mask=masks,
                logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1][tensors["predict_row"], tensors["predict_at"]]
    head = getattr(model, "module", model).get_output_embeddings()  # "module": under DDP
    cap = getattr(config, "final_logit_softcapping", None)
    if CHUNKED_LOSS and not cap and head.bias is None and hidden.dtype == head.weight.dtype == torch.float32 \
            and not torch.is_autocast_enabled(hidden.device.type):
        from trainer.losses import linear_cross_entropy  # lazy: trainer.losses imports torch

        return linear_cross_entropy(hidden, head.weight, tensors["targets"])
    logits = head(hidden)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), tensors["targets"])


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- checkpoints ------------------------------------------------------------------------------
def latest_checkpoint(out: Path) -> Path | None:
    root = out / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / STATE).exists())
    return done[-1] if done else None


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Write into a temporary folder and rename: a kill mid-save leaves the previous checkpoint whole."""
    import torch

    root = out / CHECKPOINTS
    final = root / f"step-{state['step']:07d}"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, tmp / "trainer_state.pt")
        (tmp / STATE).write_text(json.dumps(state, indent=1))
    for old in sorted(p for p in root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    random.setstate(blob["python_rng"])
    return json.loads((ckpt / STATE).read_text())


# ---- the recipe -------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, commit: str | None = None, progress: bool = True, stop_after: int | None = None,
          control=None) -> TrainResult:
    """Train (or resume) and write the adapter, its GGUF and the manifest into ``cfg.out``.
    ``stop_after`` ends the run after that many steps of this call (used to test resumption).
    ``control.between_steps(step, total)``, when given, runs after every optimizer step: it may block
    (pause training while the editor generates) or raise ``Interrupted`` (a checkpoint is saved first)."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model

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
    tok_fp = D.tokenizer_fingerprint(tokenizer)

    # data
    files = D.episode_files(Path(cfg.data))
    render = make_renderer(tokenizer)
    sequences, stats = D.encode_all(D.read_episodes(Path(cfg.data)), tokenizer, render, cfg.max_len, fim=cfg.fim)
    if not sequences:
        raise SwespotError(f"no trainable sequence in {cfg.data}: {stats.to_dict()}")
    replay: list = []
    if cfg.replay_data:
        replay, _ = D.encode_all(D.read_episodes(Path(cfg.replay_data)), tokenizer, render, cfg.max_len, fim=cfg.fim)
    data_fp = D.data_fingerprint(files)

    # LoRA
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

    accelerator = Accelerator(
        cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.grad_accum)
    if cfg.packing and not packable(model):
        _say(f"{model.config._attn_implementation} attention takes no explicit masks: batches are padded, not packed")
        cfg = dataclasses.replace(cfg, packing=False)
    packing = cfg.packing
    blocked_attention(model)  # the same attention, only over the keys each block of queries can see
    per_epoch = len(D.epoch_batches(sequences, replay, cfg, 0))
    total_steps = D.steps_for(cfg, max(1, per_epoch // accelerator.num_processes))
    if cfg.max_trained_tokens:
        total_steps = steps_for_budget(cfg, sequences, replay, accelerator.num_processes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))

    # resume
    state: dict[str, Any] = {"step": 0, "epoch": 0, "index": 0, "tokens": 0, "trained_tokens": 0, "loss_curve": [], "seconds": 0.0,
             "base": base.name, "tokenizer": tok_fp, "data": data_fp, "config": cfg.to_dict()}
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        saved = json.loads((ckpt / STATE).read_text())
        if saved.get("tokenizer") != tok_fp:
            raise SwespotError(f"the checkpoint in {ckpt} was made with another tokenizer/base model; use a new --out or delete it")
        if saved.get("data") != data_fp:
            raise SwespotError(f"the checkpoint in {ckpt} was trained on other data; use a new --out or delete it")
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        _say(f"resuming from {ckpt.name} (step {state['step']}/{total_steps})")

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
               disable=not progress or not accelerator.is_main_process, file=sys.stderr, dynamic_ncols=True)
    run_started, steps_this_call = time.perf_counter(), 0
    seconds_before = state["seconds"]
    epoch, index = state.get("epoch", 0), state.get("index", 0)
    batches = D.epoch_batches(sequences, replay, cfg, epoch)
    window_loss, window_tokens = 0.0, 0
    while state["step"] < total_steps:
        if index >= len(batches):  # next epoch: a new deterministic shuffle
            epoch, index = epoch + 1, 0
            batches = D.epoch_batches(sequences, replay, cfg, epoch)
            continue
        batch = batches[index]
        index += 1
        if (index - 1) % accelerator.num_processes != accelerator.process_index:
            continue  # another rank's batch
        tensors = {k: v.to(accelerator.device) for k, v in (D.collate_packed(batch, cfg.max_len) if packing else D.collate(batch, pad_id)).items()}
        with accelerator.accumulate(model):
            loss = trained_token_loss(model, tensors)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        n_trained = sum(s.trained_tokens for s in batch)
        window_loss += loss.detach().item() * n_trained
        window_tokens += n_trained
        state["tokens"] += sum(D.trained_end(s) for s in batch)  # what each sequence's loss saw
        state["computed_tokens"] = state.get("computed_tokens", 0) + tensors["input_ids"].numel()
        state["trained_tokens"] += n_trained
        if not accelerator.sync_gradients:
            continue
        state["step"] += 1
        state["epoch"], state["index"] = epoch, index
        steps_this_call += 1
        step_loss = window_loss / max(1, window_tokens)
        window_loss, window_tokens = 0.0, 0
        state["seconds"] = seconds_before + time.perf_counter() - run_started
        state["loss_curve"].append([state["step"], round(step_loss, 5)])
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{state['tokens'] / max(state['seconds'], 1e-9):.0f}")
        last = state["step"] >= total_steps
        interrupted = stop_after is not None and steps_this_call >= stop_after and not last
        if accelerator.is_main_process and (state["step"] % cfg.checkpoint_every == 0 or last or interrupted):
            save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, state, cfg.keep_checkpoints)
        if interrupted:
            bar.close()
            return TrainResult(out, {"interrupted": True, "step": state["step"], "total_steps": total_steps})
        if control is not None:
            try:
                control.between_steps(state["step"], total_steps)
            except Interrupted:
                if accelerator.is_main_process and not (state["step"] % cfg.checkpoint_every == 0 or last):
                    save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, state, cfg.keep_checkpoints)
                bar.close()
                raise
    bar.close()

    minutes = max(state["seconds"], 1e-9) / 60
    report = {
        "steps": state["step"], "total_steps": total_steps, "max_trained_tokens": cfg.max_trained_tokens,
        "tokens": state["tokens"], "trained_tokens": state["trained_tokens"], "seconds": round(state["seconds"], 2),
        "computed_tokens": state.get("computed_tokens", 0), "packing": packing,
        "tokens_per_s": round(state["tokens"] / max(state["seconds"], 1e-9), 1),
        "tokens_per_min": round(state["tokens"] / minutes, 1),
        "trained_tokens_per_min": round(state["trained_tokens"] / minutes, 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1), "device": device, "precision": precision,
        "processes": accelerator.num_processes, "loss_curve": state["loss_curve"], "data": stats.to_dict(),
    }
    if not accelerator.is_main_process:
        return TrainResult(out, report)

    # save, export, verify, describe
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(out)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "base": {"name": base.name, "hf_dir": str(base.hf_dir), "gguf": str(base.serve_gguf) if base.serve_gguf else None},
        "commit": commit,
        "data": {"dir": str(cfg.data), "fingerprint": data_fp, **stats.to_dict()},
        "fim": stats.declared_fim(),  # the FIM layout this adapter taught (agent/fim.py), None: left to right only
        "config": cfg.to_dict(),
        "train": {k: v for k, v in report.items() if k != "loss_curve"},
        "final_loss": state["loss_curve"][-1][1] if state["loss_curve"] else None,
        "started_at": started_at, "finished_at": time.time(),
    }
    if cfg.export_gguf:
        manifest["export"] = export_and_verify(out, base, unwrapped, sequences[0].input_ids[:64])
        manifest["base"]["gguf"] = manifest["export"]["base_gguf"]
        manifest["base"]["sha256"] = manifest["export"]["base_sha256"]
    (out / REPORT).write_text(json.dumps(report, indent=2))
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # finished: the adapter itself is the result
    return TrainResult(out, report, manifest)


def write_json_atomic(path: Path, obj) -> None:
    with atomic_open(path) as fh:  # an OSError stays one: the pipeline reports it as a failed run
        json.dump(obj, fh, indent=2)
