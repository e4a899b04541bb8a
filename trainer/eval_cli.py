"""``swespot eval`` (held-out evaluation on one repository) and ``swespot specialize`` (the main job:
experience → train → export → evaluate base vs adapter → publish). Import-light top level."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Without --holdout, specialize holds out the newest first-parent commits that give the evaluation
# profile's number of line tasks (an interval worth reading), at most this many (and at most half the history)
MAX_HOLDOUT = {"tiny": 6, "quick": 80, "full": 300}


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
                   "store (v0003, current); repeatable")
    p.add_argument("--no-base", action="store_true", help="do not evaluate the base model itself")
    p.add_argument("--tasks", default="line,body,infill,design,facts,replay", help="task families, comma-separated")
    p.add_argument("--profile", default="quick", choices=["tiny", "quick", "full"], help="how many tasks and how long")
    p.add_argument("--out", type=Path, help="report folder (default: <state>/reports/<time>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "specialize", help="the main job: make the model an expert on a repository (experience, LoRA, eval, publish)",
        description="Build the repository's experience up to a knowledge cutoff, train a LoRA adapter, export "
        "it to GGUF, evaluate base vs adapter on the commits after the cutoff, and publish the adapter to the "
        "repository's adapter store if it is not worse. Prints where the report is.")
    s.add_argument("path", nargs="?", type=Path, default=Path("."), help="the repository (default: .)")
    s.add_argument("--model", default="default", help="'default' (embedded Gemma 3 270M), a local HF folder, or a .gguf")
    s.add_argument("--profile", default="quick", choices=["quick", "full", "tiny"],
                   help="quick: minutes on a CPU; full: every unit, epochs (a GPU helps); tiny: tests")
    s.add_argument("--cutoff", help="knowledge cutoff (default: hold out the newest --holdout commits)")
    s.add_argument("--holdout", type=int, help="first-parent commits held out for evaluation (default: the newest ones "
                   "that give the profile's number of line tasks, at most "
                   f"{MAX_HOLDOUT['quick']} quick, {MAX_HOLDOUT['full']} full, and at most half the history)")
    s.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    s.add_argument("--no-eval", action="store_true", help="train up to HEAD and publish without evaluating")
    s.add_argument("--force", action="store_true", help="publish even if the adapter evaluates worse than the base")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_specialize)


# ---- shared helpers -------------------------------------------------------------------------------
def serving_base(base: str) -> Path:
    """The GGUF llama.cpp serves for ``base`` (torch-free for 'default' and .gguf files)."""
    from agent.errors import SwespotError

    if base in ("", "default"):
        from agent.default_model import ensure_default_gguf

        return ensure_default_gguf()
    path = Path(base).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path.resolve()
    if path.is_dir():
        from trainer.export_check import serving_gguf
        from trainer.model_io import resolve_base

        resolved = resolve_base(str(path))
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return serving_gguf(resolved, size // 4)
    raise SwespotError(f"base model not found: {path} ('default', a .gguf file or an HF folder)")


def resolve_adapters(values: list[str], repo: Path):
    from agent.errors import SwespotError
    from trainer.evaluation import ModelSpec
    from trainer.store import AdapterStore

    specs = []
    store = None
    for value in values:
        name, _, ref = value.rpartition("=") if "=" in value else ("", "", value)
        path = Path(ref).expanduser()
        if path.is_dir() and (path / "adapter.gguf").is_file():
            path = path / "adapter.gguf"
        elif not path.exists():
            store = store or AdapterStore.for_repo(repo)
            version = store.current() if ref == "current" else store.get(ref)
            if version is None:
                raise SwespotError(f"no adapter is published for {repo} yet")
            name, path = name or version.name, version.gguf
        if not path.is_file():
            raise SwespotError(f"adapter not found: {ref}")
        specs.append(ModelSpec(name or (path.parent.name if path.name == "adapter.gguf" else path.stem), path.resolve()))
    return specs


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
    table.add_row("seconds", *(f"{report['models'][m]['seconds']:.0f}" for m in models))
    console.print(table)
    for name, comparison in (report.get("comparisons") or {}).items():
        console.print(f"[bold]{name} vs {comparison['reference']}[/] (paired, bootstrap 95% intervals over tasks):", highlight=False)
        for fam, entry in comparison["families"].items():
            for stats in entry["metrics"].values():
                console.print(f"  {stats['line']}", highlight=False, markup=False, soft_wrap=True)
        console.print(f"  [bold]{comparison['line']}[/]", highlight=False, soft_wrap=True)
    for name, layout in (report.get("layouts") or {}).items():  # an adapter that declares FIM: the layout's own effect
        console.print(f"{name}: {layout['line']}", highlight=False, markup=False, soft_wrap=True)


# ---- swespot eval -----------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from agent.errors import SwespotError
    from trainer.evaluation import ModelSpec, evaluate
    from trainer.store import state_dir

    repo = args.repo.resolve()
    models = ([] if args.no_base else [ModelSpec("base", None)]) + resolve_adapters(args.adapter, repo)
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
def auto_cutoff(repo_path: Path, holdout: int | None, profile: str = "quick") -> str | None:
    """The knowledge cutoff: the commit ``holdout`` first-parent steps behind HEAD; without ``holdout``,
    the newest first-parent commit after which the history holds the evaluation profile's number of
    line tasks, at most ``MAX_HOLDOUT[profile]`` steps back. Never more than half the history (a
    repository needs history before the cutoff as well as after it); None when nothing can be held out."""
    import git

    from agent.errors import SwespotError
    from trainer.evaluation import EVAL_PROFILES, line_tasks, post_cutoff_changes

    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    if not repo.head.is_valid():
        raise SwespotError(f"{repo_path} has no commits yet: commit some code first")
    most = holdout if holdout is not None else MAX_HOLDOUT[profile]
    line = [c.hexsha for c in repo.iter_commits("HEAD", first_parent=True, max_count=most + 2)]
    if len(line) < most + 2:
        most = len(line) // 2  # keep at least as much history before the cutoff as after it
    if most < 1:
        return None
    if holdout is not None:
        return line[most]
    wanted, found = EVAL_PROFILES[profile]["line"], 0
    for k in range(1, most + 1):
        found += len(line_tasks(post_cutoff_changes(repo, line[k], line[k - 1]), 10**9))
        if found >= wanted:
            return line[k]
    return line[most]


def cmd_specialize(args) -> int:
    from rich.console import Console

    from agent.errors import SwespotError
    from trainer.evaluation import ModelSpec, compare, evaluate
    from trainer.pipeline import PHASES, RefreshOptions, refresh
    from trainer.store import state_dir

    console = Console(stderr=True)
    repo = args.path.expanduser().resolve()
    started = time.perf_counter()
    eval_profile = "full" if args.profile == "full" else args.profile
    cutoff = "HEAD"
    if not args.no_eval:
        cutoff = args.cutoff or auto_cutoff(repo, args.holdout, eval_profile) or "HEAD"
        if cutoff == "HEAD":
            console.print("[yellow]the history is too short to hold commits out: training on everything, no evaluation[/]")
    report_dir = state_dir(repo) / "reports" / time.strftime("%Y%m%d-%H%M%S")
    evaluation: dict = {}

    def gate(gi) -> dict:
        if cutoff == "HEAD":
            return {"ok": True, "why": "not evaluated (no held-out history)"}
        manifest = json.loads((gi.candidate / "manifest.json").read_text())
        base_gguf = Path(manifest["export"]["base_gguf"])
        report = evaluate(repo, cutoff, base_gguf, [ModelSpec("base", None), ModelSpec("adapter", gi.candidate / "adapter.gguf")],
                          profile=eval_profile, out=report_dir)
        evaluation["report"] = report
        verdict = compare(report, "adapter", "base")
        # the manifest records the verdict with its interval (the gate's full result goes there too)
        verdict["eval"] = {"cutoff": report["cutoff"][:12], "tasks": report["tasks"], "verdict": verdict["verdict"],
                           "headline": verdict.get("line"), "interval": verdict.get("interval"),
                           "families": {f: e["verdict"] for f, e in verdict.get("families", {}).items()},
                           "loss": verdict.get("losses"), "seconds": report["seconds"]}
        verdict["report"] = str(report_dir / "report.html")
        verdict["scores"] = {m: {f: {k: v for k, v in s.items() if k in ("loss", "exact", "similarity", "resolved")}
                                 for f, s in entry["families"].items()} for m, entry in report["models"].items()}
        if not verdict["ok"] and args.force:
            verdict.update(ok=True, why=verdict["why"] + "; published anyway (--force)")
        return verdict

    step = {"n": 0}

    def on_phase(phase: str, fraction, detail: dict) -> None:
        if fraction == 0.0:
            step["n"] = PHASES.index(phase) + 1
            console.rule(f"[bold][{step['n']}/{len(PHASES)}] {phase}[/]  ({time.perf_counter() - started:.0f} s)")

    opts = RefreshOptions(repo=repo, base=args.model, profile=args.profile, cutoff=cutoff, continue_training=False,
                          gate=gate if not args.no_eval else "none", steps=args.steps, device=args.device,
                          extra_manifest={"specialize": {"cutoff": cutoff, "profile": args.profile}})
    # the daemon and specialize must never train into one state dir at once: share its lock
    from trainer.daemon import DaemonLock

    lock = DaemonLock(state_dir(repo))
    lock.acquire(repo, who="swespot specialize")
    try:
        result = refresh(opts, on_phase=on_phase)
    finally:
        lock.release()
    total = time.perf_counter() - started
    if "report" in evaluation:
        print_summary(evaluation["report"])
    summary = {**result.to_dict(), "seconds": round(total, 1),
               "report": str(report_dir / "report.html") if "report" in evaluation else None}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in result.phase_seconds.items())
        if result.gate.get("line"):
            print(f"held-out {result.gate['line']}")  # the headline with its interval and verdict
        if result.published:
            print(f"published {result.version} for {repo} (knows commit {result.commit[:10]}) in {total:.0f} s ({phases})")
            if cutoff != "HEAD":
                print("the commits after that one were held out for the evaluation; `swespot daemon` (or "
                      "`swespot specialize --no-eval`) teaches them to the adapter")
        else:
            print(f"not published: {result.reason} ({total:.0f} s; {phases})")
        if summary["report"]:
            print(f"report: {summary['report']}")
        print(f"adapters: swespot adapters list --repo {repo}")
    return 0  # a refused candidate is an outcome, said above; failures raise
