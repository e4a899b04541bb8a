"""One refresh of a repository's adapter, shared by ``swespot specialize`` and the trainer daemon:

    experience (incremental) → train (LoRA, optionally continuing from the current adapter) → export
    GGUF + llama.cpp check (inside ``train``) → gate → publish to the adapter store

Nothing is published unless every phase succeeded and the gate passed; a crash or kill at any point
leaves the store's ``current`` as it was. Training happens in ``<state>/work/run-<key>`` where the key
names the commit, base, profile and data, so a refresh that was killed resumes from its last checkpoint
when it is run again for the same commit, and a stale work folder is removed.

``refresh`` neither takes a lock nor writes ``status.json``: its callers do (the daemon through
``on_phase``); it only reports phases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git

from agent.errors import NothingPublished, SwespotError
from agent.state import EXPERIENCE_DIR, WORK_DIR
from agent.state import PHASES as PHASES  # a refresh's phases, as status.json names them
from trainer import data as D
from trainer.config import config_for
from trainer.evaluation import WORSE, describe, paired_interval
from trainer.experience import history as H
from trainer.experience.build import BuildOptions, build_experience, unit_table
from trainer.experience.feedback import FEEDBACK_FILE, build_feedback
from trainer.model_io import load_model_and_tokenizer, pick_device, resolve_base
from trainer.store import AdapterStore, state_dir
from trainer.train import Interrupted as Interrupted  # re-exported: callers stop a refresh with it
from trainer.train import make_renderer, train, trained_token_loss

log = logging.getLogger(__name__)

OnPhase = Callable[[str, "float | None", dict], None]

# What a profile means for a whole refresh: the training preset, how long to train, and how much
# experience to synthesise. "quick" is sized for the embedded 270M model on a 2-core CPU (the README's
# first command must finish in under 15 minutes); "full" uses every unit and trains for epochs.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"train_profile": "tiny", "steps": 12, "continue_steps": 6,
             "experience": {"per_file": 4, "implementations_per_file": 2, "max_commits": 60}},
    "quick": {"train_profile": "cpu", "steps": 16, "continue_steps": 8,
              # Chosen from the learning curve (README, benchmarks/specialize.py on click, cutoff 300
              # first-parent commits back, equal trained tokens): 48 steps of the four agentic units made
              # line+body loss worse (+1.2%, 95% CI +0.2 … +2.2) while helping design answers (-18%); 12 steps
              # of the repository as text made it better (-3.4%, CI -4.3 … -2.6) in less than half the time.
              # So quick trains mostly the repository as text, with design episodes for the design facts.
              # max_len holds the typical episode (README, "Fitting the window"): a design episode renders
              # to ~850 Gemma tokens with the compact tool schemas, a text chunk to ~2,048. A text step
              # (2,048 trained positions) takes ~23 s on 2 cores; 16 steps keep the whole run under 15 min
              # with the evaluation of base and adapter (~3 min each). lr 2e-4: the usual LoRA rate for
              # continued pre-training; 5e-4 on agentic episodes had raised held-out loss everywhere.
              "train": {"max_len": 2048, "batch_tokens": 2048, "gradient_checkpointing": False, "lr": 2e-4,
                        "unit_weights": {"design": 1.0, "implementation": 1.0, "evolution": 1.0, "runtime": 1.0,
                                         "feedback": 1.0, "text": 1.0}},
              # targets: episodes per unit, the newest commits and a seeded spread of files until each is met;
              # "text" is the repository itself as plain text (chunks of ~max_len tokens, every token trained)
              "experience": {"units": ("design", "text"), "per_file": 4, "text_chunk_tokens": 2048,
                             "targets": {"design": 24, "text": 64}}},
    "full": {"train_profile": "cpu", "steps": None, "continue_steps": None, "train": {"epochs": 1.0},
             "experience": {"units": ("design", "implementation", "evolution", "runtime", "text"), "run_tests": True,
                            "targets": {"design": 2048, "implementation": 2048, "evolution": 2048, "runtime": 2048,
                                        "text": 2048}}},
}
GPU_TRAIN_PROFILE = "real"  # "full" on a CUDA machine trains with the GPU recipe
HELDOUT_SHARE = 0.1  # share of shards the "loss" gate holds out of training
MIN_HELDOUT_SHARDS = 4
MAX_HELDOUT_EPISODES = 48


@dataclass
class RefreshOptions:
    repo: Path
    base: str = "default"
    profile: str = "quick"
    cutoff: str = "HEAD"
    continue_training: bool = True  # continue from the store's current adapter, replaying earlier experience
    gate: str | Callable[[GateInput], dict] = "loss"  # "loss", "none", or a callable (specialize's evaluation)
    keep: int = 5
    steps: int | None = None
    extra_manifest: dict = field(default_factory=dict)
    state: Path | None = None  # default: the repository's state dir
    progress: bool = True  # tqdm bars on stderr
    device: str = "auto"
    # TrainConfig settings that win over the profile's (e.g. {"max_trained_tokens": 20000}: a budget in
    # trained tokens; it then replaces the profile's step count, unless ``steps`` is given too)
    train_overrides: dict = field(default_factory=dict)


@dataclass
class GateInput:
    """What a gate decides on: the trained candidate folder, the adapter it must not be worse than
    (None: the base model), the resolved base and the commit the candidate was trained up to."""

    candidate: Path
    current: Path | None
    base: Any
    commit: str
    heldout: Path | None  # folder of held-out episodes (the "loss" gate)


@dataclass
class RefreshResult:
    published: bool
    version: str | None
    commit: str
    reason: str
    gate: dict = field(default_factory=dict)
    phase_seconds: dict = field(default_factory=dict)
    manifest: dict | None = None
    experience: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"published": self.published, "version": self.version, "commit": self.commit, "reason": self.reason,
                "gate": self.gate, "phase_seconds": self.phase_seconds, "experience": self.experience}


class _Phases:
    """Times the phases and forwards progress to the caller's ``on_phase``."""

    def __init__(self, on_phase: OnPhase | None) -> None:
        self.on_phase = on_phase
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._started = 0.0

    def enter(self, phase: str, **detail) -> None:
        self.leave()
        self.current, self._started = phase, time.perf_counter()
        self.report(0.0, **detail)

    def report(self, fraction: float | None, **detail) -> None:
        if self.on_phase is not None and self.current is not None:
            self.on_phase(self.current, fraction, detail)

    def leave(self) -> None:
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + time.perf_counter() - self._started, 2)
            self.report(1.0)
            self.current = None


