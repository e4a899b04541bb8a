"""When to train: the daemon's options and the decisions made from them.

A run starts when HEAD has no version trained on it, at least ``min_commits`` commits are new since the
served version, git has been quiet for ``quiet_s``, the machine is idle (load average, or a GPU with free
memory) and the editor is not generating. A request from the editor (``retrain.request``) skips the
schedule. A candidate the gate refused, or a run that failed, is not retried for the same commit until
something changes (or ``retry_s`` passes, for failures)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SwespotError
from agent.state import editor_generating, retrain_requested
from trainer.daemon.watching import commits_between
from trainer.model_io import pick_device
from trainer.store import AdapterStore


@dataclass
class DaemonOptions:
    repo: Path
    base: str = "default"
    profile: str = "quick"
    gate: str = "loss"
    keep: int = 5
    steps: int | None = None
    continue_training: bool = True
    device: str = "auto"
    quiet_s: float = 20.0  # git must have been quiet this long before a run starts
    debounce_s: float = 0.3  # events closer than this are one change
    min_commits: int = 1  # new commits since the served version before training again
    when: str = "idle"  # "idle": only when the machine (or GPU) is idle; "always"
    max_load: float | None = None  # 1-minute load average above which the CPU is busy (default: half the cores)
    min_gpu_free: float = 0.5  # share of GPU memory that must be free
    nice: int = 10  # added to the CPU priority when training on the CPU
    heartbeat_stale_s: float = 10.0  # a "generating" heartbeat older than this is ignored (crashed server)
    poll_s: float = 5.0  # fallback check of HEAD and of the repository's presence
    retry_s: float = 600.0  # a failed run is retried for the same commit after this long

    def validate(self) -> DaemonOptions:
        if self.when not in ("idle", "always"):
            raise SwespotError(f"unknown --when {self.when!r} (idle, always)")
        if self.gate not in ("loss", "none"):
            raise SwespotError(f"unknown gate {self.gate!r} (loss, none)")
        if self.min_commits < 1:
            raise SwespotError("--min-commits must be at least 1")
        if self.quiet_s < 0 or self.keep < 1:
            raise SwespotError("--quiet must be >= 0 and --keep >= 1")
        return self


@dataclass
class Pending:
    """A run to make for ``head`` once ``Policy.not_now`` allows it."""

    head: str
    reason: str
    forced: bool = False  # asked for by the editor (retrain.request): no quiet period, no idle wait


@dataclass(frozen=True)
class Hold:
    """No run for this HEAD: ``message`` says why; ``idle``: nothing is left to do (else: waiting)."""

    message: str
    idle: bool = False


@dataclass(frozen=True)
class Refusal:
    at: float  # monotonic
    why: str
    retry: bool  # a failure is retried after retry_s; a gate refusal only when something changes


def machine_busy(device: str, max_load: float | None, min_gpu_free: float) -> str | None:
    """Why the machine is too busy to train now, or None."""
    if device == "cuda":
        import torch  # heavy, and only here when training runs on a GPU

        free, total = torch.cuda.mem_get_info()
        if free / total < min_gpu_free:
            return f"the GPU is busy ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
        return None
    limit = max_load if max_load is not None else max(0.5, (os.cpu_count() or 1) / 2)
    load = os.getloadavg()[0]
    if load > limit:
        return f"the machine is busy (load {load:.2f} > {limit:.2f})"
    return None


class Policy:
    """Whether HEAD needs a run (``decide``) and whether now is the time (``not_now``); remembers the
    commits it must not train again (``refuse``)."""

    def __init__(self, opts: DaemonOptions, repo: Path, state: Path, store: AdapterStore) -> None:
        self.opts, self.repo, self.state, self.store = opts, repo, state, store
        self.refused: dict[str, Refusal] = {}
        self._device: str | None = None

    def refuse(self, commit: str, why: str, *, retry: bool) -> None:
        self.refused[commit] = Refusal(time.monotonic(), why, retry)

    def remember(self, last_result: dict) -> None:
        """At start: a candidate the gate refused in the previous life of the daemon stays refused."""
        gate = last_result.get("gate") or {}
        if last_result.get("commit") and not last_result.get("published") and gate and not gate.get("ok"):
            self.refuse(last_result["commit"], str(last_result.get("reason")), retry=False)

    def decide(self, head: str) -> Pending | Hold:
        if retrain_requested(self.state):
            return Pending(head, "retraining asked for by the editor", forced=True)
        for _, version, _ in self.store.versions():
            if version is not None and version.commit == head:
                return Hold(f"up to date: {version.name} is trained on HEAD {head[:10]}", idle=True)
        refused = self.refused.get(head)
        if refused is not None and (not refused.retry or time.monotonic() - refused.at < self.opts.retry_s):
            return Hold(f"not training {head[:10]} again: {refused.why}", idle=True)
        served = self.store.current()
        new = commits_between(self.repo, served.commit, head) if served is not None and served.commit else None
        if served is not None and new is not None and new < self.opts.min_commits:
            return Hold(f"{new} new commit(s) since {served.name}; training after {self.opts.min_commits}")
        return Pending(head, "no adapter yet" if served is None else f"{new} new commit(s) since {served.name}")

    def not_now(self, pending: Pending, last_event: float) -> tuple[str | None, float]:
        """(why a pending run must wait, how long until it is worth asking again); ``last_event``: the
        monotonic time of the last git event."""
        if pending.forced:
            return None, 0.0
        quiet_left = self.opts.quiet_s - (time.monotonic() - last_event)
        if quiet_left > 0:
            return f"waiting for git to be quiet for {self.opts.quiet_s:.0f} s", quiet_left
        if editor_generating(self.state, self.opts.heartbeat_stale_s):
            return "the editor is generating", 1.0
        if self.opts.when == "idle":
            why = machine_busy(self.device(), self.opts.max_load, self.opts.min_gpu_free)
            if why:
                return why, 15.0
        return None, 0.0

    def device(self) -> str:
        """The device training will use (asked once: the answer imports torch)."""
        if self._device is None:
            self._device = pick_device(self.opts.device)
        return self._device
