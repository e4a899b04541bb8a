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
from agent.state import CHAT_EXPERIENCE_DIR, EXPERIENCE_DIR, WORK_DIR
from agent.state import PHASES as PHASES  # a refresh's phases, as status.json names them
from trainer.config import TrainConfig, config_for
from trainer.experience import history as H
from trainer.experience.build import BuildOptions, build_experience, unit_table
from trainer.experience.feedback import FEEDBACK_FILE, build_feedback
from trainer.gate import GateInput as GateInput  # re-exported: a callable gate takes one
from trainer.gate import loss_gate
from trainer.model_io import pick_device, resolve_base
from trainer.store import CHAT_GGUF, AdapterStore, state_dir
from trainer.train import Interrupted as Interrupted  # re-exported: callers stop a refresh with it
from trainer.train import train

log = logging.getLogger(__name__)

OnPhase = Callable[[str, "float | None", dict], None]

# What a profile (trainer.config.PROFILE_NAMES) means for a whole refresh: the training preset
# ("train_profile", an internal trainer.config.TRAIN_PRESETS name; the key keeps its name so that stored
# benchmark settings still compare equal), how long to train, and how much experience to synthesise.
# "quick" is sized for the embedded 270M model on a 2-core CPU (the README's first command must finish
# in under 15 minutes); "full" on 2 CPU cores in under 60, and on a CUDA GPU it uses every unit for an epoch.
# quick's training softmax: the training data's tokens and the 65,536 lowest ids of the vocabulary
# (TrainConfig.loss_vocab), not all 262,144 of Gemma's. The projection onto the whole vocabulary was half of a
# text step on 2 cores; the base leaves ~1.5% of its probability outside this part on click's code. On click
# (slower CPU, same seed, cutoff and tasks): training 1,077 s -> 737 s, the adapter's line + body loss -0.2%
# (-0.5 ... +0.1) against the one trained over the whole vocabulary: no measurable change; full on requests
# (seed 1, same cutoff and 287 line + body tasks): 4,264 s -> 2,969 s, +0.0% (-0.2 ... +0.2), the held-out facts'
# answer loss +1.2% (+0.6 ... +1.8) (README). Both CPU profiles use it; the GPU recipe keeps the whole vocabulary.
LOSS_VOCAB = 65536
# The CPU profiles' code adapters train without LoRA dropout (TrainConfig's default is 0.05). They see their
# experience about once, so dropout has little to regularise, and on 2 cores its random masks (one per LoRA
# module and step, ~230 M draws at 2,048 tokens) were 15-16% of a step in a profile. On click (the same
# experience, seed, cutoff and 196 tasks; README): six steps in 81 s without it against 102 s with it
# (interleaved, three runs each), line + body -6.3% against -6.2%, the two adapters -0.1% (-0.4 ... +0.2) apart: no
# measurable change on any family. The chat adapter keeps 0.05 (CHAT): its recipe is not measured without it.
LORA_DROPOUT = 0.0
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"train_profile": "tiny", "steps": 12, "continue_steps": 6,
             "experience": {"per_file": 4, "implementations_per_file": 2, "max_commits": 60}},
    # continue_lr: the learning rate of a refresh that continues from the served adapter (default: the
    # profile's). A continuation starts a fresh optimizer, whose first Adam steps move every weight by about
    # the rate; at 5e-4 the daemon's second refresh undid most of the first one's gain on click (line + body
    # -6.7% -> -2.1%, +4.9% against the first; -5.5% at 1.5e-4, -6.3% at 5e-5). 5e-5 is where the first
    # run's cosine ended (lr * min_lr_ratio); README, "Continued training".
    "quick": {"train_profile": "cpu", "steps": 32, "continue_steps": 8, "continue_lr": 5e-5,
              # Chosen from the learning curve (README, benchmarks/specialize.py on click, cutoff 300
              # first-parent commits back, equal trained tokens): 48 steps of the four agentic units made
              # line+body loss worse (+1.2%, 95% CI +0.2 … +2.2) while helping design answers (-18%); 12 steps
              # of the repository as text made it better (-3.4%, CI -4.3 … -2.6) in less than half the time.
              # So quick trains mostly the repository as text, with design episodes for the design facts.
              # max_len holds the typical episode (README, "Fitting the window"): a design episode renders
              # to ~850 Gemma tokens with the compact tool schemas, a text chunk to ~2,048. Budget and rate
              # from a sweep on click (same cutoff and 120 line + body tasks as specialize; README): 16 steps
              # at lr 2e-4 -3.5%, at 1e-3 -3.6%, at 5e-4 -4.6%; 28 steps at 5e-4 -5.7% (CI -7.6 … -4.1), 32
              # steps -6.1% (CI -8.0 … -4.5; 28 steps left requests at -4.97%). A text step (2,048 trained
              # positions) takes ~14 s on 2 cores, so 32 steps keep the whole run under 15 min with the
              # evaluation of base and adapter (click, the slowest: 14 min 3 s;
              # on a slower 2-vCPU AMD EPYC with AVX2 only, 33.6 s a step and 32 min 55 s; 23.0 s a step and
              # 26 min 36 s with the narrowed softmax, LOSS_VOCAB: README).
              # Design recall episodes (targets["recall"]) are left out: 200 of them cut design/facts loss by a
              # third but took the line + body gain from -5.7% to -4.7% and still answered no question exactly.
              # No LoRA dropout (LORA_DROPOUT).
              "train": {"max_len": 2048, "batch_tokens": 2048, "gradient_checkpointing": False, "lr": 5e-4,
                        "loss_vocab": LOSS_VOCAB, "lora_dropout": LORA_DROPOUT,
                        "unit_weights": {"design": 1.0, "implementation": 1.0, "evolution": 1.0, "runtime": 1.0,
                                         "feedback": 1.0, "text": 1.0}},
              # targets: episodes per unit, the newest commits and a seeded spread of files until each is met;
              # "text" is the repository itself as plain text (chunks of ~max_len tokens, every token trained)
              "experience": {"units": ("design", "text"), "per_file": 4, "text_chunk_tokens": 2048,
                             "targets": {"design": 24, "text": 64}}},
    # full on a CPU: quick's mix and rate, four times the text, and one pass over that experience, at least 140
    # steps and at most 175 (quick: 32), within 60 min on 2 cores with an evaluation three times quick's (~8.7 s a
    # step on the 2-vCPU Zen 4 VM with LOSS_VOCAB; README). A fixed 140 steps trained 71-83% of one pass on
    # click, flask and attrs; attrs' line + body went from -11.6% at 140 steps to -14.0% at 175, its one pass
    # (README, "One pass over the experience"). The floor keeps 140 where the experience is smaller (requests:
    # 106 steps a pass, -12.1% at 140); the cap keeps click (192) and flask (197) under the hour.
    # On a CUDA device the "cuda" entries replace these: every unit, 2,048 episodes each, one epoch of the GPU recipe.
    "full": {"train_profile": "cpu", "steps": None, "continue_steps": 40, "continue_lr": 5e-5,
             "train": {"max_len": 2048, "batch_tokens": 2048, "gradient_checkpointing": False, "lr": 5e-4,
                       "loss_vocab": LOSS_VOCAB, "lora_dropout": LORA_DROPOUT,
                       "epochs": 1.0, "min_steps": 140, "max_steps": 175},
             "experience": {"units": ("design", "text"), "per_file": 4, "text_chunk_tokens": 2048,
                            "targets": {"design": 64, "text": 256}},
             # continue_lr None: the GPU recipe's own rate (a lower one is not measured there)
             "cuda": {"steps": None, "continue_steps": None, "continue_lr": None, "train": {"epochs": 1.0},
                      "experience": {"units": ("design", "implementation", "evolution", "runtime", "text"), "run_tests": True,
                                     "targets": {"design": 2048, "implementation": 2048, "evolution": 2048,
                                                 "runtime": 2048, "text": 2048}}}},
}
# The chat adapter: a second LoRA, trained from the base on the design unit's agentic and recall episodes (its
# own experience folder, CHAT_EXPERIENCE_DIR), published beside the code adapter in the same version and served
# for the chat panel's questions only (lsp_server/adapters.py); completion and tasks keep the code adapter. One
# set of weights for both failed three ways on requests (README, "Two adapters added into one"): recall
# episodes beside the text, after it, or trained apart and added in took line + body from -5.8% to between -0.4%
# and +14.8%; apart, the recall adapter took the held-out facts from 0 to 45.8% (+25.0 ... +66.7) while the
# code adapter kept its -5.8%. One specialize --chat with 48 steps at 5e-4 gave both there (facts +45.8 points,
# code -5.8%), but on click only facts +8.3 points, no measurable change: 13 of its 14 "where" answers named the
# commonest file. With the data, order and seed held, click's facts went to 12.5% at 48 steps and 1e-3 and to
# 45.8% (+25.0 ... +66.7) at 96 steps and 1e-3 (README, "Why click's facts stay low"): the budget held it back,
# not the answers' wording. So the chat adapter trains 96 steps at 1e-3 (the code adapter keeps 5e-4). The phase
# took ~35 min on the slower 2-vCPU CPU (experience build and training), so "full" trains one by default and
# "quick" when asked (``RefreshOptions.chat``); the daemon's refreshes carry the served one over.
CHAT = {"steps": 96, "train": {"lr": 1e-3, "lora_dropout": 0.05},
        "experience": {"units": ("design",), "per_file": 4, "targets": {"design": 24, "recall": 2000}}}
