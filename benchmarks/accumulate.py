"""Does the daemon's continued training accumulate? (issue #15, item 4)

Replays a stretch of a real repository's history as the trainer daemon lives it: ``--refreshes``
successive refreshes at commits c1 … cN (``--stride`` first-parent commits apart, cN ``--last`` commits
back from HEAD), each one ``trainer.pipeline.refresh`` with ``continue_training=True``: the experience
is rebuilt incrementally at the new commit and training continues from the previous adapter on the new
shards with the earlier ones replayed. After every refresh the published adapter is evaluated through
llama.cpp on one fixed set of held-out tasks, all from commits after cN, next to the base; each refresh
is compared with the base and with the refresh before it (paired bootstrap over the same tasks).

Resumable: the store, the experience and ``results.jsonl`` live in ``--work``; a killed run continues
with the refresh it was in (training resumes from its checkpoint), and a finished refresh whose
evaluation was lost is evaluated, not trained again.

    .venv/bin/python -m benchmarks.accumulate /tmp/click --work /tmp/bench-acc [--last 100] [--stride 20]
        [--refreshes 5] [--profile quick] [--steps N] [--gate none|loss] [--json acc.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import git

from agent.errors import SwespotError
from benchmarks.specialize import Repo, Work, eval_rows, family_columns, family_scores, fmt_minutes, paired, pct, run_cli, say, tasks_for
from benchmarks.table import print_rows
from trainer.evaluation import FAMILIES
from trainer.pipeline import RefreshOptions, profile_settings, refresh
from trainer.specialize import serving_base
from trainer.store import AdapterStore


def commits_to_replay(path: Path, last: int, stride: int, refreshes: int) -> list[str]:
    """c1 … cN on the first-parent line of HEAD, oldest first: cN is ``last`` commits back, each one
    ``stride`` commits after the one before."""
    try:
        line = [c.hexsha for c in git.Repo(path).iter_commits("HEAD", first_parent=True)]
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{path} is not a git repository") from exc
    oldest = last + (refreshes - 1) * stride
    if last < 1 or stride < 1 or oldest >= len(line) - 1:
        raise SwespotError(f"{path} has {len(line)} first-parent commits: {refreshes} refreshes {stride} apart ending "
                           f"{last} back need more than {oldest + 1}")
    return [line[last + (refreshes - 1 - k) * stride] for k in range(refreshes)]


def refresh_at(k: int, commit: str, repo: Repo, work: Work, args, base_gguf: Path) -> dict:
    """Refresh k at ``commit`` (unless the store already holds it: a kill after publishing), then the
    evaluation of what the store serves."""
    state = work.root / "state"
    store = AdapterStore(state)
    current = store.current()
    started = time.perf_counter()
    if current is not None and current.manifest.get("commit") == commit:
        outcome = {"published": True, "version": current.name, "reason": "published (found in the store)", "phase_seconds": {}}
    else:
        opts = RefreshOptions(repo=repo.path, base=args.base, profile=args.profile, cutoff=commit, continue_training=True,
                              gate=args.gate, keep=args.refreshes + 1, steps=args.steps, state=state, progress=args.progress,
                              device=args.device, chat=False)  # the code adapter's accumulation, as the daemon refreshes
        outcome = refresh(opts).to_dict()
    refresh_minutes = (time.perf_counter() - started) / 60
    version = store.current()
    manifest = version.manifest if version is not None else {}
    started = time.perf_counter()
    tasks = tasks_for(repo, work, args)
    rows = eval_rows(repo, tasks, base_gguf, f"refresh{k}", version.gguf, args) if version is not None else []
    train = manifest.get("train", {})
    return work.add({"kind": "refresh", "repo": repo.key, "steps": k, "commit": commit, "published": outcome["published"],
                     "reason": outcome["reason"], "version": version.name if version else None,
                     "continued_from": manifest.get("continued_from"), "shards": len(manifest.get("shards", [])),
                     "trained_steps": train.get("steps"), "trained_tokens": train.get("trained_tokens"),
                     "lr": (manifest.get("config") or {}).get("lr"), "episodes": (manifest.get("experience") or {}).get("episodes"),
                     "phase_seconds": outcome["phase_seconds"],
                     "families": family_scores(rows), "rows": rows,
                     "minutes": {"refresh": round(refresh_minutes, 3), "eval": round((time.perf_counter() - started) / 60, 3)}})


def summary(repo: Repo, commits: list[str], work: Work) -> dict:
    base = work.get("base", repo.key)
    out: dict[str, Any] = {"repo": str(repo.path), "tasks_after": repo.cutoff, "commits": commits,
           "base": base and {"families": base["families"], "tasks": base["tasks"]}, "refreshes": []}
    previous = None
    cumulative = 0
    for k in range(1, len(commits) + 1):
        rec = work.get("refresh", repo.key, k)
        if rec is None:
            break
        cumulative += rec["trained_tokens"] or 0
        row = {key: rec.get(key) for key in ("commit", "published", "reason", "version", "continued_from", "shards",
                                             "trained_steps", "trained_tokens", "lr", "families", "minutes")}
        row["refresh"], row["cumulative_trained_tokens"] = k, cumulative
        row["vs_base"] = paired(rec["rows"], base["rows"]) if base else None
        row["vs_previous"] = paired(rec["rows"], previous["rows"]) if previous else None
        out["refreshes"].append(row)
        previous = rec
    return out


def print_table(result: dict) -> None:
    rows = []
    if result["base"]:
        rows.append({"refresh": "base", **family_columns(result["base"]["families"])})
    for r in result["refreshes"]:
        rows.append({"refresh": r["refresh"], "commit": r["commit"][:10], "version": r["version"] or "–",
                     "from": r["continued_from"] or "–", "steps": r["trained_steps"], "trained tok": r["trained_tokens"],
                     "cum. tok": r["cumulative_trained_tokens"], **family_columns(r["families"]),
                     "line+body vs base": pct(r["vs_base"]), "verdict": r["vs_base"]["verdict"] if r["vs_base"] else "–",
                     "vs previous": pct(r["vs_previous"]) if r["vs_previous"] else "", "refresh min": r["minutes"]["refresh"],
                     "eval min": r["minutes"]["eval"]})
    print_rows(f"Continued training over {len(result['commits'])} refreshes; held-out tasks after {result['tasks_after'][:10]}", rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="work dir: adapter store, experience, results.jsonl (resumable)")
    ap.add_argument("--last", type=int, default=100, help="the last refresh is this many first-parent commits back")
    ap.add_argument("--stride", type=int, default=20, help="first-parent commits between refreshes")
    ap.add_argument("--refreshes", type=int, default=5)
    ap.add_argument("--profile", default="quick", help="pipeline profile of each refresh")
    ap.add_argument("--steps", type=int, help="steps per refresh (default: the profile's, continue_steps after the first)")
    ap.add_argument("--gate", default="none", choices=["none", "loss"],
                    help="none: every refresh publishes; loss: the daemon's gate (a refused refresh is recorded)")
    ap.add_argument("--base", default="default", help="'default' (embedded Gemma 3 270M) or a local HF folder")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--eval-profile", help="evaluation sizes (default: the profile's)")
    ap.add_argument("--families", default=",".join(f for f in ("line", "body", "design", "facts") if f in FAMILIES))
    ap.add_argument("--max-minutes", type=float, help="start no refresh (after the first) that would end after this many "
                    "minutes; run again to continue")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    args.eval_profile = args.eval_profile or ("full" if args.profile == "full" else args.profile)
    args.progress = not args.quiet
    if args.refreshes < 1:
        raise SwespotError("--refreshes must be at least 1")

    path = args.repo.expanduser().resolve()
    commits = commits_to_replay(path, args.last, args.stride, args.refreshes)
    repo = Repo(path.name, path, commits[-1], str(args.last), args.last)
    base_gguf = serving_base(args.base)
    work = Work(args.work.resolve(), {"repo": str(path), "commits": commits, "base": args.base, "base_gguf": str(base_gguf),
                                      "profile": args.profile, "steps": args.steps, "gate": args.gate,
                                      "eval_profile": args.eval_profile, "families": list(args.families),
                                      "profile_settings": json.loads(json.dumps(profile_settings(args.profile), default=str))})
    started = time.perf_counter()
    if work.get("base", repo.key) is None:
        say(f"evaluating the base on the tasks after {commits[-1][:10]}")
        from benchmarks.specialize import do_base

        do_base(repo, work, args, base_gguf)
    done_here = 0
    for k, commit in enumerate(commits, 1):
        if work.get("refresh", repo.key, k) is not None:
            continue
        elapsed = time.perf_counter() - started
        if args.max_minutes is not None and done_here and elapsed * (done_here + 1) / done_here > args.max_minutes * 60:
            say(f"stopping before refresh {k}: it would end after --max-minutes {args.max_minutes:g}; run the same command "
                "again to continue")
            break
        say(f"[{k}/{len(commits)}] refresh at {commit[:10]} (elapsed {fmt_minutes(elapsed)})")
        refresh_at(k, commit, repo, work, args, base_gguf)
        done_here += 1
    result = summary(repo, commits, work)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)
