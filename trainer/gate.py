"""The "loss" gate of a refresh: the candidate adapter is published unless its loss on held-out
episodes (shards the training never saw, ``pipeline.heldout_shards``) is worse than the current adapter's,
or the base model's for a first version, read from a paired bootstrap interval, never a point estimate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import SwespotError
from trainer import data as D
from trainer.evaluation import WORSE, describe, paired_interval
from trainer.model_io import load_model_and_tokenizer
from trainer.train import make_renderer, trained_token_loss

MAX_HELDOUT_EPISODES = 48


@dataclass
class GateInput:
    """What a gate decides on: the trained candidate folder, the adapter it must not be worse than
    (None: the base model), the resolved base and the commit the candidate was trained up to."""

    candidate: Path
    current: Path | None
    base: Any
    commit: str
    heldout: Path | None  # folder of held-out episodes (the "loss" gate)
    chat: Path | None = None  # the candidate's chat adapter (GGUF), when it has one


def heldout_losses(base_hf_dir: Path, adapters: dict[str, Path | None], episodes_dir: Path, max_len: int,
                   limit: int = MAX_HELDOUT_EPISODES, per_sequence: bool = False) -> dict:
    """Mean per-token loss of the assistant turns of held-out episodes under each adapter (None: the
    base model), computed with transformers on the training weights (the vocabulary projection only
    where a trained token is predicted, as in training). With ``per_sequence``: each model's
    [(loss, trained tokens)] per held-out sequence, for a paired comparison."""
    import torch
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(base_hf_dir)
    episodes = D.read_episodes(episodes_dir)
    episodes = sorted(episodes, key=lambda e: e.get("id", ""))[:limit]
    # a sample of held-out episodes: training already checked that no unit loses most of them to max_len
    sequences, _ = D.encode_all(episodes, tokenizer, make_renderer(tokenizer), max_len, check=False)
    if not sequences:
        raise SwespotError(f"no held-out sequence fits in {max_len} tokens")
    peft_model = None
    out: dict[str, Any] = {}  # a mean per adapter, or (with per_sequence) its (loss, tokens) pairs
    for name, path in adapters.items():
        if path is None:
            net = model
        else:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            else:
                peft_model.load_adapter(str(path), adapter_name=name)
            peft_model.set_adapter(name)
            net = peft_model
        total, count, each = 0.0, 0, []
        net.eval()
        with torch.no_grad():
            for seq in sequences:
                batch = D.collate([seq], 0)
                if path is None and peft_model is not None:
                    with peft_model.disable_adapter():
                        loss = trained_token_loss(peft_model, batch)
                else:
                    loss = trained_token_loss(net, batch)
                n = seq.trained_tokens
                total += float(loss) * n
                count += n
                each.append((float(loss), n))
        out[name] = each if per_sequence else total / max(count, 1)
    return out


def loss_gate(gi: GateInput, *, max_len: int) -> dict:
    """Publish unless the candidate's held-out loss is worse than the current adapter's (or, for the
    first version, the base model's): paired over the held-out sequences, token-weighted, worse only when
    the bootstrap 95% interval of the difference lies above 0 (``trainer.evaluation.paired_interval``)."""
    if gi.heldout is None:
        return {"ok": True, "why": "no held-out episodes yet (too little experience); published ungated"}
    reference = "current" if gi.current is not None else "base"
    each = heldout_losses(gi.base.hf_dir, {reference: gi.current, "candidate": gi.candidate}, gi.heldout, max_len,
                          per_sequence=True)
    rows = {name: [{"task": i, "loss": loss, "tokens": n} for i, (loss, n) in enumerate(seqs)] for name, seqs in each.items()}
    stats = paired_interval(rows["candidate"], rows[reference], "loss", lower_is_better=True)
    assert stats is not None  # both score the same non-empty held-out sequences
    ok = stats["verdict"] != WORSE
    why = describe(stats, f"held-out episode loss vs {reference}") + ("" if ok else " (worse)")
    keep = ("tasks", "reference", "candidate", "delta", "lo", "hi", "rel", "rel_lo", "rel_hi", "verdict")
    return {"ok": ok, "why": why, "kind": "heldout-loss", "verdict": stats["verdict"], "interval": {k: stats[k] for k in keep},
            "losses": {"candidate": stats["candidate"], reference: stats["reference"]}, "reference": reference}