PROFILES["tiny"]["chat"] = {"steps": 4, "experience": {"units": ("design",), "per_file": 2, "targets": {"design": 4, "recall": 24}}}
PROFILES["quick"]["chat"] = CHAT
PROFILES["full"]["chat"] = {**CHAT, "default": True}
GPU_TRAIN_PROFILE = "real"  # "full" on a CUDA machine trains with the GPU recipe (a trainer.config.TRAIN_PRESETS name)
HELDOUT_SHARE = 0.1  # share of shards the "loss" gate holds out of training
MIN_HELDOUT_SHARDS = 4


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
    # train the profile's chat adapter too (None: the profile's default; CHAT); without one, a refresh that
    # continues from the served version carries that version's chat adapter over
    chat: bool | None = None
    chat_steps: int | None = None  # the chat adapter's training steps (None: the profile's)


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

    def __init__(self, phases: _Phases, inner, then: str | None = "export") -> None:
        self.phases, self.inner, self.then = phases, inner, then

    def between_steps(self, step: int, total: int) -> None:
        self.phases.report(step / max(total, 1), step=step, total=total)
        if self.inner is not None:
            self.inner.between_steps(step, total)
        if step >= total and self.then:  # train() exports and verifies the GGUF next
            self.phases.enter(self.then)


