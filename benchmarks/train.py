"""Training benchmark: tokens/s and peak memory of ``swespot train`` against a plain
``transformers.Trainer`` + peft baseline on the same sequences, LoRA settings and batch shapes.

Each measurement runs in its own process (peak memory is per process). Works on CPU and, unchanged, on a
GPU when one is present (device auto-selection; bf16 where supported).

    .venv/bin/python benchmarks/train.py [--models tiny,gemma] [--lengths 512,2048] [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH_TOKENS = 2048


def source_text() -> str:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:40])


def write_episodes(data: Path, tokenizer, length: int, count: int) -> None:
    """Episodes whose rendered length is about ``length`` tokens: a short request, a long answer."""
    ids = tokenizer(source_text(), add_special_tokens=False).input_ids
    body = length - 40
    unit = data / "implementation"
    unit.mkdir(parents=True)
    with open(unit / "bench.jsonl", "w") as fh:
        for i in range(count):
            chunk = tokenizer.decode(ids[i * body : (i + 1) * body])
            fh.write(json.dumps({
                "id": f"bench-{i}", "unit": "implementation", "repo_commit": "0" * 40, "tools": [], "verified": {}, "meta": {},
                "messages": [{"role": "user", "content": "Write the next part of the module."},
                             {"role": "assistant", "content": chunk}],
            }) + "\n")


def base_dir(model: str) -> str:
    if model == "tiny":
        from trainer.tiny import tiny_model_dir

        return str(tiny_model_dir())
    from trainer.default_model import prepare_default

    return str(prepare_default())


def worker(args) -> dict:
    """One measurement in this process: ours or the Trainer baseline."""
    import torch
    from transformers import AutoTokenizer

    from trainer import data as D
    from trainer.config import config_for
    from trainer.train import make_renderer

    hf = base_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    tmp = Path(tempfile.mkdtemp(prefix="swespot-bench-"))
    per_batch = max(1, BATCH_TOKENS // args.length)
    write_episodes(tmp / "data", tokenizer, args.length, per_batch * (args.steps + 1))
    cfg = config_for("cpu", data=str(tmp / "data"), base=hf, out=str(tmp / "out"), steps=args.steps + 1,
                     max_len=args.length, batch_tokens=per_batch * args.length, export_gguf=False,
                     checkpoint_every=10_000, lora_r=16, lora_alpha=32, warmup_ratio=0.0)
    if args.worker == "ours":
        from trainer.train import train

        result = train(cfg, progress=False)
        # the first step includes one-off costs (allocation, graph warm-up): leave it out of the rate
        first = result.report["seconds"] / result.report["steps"]
        return {"tokens_per_s": result.report["tokens"] / result.report["seconds"], "peak_memory_mb": result.report["peak_memory_mb"],
                "seconds": result.report["seconds"], "steps": result.report["steps"], "approx_first_step_s": first}

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from trainer.train import peak_memory_mb

    sequences, _ = D.encode_all(D.read_episodes(tmp / "data"), tokenizer, make_renderer(tokenizer), args.length)
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in sequences]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), D.IGNORE)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=str(tmp / "hf"), per_device_train_batch_size=per_batch, max_steps=args.steps + 1,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, adam_beta2=cfg.beta2, max_grad_norm=cfg.grad_clip,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="no", report_to=[], logging_steps=1000, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True, seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = sum(len(r["input_ids"]) for r in rows[: per_batch * (args.steps + 1)])
    return {"tokens_per_s": tokens / seconds, "peak_memory_mb": peak_memory_mb("cuda" if torch.cuda.is_available() else "cpu"),
            "seconds": seconds, "steps": args.steps + 1}


def run_one(model: str, length: int, which: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--model", model, "--length", str(length), "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{which} {model} {length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    for model in args.models.split(","):
        for length in [int(x) for x in args.lengths.split(",")]:
            ours = run_one(model, length, "ours", args.steps)
            base = run_one(model, length, "baseline", args.steps)
            rows.append({"model": model, "seq_len": length, "batch": max(1, BATCH_TOKENS // length),
                         "ours_tok_s": round(ours["tokens_per_s"], 1), "trainer_tok_s": round(base["tokens_per_s"], 1),
                         "speed_ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 2),
                         "ours_peak_mb": round(ours["peak_memory_mb"]), "trainer_peak_mb": round(base["peak_memory_mb"])})
    from rich.console import Console
    from rich.table import Table

    table = Table(title="LoRA training throughput (r=16, all projections, gradient checkpointing)")
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": {"machine": platform.machine(), "python": platform.python_version()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
