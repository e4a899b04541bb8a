"""``swespot eval`` (held-out evaluation on one repository) and ``swespot specialize`` (the main job:
experience → train → export → evaluate base vs adapter → publish; its logic is ``trainer/specialize.py``).
Import-light top level: argparse and the job's option names only."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.errors import SwespotError
from trainer.config import MAX_HOLDOUT, add_profile_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate the base model and adapters on a repository's history after a cutoff",
        description="Knowledge-cutoff evaluation: tasks come only from commits after --cutoff (completion of "
        "lines and function bodies, design questions, agent replay of commits). Writes report.json and "
        "report.html to --out.")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--cutoff", required=True, help="the last commit that may have been learned")
    p.add_argument("--until", default="HEAD", help="the newest commit tasks come from")
    p.add_argument("--base", default="default", help="'default' (embedded Gemma 3 270M) or a .gguf to serve")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]ADAPTER",
                   help="an adapter.gguf, a published version folder, or a version name of the repository's "
                   "store (v0003, current; with its chat adapter, if it has one); repeatable")
    p.add_argument("--chat-adapter", action="append", default=[], metavar="NAME=ADAPTER",
                   help="a chat adapter (GGUF) that answers the design and facts tasks for the --adapter named NAME, as "
                   "the server's chat panel would; repeatable")
    p.add_argument("--no-base", action="store_true", help="do not evaluate the base model itself")
    p.add_argument("--tasks", default="line,body,infill,design,facts,replay", help="task families, comma-separated")
    add_profile_argument(p, "how many tasks and how long (trainer.evaluation.EVAL_PROFILES)")
    p.add_argument("--out", type=Path, help="report folder (default: <state>/reports/<time>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "specialize", help="the main job: make the model an expert on a repository (experience, LoRA, eval, publish)",
        description="Build the repository's experience up to a knowledge cutoff, train a LoRA adapter, export "
        "it to GGUF, evaluate base vs adapter on the commits after the cutoff, and publish the adapter to the "
        "repository's adapter store if it is not worse. Prints where the report is.")
    s.add_argument("--repo", type=Path, help="the repository (default: .)")
    s.add_argument("path", nargs="?", type=Path, help=argparse.SUPPRESS)  # the older spelling of --repo (./scripts/run PATH)
    s.add_argument("--base", default="default", help="'default' (embedded Gemma 3 270M), a local HF folder, or a .gguf")
    s.add_argument("--model", dest="base", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the older spelling of --base
    add_profile_argument(s, "quick: ~15 min on a fast 2-core CPU (click: 14 min; 27 min on a slower one, README); "
                         "full: under an hour there, every unit on a GPU; tiny: tests")
    s.add_argument("--cutoff", help="knowledge cutoff (default: hold out the newest --holdout commits)")
    s.add_argument("--holdout", type=int, help="first-parent commits held out for evaluation (default: the newest ones "
                   "that give the profile's number of line tasks, at most "
                   f"{MAX_HOLDOUT['quick']} quick, {MAX_HOLDOUT['full']} full, and at most half the history)")
    s.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    s.add_argument("--seed", type=int, default=0, help="training seed: the LoRA initialisation and the data order; "
                   "the experience, cutoff and tasks stay the same, so a second seed shows how much of a result is the "
                   "run's own chance (default: 0)")
    s.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the chat adapter that answers the chat panel's questions (design and recall "
                   "episodes; ~20 min more on 2 cores, ~35 on a slow CPU); default: full does, quick does not")
    s.add_argument("--no-eval", action="store_true", help="train up to HEAD and publish without evaluating")
    s.add_argument("--force", action="store_true", help="publish even if the adapter evaluates worse than the base")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_specialize)


# ---- shared helpers -------------------------------------------------------------------------------
def print_summary(report: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from trainer.eval_report import METRICS, cell

    console = Console(file=file if file is not None else sys.stderr)  # resolved per call: sys.stderr may be replaced
    if not report["models"]:
        console.print("no held-out tasks after the cutoff: nothing was evaluated")
        return
    table = Table(title=f"held-out evaluation ({', '.join(f'{n} {f}' for f, n in report['tasks'].items())})")
    table.add_column("metric")
    models = list(report["models"])
    for m in models:
        table.add_column(m, justify="right")
    for fam, key, label, lower in METRICS:
        entries = [report["models"][m]["families"].get(fam, {}) for m in models]
        if any(e.get(key) is not None for e in entries):
            table.add_row(label + (" ↓" if lower else " ↑"), *(cell(e, key) for e in entries))
    table.add_row("task seconds (summed)", *(f"{report['models'][m]['seconds']:.0f}" for m in models))
    console.print(table)
    for name, comparison in (report.get("comparisons") or {}).items():
        console.print(f"[bold]{name} vs {comparison['reference']}[/] (paired, bootstrap 95% intervals over tasks):", highlight=False)
        for entry in comparison["families"].values():
            for stats in entry["metrics"].values():
                console.print(f"  {stats['line']}", highlight=False, markup=False, soft_wrap=True)
        console.print(f"  [bold]{comparison['line']}[/]", highlight=False, soft_wrap=True)
    for name, layout in (report.get("layouts") or {}).items():  # an adapter that declares FIM: the layout's own effect
        console.print(f"{name}: {layout['line']}", highlight=False, markup=False, soft_wrap=True)
    for family, why in (report.get("left_out") or {}).items():
        console.print(f"{family} left out: {why}", highlight=False, markup=False, soft_wrap=True)


# ---- swespot eval -----------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from trainer.evaluation import ModelSpec, evaluate
    from trainer.specialize import resolve_adapters, serving_base
    from trainer.store import state_dir

    repo = args.repo.resolve()
    models = ([] if args.no_base else [ModelSpec("base", None)]) + resolve_adapters(args.adapter, repo, args.chat_adapter)
    if not models:
        raise SwespotError("nothing to evaluate: give --adapter or drop --no-base")
    out = args.out or state_dir(repo) / "reports" / time.strftime("%Y%m%d-%H%M%S")
    families = tuple(f.strip() for f in args.tasks.split(",") if f.strip())
    report = evaluate(repo, args.cutoff, serving_base(args.base), models, until=args.until, families=families,
                      profile=args.profile, out=out)
    if args.json:
        print(json.dumps({"report": str(out / "report.html"), "tasks": report["tasks"], "models": report["models"]}, indent=2))
    else:
        print_summary(report, sys.stdout)
        print(f"report: {out / 'report.html'}")
    return 0


# ---- swespot specialize -------------------------------------------------------------------------------
def specialize_options(args):
    """The job's options from the command line; PATH and --repo are one option given once."""
    from trainer.specialize import SpecializeOptions

    if args.path is not None and args.repo is not None and args.path.resolve() != args.repo.resolve():
        raise SwespotError(f"two repositories given ({args.path} and --repo {args.repo}): give one, with --repo")
    repo = (args.repo or args.path or Path(".")).expanduser().resolve()
    return SpecializeOptions(repo=repo, base=args.base, profile=args.profile, cutoff=args.cutoff, holdout=args.holdout,
                             steps=args.steps, seed=args.seed, evaluate=not args.no_eval, force=args.force,
                             device=args.device, chat=args.chat)


