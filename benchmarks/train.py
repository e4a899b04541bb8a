"""Training benchmark: trained tokens per minute of ``swespot train`` against a plain
``transformers.Trainer`` + peft baseline, one pass over the same sequences with the same LoRA settings.

The sequences are real experience (what ``specialize`` trains on): a folder given with ``--data``, or
the quick-profile experience built from ``--repo`` (default: a synthetic repository generated here). In
agent episodes most tokens are context (system prompt, tool schemas, observations) and about a tenth
are trained, so the figure that matters is trained tokens per minute; tokens seen per minute is shown
too. ``--dense-lengths`` adds the old rows: equal-length episodes whose every answer token is trained.

Rows: ``ours`` (packed rows: common prefix once, no padding, each sequence cut after its last trained
token, the vocabulary projection only where a target is predicted, in chunks of rows:
``losses.linear_cross_entropy``), ``ours_v1`` (the same packing with the full [targets, vocabulary]
logits, as first built), ``ours_vocab`` (``ours`` with the CPU profiles' training softmax over part of the
vocabulary: the data's tokens and the ``LOSS_VOCAB`` lowest ids; its loss is over that part, so its first
loss is lower), ``ours_cpu`` (``ours_vocab`` without LoRA dropout: how quick and full train on a CPU,
``LORA_DROPOUT``; the other rows keep the default 0.05), ``ours_bf16`` (``ours_cpu`` with the frozen base's weights in bf16,
``precision="bf16-base"``: how they train on a CPU with bf16 matrix instructions; the other rows of ours train in fp32
on a CPU), ``ours_padded`` (length-grouped padded batches) and ``trainer``
(``transformers.Trainer``, grouped by length, the model's own loss). ``--units text=5,design=3`` samples
quick's mix (the repository as text, every token trained, and design episodes) instead of ``--episodes``.
Each measurement runs in its own process; the rate is over the training loop only
(model loading and tokenisation excluded). Works unchanged on a GPU (device auto-selection, bf16).

    .venv/bin/python -m benchmarks.train [--models tiny,gemma] [--data DIR | --repo PATH] [--episodes 48 | --units text=5,design=3]
        [--max-len 1024] [--batch-tokens 4096] [--runs ours,ours_v1,ours_vocab,ours_cpu,ours_bf16,ours_padded,trainer] [--dense-lengths 512]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.table import print_rows
from trainer import attention as A
from trainer import data as D
from trainer.config import config_for
from trainer.default_model import prepare_default
from trainer.model_io import pick_device
from trainer.pipeline import LORA_DROPOUT, LOSS_VOCAB, build_repo_experience
from trainer.train import make_renderer, peak_memory_mb

WORKERS = ("ours", "ours_v1", "ours_vocab", "ours_cpu", "ours_bf16", "ours_padded", "trainer")
PACKED = ("ours", "ours_v1", "ours_vocab", "ours_cpu", "ours_bf16")


def source_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:40])


def write_dense_episodes(data: Path, length: int, count: int) -> None:
    """Episodes of about ``length`` characters/4 tokens: a short request, a long answer (all trained)."""
    text = source_text()
    body = 4 * (length - 40)
    unit = data / "implementation"
    unit.mkdir(parents=True)
    with open(unit / "bench.jsonl", "w") as fh:
        for i in range(count):
            fh.write(json.dumps({
                "id": f"bench-{i}", "unit": "implementation", "repo_commit": "0" * 40, "tools": [], "verified": {}, "meta": {},
                "messages": [{"role": "user", "content": "Write the next part of the module."},
                             {"role": "assistant", "content": text[i * body : (i + 1) * body]}],
            }) + "\n")


def experience_sample(source: Path, out: Path, episodes: int, seed: int = 0, units: dict[str, int] | None = None) -> Path:
    """A seeded sample of ``episodes`` episodes across the units of an experience folder, or of
    ``units[unit]`` episodes of each unit named there."""
    rng = random.Random(seed)
    every = D.read_episodes(source)
    if units:
        chosen = []
        for unit, count in units.items():
            pool = [e for e in every if e.get("unit", "unknown") == unit]
            chosen += rng.sample(pool, min(count, len(pool)))
    else:
        chosen = rng.sample(every, min(episodes, len(every)))
    for unit in sorted({e.get("unit", "unknown") for e in chosen}):
        (out / unit).mkdir(parents=True)
        with open(out / unit / "sample.jsonl", "w") as fh:
            for e in chosen:
                if e.get("unit", "unknown") == unit:
                    fh.write(json.dumps(e) + "\n")
    return out


def build_experience(repo: Path | None, where: Path) -> Path:
    """The quick profile's experience of ``repo`` (a small synthetic repository when None)."""
    if repo is None:
        from benchmarks.experience import make_repo

        repo = make_repo(where, lines=4000, commits=60)
    build_repo_experience(repo, where / "experience", "HEAD", "quick", progress=False)
    return where / "experience"


def base_dir(model: str) -> str:
    if model == "tiny":
        from trainer.tiny import tiny_model_dir

        return str(tiny_model_dir())
    return str(prepare_default())