class _StepControl:
    """Turns training steps into ``train``/``export`` progress and delegates to the caller's control."""

    def __init__(self, phases: _Phases, inner) -> None:
        self.phases, self.inner = phases, inner

    def between_steps(self, step: int, total: int) -> None:
        self.phases.report(step / max(total, 1), step=step, total=total)
        if self.inner is not None:
            self.inner.between_steps(step, total)
        if step >= total:  # train() exports and verifies the GGUF next
            self.phases.enter("export")


def profile_settings(profile: str) -> dict:
    if profile not in PROFILES:
        raise SwespotError(f"unknown profile {profile!r} (choose {', '.join(PROFILES)})")
    return PROFILES[profile]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _link_view(view: Path, shards: list[Path], root: Path) -> None:
    """A training view of the experience: ``<view>/<unit>/<shard>.jsonl`` symlinks to chosen shards."""
    for shard in shards:
        target = view / shard.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(shard.resolve())


def all_shards(experience: Path) -> list[Path]:
    """The experience's non-empty shards (``<unit>/<shard>.jsonl``; hidden folders such as the feedback contrast excluded)."""
    return sorted(p for p in experience.glob("*/*.jsonl") if not p.parent.name.startswith(".") and p.stat().st_size > 0)


def heldout_shards(shards: list[Path]) -> list[Path]:
    """The shards the "loss" gate holds out of training: a share of them chosen by a hash of their
    (content-addressed) names, so the choice is stable from one refresh to the next and the current
    adapter has not trained on them either; at least MIN_HELDOUT_SHARDS when there are enough shards,
    so that a small repository is gated too."""
    rank = lambda s: hashlib.sha256(s.name.encode()).hexdigest()  # noqa: E731
    if len(shards) < 3 * MIN_HELDOUT_SHARDS:
        return []
    n = max(MIN_HELDOUT_SHARDS, round(HELDOUT_SHARE * len(shards)))
    return sorted(shards, key=rank)[:n]


