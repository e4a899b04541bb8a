"""The learning curve: does experience of *this* repository teach the model its future, and how does the
gain grow with the training budget? (issue #15, item 3)

For each repository given on the command line, with a knowledge cutoff some hundreds of first-parent
commits back, and for each budget of a ladder (optimizer steps), LoRA adapters are trained on these data
and compared **at equal trained tokens**:

- ``rcl``: the four agentic units of the repository (design, implementation, evolution, runtime);
- ``task-centric``: the control, the same units built from the *other* benchmark repositories (with one
  repository only: Python standard-library modules packaged as a git repository by this script);
- ``text``: the repository as plain text (every token a target);
- ``mix``: the units and weights the profile (``--profile``) trains on.

Per repository and budget the reference condition (``--reference``, default rcl) trains ``N`` steps and
records its trained tokens ``T``; every other condition trains until it has trained ``T`` target tokens
(``TrainConfig.max_trained_tokens``). Every model of a repository is evaluated through llama.cpp on the
same held-out tasks (built once, from all commits after the cutoff), the base once per repository, and
each adapter is compared with the base, and rcl with the task-centric control, by the evaluation's paired
bootstrap over those tasks.

Everything lands in ``--work`` (experience, tasks, adapters, ``results.jsonl``): a run that is killed, or
stopped by ``--max-minutes``, continues where it stopped when the same command is run again. Every
piece names all the repositories (they make the task-centric control) with the same cutoffs, base,
profile and families; ``--repos``, ``--conditions``, ``--steps`` and ``--max-minutes`` may change from
one piece to the next. The plan and its estimated duration are printed first; ``--estimate`` stops there.
The intervals cover the choice of tasks, not the training run's own chance: ``--seed N`` in another work
dir (its experience and base results may be copied over) trains every condition again with another
LoRA initialisation and data order.

    .venv/bin/python -m benchmarks.specialize /tmp/click /tmp/requests@500 /tmp/attrs@v22.2.0 \\
        --work /tmp/bench-spec --steps 32,128,512 --json spec.json --plot spec.png [--repos click]
        [--conditions rcl,task-centric] [--max-minutes 120] [--estimate]

A repository is ``PATH`` (cutoff ``--holdout`` first-parent commits back), ``PATH@N`` (N commits back) or
``PATH@REV`` (a revision).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import git

from agent import gitsafe
from agent.errors import SwespotError
from agent.state import write_atomic
from benchmarks.table import print_rows
from trainer.config import config_for
from trainer.evaluation import EVAL_PROFILES, FAMILIES, Evaluator, ModelSpec, Task, make_tasks, paired_comparison, summarize
from trainer.experience.build import UNITS, BuildOptions, build_experience
from trainer.pipeline import GPU_TRAIN_PROFILE, _link_view, all_shards, profile_settings
from trainer.specialize import serving_base
from trainer.train import train

CONDITIONS = ("rcl", "task-centric", "text", "mix")
RCL_UNITS = ("design", "implementation", "evolution", "runtime")
TEXT_UNITS = ("text",)
STEP_CAP = 64  # a condition trained to a token budget stops at the latest after this many times N steps
CONTROL_MODULES = 80  # stdlib modules (100-400 lines each) in the single-repository control
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@e", "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@e",
           "PATH": "/usr/bin:/bin"}
# Seconds per unit of work before anything was measured in the work dir, as measured on click (embedded
# Gemma 3 270M, 2 shared CPU cores, quick profile): at 1,024 tokens per step 4.8 s/step on the agentic
# units and 11.6 s/step on text; at 2,048 (quick since c9fa86c) ~20 s/step on the profile's mix, on a
# loaded machine; ~15 s to load, export and verify per run, 0.87 s per evaluated task, 31 s for the
# experience at the quick targets. Replaced by the work dir's own runs as soon as there are some.
DEFAULT_COSTS = {"train_step": 12.0, "train_fixed": 15.0, "eval_task": 0.9, "experience": 60.0}


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- repositories and cutoffs -------------------------------------------------------------------
@dataclass
class Repo:
    name: str
    path: Path
    cutoff: str  # resolved commit
    cutoff_spec: str
    after: int  # first-parent commits after the cutoff

    @property
    def key(self) -> str:
        return self.name


def resolve_cutoff(path: Path, spec: str) -> tuple[str, int]:
    """``spec`` is a number of first-parent commits back from HEAD, or a revision."""
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{path} is not a git repository") from exc
    line = [c.hexsha for c in repo.iter_commits("HEAD", first_parent=True)]
    if spec.isdigit():
        back = int(spec)
        if back < 1 or back >= len(line):
            raise SwespotError(f"{path} has {len(line)} first-parent commits: a cutoff {back} back leaves nothing on one side")
        return line[back], back
    try:
        sha = repo.commit(spec).hexsha
    except Exception as exc:  # gitdb.BadName, ValueError: not a revision of this repository
        raise SwespotError(f"{spec!r} is not a revision of {path}") from exc
    if sha not in line:
        raise SwespotError(f"the cutoff {spec} is not on the first-parent line of {path}'s HEAD")
    return sha, line.index(sha)


def parse_repos(specs: list[str], holdout: int) -> list[Repo]:
    repos, names = [], set()
    for spec in specs:
        path_text, _, cut = spec.partition("@") if "@" in spec and not Path(spec).exists() else (spec, "", "")
        path = Path(path_text).expanduser().resolve()
        if not path.is_dir():
            raise SwespotError(f"repository not found: {path}")
        sha, after = resolve_cutoff(path, cut or str(holdout))
        name = path.name
        while name in names:
            name += "+"
        names.add(name)
        repos.append(Repo(name, path, sha, cut or str(holdout), after))
    return repos


def stdlib_repository(dest: Path, count: int = CONTROL_MODULES) -> Path:
    """A git repository of standard-library modules, one module added per commit: the task-centric
    control when only one repository is benchmarked."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked = []
    for path in sorted(stdlib.glob("*.py")):
        lines = path.read_text(errors="replace").count("\n")
        if 100 <= lines <= 400 and not path.name.startswith("_"):
            picked.append(path)
    dest.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True, env=gitsafe.safe_env(GIT_ENV))  # noqa: E731
    git("init", "-q", "-b", "main")
    (dest / "stdlib").mkdir()
    (dest / "stdlib" / "__init__.py").write_text('"""Modules of the Python standard library."""\n')
    git("add", ".")
    git("commit", "-qm", "Start the collection")
    for path in picked[:count]:
        shutil.copy(path, dest / "stdlib" / path.name)
        git("add", ".")
        git("commit", "-qm", f"Add the {path.stem} module")
    return dest


