"""The main job, ``swespot specialize``, without its command line: hold the newest history out, refresh
the repository's adapter (experience → train → export → gate → publish, ``trainer.pipeline.refresh``)
with a gate that evaluates base vs adapter on the held-out commits, and say what happened.

Also the model and adapter references the evaluation commands take (``serving_base``,
``resolve_adapters``). The command-line modules (``trainer/eval_cli.py``) and the benchmarks import
from here; nothing here parses arguments or prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import git

from agent.errors import SwespotError
from agent.state import DaemonLock, state_dir
from trainer.config import MAX_HOLDOUT
from trainer.evaluation import EVAL_PROFILES, ModelSpec, compare, evaluate, line_tasks, post_cutoff_changes
from trainer.export_check import serving_base as serving_base  # re-exported: the eval commands take it from here
from trainer.pipeline import OnPhase, RefreshOptions, RefreshResult, refresh
from trainer.store import AdapterStore, chat_file, check_version_dir


def resolve_adapters(values: list[str], repo: Path, chat: list[str] | None = None) -> list:
    """``[NAME=]ADAPTER`` references (an adapter.gguf, a published version folder, or a version name of
    the repository's store: v0003, current) as evaluation ``ModelSpec``s; a version brings its chat adapter.
    ``chat``: ``NAME=ADAPTER`` chat adapters for the adapters so named."""
    specs = []
    store = None
    for value in values:
        name, _, ref = value.rpartition("=") if "=" in value else ("", "", value)
        path = Path(ref).expanduser()
        chat_gguf = None
        if path.is_dir() and (path / "adapter.gguf").is_file():
            path = path / "adapter.gguf"
        elif not path.exists():
            store = store or AdapterStore.for_repo(repo)
            version = store.current() if ref == "current" else store.get(ref)
            if version is None:
                raise SwespotError(f"no adapter is published for {repo} yet")
            name, path = name or version.name, version.gguf
        if path.name == "adapter.gguf" and (path.parent / "manifest.json").is_file():
            # a version folder (or a training output): the store's own check reads its manifest and
            # refuses a chat adapter the manifest names but the folder lacks, rather than let the
            # code adapter answer the questions in its place unnoticed
            manifest, why = check_version_dir(path.parent)
            if manifest is None:
                raise SwespotError(f"cannot evaluate {path.parent}: {why}")
            chat_gguf = chat_file(path.parent, manifest)
        if not path.is_file():
            raise SwespotError(f"adapter not found: {ref}")
        specs.append(ModelSpec(name or (path.parent.name if path.name == "adapter.gguf" else path.stem), path.resolve(),
                               chat_gguf.resolve() if chat_gguf is not None else None))
    by_name = {s.name: s for s in specs}
    for value in chat or []:
        name, sep, ref = value.partition("=")
        if not sep or name not in by_name:
            raise SwespotError(f"--chat-adapter {value!r}: give NAME=ADAPTER with the NAME of an --adapter ({', '.join(by_name) or 'none'})")
        if not Path(ref).expanduser().is_file():
            raise SwespotError(f"chat adapter not found: {ref}")
        by_name[name].chat_adapter = Path(ref).expanduser().resolve()
    return specs


def auto_cutoff(repo_path: Path, holdout: int | None, profile: str = "quick") -> str | None:
    """The knowledge cutoff: the commit ``holdout`` first-parent steps behind HEAD; without ``holdout``,
    the newest first-parent commit after which the history holds the evaluation profile's number of
    line tasks, at most ``MAX_HOLDOUT[profile]`` steps back. Never more than half the history (a
    repository needs history before the cutoff as well as after it); None when nothing can be held out."""

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


@dataclass
class SpecializeOptions:
    repo: Path
    base: str = "default"  # 'default' (embedded Gemma 3 270M), a local HF folder, or a .gguf
    profile: str = "quick"  # tiny, quick, full (trainer.pipeline.PROFILES)
    cutoff: str | None = None  # None: hold out the newest history (auto_cutoff)
    holdout: int | None = None  # first-parent commits held out (None: as many as the profile's line tasks need)
    steps: int | None = None  # training steps (None: the profile's)
    seed: int = 0  # training seed (LoRA initialisation, data order); experience and tasks do not depend on it
    evaluate: bool = True  # False: train up to HEAD and publish without evaluating
    force: bool = False  # publish even if the adapter evaluates worse than the base
    device: str = "auto"
    chat: bool | None = None  # train the chat adapter too (None: the profile's default; trainer.pipeline.CHAT)


@dataclass
class Specialized:
    """What one specialize run did: the refresh's result, the cutoff it held out after ("HEAD" when
    nothing was held out), and the evaluation report when there was one."""

    result: RefreshResult
    cutoff: str
    seconds: float
    report: dict | None = None
    report_html: Path | None = None

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "seconds": round(self.seconds, 1),
                "report": str(self.report_html) if self.report is not None else None}


def choose_cutoff(opts: SpecializeOptions) -> str:
    """The commit specialize learns up to: ``opts.cutoff``, else the held-out history's start, else "HEAD"
    (no evaluation: the history is too short, or ``evaluate`` is off)."""
    if not opts.evaluate:
        return "HEAD"
    return opts.cutoff or auto_cutoff(opts.repo, opts.holdout, opts.profile) or "HEAD"


def held_out_gate(opts: SpecializeOptions, cutoff: str, report_dir: Path, evaluation: dict) -> Callable[[object], dict]:
    """The refresh's gate for specialize: evaluate base and candidate on the commits after ``cutoff``
    (the report lands in ``report_dir`` and in ``evaluation["report"]``), publish if not worse."""
    def gate(gi) -> dict:
        if cutoff == "HEAD":
            return {"ok": True, "why": "not evaluated (no held-out history)"}
        manifest = json.loads((gi.candidate / "manifest.json").read_text())
        base_gguf = Path(manifest["export"]["base_gguf"])
        adapter = ModelSpec("adapter", gi.candidate / "adapter.gguf", gi.chat)  # questions go to its chat adapter, if any
        # the infill family only where it measures a layout (INFILL_LEFT_OUT): quick's 15 minutes (README)
        report = evaluate(opts.repo, cutoff, base_gguf, [ModelSpec("base", None), adapter],
                          profile=opts.profile, out=report_dir, infill_only_with_fim=True)
        evaluation["report"] = report
        verdict = compare(report, "adapter", "base")
        # the manifest records the verdict with its interval (the gate's full result goes there too)
        verdict["eval"] = {"cutoff": report["cutoff"][:12], "tasks": report["tasks"], "verdict": verdict["verdict"],
                           "headline": verdict.get("line"), "interval": verdict.get("interval"),
                           "families": {f: e["verdict"] for f, e in verdict.get("families", {}).items()},
                           "loss": verdict.get("losses"), "seconds": report["seconds"]}
        verdict["report"] = str(report_dir / "report.html")
        verdict["chat"] = gi.chat is not None  # design and facts were answered by the candidate's chat adapter
        verdict["scores"] = {m: {f: {k: v for k, v in s.items() if k in ("loss", "exact", "similarity", "resolved")}
                                 for f, s in entry["families"].items()} for m, entry in report["models"].items()}
        if not verdict["ok"] and opts.force:
            verdict.update(ok=True, why=verdict["why"] + "; published anyway (--force)")
        return verdict

    return gate


def specialize(opts: SpecializeOptions, cutoff: str, *, on_phase: OnPhase | None = None) -> Specialized:
    """One specialize run up to ``cutoff`` (``choose_cutoff``), under the state dir's lock, which the
    trainer daemon shares: the two never train into one state dir at once. A refused candidate is a
    result (``published`` False, ``reason``); failures raise ``SwespotError``."""
    started = time.perf_counter()
    repo = opts.repo
    report_dir = state_dir(repo) / "reports" / time.strftime("%Y%m%d-%H%M%S")
    evaluation: dict = {}
    seeded = {"seed": opts.seed} if opts.seed else {}  # the default seed is left out, as before there was one
    refresh_opts = RefreshOptions(repo=repo, base=opts.base, profile=opts.profile, cutoff=cutoff, continue_training=False,
                                  gate=held_out_gate(opts, cutoff, report_dir, evaluation) if opts.evaluate else "none",
                                  steps=opts.steps, device=opts.device, chat=opts.chat,
                                  train_overrides=seeded,
                                  extra_manifest={"specialize": {"cutoff": cutoff, "profile": opts.profile} | seeded})
    lock = DaemonLock(state_dir(repo))
    lock.acquire(repo, who="swespot specialize")
    try:
        result = refresh(refresh_opts, on_phase=on_phase)
    finally:
        lock.release()
    report = evaluation.get("report")
    return Specialized(result, cutoff, time.perf_counter() - started, report,
                       report_dir / "report.html" if report is not None else None)
