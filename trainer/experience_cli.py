"""``swespot experience build``: a repository → episodes. Import-light top level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experience", help="turn a git repository into training episodes")
    esub = p.add_subparsers(dest="experience_command", metavar="ACTION", required=True)
    q = esub.add_parser("build", help="build (incrementally) the Repository-Centric Experience of a repository")
    q.add_argument("--repo", type=Path, default=Path("."))
    q.add_argument("--cutoff", default="HEAD", help="learn only from this commit and its history")
    q.add_argument("--units", default="design,implementation,evolution",
                   help="comma-separated: design, implementation, evolution, runtime (runtime runs the tests)")
    q.add_argument("--out", type=Path, help="output folder (default: the repository's state folder/experience)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-commits", type=int, help="replay at most this many commits")
    q.add_argument("--run-tests", action="store_true", help="run the relevant tests inside episodes (sandboxed, slower)")
    q.add_argument("--json", action="store_true", help="print the build statistics as JSON")
    q.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from trainer.experience.build import BuildOptions, build_experience
    from trainer.store import state_dir

    out = args.out or state_dir(args.repo) / "experience"
    opts = BuildOptions(cutoff=args.cutoff, units=tuple(u.strip() for u in args.units.split(",") if u.strip()), seed=args.seed,
                        max_commits=args.max_commits, run_tests=args.run_tests, progress=not args.json)
    result = build_experience(args.repo, out, opts)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"experience: {result.out}  (cutoff {result.cutoff[:10]}, {result.seconds:.1f} s; shards made {result.shards_made}, "
          f"reused {result.shards_reused}, removed {result.shards_removed})")
    for unit, s in result.stats.items():
        rejected = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "none"
        print(f"  {unit:15s} {s['episodes_on_disk']:6d} episodes ({s['made']} new, {s['verified']} verified); rejected: {rejected}")
    if result.excluded:
        print("  files excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(result.excluded.items())))
    return 0
