"""``swespot experience build``: a repository → episodes. Import-light top level."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config import add_profile_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experience", help="turn a git repository into training episodes")
    esub = p.add_subparsers(dest="experience_command", metavar="ACTION", required=True)
    q = esub.add_parser("build", help="build (incrementally) the Repository-Centric Experience of a repository")
    q.add_argument("--repo", type=Path, default=Path("."))
    q.add_argument("--cutoff", default="HEAD", help="learn only from this commit and its history")
    add_profile_argument(q, "take the experience settings (units, targets, budgets) and max_len of this profile's refresh",
                         default=None)
    q.add_argument("--units", help="comma-separated: design, implementation, evolution, runtime (runs the tests), text "
                                   "(default: the profile's, else design,implementation,evolution,text)")
    q.add_argument("--targets", help="episodes per unit, e.g. design=200,evolution=200 (the balanced mix; default: the profile's)")
    q.add_argument("--out", type=Path, help="output folder (default: the repository's state folder/experience)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-commits", type=int, help="replay at most this many commits (the newest before the cutoff)")
    q.add_argument("--run-tests", action="store_true", help="run the relevant tests inside episodes (sandboxed, slower)")
    q.add_argument("--teacher", metavar="MODEL", help="a stronger model (default, a .gguf file or openai:URL[#model]) tries each "
                                                      "unit's task with the agent; its trajectory is kept when it verifies "
                                                      "(design: names every grounded fact; implementation/evolution: the "
                                                      "oracle's code or the deciding tests pass; runtime: the observed value, "
                                                      "passing tests), the oracle's otherwise")
    q.add_argument("--teacher-steps", type=int, default=12, help="the teacher's agent steps per task (default 12)")
    q.add_argument("--fit", default="auto", help="count rendered lengths and trained tokens with this model's tokenizer: "
                                                 "default, a local HF folder, none, or auto (the default model when it is "
                                                 "prepared); a unit that loses most episodes to max_len is an error")
    q.add_argument("--max-len", type=int, help="training window for --fit (default: the profile's, else 1024)")
    q.add_argument("--json", action="store_true", help="print the build statistics as JSON")
    q.set_defaults(func=cmd_build)


def _targets(text: str | None) -> dict:
    from agent.errors import SwespotError

    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        unit, _, n = item.partition("=")
        if not n.strip().isdigit():
            raise SwespotError(f"--targets wants unit=count pairs, e.g. design=200; got {item!r}")
        out[unit.strip()] = int(n)
    return out


def fit_tokenizer(fit: str):
    """The tokenizer --fit names, or None (never downloads: a folder on disk or the prepared default)."""
    from agent.errors import BadModelSpec, SwespotError
    from agent.model_spec import resolve_model

    if fit == "none":
        return None
    from trainer.default_model import default_hf_dir

    ref = resolve_model("default" if fit == "auto" else fit, "--fit model", "'default', a local HF folder, none or auto")
    if ref.kind == "gguf":
        raise BadModelSpec(f"--fit reads a tokenizer from a folder, not from the GGUF file {ref.path} "
                           "(give 'default', a local HF folder, none or auto)")
    where = ref.path or default_hf_dir()
    if not (where / "config.json").is_file() and not (where / "tokenizer.json").is_file():
        if fit == "auto":
            return None
        raise SwespotError(f"no tokenizer at {where} (for the default model run `swespot model prepare-default`)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(where)


def cmd_build(args) -> int:
    from trainer.experience.build import BuildOptions, build_experience, fit_report, format_table
    from trainer.store import state_dir

    out = args.out or state_dir(args.repo) / "experience"
    settings, max_len = {}, 1024
    if args.profile:
        from trainer.pipeline import profile_settings

        profile = profile_settings(args.profile)
        settings = dict(profile["experience"])
        max_len = profile.get("train", {}).get("max_len", max_len)
    max_len = args.max_len or max_len
    if args.units:
        settings["units"] = args.units.split(",")
    settings["units"] = tuple(u.strip() for u in settings.get("units", ("design", "implementation", "evolution", "text")) if u.strip())
    if args.targets:
        settings["targets"] = _targets(args.targets)
    if args.max_commits:
        settings["max_commits"] = args.max_commits
    settings.setdefault("text_chunk_tokens", max_len)
    if args.teacher:
        settings["teacher"] = args.teacher
        settings["teacher_steps"] = args.teacher_steps
    opts = BuildOptions(cutoff=args.cutoff, seed=args.seed, run_tests=args.run_tests or settings.pop("run_tests", False),
                        progress=not args.json, **settings)
    result = build_experience(args.repo, out, opts)
    tokenizer = fit_tokenizer(args.fit)
    fit = fit_report(out, opts.units, tokenizer, max_len, check=False) if tokenizer is not None else None
    result.fit = fit
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"experience: {result.out}  (cutoff {result.cutoff[:10]}, {result.seconds:.1f} s; shards made {result.shards_made}, "
              f"reused {result.shards_reused}, removed {result.shards_removed})")
        print("\n".join(format_table(result.to_dict()["table"])))
        if tokenizer is None:
            print("  (lengths not counted: no tokenizer; give --fit default or --fit HF_DIR)")
        else:
            print(f"  (lengths in {type(tokenizer).__name__} tokens after rendering, max_len {max_len})")
        for unit, unit_stats in result.stats.items():
            if unit_stats.get("why_none"):
                print(f"  {unit}: no episodes: {unit_stats['why_none']}")
        if result.excluded:
            print("  files excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(result.excluded.items())))
    if fit is not None:
        from trainer import data as D

        D.check_lengths_table(fit, max_len)
    return 0
