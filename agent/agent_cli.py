"""``swespot agent --repo PATH "task"``: the agent, headless. Import-light top level."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the coding agent on a repository, headless")
    p.add_argument("task", help="what to do")
    p.add_argument("--repo", type=Path, default=Path("."), help="repository root (its files are edited in place)")
    p.add_argument("--model", default="default",
                   help="'default' (embedded Gemma), a .gguf file, scripted:TURNS.json, or openai:URL[#model]")
    p.add_argument("--adapter", type=Path, help="GGUF LoRA adapter for a llama.cpp model")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--max-tokens", type=int, default=100_000)
    p.add_argument("--read-only", action="store_true", help="explore and answer; no edits or commands")
    p.add_argument("--allow-commands", action="store_true", help="run any command without asking (default: tests and read-only commands)")
    p.add_argument("--episode-out", type=Path, help="save the episode (JSONL) here")
    p.add_argument("--json", action="store_true", help="print a machine-readable result")
    p.set_defaults(func=cmd_agent)


def cmd_agent(args) -> int:
    from agent.episode import save_episodes
    from agent.loop import Agent, Budget
    from agent.models import model_from_spec
    from agent.tools import CommandPolicy, Workspace, make_tools

    policy = CommandPolicy(approve=(lambda _cmd: True) if args.allow_commands else None)
    workspace = Workspace(args.repo, policy=policy)
    model = model_from_spec(args.model, adapter=args.adapter)
    agent = Agent(model, workspace, Budget(args.max_steps, args.max_tokens), tools=make_tools(workspace, read_only=args.read_only))
    result = agent.run(args.task)
    if args.episode_out:
        save_episodes(args.episode_out, [result.episode])
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        if result.diff:
            print(result.diff)
        print(f"{result.exit}: {result.summary}", file=sys.stderr)
        print(f"{result.steps} turns, {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens"
              + (f", {result.format_errors} malformed replies" if result.format_errors else ""), file=sys.stderr)
    return 0 if result.exit == "submitted" else 3