def cmd_specialize(args) -> int:
    from rich.console import Console

    from trainer.pipeline import PHASES
    from trainer.specialize import choose_cutoff, specialize

    console = Console(stderr=True)
    opts = specialize_options(args)
    started = time.perf_counter()
    cutoff = choose_cutoff(opts)
    if opts.evaluate and cutoff == "HEAD":
        console.print("[yellow]the history is too short to hold commits out: training on everything, no evaluation[/]")

    def on_phase(phase: str, fraction, detail: dict) -> None:
        if fraction == 0.0:
            console.rule(f"[bold][{PHASES.index(phase) + 1}/{len(PHASES)}] {phase}[/]  ({time.perf_counter() - started:.0f} s)")

    done = specialize(opts, cutoff, on_phase=on_phase)
    result, summary = done.result, done.to_dict()
    if done.report is not None:
        print_summary(done.report)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in result.phase_seconds.items())
    if result.gate.get("line"):
        print(f"held-out {result.gate['line']}")  # the headline with its interval and verdict
    facts = ((result.gate.get("families") or {}).get("facts") or {}).get("exact")
    if facts:  # the held-out facts' accuracy, answered by the chat adapter when there is one
        interval = (f"{100 * facts['lo']:+.1f} ... {100 * facts['hi']:+.1f} points" if facts["lo"] is not None
                    else "too few for an interval")  # under MIN_PAIRED_TASKS questions
        print(f"held-out facts accuracy {facts['reference']:.1%} -> {facts['candidate']:.1%} "
              f"({interval}, {facts['tasks']} question{'' if facts['tasks'] == 1 else 's'}): {facts['verdict']}"
              + (" (chat adapter)" if result.gate.get("chat") else ""))
    if result.published:
        print(f"published {result.version} for {opts.repo} (knows commit {result.commit[:10]}) in {done.seconds:.0f} s ({phases})")
        if cutoff != "HEAD":
            print("the commits after that one were held out for the evaluation; `swespot daemon` (or "
                  "`swespot specialize --no-eval`) teaches them to the adapter")
    else:
        print(f"not published: {result.reason} ({done.seconds:.0f} s; {phases})")
    if summary["report"]:
        print(f"report: {summary['report']}")
    print(f"adapters: swespot adapters list --repo {opts.repo}")
    return 0  # a refused candidate is an outcome, said above; failures raise