def profile_settings(profile: str, device: str = "auto") -> dict:
    """What ``profile`` means on ``device``: its entry in ``PROFILES``, with its "cuda" entries in place of
    the CPU ones when the device is a CUDA GPU."""
    if profile not in PROFILES:
        raise SwespotError(f"unknown profile {profile!r} (choose {', '.join(PROFILES)})")
    settings = {k: v for k, v in PROFILES[profile].items() if k != "cuda"}
    if "cuda" in PROFILES[profile] and pick_device(device) == "cuda":
        settings.update(PROFILES[profile]["cuda"])
    return settings


def train_config(profile: str, *, device: str = "auto", steps: int | None = None, **values: Any) -> TrainConfig:
    """What ``profile`` trains with, for a refresh and for ``swespot train --profile`` alike: its training
    preset (``trainer.config.TRAIN_PRESETS``; "full" on a CUDA device: the GPU recipe), its ``train``
    settings, ``steps`` instead of its epochs when given, then ``values`` (None values ignored)."""
    settings = profile_settings(profile, device)
    preset = settings["train_profile"]
    if profile == "full" and pick_device(device) == "cuda":
        preset = GPU_TRAIN_PROFILE
    recipe = dict(settings.get("train", {}))
    if steps:
        recipe.pop("epochs", None)
        recipe["steps"] = steps
    return config_for(preset, **{**recipe, **values, "device": device})


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