def compatible_adapter(current, base) -> bool:
    """Whether training may continue from ``current``: same base model, and a peft folder to load."""
    if current is None or not (current.path / "adapter_config.json").is_file():
        return False
    trained_on = current.manifest.get("base", {}).get("hf_dir")
    return bool(trained_on) and Path(trained_on).resolve() == Path(base.hf_dir).resolve()


BUILD_REPORT_EVERY_S = 0.5  # the experience build reports progress (and the daemon may stop it) this often at most


class _BuildControl:
    """Between the experience build's files: an ``experience`` progress report through the caller's
    ``on_phase`` (at most every BUILD_REPORT_EVERY_S), where the daemon stops a run it was told to stop."""

    def __init__(self, phases: _Phases) -> None:
        self.phases, self._last = phases, float("-inf")

    def between_files(self, unit: str, done: int, total: int) -> None:
        if time.monotonic() - self._last >= BUILD_REPORT_EVERY_S:
            self._last = time.monotonic()
            self.phases.report(None, unit=unit, done=done, total=total)


def build_repo_experience(repo: Path, experience: Path, cutoff: str, profile: str, progress: bool = True, control=None):
    """The experience phase: the incremental build of the static (and, in "full", runtime) units;
    ``control``: see ``build_experience``."""
    settings = dict(profile_settings(profile)["experience"])
    if "units" in settings:
        settings["units"] = tuple(settings["units"])
    return build_experience(repo, experience, BuildOptions(cutoff=cutoff, progress=progress, **settings), control=control)


