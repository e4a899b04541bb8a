"""``swespot adapters list|rollback|prune --repo PATH`` (the adapter store, torch-free) and ``swespot adapters
export`` (a peft LoRA adapter to a llama.cpp GGUF adapter: needs torch). ``swespot adapter ...`` is the
older name of the same group."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", aliases=["adapter"],
                       help="list, roll back or prune the published adapters of a repository; export an adapter to GGUF")
    asub = p.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)

    q = asub.add_parser("list", help="every version with its manifest; the current one is marked")
    q.add_argument("--repo", type=Path, default=Path("."))
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    q = asub.add_parser("rollback", help="serve an earlier version again")
    q.add_argument("version")
    q.add_argument("--repo", type=Path, default=Path("."))
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_rollback)

    q = asub.add_parser("prune", help="delete old versions (never the current one)")
    q.add_argument("--repo", type=Path, default=Path("."))
    q.add_argument("--keep", type=int, default=5)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_prune)

    q = asub.add_parser("export", help="export a peft LoRA adapter to a llama.cpp GGUF adapter")
    q.add_argument("adapter_dir", type=Path)
    q.add_argument("--base", required=True, type=Path, help="the HF folder the adapter was trained on")
    q.add_argument("--out", required=True, type=Path, help="output .gguf file")
    q.add_argument("--base-gguf", type=Path, help="the GGUF the adapter will be served on: recorded (sha256) and loaded to check the adapter")
    q.set_defaults(func=cmd_export)


def serving_explained(store, repo: Path) -> dict:
    """Why ``current`` names what it names, and which version branch-aware serving picks for HEAD now."""
    from agent.errors import SwespotError

    selection = store.read_selection()
    try:
        choice = store.choose_for_head(repo)
    except SwespotError as exc:
        return {"selection": selection or None, "head": None, "branch": None, "for_head": None,
                "for_head_reason": str(exc), "versions": {}}
    return {"selection": selection or None, "head": choice.head, "branch": choice.branch,
            "for_head": choice.version.name if choice.version else None, "for_head_reason": choice.reason,
            "versions": {name: {"fits_head": fits, "why": why} for name, fits, why in choice.explained}}


def cmd_list(args) -> int:
    from trainer.store import AdapterStore

    store = AdapterStore.for_repo(args.repo)
    current = store.current()
    serving = serving_explained(store, args.repo)
    rows = []
    for name, version, why in store.versions():
        rows.append({"version": name, "current": current is not None and current.name == name,
                     "usable": version is not None, "problem": why,
                     "fits_head": serving["versions"].get(name, {}).get("fits_head"),
                     "why": serving["versions"].get(name, {}).get("why"),
                     "manifest": version.manifest if version else None})
    selection = serving["selection"] or {}
    why_current = selection.get("reason") if current is not None and selection.get("version") == current.name else None
    if args.json:
        print(json.dumps({"state": str(store.state), "current": current.name if current else None, "why_current": why_current,
                          "head": serving["head"], "branch": serving["branch"], "for_head": serving["for_head"],
                          "for_head_reason": serving["for_head_reason"], "versions": rows}, indent=2))
        return 0
    if not rows:
        print(f"no adapters published yet for {args.repo.resolve()} (state: {store.state})")
        return 0
    for row in rows:
        mark = "*" if row["current"] else " "
        if not row["usable"]:
            print(f"{mark} {row['version']}  DAMAGED: {row['problem']}")
            continue
        m = row["manifest"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("published_at", 0)))
        commit = (m.get("commit") or "?")[:10]
        scores = m.get("eval") or {}
        chat = m.get("chat") if isinstance(m.get("chat"), dict) else None
        print(f"{mark} {row['version']}  {when}  commit {commit}  base {m.get('base', {}).get('name', '?')}"
              + (f"  + chat adapter (commit {(chat.get('commit') or '?')[:10]})" if chat else "")
              + (f"  eval {json.dumps(scores)}" if scores else "") + (f"  [{row['why']}]" if row["why"] else ""))
    print()
    print(f"serving: {current.name if current else 'the base model (no adapter)'}"
          + (f" ({why_current})" if why_current else ""))
    if serving["head"] is not None:
        where = f"HEAD {serving['head'][:10]}" + (f" on {serving['branch']}" if serving["branch"] else "")
        print(f"for {where}: {serving['for_head'] or 'no adapter'} ({serving['for_head_reason']})")
    return 0


def cmd_rollback(args) -> int:
    from trainer.store import AdapterStore

    version = AdapterStore.for_repo(args.repo).rollback(args.version)
    if args.json:
        print(json.dumps({"current": version.name, "commit": version.commit}, indent=2))
    else:
        print(f"current is now {version.name} (commit {(version.commit or '?')[:10]})")
    return 0


def cmd_prune(args) -> int:
    from trainer.store import AdapterStore

    removed = AdapterStore.for_repo(args.repo).prune(args.keep)
    if args.json:
        print(json.dumps({"removed": removed}, indent=2))
    else:
        print("removed: " + (", ".join(removed) if removed else "nothing"))
    return 0


def cmd_export(args) -> int:
    from agent.runtime import LlamaRuntime, file_sha256
    from trainer.lora_export import export_lora_to_gguf

    sha = file_sha256(args.base_gguf) if args.base_gguf else None
    report = export_lora_to_gguf(args.adapter_dir, args.base, args.out, base_gguf_sha256=sha)
    if args.base_gguf:
        runtime = LlamaRuntime(args.base_gguf, n_ctx=256)
        runtime.set_adapters({runtime.load_adapter(report.out_path): 1.0})
        runtime.close()
        print(f"==> checked: {args.base_gguf.name} loads the adapter", file=sys.stderr, flush=True)
    print(f"{report.out_path}: {report.tensors} LoRA pairs for {report.architecture}")
    return 0