def build_repo_experience(repo: Path, experience: Path, cutoff: str, profile: str, progress: bool = True, control=None,
                          device: str = "auto"):
    """The experience phase: the incremental build of the profile's units (on ``device``: "full" on a GPU
    runs the tests for the runtime unit); ``control``: see ``build_experience``."""
    settings = dict(profile_settings(profile, device)["experience"])
    if "units" in settings:
        settings["units"] = tuple(settings["units"])
    return build_experience(repo, experience, BuildOptions(cutoff=cutoff, progress=progress, **settings), control=control)


def refresh(opts: RefreshOptions, *, on_phase: OnPhase | None = None, control=None) -> RefreshResult:
    """Run one refresh; see the module docstring. Raises ``SwespotError`` on failure (nothing published)
    and ``Interrupted`` when ``control`` stops training (the checkpoint stays for the next refresh)."""
    settings = profile_settings(opts.profile, opts.device)
    repo = Path(opts.repo).expanduser().resolve()
    if not repo.is_dir():
        raise SwespotError(f"repository not found: {repo} (was it moved or deleted?)")
    state = Path(opts.state) if opts.state else state_dir(repo)
    store = AdapterStore(state)
    phases = _Phases(on_phase)
    try:
        commit = H.resolve(git.Repo(repo), opts.cutoff).hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo} is not a git repository") from exc

    # ---- experience: incremental, content-addressed; only what changed is regenerated
    phases.enter("experience", commit=commit)
    built, exp_info = _experience(opts, repo, state, commit, phases)

    # ---- train (the GGUF export and its llama.cpp check inside), resumable in a work folder
    phases.enter("train")
    plan = _plan(opts, settings, store, repo, state, commit)
    cfg, result = _train(plan, opts, state, commit, _StepControl(phases, control))
    # per unit: made / verified / dropped while building, and, counted by training's own tokenizer,
    # dropped by length / trained tokens / rendered lengths
    exp_info["table"] = unit_table(built.stats, (result.report.get("data") or {}).get("units"))

    # ---- chat: the chat adapter, trained (or carried over from the served version) into the candidate
    chat = _chat(opts, settings, plan, repo, state, commit, result.out, phases, control)

    # ---- gate: the candidate must not be worse than what is served now
    phases.enter("gate")
    verdict = _gate(opts, GateInput(result.out, plan.current.path if plan.current is not None else None, plan.base, commit,
                                    plan.views / "heldout" if plan.heldout else None,
                                    result.out / CHAT_GGUF if chat else None), cfg.max_len)
    if not verdict.get("ok"):
        phases.leave()
        return RefreshResult(False, None, commit, f"gate refused the candidate: {verdict.get('why')}", verdict,
                             phases.seconds, None, exp_info)

    # ---- publish: copy into the store, then flip ``current`` (atomic); keep the last N versions
    phases.enter("publish")
    extra = {"profile": opts.profile, "experience": exp_info, "shards": sorted(s.name for s in plan.trainable),
             "continued_from": plan.current.name if plan.continuing and plan.current is not None else None, "gate": verdict,
             **opts.extra_manifest}
    if chat:
        extra["chat"] = chat
    if "eval" in verdict:
        extra["eval"] = verdict["eval"]
    version = store.publish(result.out, extra=extra)
    store.prune(opts.keep)
    shutil.rmtree(plan.run_dir, ignore_errors=True)
    phases.leave()
    return RefreshResult(True, version.name, commit, "published", verdict, phases.seconds, version.manifest, exp_info)