def refresh(opts: RefreshOptions, *, on_phase: OnPhase | None = None, control=None) -> RefreshResult:
    """Run one refresh; see the module docstring. Raises ``SwespotError`` on failure (nothing published)
    and ``Interrupted`` when ``control`` stops training (the checkpoint stays for the next refresh)."""


    settings = profile_settings(opts.profile)
    repo = Path(opts.repo).expanduser().resolve()
    if not repo.is_dir():
        raise SwespotError(f"repository not found: {repo} (was it moved or deleted?)")
    state = Path(opts.state) if opts.state else state_dir(repo)
    store = AdapterStore(state)
    experience = state / EXPERIENCE_DIR
    phases = _Phases(on_phase)
    try:
        commit = H.resolve(git.Repo(repo), opts.cutoff).hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo} is not a git repository") from exc

    # ---- experience: incremental, content-addressed; only what changed is regenerated
    phases.enter("experience", commit=commit)
    built = build_repo_experience(repo, experience, commit, opts.profile, opts.progress, control=_BuildControl(phases))
    exp_summary = {u: s.get("episodes_on_disk", 0) for u, s in built.stats.items()}
    # what the user accepted in the editor (the language server's feedback.jsonl) becomes episodes too;
    # rejected completions are kept apart as contrast, never trained on

    feedback = build_feedback(state / FEEDBACK_FILE, repo, experience, commit)
    exp_summary["feedback"] = feedback.positives
    exp_info = {"episodes": exp_summary, "shards_made": built.shards_made, "shards_reused": built.shards_reused,
                "feedback": feedback.to_dict()}
    phases.report(None, **exp_info)

    # ---- train
    phases.enter("train")
    base = resolve_base(opts.base)
    current = store.current()
    continuing = opts.continue_training and compatible_adapter(current, base)
    shards = all_shards(experience)
    if not shards:
        raise SwespotError(f"the experience of {repo} holds no episodes: nothing to train on (is there code in it?)")
    heldout = heldout_shards(shards) if opts.gate == "loss" else []
    held = set(heldout)
    trainable = [s for s in shards if s not in held]
    new = set(trainable)
    replay: list[Path] = []
    if continuing:
        assert current is not None  # continuing means there is a current version
        trained_on = set(current.manifest.get("shards", []))
        new = {s for s in trainable if s.name not in trained_on}
        replay = [s for s in trainable if s.name in trained_on]
        if not new:  # nothing new (e.g. only a rebase): refresh on everything
            new, replay = set(trainable), []
    steps = opts.steps or settings["continue_steps" if continuing else "steps"]
    if opts.train_overrides.get("max_trained_tokens") and not opts.steps:
        steps = None  # the budget decides how long
    overridden = [sorted(opts.train_overrides.items())] if opts.train_overrides else []
    key = _digest(commit, base.name, opts.profile, steps, *overridden, continuing and current is not None and current.name,
                  sorted(s.name for s in new), sorted(s.name for s in replay))
    work = state / WORK_DIR
    run_dir = work / f"run-{key}"
    for stale in work.glob("run-*") if work.is_dir() else []:
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    views = run_dir / "views"
    shutil.rmtree(views, ignore_errors=True)
    _link_view(views / "train", sorted(new), experience)
    if replay:
        _link_view(views / "replay", replay, experience)
    if heldout:
        _link_view(views / "heldout", heldout, experience)
    train_profile = settings["train_profile"]
    if opts.profile == "full":
        train_profile = GPU_TRAIN_PROFILE if pick_device(opts.device) == "cuda" else train_profile
    overrides = dict(settings.get("train", {}))
    if steps:
        overrides.pop("epochs", None)
        overrides["steps"] = steps
    overrides.update(opts.train_overrides)
    cfg = config_for(train_profile, **overrides, data=str(views / "train"), base=opts.base, out=str(run_dir / "adapter"),
                     device=opts.device, init_adapter=str(current.path) if continuing and current is not None else "",
                     replay_data=str(views / "replay") if replay else "")
    try:
        result = train(cfg, commit=commit, progress=opts.progress, control=_StepControl(phases, control))
    except OSError as exc:
        raise NothingPublished(f"training failed writing to {run_dir}: {exc} (is the disk full?)") from exc
    # per unit: made / verified / dropped while building, and, counted by training's own tokenizer,
    # dropped by length / trained tokens / rendered lengths
    exp_info["table"] = unit_table(built.stats, (result.report.get("data") or {}).get("units"))

    # ---- gate: the candidate must not be worse than what is served now
    phases.enter("gate")
    candidate = result.out
    gate_input = GateInput(candidate, current.path if current is not None else None, base, commit,
                           views / "heldout" if heldout else None)
    if callable(opts.gate):
        verdict = opts.gate(gate_input)
    elif opts.gate == "loss":
        verdict = loss_gate(gate_input, max_len=cfg.max_len)
    elif opts.gate == "none":
        verdict = {"ok": True, "why": "no gate"}
    else:
        raise SwespotError(f"unknown gate {opts.gate!r} (loss, none)")
    if not verdict.get("ok"):
        phases.leave()
        return RefreshResult(False, None, commit, f"gate refused the candidate: {verdict.get('why')}", verdict,
                             phases.seconds, None, exp_info)

    # ---- publish: copy into the store, then flip ``current`` (atomic); keep the last N versions
    phases.enter("publish")
    extra = {"profile": opts.profile, "experience": exp_info, "shards": sorted(s.name for s in trainable),
             "continued_from": current.name if continuing and current is not None else None, "gate": verdict, **opts.extra_manifest}
    if "eval" in verdict:
        extra["eval"] = verdict["eval"]
    version = store.publish(candidate, extra=extra)
    store.prune(opts.keep)
    shutil.rmtree(run_dir, ignore_errors=True)
    phases.leave()
    return RefreshResult(True, version.name, commit, "published", verdict, phases.seconds, version.manifest, exp_info)


