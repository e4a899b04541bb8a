"""Runtime benchmark: what the user feels when the local model serves.

For the tiny test model and the embedded Gemma 3 270M default: model load time, prompt (prefill) and
generation tokens/s, adapter load time, adapter swap time, and the full reload that a swap avoids.
Prints a table; ``--json FILE`` also writes the figures.

    .venv/bin/python benchmarks/runtime.py [--models tiny,gemma] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.runtime import LlamaRuntime, default_threads, file_sha256
from trainer.lora_export import export_lora_to_gguf

T = TypeVar("T")
PROMPT = (
    "import json\nimport os\n\n\nclass Store:\n    \"\"\"A tiny JSON key-value store kept in one file.\"\"\"\n\n"
    "    def __init__(self, path):\n        self.path = path\n        self.data = {}\n\n"
    "    def load(self):\n        if os.path.exists(self.path):\n            with open(self.path) as fh:\n"
    "                self.data = json.load(fh)\n\n    def save(self):\n"
) * 3


def make_adapter(hf_dir: Path, out: Path, base_gguf_sha: str | None, seed: int) -> Path:
    """A random (not trained) LoRA on every projection, exported to GGUF: swap cost does not depend on
    what the adapter learned, only on its size."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, cfg)
    peft_dir = out.with_suffix("")
    peft_model.save_pretrained(str(peft_dir))
    export_lora_to_gguf(peft_dir, hf_dir, out, base_gguf_sha256=base_gguf_sha)
    return out


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The median seconds of ``repeats`` (at least one) calls, and the last call's result."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_model(name: str, gguf: Path, hf_dir: Path, repeats: int, threads: int, work: Path) -> dict:
    row: dict = {"model": name, "file": gguf.name, "size_mb": round(gguf.stat().st_size / 2**20, 1)}
    load_s, runtime = timed(lambda: LlamaRuntime(gguf, n_ctx=2048, n_threads=threads), 1)
    row["load_s"] = round(load_s, 3)

    prompt_ids = runtime.tokenize(PROMPT, add_bos=True)
    prefill = []
    for _ in range(repeats):
        runtime.reset_cache()
        stats: dict = {}
        start = time.perf_counter()
        list(runtime.generate(prompt_ids, max_tokens=1, stats=stats))
        prefill.append(len(prompt_ids) / (time.perf_counter() - start))
    row["prompt_tokens"] = len(prompt_ids)
    row["prompt_tok_s"] = round(statistics.median(prefill), 1)

    gen = []
    for _ in range(repeats):
        runtime.reset_cache()
        list(runtime.generate(prompt_ids, max_tokens=1))  # prefill outside the timed part
        stats = {}
        start = time.perf_counter()
        # the cached prompt is reused, so this times (almost) only generation
        list(runtime.generate(prompt_ids, max_tokens=64, stats=stats))
        gen.append(stats["completion_tokens"] / (time.perf_counter() - start))
    row["gen_tok_s"] = round(statistics.median(gen), 1)

    sha = file_sha256(gguf)
    adapters = [make_adapter(hf_dir, work / f"{name}-lora-{i}.gguf", sha, seed=i) for i in range(2)]
    adapter_load_s, _ = timed(lambda: runtime.load_adapter(adapters[0], name="a"), 1)
    runtime.load_adapter(adapters[1], name="b")
    row["adapter_mb"] = round(adapters[0].stat().st_size / 2**20, 2)
    row["adapter_load_s"] = round(adapter_load_s, 4)
    flip = iter(["a", "b"] * repeats * 2)
    swap_s, _ = timed(lambda: runtime.set_adapters({next(flip): 1.0}), repeats * 2)
    row["swap_s"] = round(swap_s, 5)
    runtime.close()
    reload_s, rt = timed(lambda: LlamaRuntime(gguf, n_ctx=2048, n_threads=threads), 1)
    rt.close()
    row["full_reload_s"] = round(reload_s + adapter_load_s, 3)
    return row


def prepare(name: str) -> tuple[Path, Path]:
    if name == "tiny":
        from trainer.tiny import tiny_gguf, tiny_model_dir

        return tiny_gguf("f32"), tiny_model_dir()
    if name == "gemma":
        from agent.default_model import ensure_default_gguf
        from trainer.default_model import prepare_default

        return ensure_default_gguf(), prepare_default()
    raise SystemExit(f"unknown model {name!r} (choose tiny, gemma)")


COLUMNS = [
    ("model", "model"), ("size_mb", "MB"), ("load_s", "load s"), ("prompt_tok_s", "prompt tok/s"),
    ("gen_tok_s", "gen tok/s"), ("adapter_mb", "adapter MB"), ("adapter_load_s", "adapter load s"),
    ("swap_s", "swap s"), ("full_reload_s", "reload+adapter s"),
]


def print_table(rows: list[dict]) -> None:
    table = Table(title="SWE-Spot Local runtime (llama.cpp, CPU)")
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[str(row.get(key, "")) for key, _ in COLUMNS])
    Console(width=160).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            gguf, hf = prepare(name)
            rows.append(bench_model(name, gguf, hf, args.repeats, threads, Path(tmp)))
    print_table(rows)
    if args.json:
        meta = {"machine": platform.machine(), "python": platform.python_version(), "threads": threads}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
