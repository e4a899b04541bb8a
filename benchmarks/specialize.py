"""Repository-centric vs task-centric: does experience of *this* repository beat the same amount of
experience from other code, on this repository's held-out history?

On the target repository (default: this project) with a knowledge cutoff ``--holdout`` commits back:

- **base**: the embedded Gemma 3 270M, no adapter;
- **rcl**: LoRA trained as ``swespot specialize --profile quick`` does, on the target's experience up to
  the cutoff;
- **task-centric control**: the same recipe, the same number of steps and tokens per step, on the
  experience of another repository: Python standard-library modules that this script packages as a git
  repository (one module per commit, so every unit has episodes).

All three are evaluated through llama.cpp on the same held-out tasks (line and body completion, design
questions; the agent replay family is left out: at 270M it resolves nothing either way and costs minutes).

    .venv/bin/python benchmarks/specialize.py [--repo .] [--holdout 8] [--steps 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTROL_MODULES = 80  # stdlib modules (100-400 lines each) in the control repository
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@e", "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@e",
           "PATH": "/usr/bin:/bin"}


def stdlib_repository(dest: Path, count: int = CONTROL_MODULES) -> Path:
    """A git repository of standard-library modules, one module added per commit."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked = []
    for path in sorted(stdlib.glob("*.py")):
        lines = path.read_text(errors="replace").count("\n")
        if 100 <= lines <= 400 and not path.name.startswith("_"):
            picked.append(path)
    picked = picked[:count]
    dest.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True, env=GIT_ENV)  # noqa: E731
    git("init", "-q", "-b", "main")
    (dest / "stdlib").mkdir()
    (dest / "stdlib" / "__init__.py").write_text('"""Modules of the Python standard library."""\n')
    git("add", ".")
    git("commit", "-qm", "Start the collection")
    for path in picked:
        shutil.copy(path, dest / "stdlib" / path.name)
        git("add", ".")
        git("commit", "-qm", f"Add the {path.stem} module")
    return dest


def train_on(experience: Path, out: Path, steps: int) -> dict:
    from trainer.config import config_for
    from trainer.pipeline import PROFILES
    from trainer.train import train

    quick = PROFILES["quick"]
    cfg = config_for(quick["train_profile"], **quick["train"], steps=steps, data=str(experience), out=str(out))
    result = train(cfg)
    r = result.report
    return {"adapter": str(out / "adapter.gguf"), "steps": r["steps"], "tokens": r["tokens"],
            "trained_tokens": r["trained_tokens"], "seconds": r["seconds"], "loss_first": r["loss_curve"][0][1],
            "loss_last": r["loss_curve"][-1][1], "base_gguf": result.manifest["export"]["base_gguf"]}


def main() -> int:
    from trainer.eval_cli import auto_cutoff
    from trainer.evaluation import ModelSpec, evaluate
    from trainer.pipeline import build_repo_experience

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--holdout", type=int, default=8, help="newest commits held out")
    ap.add_argument("--steps", type=int, default=32, help="training steps for both adapters (quick's default)")
    ap.add_argument("--work", type=Path, help="keep intermediate files here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="swespot-bench-specialize-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = args.repo.resolve()
    cutoff = auto_cutoff(repo, args.holdout)
    if cutoff is None:
        raise SystemExit(f"{repo} has too little history for a cutoff {args.holdout} commits back")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    rcl_exp = build_repo_experience(repo, work / "rcl-experience", cutoff, "quick", progress=True)
    control_repo = work / "control-repo"
    if not control_repo.exists():
        stdlib_repository(control_repo)
    control_exp = build_repo_experience(control_repo, work / "control-experience", "HEAD", "quick", progress=True)
    timings["experience"] = time.perf_counter() - t

    runs = {}
    for name, exp in (("rcl", work / "rcl-experience"), ("control", work / "control-experience")):
        t = time.perf_counter()
        runs[name] = train_on(exp, work / f"{name}-adapter", args.steps)
        timings[f"train {name}"] = time.perf_counter() - t

    t = time.perf_counter()
    models = [ModelSpec("base", None), ModelSpec("rcl", Path(runs["rcl"]["adapter"])),
              ModelSpec("task-centric", Path(runs["control"]["adapter"]))]
    report = evaluate(repo, cutoff, Path(runs["rcl"]["base_gguf"]), models, families=("line", "body", "design"),
                      profile="quick", out=work / "report")
    timings["eval"] = time.perf_counter() - t

    result = {"repo": str(repo), "cutoff": cutoff, "holdout_commits": args.holdout, "tasks": report["tasks"],
              "experience": {"rcl": {u: s["episodes_on_disk"] for u, s in rcl_exp.stats.items()},
                             "control": {u: s["episodes_on_disk"] for u, s in control_exp.stats.items()}},
              "training": runs, "models": report["models"], "seconds": {k: round(v, 1) for k, v in timings.items()},
              "report": str(work / "report" / "report.html")}
    print(f"\nheld-out tasks after {cutoff[:10]} ({', '.join(f'{n} {f}' for f, n in report['tasks'].items())}); "
          f"both adapters: {args.steps} steps")
    header = f"{'model':<14}{'line loss':>10}{'body loss':>10}{'QA loss':>9}{'line EM':>9}{'line sim':>9}{'body sim':>9}{'QA acc':>8}{'trained tok':>12}"
    print(header)
    print("-" * len(header))
    for name in ("base", "rcl", "task-centric"):
        f = report["models"][name]["families"]
        g = lambda fam, key: f.get(fam, {}).get(key)  # noqa: E731
        fmt = lambda v, w: f"{v:>{w}.3f}" if v is not None else f"{'–':>{w}}"  # noqa: E731
        run = runs.get({"rcl": "rcl", "task-centric": "control"}.get(name, ""), {})
        print(f"{name:<14}{fmt(g('line', 'loss'), 10)}{fmt(g('body', 'loss'), 10)}{fmt(g('design', 'loss'), 9)}"
              f"{fmt(g('line', 'exact'), 9)}{fmt(g('line', 'similarity'), 9)}{fmt(g('body', 'similarity'), 9)}"
              f"{fmt(g('design', 'exact'), 8)}{run.get('trained_tokens', 0):>12}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))
    print(f"report: {result['report']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