def worker(args) -> dict:
    """One measurement in this process: one pass over the sequences, ours or the Trainer baseline."""
    import torch
    from transformers import AutoTokenizer

    hf = base_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    sequences, stats = D.encode_all(D.read_episodes(Path(args.data)), tokenizer, make_renderer(tokenizer), args.max_len)
    tokens, trained = stats.tokens, sum(s.trained_tokens for s in sequences)
    mean_len = tokens / len(sequences)
    tmp = Path(tempfile.mkdtemp(prefix="swespot-bench-"))
    cfg = config_for("cpu", data=str(args.data), base=hf, out=str(tmp / "out"), epochs=1.0, max_len=args.max_len,
                     batch_tokens=args.batch_tokens, export_gguf=False, checkpoint_every=1_000_000, lora_r=16, lora_alpha=32,
                     warmup_ratio=0.0, gradient_checkpointing=False, packing=args.worker in PACKED,
                     loss_vocab=LOSS_VOCAB if args.worker in ("ours_vocab", "ours_cpu", "ours_bf16") else 0,
                     lora_dropout=LORA_DROPOUT if args.worker in ("ours_cpu", "ours_bf16") else None,
                     # on a CPU, fp32 unless the row says otherwise ("auto" picks bf16-base where the CPU has bf16 instructions)
                     precision="bf16-base" if args.worker == "ours_bf16" else "fp32" if pick_device() == "cpu" else None)
    row = {"sequences": len(sequences), "tokens": tokens, "trained_tokens": trained,
           "after_last_target": sum(len(s.input_ids) - D.trained_end(s) for s in sequences)}
    if args.worker != "trainer":
        import trainer.train as T

        if args.worker == "ours_v1":  # packing as first built: the model's own attention, full logits
            A.BLOCK, T.CHUNKED_LOSS = 0, False
        report = T.train(cfg, progress=False).report
        return {**row, "seconds": report["seconds"], "steps": report["steps"], "computed_tokens": report["computed_tokens"],
                "peak_memory_mb": report["peak_memory_mb"], "first_loss": report["loss_curve"][0][1]}

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

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

    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    # peft annotates lora_alpha as int; it is a float scale (alpha / r) and our configs may give 0.5 steps
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,  # type: ignore[arg-type]
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    per_batch = max(1, round(args.batch_tokens / mean_len))
    targs = TrainingArguments(
        output_dir=str(tmp / "hf"), per_device_train_batch_size=per_batch, num_train_epochs=1, train_sampling_strategy="group_by_length",
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, adam_beta2=cfg.beta2, max_grad_norm=cfg.grad_clip,
        gradient_checkpointing=cfg.gradient_checkpointing, save_strategy="no", report_to=[], logging_steps=1_000_000,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - started
    padded = sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())
    return {**row, "seconds": seconds, "steps": out.global_step, "computed_tokens": padded,
            "peak_memory_mb": peak_memory_mb("cuda" if torch.cuda.is_available() else "cpu")}


def run_one(which: str, model: str, data: Path, max_len: int, batch_tokens: int) -> dict:
    # as a module from the checkout's root: a script's own folder first on sys.path may shadow the stdlib
    cmd = [sys.executable, "-m", "benchmarks.train", "--worker", which, "--model", model, "--data", str(data), "--max-len", str(max_len),
           "--batch-tokens", str(batch_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{which} {model} {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model: str, name: str, data: Path, max_len: int, batch_tokens: int, workers: list[str]) -> list[dict]:
    results = {}
    for w in workers:
        results[w] = run_one(w, model, data, max_len, batch_tokens)
        print(json.dumps({"model": model, "run": w, **results[w]}), file=sys.stderr, flush=True)  # survives a later kill
    rows = []
    for which, r in results.items():
        minutes = r["seconds"] / 60
        rows.append({"model": model, "data": name, "run": which, "sequences": r["sequences"], "steps": r["steps"],
                     "trained_share": round(r["trained_tokens"] / r["tokens"], 3),
                     "computed_per_seen": round(r["computed_tokens"] / r["tokens"], 2),
                     "tokens_per_min": round(r["tokens"] / minutes), "trained_tokens_per_min": round(r["trained_tokens"] / minutes),
                     "peak_mb": round(r["peak_memory_mb"]), "seconds": round(r["seconds"], 1),
                     "first_loss": r.get("first_loss")})
    if "trainer" in results:
        for row in rows:
            row["speedup_vs_trainer"] = round(results["trainer"]["seconds"] / results[row["run"]]["seconds"], 2)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument("--data", type=Path, help="an experience folder (<unit>/<shard>.jsonl)")
    parser.add_argument("--repo", type=Path, help="build the quick-profile experience of this repository instead")
    parser.add_argument("--episodes", type=int, default=48, help="seeded sample of the experience (all runs use the same)")
    parser.add_argument("--units", default="", help="sample this many episodes per unit instead, e.g. text=12,design=6 (quick's mix)")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--dense-lengths", default="", help="also rows of equal-length, fully trained episodes, e.g. 512")
    parser.add_argument("--runs", default=",".join(WORKERS), help=f"which of {', '.join(WORKERS)}")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="swespot-bench-train-"))
    source = args.data or build_experience(args.repo, tmp)
    units = {u: int(n) for u, n in (x.split("=") for x in args.units.split(",") if x)}
    datasets = [("experience", experience_sample(source, tmp / "sample", args.episodes, units=units), args.max_len)]
    for length in [int(x) for x in args.dense_lengths.split(",") if x]:
        write_dense_episodes(tmp / f"dense-{length}", length, max(4, args.batch_tokens // length) * 4)
        datasets.append((f"dense-{length}", tmp / f"dense-{length}", length))
    rows = []
    for model in args.models.split(","):
        for name, data, max_len in datasets:
            rows.extend(measure(model, name, data, max_len, args.batch_tokens, args.runs.split(",")))
    print_rows(f"LoRA training, one pass over the same sequences (r=16, all projections, batch_tokens {args.batch_tokens})", rows)
    if args.json:
        load = os.getloadavg()
        args.json.write_text(json.dumps({"meta": {"machine": platform.machine(), "python": platform.python_version(),
                                                  "cpus": os.cpu_count(), "loadavg": load, "data": str(source)}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