# ---- the work dir: settings, results, resumption ------------------------------------------------
class Work:
    """``<work>/settings.json`` (what the results were made with), ``results.jsonl`` (one record per
    finished piece: an experience build, a base evaluation, a trained and evaluated condition),
    ``<repo>/experience``, ``<repo>/tasks.json``, ``<repo>/runs/<steps>/<condition>/``."""

    def __init__(self, root: Path, settings: dict) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        saved = root / "settings.json"
        if saved.exists():
            old = json.loads(saved.read_text())
            differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if differ:
                raise SwespotError(f"{root} holds results made with other settings ({', '.join(differ)}): give another --work "
                                   "or the same settings")
        else:
            saved.write_text(json.dumps(settings, indent=2))
        self.records: dict[tuple, dict] = {}
        path = root / "results.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill mid-write: that piece is redone
                self.records[self.key(rec)] = rec

    @staticmethod
    def key(rec: dict) -> tuple:
        return (rec["kind"], rec.get("repo"), rec.get("steps"), rec.get("condition"))

    def get(self, kind: str, repo: str | None = None, steps: int | None = None, condition: str | None = None) -> dict | None:
        return self.records.get((kind, repo, steps, condition))

    def add(self, rec: dict) -> dict:
        with open(self.root / "results.jsonl", "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
            fh.flush()
        self.records[self.key(rec)] = rec
        return rec

    def repo_dir(self, repo: Repo) -> Path:
        return self.root / repo.key


# ---- experience ---------------------------------------------------------------------------------
def profile_units(profile: str) -> tuple[str, ...]:
    return tuple(profile_settings(profile)["experience"].get("units") or BuildOptions().units)


def condition_units(condition: str, profile: str, rcl_units: tuple[str, ...]) -> tuple[str, ...]:
    return {"rcl": rcl_units, "task-centric": rcl_units, "text": TEXT_UNITS, "mix": profile_units(profile)}[condition]


def build(path: Path, out: Path, cutoff: str, profile: str, units: tuple[str, ...], targets: dict | None = None):
    """The repository's experience up to the cutoff: the profile's settings (its per-unit episode
    targets updated by ``targets``), the units asked for."""
    missing = set(units) - set(UNITS)
    if missing:
        raise SwespotError(f"the experience builder has no unit(s) {sorted(missing)} (it has {', '.join(UNITS)})")
    settings = {**profile_settings(profile)["experience"], "units": tuple(units)}
    if targets:
        settings["targets"] = {**settings.get("targets", {}), **targets}
    return build_experience(path, out, BuildOptions(cutoff=cutoff, progress=True, **settings))


def link_view(view: Path, sources: list[tuple[Path, tuple[str, ...]]]) -> Path:
    """A training folder ``<view>/<unit>/<shard>.jsonl`` of symlinks to the shards of the given units
    of one or more experience folders."""
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for experience, units in sources:
        _link_view(view, [s for s in all_shards(experience) if s.parent.name in units], experience)
    return view


# ---- training -----------------------------------------------------------------------------------
def train_condition(data: Path, out: Path, args, steps: int, max_trained_tokens: int | None, condition: str) -> dict:
    settings = profile_settings(args.profile)
    overrides = dict(settings.get("train", {}))
    if args.gpu_recipe:  # the GPU recipe's own lengths, batch and learning rate; only the profile's mix stays
        overrides = {k: v for k, v in overrides.items() if k == "unit_weights"}
    overrides.pop("epochs", None)
    if condition != "mix":
        overrides.pop("unit_weights", None)  # the profile's sampling weights are part of its mix only
    if max_trained_tokens:
        overrides.update(steps=STEP_CAP * steps, max_trained_tokens=max_trained_tokens)
    else:
        overrides["steps"] = steps
    cfg = config_for(args.train_profile, **overrides, data=str(data), out=str(out), base=args.base, device=args.device, seed=args.seed)
    result = train(cfg, progress=args.progress)
    r = result.report
    return {"adapter": str(out / "adapter.gguf"), "trained_steps": r["steps"], "tokens": r["tokens"],
            "trained_tokens": r["trained_tokens"], "train_seconds": r["seconds"],
            "loss_first": r["loss_curve"][0][1] if r["loss_curve"] else None,
            "loss_last": r["loss_curve"][-1][1] if r["loss_curve"] else None,
            "sequences": r["data"].get("sequences"), "base_gguf": result.manifest.get("export", {}).get("base_gguf")}


# ---- evaluation ---------------------------------------------------------------------------------
def tasks_for(repo: Repo, work: Work, args) -> list:
    """The repository's held-out tasks, built once and kept in ``tasks.json`` (every model of the
    repository is evaluated on exactly these)."""
    path = work.repo_dir(repo) / "tasks.json"
    if path.exists():
        return [Task(**t) for t in json.loads(path.read_text())]
    tasks = make_tasks(repo.path, repo.cutoff, "HEAD", args.families, args.eval_profile)
    write_atomic(path, json.dumps([asdict(t) for t in tasks], default=str))
    return tasks


def eval_rows(repo: Repo, tasks: list, base_gguf: Path, name: str, adapter: Path | None, args) -> list[dict]:
    """One model (the base, or base + adapter) on the repository's tasks, through llama.cpp; the rows
    kept are what the comparisons need."""
    rows = Evaluator(base_gguf, [ModelSpec(name, adapter)], args.eval_profile, args.progress).run(tasks, repo.path)
    keep = ("task", "family", "loss", "tokens", "exact", "similarity", "seconds", "resolved", "layout", "ltr_loss")
    return [{k: r.get(k) for k in keep} for r in rows]


def family_scores(rows: list[dict]) -> dict:
    """Per family: tasks, token-weighted mean loss, accuracy/exact match and edit similarity (over the
    tasks that were generated), each with its own 95% interval (the evaluation's ``summarize``), and
    the target tokens the loss is averaged over."""
    fams = summarize([{**r, "model": "m"} for r in rows], [ModelSpec("m", None)])["m"]["families"]
    for fam, entry in fams.items():
        entry["tokens"] = sum(r["tokens"] or 0 for r in rows if r["family"] == fam)
    return fams


def paired(candidate: list[dict], reference: list[dict]) -> dict:
    """Candidate against reference over the tasks both answered (the evaluation's paired bootstrap):
    ``headline`` the token-weighted line+body loss, ``families`` every metric, each with its 95%
    interval (absolute and relative) and verdict."""
    rows = [{**r, "model": "candidate"} for r in candidate] + [{**r, "model": "reference"} for r in reference]
    return paired_comparison(rows, "candidate", "reference")


# ---- costs and the plan -------------------------------------------------------------------------
def measured_costs(work: Work) -> dict:
    """Seconds per training step, per run (load, export, verify) and per evaluated task, from the
    work dir's finished runs where there are some, else the defaults."""
    costs = dict(DEFAULT_COSTS)
    runs = [r for r in work.records.values() if r["kind"] == "run"]
    if runs:
        steps = sum(r["trained_steps"] for r in runs)
        costs["train_step"] = sum(r["train_seconds"] for r in runs) / max(steps, 1)
        costs["train_fixed"] = sum(r["minutes"]["train"] * 60 - r["train_seconds"] for r in runs) / len(runs)
    evals = [r for r in work.records.values() if r["kind"] in ("run", "base") and r.get("rows")]
    if evals:
        costs["eval_task"] = sum(r["minutes"]["eval"] * 60 for r in evals) / max(sum(len(r["rows"]) for r in evals), 1)
    builds = [r for r in work.records.values() if r["kind"] == "experience"]
    if builds:
        costs["experience"] = sum(r["minutes"]["experience"] * 60 for r in builds) / len(builds)
    return costs


def plan(repos: list[Repo], run_repos: list[Repo], pools: list[Repo], work: Work, args) -> list[tuple]:
    """The pieces still to do, in order: experience builds (every repository whose experience a run
    needs), then per budget, per repository: the base evaluation, the reference condition, the rest."""
    todo: list[tuple] = []
    for repo in pools:
        built = work.get("experience", repo.key)
        if built is None or not set(experience_units(args)) <= set(built["units"]):
            todo.append(("experience", repo, None, None))
    for steps in args.steps:
        for repo in run_repos:
            if work.get("base", repo.key) is None and ("base", repo, None, None) not in todo:
                todo.append(("base", repo, None, None))
            order = [args.reference] + [c for c in args.conditions if c != args.reference]
            for condition in order:
                if work.get("run", repo.key, steps, condition) is None:
                    todo.append(("run", repo, steps, condition))
    return todo


def estimate(piece: tuple, costs: dict, ntasks: int) -> float:
    kind, _repo, steps, _cond = piece
    if kind == "experience":
        return costs["experience"]
    if kind == "base":
        return ntasks * costs["eval_task"]
    return costs["train_fixed"] + steps * costs["train_step"] + ntasks * costs["eval_task"]


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


# ---- one piece of work --------------------------------------------------------------------------
def experience_units(args) -> tuple[str, ...]:
    """Every unit some condition trains on: a repository's experience is built once, for all of them."""
    return tuple(dict.fromkeys(u for c in CONDITIONS for u in condition_units(c, args.profile, args.units)))


def do_experience(repo: Repo, work: Work, args) -> dict:
    units = experience_units(args)
    started = time.perf_counter()
    result = build(repo.path, work.repo_dir(repo) / "experience", repo.cutoff, args.profile, units, args.targets)
    return work.add({"kind": "experience", "repo": repo.key, "cutoff": repo.cutoff, "units": list(units),
                     "episodes": {u: s.get("episodes_on_disk", 0) for u, s in result.stats.items()},
                     "minutes": {"experience": round((time.perf_counter() - started) / 60, 3)}})


def do_base(repo: Repo, work: Work, args, base_gguf: Path) -> dict:
    started = time.perf_counter()
    tasks = tasks_for(repo, work, args)
    rows = eval_rows(repo, tasks, base_gguf, "base", None, args) if tasks else []
    return work.add({"kind": "base", "repo": repo.key, "cutoff": repo.cutoff, "base_gguf": str(base_gguf),
                     "tasks": {f: sum(t.family == f for t in tasks) for f in args.families}, "families": family_scores(rows),
                     "rows": rows, "minutes": {"eval": round((time.perf_counter() - started) / 60, 3)}})


def do_run(repo: Repo, steps: int, condition: str, pools: list[Repo], work: Work, args, base_gguf: Path) -> dict:
    rdir = work.repo_dir(repo) / "runs" / str(steps) / condition
    units = condition_units(condition, args.profile, args.units)
    if condition == "task-centric":
        others = [p for p in pools if p.key != repo.key]
        sources = [(work.repo_dir(p) / "experience", units) for p in others]
    else:
        sources = [(work.repo_dir(repo) / "experience", units)]
    view = link_view(rdir / "data", sources)
    budget = None
    if condition != args.reference:
        ref = work.get("run", repo.key, steps, args.reference)
        if ref is None:
            raise SwespotError(f"{repo.key} at {steps} steps: the reference condition {args.reference} has no result yet")
        budget = ref["trained_tokens"]
    started = time.perf_counter()
    trained = train_condition(view, rdir / "adapter", args, steps, budget, condition)
    train_minutes = (time.perf_counter() - started) / 60
    if trained["base_gguf"] and Path(trained["base_gguf"]).resolve() != base_gguf.resolve():
        raise SwespotError(f"the adapter was exported against {trained['base_gguf']}, the evaluation serves {base_gguf}")
    started = time.perf_counter()
    tasks = tasks_for(repo, work, args)
    rows = eval_rows(repo, tasks, base_gguf, condition, Path(trained["adapter"]), args)
    eval_minutes = (time.perf_counter() - started) / 60
    shutil.rmtree(rdir / "data", ignore_errors=True)
    return work.add({"kind": "run", "repo": repo.key, "steps": steps, "condition": condition, "budget_tokens": budget,
                     "sources": [p.key for p in pools if p.key != repo.key] if condition == "task-centric" else [repo.key],
                     "units": list(units), **{k: v for k, v in trained.items() if k != "base_gguf"},
                     "families": family_scores(rows), "rows": rows,
                     "minutes": {"train": round(train_minutes, 3), "eval": round(eval_minutes, 3)}})


# ---- summary: table, JSON, plot -----------------------------------------------------------------
def summary(repos: list[Repo], work: Work, args) -> dict:
    out = {"settings": json.loads((work.root / "settings.json").read_text()), "repos": {}}
    for repo in repos:
        base = work.get("base", repo.key)
        exp = work.get("experience", repo.key)
        entry: dict[str, Any] = {"path": str(repo.path), "cutoff": repo.cutoff, "commits_after_cutoff": repo.after,
                 "experience": exp and {"episodes": exp["episodes"], "minutes": exp["minutes"]["experience"]},
                 "base": base and {"families": base["families"], "tasks": base["tasks"], "minutes": base["minutes"]["eval"]},
                 "runs": []}
        for steps in sorted({r["steps"] for r in work.records.values() if r["kind"] == "run" and r["repo"] == repo.key}):
            for condition in CONDITIONS:
                run = work.get("run", repo.key, steps, condition)
                if run is None:
                    continue
                row = {k: run[k] for k in ("steps", "condition", "budget_tokens", "trained_steps", "trained_tokens", "tokens", "units", "sources",
                                           "loss_first", "loss_last", "sequences", "families", "minutes")}
                if base:
                    row["vs_base"] = paired(run["rows"], base["rows"])
                control = work.get("run", repo.key, steps, "task-centric")
                if condition == "rcl" and control is not None:
                    row["vs_task_centric"] = paired(run["rows"], control["rows"])
                entry["runs"].append(row)
        out["repos"][repo.key] = entry
    return out


def pct(comparison: dict | None) -> str:
    """The headline (line+body loss) change relative to the reference, with its 95% interval."""
    iv = (comparison or {}).get("headline")
    if not iv or iv.get("rel") is None:
        return "–"
    if iv.get("rel_lo") is None:
        return f"{100 * iv['rel']:+.1f}% (too few tasks)"
    return f"{100 * iv['rel']:+.1f}% [{100 * iv['rel_lo']:+.1f}, {100 * iv['rel_hi']:+.1f}]"


def family_columns(families: dict) -> dict:
    """Loss of every family; accuracy of the question families (design, facts)."""
    out = {f"{f} loss": s.get("loss") for f, s in families.items()}
    out.update({f"{f} acc": s.get("exact") for f, s in families.items() if f in ("design", "facts")})
    return out


def print_table(result: dict) -> None:
    rows = []
    for name, entry in result["repos"].items():
        if entry["base"]:
            fams = entry["base"]["families"]
            rows.append({"repo": name, "steps": 0, "condition": "base", "trained tok": 0, **family_columns(fams),
                         "eval min": entry["base"]["minutes"],
                         "experience min": entry["experience"]["minutes"] if entry["experience"] else ""})
        for run in entry["runs"]:
            vs_base, vs_tc = run.get("vs_base"), run.get("vs_task_centric")
            rows.append({"repo": name, "steps": run["steps"], "condition": run["condition"], "trained tok": run["trained_tokens"],
                         **family_columns(run["families"]), "line+body vs base": pct(vs_base),
                         "verdict": vs_base["verdict"] if vs_base else "–", "rcl vs task-centric": pct(vs_tc) if vs_tc else "",
                         "train min": run["minutes"]["train"], "eval min": run["minutes"]["eval"]})
    if rows:
        print_rows("Held-out loss per family (nats/token); line+body relative to the base, paired 95% interval", rows)


def plot(result: dict, out: Path, x_axis: str = "tokens") -> None:
    """One panel per repository: held-out line+body loss relative to the base against trained tokens
    (or training minutes), one line per condition, the paired 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["repos"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        runs = result["repos"][name]["runs"]
        for condition in CONDITIONS:
            pts = sorted((r["trained_tokens"] if x_axis == "tokens" else r["minutes"]["train"], r["vs_base"]["headline"])
                         for r in runs if r["condition"] == condition
                         and ((r.get("vs_base") or {}).get("headline") or {}).get("rel") is not None)
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [100 * p[1]["rel"] for p in pts]
            err = [[100 * (p[1]["rel"] - p[1]["rel_lo"]) if p[1]["rel_lo"] is not None else 0 for p in pts],
                   [100 * (p[1]["rel_hi"] - p[1]["rel"]) if p[1]["rel_hi"] is not None else 0 for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=condition)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("trained tokens" if x_axis == "tokens" else "training minutes")
        ax.set_ylabel("line+body loss vs base (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repos_spec", nargs="+", metavar="REPO", help="PATH, PATH@N (cutoff N first-parent commits back) or PATH@REV")
    ap.add_argument("--work", type=Path, required=True, help="work dir: experience, tasks, adapters, results.jsonl (resumable)")
    ap.add_argument("--holdout", type=int, default=300, help="default cutoff: this many first-parent commits back")
    ap.add_argument("--steps", default="32,128,512", help="the ladder of budgets, in optimizer steps of the reference condition")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help=f"conditions to run now ({', '.join(CONDITIONS)})")
    ap.add_argument("--reference", default="rcl", choices=CONDITIONS, help="the condition whose trained tokens the others match")
    ap.add_argument("--repos", help="names (folder names) of the repositories to run now; the others still feed task-centric")
    ap.add_argument("--units", default=",".join(RCL_UNITS), help="the agentic units of rcl and task-centric")
    ap.add_argument("--targets", default="", help="episodes per unit instead of the profile's targets, e.g. text=1024,design=256 "
                    "(a condition whose unit runs out of episodes repeats them to reach the token budget)")
    ap.add_argument("--base", default="default", help="'default' (embedded Gemma 3 270M) or a local HF folder")
    ap.add_argument("--profile", default="quick", help="pipeline profile: experience settings, training settings, the mix")
    ap.add_argument("--seed", type=int, default=0, help="training seed (LoRA init and data order): a second seed in its own --work "
                    "shows how much of a difference is the training run's own chance, which the intervals over tasks do not cover")
    ap.add_argument("--gpu-recipe", action="store_true", help="train with the GPU recipe (needs CUDA)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--eval-profile", default=None, help="evaluation sizes (default: the profile's, quick or full)")
    ap.add_argument("--families", default=",".join(f for f in ("line", "body", "design", "facts") if f in FAMILIES),
                    help="held-out task families")
    ap.add_argument("--max-minutes", type=float, help="start no piece (after the first) that would end after this many minutes; run again to continue")
    ap.add_argument("--estimate", action="store_true", help="print the plan and its estimated duration, then stop")
    ap.add_argument("--json", type=Path, help="write the summary as JSON")
    ap.add_argument("--plot", type=Path, help="write the learning curves as a PNG")
    ap.add_argument("--plot-x", choices=["tokens", "minutes"], default="tokens", help="the plot's x axis: trained tokens or training minutes")
    ap.add_argument("--quiet", action="store_true", help="no progress bars (the piece lines stay)")
    args = ap.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    args.units = tuple(u.strip() for u in args.units.split(",") if u.strip())
    args.families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    try:
        args.targets = {u.strip(): int(n) for u, _, n in (t.partition("=") for t in args.targets.split(",") if t.strip())}
    except ValueError as exc:
        raise SwespotError(f"--targets takes unit=count pairs, e.g. text=1024,design=256 ({exc})") from exc
    bad = set(args.conditions) - set(CONDITIONS)
    if bad:
        raise SwespotError(f"unknown condition(s) {sorted(bad)} (choose from {', '.join(CONDITIONS)})")
    if not args.steps or min(args.steps) < 1:
        raise SwespotError("--steps takes positive step counts, e.g. 32,128,512")
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        raise SwespotError(f"unknown task families {sorted(unknown)} (choose from {', '.join(FAMILIES)})")
    args.progress = not args.quiet
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = profile_settings(args.profile)
    args.train_profile = settings["train_profile"]
    if args.gpu_recipe:
        from trainer.model_io import pick_device

        if pick_device(args.device) != "cuda":
            raise SwespotError("--gpu-recipe needs a CUDA device")
        args.train_profile = GPU_TRAIN_PROFILE
    args.eval_profile = args.eval_profile or ("full" if args.profile == "full" else args.profile)
    repos = parse_repos(args.repos_spec, args.holdout)
    run_repos = repos
    if args.repos:
        wanted = [n.strip() for n in args.repos.split(",") if n.strip()]
        unknown = set(wanted) - {r.name for r in repos}
        if unknown:
            raise SwespotError(f"--repos names {sorted(unknown)} not among {', '.join(r.name for r in repos)}")
        run_repos = [r for r in repos if r.name in wanted]
    base_gguf = serving_base(args.base)
    work = Work(args.work.resolve(), {
        "repos": {r.name: {"path": str(r.path), "cutoff": r.cutoff} for r in repos}, "base": args.base,
        "base_gguf": str(base_gguf), "profile": args.profile,
        "train_profile": args.train_profile, "eval_profile": args.eval_profile, "families": list(args.families),
        "units": list(args.units), "targets": args.targets, "reference": args.reference,
        # what the profile meant when the results were made: a later change of the profile is other settings
        "profile_settings": json.loads(json.dumps(settings, default=str)),
        **({"seed": args.seed} if args.seed else {})})  # seed 0 (the default) is left out: older work dirs stay valid
    pools = list(repos)
    if "task-centric" in args.conditions and len(repos) == 1:
        control = work.root / "control-repo"
        if not control.exists():
            stdlib_repository(control)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=control, check=True, capture_output=True, text=True).stdout.strip()
        pools.append(Repo("stdlib-control", control, head, "HEAD", 0))
    needs_pool = "task-centric" in args.conditions
    build_for = pools if needs_pool else run_repos

    todo = plan(repos, run_repos, build_for, work, args)
    costs = measured_costs(work)
    ntasks = {r.key: sum((work.get("base", r.key) or {}).get("tasks", {}).values()) or _default_tasks(args) for r in pools}
    seconds = [estimate(p, costs, ntasks[p[1].key]) for p in todo]
    say(f"{len(todo)} piece(s) to do ({sum(p[0] == 'run' for p in todo)} trainings), estimated {fmt_minutes(sum(seconds))} "
        f"(per step {costs['train_step']:.1f} s, per evaluated task {costs['eval_task']:.2f} s, per experience build "
        f"{fmt_minutes(costs['experience'])}){'' if work.records else ' from defaults: nothing measured yet'}")
    for repo in repos:
        say(f"  {repo.name}: cutoff {repo.cutoff[:10]} ({repo.after} first-parent commits back)")
    if args.estimate:
        for piece, secs in zip(todo, seconds):
            kind, repo, steps, condition = piece
            say(f"  {kind:<10} {repo.name:<16} {steps or '':>5} {condition or '':<13} ~{fmt_minutes(secs)}")
        return 0

    started = time.perf_counter()
    for i, (piece, secs) in enumerate(zip(todo, seconds)):
        kind, repo, steps, condition = piece
        elapsed = time.perf_counter() - started
        # the estimates, scaled by how long the pieces done so far took against their estimates
        ratio = elapsed / sum(seconds[:i]) if i and sum(seconds[:i]) > 0 else 1.0
        left = sum(seconds[i:]) * ratio
        if args.max_minutes is not None and i and elapsed + secs * ratio > args.max_minutes * 60:  # one piece at least
            say(f"stopping before {kind} {repo.name} {steps or ''} {condition or ''}: it would end after --max-minutes "
                f"{args.max_minutes:g} ({len(todo) - i} piece(s) left); run the same command again to continue")
            break
        say(f"[{i + 1}/{len(todo)}] {kind} {repo.name} {steps or ''} {condition or ''} (elapsed {fmt_minutes(elapsed)}, "
            f"ETA {fmt_minutes(left)})")
        if kind == "experience":
            do_experience(repo, work, args)
        elif kind == "base":
            do_base(repo, work, args, base_gguf)
        else:
            do_run(repo, steps, condition, pools, work, args, base_gguf)

    result = summary(run_repos, work, args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.plot:
        plot(result, args.plot, args.plot_x)
    return 0


def _default_tasks(args) -> int:
    sizes = EVAL_PROFILES[args.eval_profile]
    return sum(sizes.get(f, 0) for f in args.families)


def run_cli(main) -> None:
    """Run a benchmark's ``main`` as a command: bad input is one line on stderr and exit status 2."""
    try:
        sys.exit(main())
    except SwespotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_cli(main)
