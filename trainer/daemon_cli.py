"""``swespot daemon --repo PATH``: the background re-specialisation daemon (trainer/daemon/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config import add_profile_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="keep the repository's adapter fresh in the background (watches git, trains, publishes)",
                       description="Watch the repository's git HEAD and refs; after new commits, refresh the experience, "
                                   "continue training the current adapter, gate the candidate and publish it. Writes "
                                   "status.json in the repository's state dir; SIGTERM stops it (training resumes next start).")
    p.add_argument("--repo", type=Path, default=Path("."), help="the git repository (default: .)")
    p.add_argument("--base", default="default", help="'default' (embedded model), a local HF folder, or a .gguf")
    add_profile_argument(p, "how much experience and training per refresh")
    p.add_argument("--gate", default="loss", choices=["loss", "none"], help="publish only if held-out loss is not worse (loss)")
    p.add_argument("--keep", type=int, default=5, help="published versions kept")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per refresh (default: the profile's)")
    p.add_argument("--no-continue", dest="continue_training", action="store_false",
                   help="train each version from scratch instead of continuing from the served one")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", dest="quiet_s", type=float, default=20.0, metavar="SECONDS",
                   help="git must have been quiet this long before a refresh starts (default 20)")
    p.add_argument("--min-commits", type=int, default=1, help="new commits since the served version before training again")
    p.add_argument("--when", default="idle", choices=["idle", "always"],
                   help="idle: start only when the CPU load (or GPU memory) leaves room; always: do not wait")
    p.add_argument("--max-load", type=float, default=None, help="1-minute load average counted as busy (default: half the cores)")
    p.add_argument("--nice", type=int, default=10, help="niceness added when training on the CPU")
    p.add_argument("--status", action="store_true", help="print the daemon's status.json for --repo and exit")
    p.set_defaults(func=cmd_daemon)


def cmd_daemon(args) -> int:
    import logging

    from agent.state import lock_holder, read_status, state_dir

    if args.status:
        state = state_dir(args.repo)
        print(json.dumps({**read_status(state), "running": lock_holder(state) is not None}, indent=2))
        return 0
    from trainer.daemon import DaemonOptions, run_daemon

    logging.getLogger("trainer").setLevel(min(logging.getLogger().level, logging.INFO))
    for handler in logging.getLogger().handlers:  # a daemon's log needs times
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    opts = DaemonOptions(repo=args.repo, base=args.base, profile=args.profile, gate=args.gate, keep=args.keep, steps=args.steps,
                         continue_training=args.continue_training, device=args.device, quiet_s=args.quiet_s,
                         min_commits=args.min_commits, when=args.when, max_load=args.max_load, nice=args.nice)
    return run_daemon(opts)
