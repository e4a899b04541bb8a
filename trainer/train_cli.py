"""``swespot train``: LoRA on an experience folder, exported for llama.cpp. Import-light top level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config import PRECISIONS, TrainConfig, add_profile_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA adapter on experience episodes and export it to GGUF",
        description="Train a LoRA adapter on <data>/<unit>/<shard>.jsonl episodes. Multi-GPU: "
        "`accelerate launch -m swespot train ...` (same options).",
    )
    p.add_argument("--data", required=True, type=Path, help="experience folder")
    p.add_argument("--base", default="default", help="'default' (embedded Gemma 3 270M), a local HF folder, or a .gguf")
    p.add_argument("--out", type=Path, help="output folder (default: ./adapter-<timestamp>)")
    add_profile_argument(p, "train as this profile's refresh does: its preset and settings, and its steps (full on a CPU: one "
                            "pass over the data, 140 to 175 steps) unless --steps, --epochs or --max-trained-tokens "
                            "(or --config) say how long; full on a CUDA device: the GPU recipe for 4B models (default: quick)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--max-trained-tokens", type=int,
                   help="stop once this many target tokens were trained (replaces --epochs; with --steps, whichever comes first)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--rslora", action="store_true", default=None)
    p.add_argument("--fim", action="store_true", default=None,
                   help="train the text unit's fill-in-the-middle splits in the FIM layout (off by default: see README)")
    p.add_argument("--max-len", type=int)
    p.add_argument("--batch-tokens", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--init-adapter", help="continue from this peft adapter folder")
    p.add_argument("--replay-data", help="earlier experience to mix in when continuing")
    p.add_argument("--seed", type=int)
    p.add_argument("--commit", help="git commit the data was made up to (recorded in the manifest)")
    p.add_argument("--no-export", action="store_true", help="skip the GGUF export and its llama.cpp check")
    p.add_argument("--config", type=Path, help="JSON file of settings (command-line options win)")
    p.add_argument("--json", action="store_true", help="print the training report as JSON")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from trainer.train import train

    cfg = config_from_args(args)
    result = train(cfg, commit=args.commit)
    if args.json:
        print(json.dumps({"out": str(result.out), "report": result.report, "manifest": result.manifest}, indent=2))
    else:
        r = result.report
        print(f"adapter: {result.out}  steps {r['steps']}  loss {r['loss_curve'][0][1]:.3f} → {r['loss_curve'][-1][1]:.3f}  "
              f"{r['trained_tokens']} trained tokens ({r['trained_tokens_per_min']:.0f}/min of {r['tokens_per_min']:.0f} tokens seen/min)  "
              f"peak {r['peak_memory_mb']:.0f} MB")
        if "export" in result.manifest:
            print(f"gguf: {result.manifest['export']['adapter_gguf']} ({result.manifest['export']['verified']})")
    return 0


def config_from_args(args) -> TrainConfig:
    """The profile's training settings (``trainer.pipeline.train_config``, as a refresh trains), then the
    --config file, then the command line; the profile's step count unless either says how long."""
    import time

    from trainer.pipeline import profile_settings, train_config

    file_values = json.loads(args.config.read_text()) if args.config else {}
    out = args.out or Path(f"adapter-{time.strftime('%Y%m%d-%H%M%S')}")
    cli = dict(
        data=str(args.data), base=args.base, out=str(out), steps=args.steps, epochs=args.epochs, lr=args.lr,
        max_trained_tokens=args.max_trained_tokens,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, rslora=args.rslora, max_len=args.max_len,
        batch_tokens=args.batch_tokens, grad_accum=args.grad_accum, precision=args.precision,
        init_adapter=args.init_adapter, replay_data=args.replay_data, seed=args.seed, fim=args.fim,
        export_gguf=False if args.no_export else None,
    )
    given = {**file_values, **{k: v for k, v in cli.items() if v is not None}}
    length_given = any(given.get(k) for k in ("steps", "epochs", "max_trained_tokens"))
    file_device = given.pop("device", None)
    device = args.device or file_device or "auto"
    steps = given.pop("steps", None) if length_given else profile_settings(args.profile, device)["steps"]
    if length_given:  # the command line's length, not the profile's floor and cap on its epochs (full's)
        given = {"min_steps": 0, "max_steps": 0, **given}
    return train_config(args.profile, device=device, steps=steps, **given)