# ---- the held-out loss gate ---------------------------------------------------------------------
def heldout_losses(base_hf_dir: Path, adapters: dict[str, Path | None], episodes_dir: Path, max_len: int,
                   limit: int = MAX_HELDOUT_EPISODES, per_sequence: bool = False) -> dict:
    """Mean per-token loss of the assistant turns of held-out episodes under each adapter (None: the
    base model), computed with transformers on the training weights (the vocabulary projection only
    where a trained token is predicted, as in training). With ``per_sequence``: each model's
    [(loss, trained tokens)] per held-out sequence, for a paired comparison."""
    import torch
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(base_hf_dir)
    episodes = D.read_episodes(episodes_dir)
    episodes = sorted(episodes, key=lambda e: e.get("id", ""))[:limit]
    # a sample of held-out episodes: training already checked that no unit loses most of them to max_len
    sequences, _ = D.encode_all(episodes, tokenizer, make_renderer(tokenizer), max_len, check=False)
    if not sequences:
        raise SwespotError(f"no held-out sequence fits in {max_len} tokens")
    peft_model = None
    out: dict[str, Any] = {}  # a mean per adapter, or (with per_sequence) its (loss, tokens) pairs
    for name, path in adapters.items():
        if path is None:
            net = model
        else:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            else:
                peft_model.load_adapter(str(path), adapter_name=name)
            peft_model.set_adapter(name)
            net = peft_model
        total, count, each = 0.0, 0, []
        net.eval()
        with torch.no_grad():
            for seq in sequences:
                batch = D.collate([seq], 0)
                if path is None and peft_model is not None:
                    with peft_model.disable_adapter():
                        loss = trained_token_loss(peft_model, batch)
                else:
                    loss = trained_token_loss(net, batch)
                n = seq.trained_tokens
                total += float(loss) * n
                count += n
                each.append((float(loss), n))
        out[name] = each if per_sequence else total / max(count, 1)
    return out


def loss_gate(gi: GateInput, *, max_len: int) -> dict:
    """Publish unless the candidate's held-out loss is worse than the current adapter's (or, for the
    first version, the base model's): paired over the held-out sequences, token-weighted, worse only when
    the bootstrap 95% interval of the difference lies above 0 (``trainer.evaluation.paired_interval``)."""
    if gi.heldout is None:
        return {"ok": True, "why": "no held-out episodes yet (too little experience); published ungated"}
    reference = "current" if gi.current is not None else "base"
    each = heldout_losses(gi.base.hf_dir, {reference: gi.current, "candidate": gi.candidate}, gi.heldout, max_len,
                          per_sequence=True)
    rows = {name: [{"task": i, "loss": loss, "tokens": n} for i, (loss, n) in enumerate(seqs)] for name, seqs in each.items()}
    stats = paired_interval(rows["candidate"], rows[reference], "loss", lower_is_better=True)
    assert stats is not None  # both score the same non-empty held-out sequences
    ok = stats["verdict"] != WORSE
    why = describe(stats, f"held-out episode loss vs {reference}") + ("" if ok else " (worse)")
    keep = ("tasks", "reference", "candidate", "delta", "lo", "hi", "rel", "rel_lo", "rel_hi", "verdict")
    return {"ok": ok, "why": why, "kind": "heldout-loss", "verdict": stats["verdict"], "interval": {k: stats[k] for k in keep},
            "losses": {"candidate": stats["candidate"], reference: stats["reference"]}, "reference": reference}