def _experience(opts: RefreshOptions, repo: Path, state: Path, commit: str, phases: _Phases):
    """The experience phase: incremental and content-addressed (only what changed is regenerated), plus
    what the user accepted in the editor (the language server's feedback.jsonl) as episodes; rejected
    completions are kept apart as contrast, never trained on. The build and the summary the manifest keeps."""
    experience = state / EXPERIENCE_DIR
    built = build_repo_experience(repo, experience, commit, opts.profile, opts.progress, control=_BuildControl(phases),
                                  device=opts.device)
    exp_summary = {u: s.get("episodes_on_disk", 0) for u, s in built.stats.items()}
    feedback = build_feedback(state / FEEDBACK_FILE, repo, experience, commit)
    exp_summary["feedback"] = feedback.positives
    exp_info = {"episodes": exp_summary, "shards_made": built.shards_made, "shards_reused": built.shards_reused,
                "feedback": feedback.to_dict()}
    phases.report(None, **exp_info)
    return built, exp_info


@dataclass
class _Plan:
    """What a refresh trains: the shards new to it, those replayed and those held out for the gate, from
    which adapter, for how many steps, in which work folder (named by all of that, so a killed run resumes)."""

    base: Any
    current: Any  # the store's current version (None: there is none yet)
    continuing: bool  # training continues from ``current``
    trainable: list[Path]  # every shard not held out
    new: set[Path]
    replay: list[Path]
    heldout: list[Path]
    steps: int | None  # None: the profile's epochs or the trained-token budget decide
    run_dir: Path
    lr: float | None = None  # the profile's continue_lr when continuing (None: the profile's rate)

    @property
    def views(self) -> Path:
        return self.run_dir / "views"


def _plan(opts: RefreshOptions, settings: dict, store: AdapterStore, repo: Path, state: Path, commit: str) -> _Plan:
    base = resolve_base(opts.base)
    current = store.current()
    continuing = opts.continue_training and compatible_adapter(current, base)
    shards = all_shards(state / EXPERIENCE_DIR)
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
    lr = settings.get("continue_lr") if continuing and "lr" not in opts.train_overrides else None
    overridden = [sorted(opts.train_overrides.items())] if opts.train_overrides else []
    chat = ([("chat", opts.chat_steps or settings["chat"]["steps"], settings["chat"].get("train"))]
            if chat_wanted(opts, settings) else [])
    key = _digest(commit, base.name, opts.profile, steps, lr, *overridden, continuing and current is not None and current.name,
                  sorted(s.name for s in new), sorted(s.name for s in replay), *chat)
    return _Plan(base, current, continuing, trainable, new, replay, heldout, steps, state / WORK_DIR / f"run-{key}", lr)


def _train(plan: _Plan, opts: RefreshOptions, state: Path, commit: str, control: _StepControl):
    """The train phase (the GGUF export and its check inside): in the plan's work folder (any other,
    stale one removed) on views of the experience (symlinks to the chosen shards). The config and the result."""
    experience, work = state / EXPERIENCE_DIR, state / WORK_DIR
    for stale in work.glob("run-*") if work.is_dir() else []:
        if stale != plan.run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    views = plan.views
    shutil.rmtree(views, ignore_errors=True)
    _link_view(views / "train", sorted(plan.new), experience)
    if plan.replay:
        _link_view(views / "replay", plan.replay, experience)
    if plan.heldout:
        _link_view(views / "heldout", plan.heldout, experience)
    init = str(plan.current.path) if plan.continuing and plan.current is not None else ""
    overrides = {"lr": plan.lr, **opts.train_overrides} if plan.lr else opts.train_overrides
    cfg = train_config(opts.profile, device=opts.device, steps=plan.steps, **overrides, data=str(views / "train"),
                       base=opts.base, out=str(plan.run_dir / "adapter"), init_adapter=init,
                       replay_data=str(views / "replay") if plan.replay else "")
    try:
        return cfg, train(cfg, commit=commit, progress=opts.progress, control=control)
    except OSError as exc:
        raise NothingPublished(f"training failed writing to {plan.run_dir}: {exc} (is the disk full?)") from exc


