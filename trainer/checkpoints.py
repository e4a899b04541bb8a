"""Training checkpoints: ``<out>/checkpoints/step-NNNNNNN/`` holds the adapter, the optimizer, scheduler
and RNG states and the loop's own state (``state.json``), written into a temporary folder and renamed, so
a kill at any point leaves the previous checkpoint whole and a later run resumes exactly where it was."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from agent.state import atomic_dir

CHECKPOINTS = "checkpoints"
STATE = "state.json"


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
