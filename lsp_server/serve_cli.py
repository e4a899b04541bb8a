"""``swespot serve``: the language server on stdio (or TCP for debugging). Import-light top level."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import BinaryIO, cast

from agent.errors import SwespotError
from agent.model_spec import serving_gguf_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the language server the editor extension talks to (stdio)")
    p.add_argument("--base", help="base model GGUF (default: the model setting, else the embedded Gemma)")
    p.add_argument("--model", dest="base", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the older spelling of --base
    p.add_argument("--repo", type=Path, help="repository root (default: the editor's workspace root)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio (debugging)")
    p.set_defaults(func=cmd_serve)


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SwespotError(f"--tcp needs HOST:PORT, e.g. 127.0.0.1:2087, not {value!r}")
    return host or "127.0.0.1", int(port)


def cmd_serve(args) -> int:
    import logging
    import sys

    from lsp_server.logs import log_to
    from trainer.store import state_root

    # stdout is the protocol's: until the repository is known, log into the state root
    log_to(state_root() / "logs" / "serve.log")
    logging.getLogger("swespot.lsp").info("swespot serve starting; the log moves to the repository state dir once it is known")
    from lsp_server.framing import FramedStdin
    from lsp_server.server import create_server

    base = str(serving_gguf_of(args.base, "base model")) if args.base else None  # a bad spec fails here, before the editor waits
    server = create_server(model=base, repo=args.repo)
    try:
        if args.tcp:
            host, port = parse_host_port(args.tcp)
            server.start_tcp(host, port)
        else:
            # FramedStdin is the part of a binary file pygls reads (readline, read)
            server.start_io(stdin=cast(BinaryIO, FramedStdin(sys.stdin.buffer)), stdout=sys.stdout.buffer)
    finally:
        server.close()
    return 0
