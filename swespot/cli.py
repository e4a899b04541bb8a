"""The ``swespot`` command line: the one entry point, above the three layers (agent ← trainer ← lsp_server).

Each command's module is imported here by name, so readers and tools see every edge; each exposes
``register(subparsers)`` and keeps its top level import-light (argparse only). The heavy libraries
(torch, transformers, llama_cpp, pygls) are imported inside the handlers, so ``swespot --help`` and the
torch-free commands start fast and work without the ``train`` extra.

Errors become exit codes here and nowhere else: a ``SwespotError`` prints one line and exits with its
kind's ``exit_code``; Ctrl-C exits 130.

Started as ``swespot ...`` (the console script) or ``python -m swespot ...``; the language server starts
the trainer daemon as ``python -m swespot daemon --repo REPO`` (``lsp_server.daemon.daemon_command``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from agent import agent_cli
from agent.errors import SwespotError
from lsp_server import serve_cli
from trainer import adapters_cli, daemon_cli, eval_cli, experience_cli, model_cli, train_cli

# The modules that contribute commands, in the order they appear in --help.
COMMAND_MODULES = (model_cli, experience_cli, train_cli, adapters_cli, daemon_cli, eval_cli, agent_cli, serve_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swespot",
        description="SWE-Spot Local: a small local model that is an expert on your repository.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
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
        return exc.exit_code
    except KeyboardInterrupt:
        print("swespot: interrupted", file=sys.stderr)
        return 130
