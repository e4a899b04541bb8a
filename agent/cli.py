"""The ``swespot`` command line.

Each subcommand lives in its own module that exposes ``register(subparsers)``; those modules keep their
top level import-light (argparse only) and import heavy libraries (torch, llama_cpp) inside the handler,
so ``swespot --help`` and the torch-free commands start fast and work without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from agent.errors import SwespotError

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "trainer.model_cli",
    "trainer.experience_cli",
    "trainer.train_cli",
    "trainer.adapters_cli",
    "trainer.daemon_cli",
    "trainer.eval_cli",
    "agent.agent_cli",
    "lsp_server.serve_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swespot",
        description="SWE-Spot Local: a small local model that is an expert on your repository.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module of a later issue, not there yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else os.environ.get("SWESPOT_LOG_LEVEL", "WARNING"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SwespotError as exc:
        print(f"swespot: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swespot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