def chat_wanted(opts: RefreshOptions, settings: dict) -> bool:
    """Whether this refresh trains a chat adapter: asked for, else the profile's default."""
    if "chat" not in settings:
        if opts.chat:
            raise SwespotError(f"the {opts.profile} profile has no chat adapter recipe")
        return False
    return settings["chat"].get("default", False) if opts.chat is None else opts.chat


def _chat(opts: RefreshOptions, settings: dict, plan: _Plan, repo: Path, state: Path, commit: str, out: Path, phases: _Phases,
          control) -> dict | None:
    """The chat phase: build the chat experience (design and recall episodes, incremental like the code
    adapter's) and train the chat adapter from the base into the plan's work folder (resumable), then put
    its GGUF into the candidate folder ``out`` as CHAT_GGUF. Without a chat adapter to train, a refresh that
    continues from a version with one carries that one over. The manifest's "chat" entry, or None."""
    if not chat_wanted(opts, settings):
        carried = plan.current.chat_gguf if plan.continuing and plan.current is not None else None
        if carried is None or not carried.is_file():
            return None
        shutil.copy2(carried, out / CHAT_GGUF)
        return {**plan.current.manifest["chat"], "gguf": CHAT_GGUF, "carried_from": plan.current.name}
    recipe = settings["chat"]
    phases.enter("chat", commit=commit)
    experience = state / CHAT_EXPERIENCE_DIR
    exp = dict(recipe["experience"])
    exp["units"] = tuple(exp.get("units", ("design",)))
    built = build_experience(repo, experience, BuildOptions(cutoff=commit, progress=opts.progress, **exp),
                             control=_BuildControl(phases))
    shards = all_shards(experience)
    if not shards:
        raise SwespotError(f"the chat experience of {repo} holds no episodes: nothing to train the chat adapter on")
    view = plan.run_dir / "views" / "chat"
    shutil.rmtree(view, ignore_errors=True)
    _link_view(view, shards, experience)
    seeded = {k: v for k, v in opts.train_overrides.items() if k == "seed"}
    tuned = {**recipe.get("train", {}), **seeded}  # the recipe's own rate; a trained-token budget is the code adapter's
    cfg = train_config(opts.profile, device=opts.device, steps=opts.chat_steps or recipe["steps"], **tuned, data=str(view),
                       base=opts.base, out=str(plan.run_dir / "chat"))
    try:
        trained = train(cfg, commit=commit, progress=opts.progress, control=_StepControl(phases, control, then=None))
    except OSError as exc:
        raise NothingPublished(f"training the chat adapter failed writing to {plan.run_dir}: {exc} (is the disk full?)") from exc
    shutil.copy2(trained.out / "adapter.gguf", out / CHAT_GGUF)
    report = trained.report or {}
    episodes = [json.loads(line) for shard in shards for line in shard.read_text(encoding="utf-8").splitlines() if line.strip()]
    recall = sum(bool(e.get("meta", {}).get("recall")) for e in episodes)
    return {"gguf": CHAT_GGUF, "commit": commit, "steps": cfg.steps, "lr": cfg.lr,
            "trained_tokens": report.get("trained_tokens"), "seconds": report.get("seconds"),
            "episodes": {"agentic": len(episodes) - recall, "recall": recall, "shards_made": built.shards_made},
            "shards": sorted(s.name for s in shards)}


def _gate(opts: RefreshOptions, gate_input: GateInput, max_len: int) -> dict:
    """The gate's verdict on the candidate: ``opts.gate`` as a callable, the held-out "loss" gate, or none."""
    if callable(opts.gate):
        return opts.gate(gate_input)
    if opts.gate == "loss":
        return loss_gate(gate_input, max_len=max_len)
    if opts.gate == "none":
        return {"ok": True, "why": "no gate"}
    raise SwespotError(f"unknown gate {opts.gate!r} (loss, none)")
