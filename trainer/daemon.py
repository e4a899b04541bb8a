"""``swespot daemon``: keeps one repository's adapter fresh in the background.

    git refs/HEAD change ─► debounce ─► serve the right version for HEAD (branch-aware)
                                    └─► policy (new commits, quiet period, idle machine, editor not busy)
                                          └─► refresh (trainer/pipeline.py) ─► status.json, publish

The daemon is its own process (the language server starts it with ``python -m agent.cli daemon --repo
REPO`` and stops it with SIGTERM to its process group, lsp_server/daemon.py). It talks to the language
server only through the state folder: the adapter store (``current``), ``status.json`` it writes, and the
``heartbeat.json``, ``feedback.jsonl`` and ``retrain.request`` the server writes.

- **Watching**: watchdog on the repository's git HEAD, refs and packed-refs (not on every file save);
  gitpython reads what changed. While a rebase, merge, cherry-pick or bisect is in progress nothing is
  decided: the repository is between states.
- **Branch-aware serving**: after any change of HEAD, ``current`` names the newest published version
  trained on an ancestor of HEAD (AdapterStore.serve_for_head); a checkout never serves knowledge of code
  that is not there.
- **Policy**: a run starts when HEAD has no version trained on it, at least ``min_commits`` commits are
  new since the served version, git has been quiet for ``quiet_s``, the machine is idle (load average, or
  a GPU with free memory) and the editor is not generating. One run at a time: a commit that lands during
  a run is queued (shown in status.json) and the next run trains on the newest HEAD, which includes it.
  A candidate the gate refused, or a run that failed, is not retried for the same commit until something
  changes (or ``retry_s`` passes, for failures).
- **Asked to**: the language server's ``swespot/retrain`` writes ``retrain.request`` in the state folder;
  the daemon consumes it and refreshes at once, whatever the schedule.
- **Safety**: one daemon per repository (an flock, which the kernel releases on kill -9, so a stale lock
  never blocks); SIGTERM stops a run at the next training step with a checkpoint (earlier phases are
  restartable and are interrupted at once), and the next start resumes. Training runs at low CPU priority
  (nice) and pauses while the language server's heartbeat says the user is waiting on the model. A failed
  run (a full disk, a vanished repository, a damaged file) is one line in status.json's ``last_error``;
  the daemon keeps serving what it served.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import SwespotError
from agent.state import (PHASES, RETRAIN_REQUEST, DaemonLock, editor_generating, lock_holder, read_status, state_dir,
                         write_status)
from trainer.store import AdapterStore

log = logging.getLogger(__name__)

# share of a run's time per phase before a run has been measured (then the last run's times are used)
DEFAULT_PHASE_SECONDS = {"experience": 10.0, "train": 60.0, "export": 10.0, "gate": 10.0, "publish": 1.0}
IN_PROGRESS = ("rebase-merge", "rebase-apply", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "BISECT_LOG")


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

    def validate(self) -> "DaemonOptions":
        if self.when not in ("idle", "always"):
            raise SwespotError(f"unknown --when {self.when!r} (idle, always)")
        if self.gate not in ("loss", "none"):
            raise SwespotError(f"unknown gate {self.gate!r} (loss, none)")
        if self.min_commits < 1:
            raise SwespotError("--min-commits must be at least 1")
        if self.quiet_s < 0 or self.keep < 1:
            raise SwespotError("--quiet must be >= 0 and --keep >= 1")
        return self


# ---- git ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GitState:
    head: str | None  # None: no commit yet
    branch: str | None  # None: detached
    busy: str | None  # an operation in progress (rebase, merge...), or None


def read_git_state(repo: Path) -> GitState:
    import git

    try:
        r = git.Repo(repo)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo} is not a git repository") from exc
    from trainer.experience.history import require_work_tree

    require_work_tree(r, repo)
    git_dir = Path(r.git_dir)
    busy = next((name for name in IN_PROGRESS if (git_dir / name).exists()), None)
    if not (git_dir / "HEAD").exists():  # moved or deleted between the two reads
        raise SwespotError(f"{repo} has no HEAD (was the repository moved or deleted?)")
    try:
        head = r.head.commit.hexsha
    except ValueError:  # an unborn branch: no commit yet
        head = None
    try:
        branch = None if r.head.is_detached else r.head.ref.name
    except ValueError as exc:  # HEAD vanished while we read it
        raise SwespotError(f"cannot read HEAD of {repo}: {exc}") from exc
    return GitState(head, branch, busy)


def commits_between(repo: Path, old: str | None, new: str) -> int:
    """How many commits ``new`` has that ``old`` has not (all of them when ``old`` is None)."""
    import git

    r = git.Repo(repo)
    spec = f"{old}..{new}" if old else new
    try:
        return int(r.git.rev_list("--count", spec))
    except git.GitCommandError:  # ``old`` is gone (gc after a rebase): count everything
        return int(r.git.rev_list("--count", new))


def describe_change(repo: Path, before: GitState | None, after: GitState) -> str:
    """A human word for what happened between two HEADs: new commit(s), branch switch, rewrite..."""
    import git

    if before is None or before.head is None:
        return "start"
    if after.head == before.head:
        return "branch switch" if after.branch != before.branch else "no change"
    if after.branch != before.branch:
        return f"switch to {after.branch or 'a detached HEAD'}"
    r = git.Repo(repo)
    try:
        if r.is_ancestor(before.head, after.head):
            return f"{commits_between(repo, before.head, after.head)} new commit(s)"
        if r.is_ancestor(after.head, before.head):
            return "reset to an earlier commit"
    except git.GitCommandError:
        pass
    return "history rewritten (amend or rebase)"


class GitWatcher:
    """watchdog on the git folder: calls ``on_change(path)`` when HEAD, a ref or packed-refs changes (git
    writes ``x.lock`` and renames it to ``x``, so the rename's destination is what counts). Object
    writes, the index and logs are ignored, and so are edits in the work tree."""

    def __init__(self, repo: Path, on_change, also: tuple[Path, ...] = ()) -> None:
        import git

        r = git.Repo(repo)
        self.git_dir = Path(r.git_dir).resolve()
        self.common_dir = Path(r.common_dir).resolve()
        self.also = tuple(Path(p).resolve() for p in also)  # other files whose changes count (outside git)
        self.on_change = on_change
        self.observer = None

    def relevant(self, path: str) -> bool:
        p = Path(path)
        if p in self.also:
            return True
        if p.name.endswith(".lock"):
            return False
        for root in {self.git_dir, self.common_dir}:
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                continue
            if rel in ("HEAD", "packed-refs") or rel.startswith("refs/"):
                return True
        return False

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type not in ("created", "modified", "moved", "deleted"):
                    return
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path and watcher.relevant(os.fsdecode(path)):
                        watcher.on_change(os.fsdecode(path))
                        return

        self.observer = Observer()
        handler = Handler()
        self.observer.schedule(handler, str(self.git_dir), recursive=False)
        if self.common_dir != self.git_dir:  # a linked worktree: refs live in the main repository
            self.observer.schedule(handler, str(self.common_dir), recursive=False)
        if (self.common_dir / "refs").is_dir():
            self.observer.schedule(handler, str(self.common_dir / "refs"), recursive=True)
        for folder in {p.parent for p in self.also if p.parent.is_dir()}:
            self.observer.schedule(handler, str(folder), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            try:
                self.observer.join(timeout=5)
            except RuntimeError:
                pass
            self.observer = None


# ---- the machine and the editor ---------------------------------------------------------------------
def machine_busy(device: str, max_load: float | None, min_gpu_free: float) -> str | None:
    """Why the machine is too busy to train now, or None."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        if free / total < min_gpu_free:
            return f"the GPU is busy ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
        return None
    limit = max_load if max_load is not None else max(0.5, (os.cpu_count() or 1) / 2)
    load = os.getloadavg()[0]
    if load > limit:
        return f"the machine is busy (load {load:.2f} > {limit:.2f})"
    return None


LOW_DISK_BYTES = 64 * 2**20  # less free space than this in the state folder counts as a full disk


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def describe_error(exc: BaseException, phase: str | None, state: Path | None = None) -> str:
    """One line for status.json: what failed, where, and that nothing was published (a failed run never
    is). A full disk does not always raise ENOSPC (torch's checkpoint writer raises a RuntimeError about
    a stream position), so the free space of the state folder is asked too."""
    where = f" during {phase}" if phase else ""
    text = str(exc).removesuffix("; nothing was published")
    if not isinstance(exc, (SwespotError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    free = free_bytes(state) if state is not None else None
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text:
        return f"disk full{where}: {text}; nothing was published"
    if free is not None and free < LOW_DISK_BYTES:
        return f"disk full{where} ({free // 1024} KiB free in {state}): {text}; nothing was published"
    return f"{text}" + ("" if isinstance(exc, SwespotError) else where) + "; nothing was published"


# ---- the daemon -------------------------------------------------------------------------------------
@dataclass
class Pending:
    head: str
    reason: str
    forced: bool = False  # asked for by the editor (retrain.request): no quiet period, no idle wait


@dataclass
class _Run:
    commit: str
    started: float
    phase: str | None = None
    phase_started: float = 0.0
    paused_s: float = 0.0  # paused time in the current phase (not work: kept out of the ETA)
    steps_seen: int = 0
    done: dict = field(default_factory=dict)  # phase -> seconds


class Control:
    """What training calls between optimizer steps: stop on SIGTERM (a checkpoint is saved first) and
    pause while the editor generates."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    def between_steps(self, step: int, total: int) -> None:
        from trainer.pipeline import Interrupted

        d = self.daemon
        if d.run is not None:
            d.run.steps_seen = step
        if d.stop.is_set():
            raise Interrupted("stopped by a signal")
        if not editor_generating(d.state, d.opts.heartbeat_stale_s):
            return
        paused_at = time.monotonic()
        log.info("the editor is generating: training paused at step %d/%d", step, total)
        d.status(phase="paused", paused=True, message=f"paused at step {step}/{total} while the editor generates")
        while editor_generating(d.state, d.opts.heartbeat_stale_s):
            if d.stop.wait(0.2):
                raise Interrupted("stopped by a signal")
        if d.run is not None:
            d.run.paused_s += time.monotonic() - paused_at
        log.info("the editor is idle again: training resumes")
        d.status(phase="train", paused=False, message=f"training ({step}/{total})")


class Daemon:
    def __init__(self, opts: DaemonOptions, state: Path | None = None) -> None:
        self.opts = opts.validate()
        self.repo = Path(opts.repo).expanduser().resolve()
        self.state = Path(state) if state else state_dir(self.repo)
        self.store = AdapterStore(self.state)
        self.lock = DaemonLock(self.state)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.watcher: GitWatcher | None = None
        self.git: GitState | None = None
        self.pending: Pending | None = None
        self.run: _Run | None = None
        self.last_event = 0.0  # monotonic time of the last git event
        self.refused: dict[str, tuple[float, str, bool]] = {}  # commit -> (when, why, retry later?)
        self.queued: list[str] = []
        self.device: str | None = None
        self._niced = False
        self._status_lock = threading.Lock()
        self._raised = False
        self._last_write = 0.0
        self._written: dict = {}
        self._status_failure: str | None = None
        self._repo_gone = False
        self._waiting_why: str | None = None

    # ---- status.json ------------------------------------------------------------------------
    def status(self, *, throttle: bool = False, **fields) -> None:
        """Update status.json; never fatal (a full disk must not kill the daemon that reports it)."""
        now = time.monotonic()
        if throttle and now - self._last_write < 0.5:
            return
        with self._status_lock:
            if all(k in self._written and self._written[k] == v for k, v in fields.items()):
                return  # unchanged: do not make the language server re-read it
            self._last_write = now
            try:
                write_status(self.state, **fields)
                self._written.update(fields)
                self._status_failure = None
            except (SwespotError, OSError) as exc:
                if str(exc) != self._status_failure:  # once per cause, not every poll
                    log.warning("could not update status.json: %s", exc)
                self._status_failure = str(exc)

    def expected_seconds(self) -> dict:
        last = (read_status(self.state).get("last_result") or {}).get("phase_seconds") or {}
        return {p: float(last.get(p, DEFAULT_PHASE_SECONDS[p])) for p in PHASES}

    def _progress_and_eta(self, phase: str, fraction: float | None) -> tuple[float | None, float | None]:
        run = self.run
        if run is None or phase not in PHASES:
            return None, None
        expected = self.expected_seconds()
        elapsed = max(0.0, time.monotonic() - run.phase_started - run.paused_s)
        if fraction and fraction > 0.02:
            this_total = elapsed / fraction
        else:
            this_total = max(expected[phase], elapsed)
        later = sum(expected[p] for p in PHASES[PHASES.index(phase) + 1:])
        remaining = max(0.0, this_total - elapsed) + later
        done = sum(run.done.values()) + elapsed
        return round(done / max(done + remaining, 1e-9), 4), round(remaining, 1)

    def on_phase(self, phase: str, fraction: float | None, detail: dict) -> None:
        run = self.run
        if run is None:
            return
        if phase != run.phase:
            if run.phase is not None:
                run.done[run.phase] = time.monotonic() - run.phase_started - run.paused_s
            run.phase, run.phase_started, run.paused_s = phase, time.monotonic(), 0.0
            log.info("phase %s (%s)", phase, run.commit[:10])
        progress, eta = self._progress_and_eta(phase, fraction)
        step = f" ({detail['step']}/{detail['total']})" if "step" in detail and "total" in detail else ""
        self.status(throttle=fraction not in (0.0, 1.0, None), phase=phase, phase_progress=fraction, progress=progress,
                    eta_s=eta, eta_at=time.time() + eta if eta is not None else None,
                    message=f"{phase}{step} for {run.commit[:10]}", paused=False)

    # ---- git events -----------------------------------------------------------------------------
    def on_git_event(self, path: str) -> None:
        """From the watcher thread: remember when, wake the main loop; during a run, show the new HEAD as
        queued."""
        log.debug("event: %s", path)
        if Path(path).name == RETRAIN_REQUEST:
            self.wake.set()
            return
        self.last_event = time.monotonic()
        self.wake.set()
        run = self.run
        if run is None:
            return
        try:
            head = read_git_state(self.repo).head
        except SwespotError:
            return
        if head and head != run.commit and head not in self.queued:
            self.queued.append(head)
            log.info("commit %s queued behind the running refresh", head[:10])
            self.status(queued=list(self.queued))

    def start_watcher(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.watcher = GitWatcher(self.repo, self.on_git_event, also=(self.state / RETRAIN_REQUEST,))
        self.watcher.start()

    def repo_present(self) -> bool:
        present = (self.repo / ".git").exists()
        if not present and not self._repo_gone:
            self._repo_gone = True
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
            msg = f"the repository {self.repo} is gone (deleted or moved); waiting for it to come back"
            log.error(msg)
            self.status(phase="error", error=msg, message=msg, progress=None, eta_s=None)
        elif present and self._repo_gone:
            self._repo_gone = False
            log.info("the repository %s is back", self.repo)
            self.git = None
            self.start_watcher()
            self.status(error=None)
        return present

    def observe(self, force: bool = False) -> None:
        """Read HEAD; when it moved (or ``force``): serve the right version for it. Then decide whether to
        train."""
        import git

        try:
            self._observe(force)
        except (SwespotError, OSError, git.GitError) as exc:  # a damaged repository, a full disk: say so, keep going
            self.pending = None
            message = f"cannot read the repository: {exc}"
            if message != read_status(self.state).get("error"):
                log.error("%s", message)
            self.status(phase="error", error=message, message=message)

    def _observe(self, force: bool) -> None:
        now = read_git_state(self.repo)
        if not self._repo_gone:
            self.status(error=None)
        if now.busy:
            self.set_waiting(f"a git operation is in progress ({now.busy}); waiting for it to finish")
            return
        if now.head is None:
            self.set_waiting("the repository has no commit yet")
            return
        if self.git != now or force:
            change = describe_change(self.repo, self.git, now)
            if self.git is not None and change != "no change":
                log.info("git: %s (HEAD %s%s)", change, now.head[:10], f" on {now.branch}" if now.branch else "")
            self.git = now
            choice = self.store.serve_for_head(self.repo)
            self.status(head=now.head, branch=now.branch, change=change,
                        serving={"version": choice.version.name if choice.version else None, "reason": choice.reason})
        self.pending = self.decide(now)

    def decide(self, now: GitState) -> Pending | None:
        head = now.head
        assert head is not None
        if (self.state / RETRAIN_REQUEST).exists():
            return Pending(head, "retraining asked for by the editor", forced=True)
        for _, version, _ in self.store.versions():
            if version is not None and version.commit == head:
                self.set_idle(f"up to date: {version.name} is trained on HEAD {head[:10]}")
                return None
        refused = self.refused.get(head)
        if refused is not None:
            when, why, retry = refused
            if not retry or time.monotonic() - when < self.opts.retry_s:
                self.set_idle(f"not training {head[:10]} again: {why}")
                return None
        served = self.store.current()
        base_commit = served.commit if served is not None else None
        new = commits_between(self.repo, base_commit, head) if base_commit else None
        if served is not None and new is not None and new < self.opts.min_commits:
            self.set_waiting(f"{new} new commit(s) since {served.name}; training after {self.opts.min_commits}")
            return None
        reason = "no adapter yet" if served is None else f"{new} new commit(s) since {served.name}"
        return Pending(head, reason)

    def set_idle(self, message: str) -> None:
        self._waiting_why = None
        self.status(phase="idle", message=message, progress=None, eta_s=None, eta_at=None, paused=False)

    def set_waiting(self, message: str) -> None:
        if message != self._waiting_why:
            log.info("waiting: %s", message)
        self._waiting_why = message
        self.status(phase="waiting", message=message, progress=None, eta_s=None, eta_at=None, paused=False)

    # ---- policy -------------------------------------------------------------------------------------
    def not_now(self, pending: Pending) -> tuple[str | None, float]:
        """(why a pending run must wait, how long until it is worth asking again)."""
        if pending.forced:
            return None, 0.0
        quiet_left = self.opts.quiet_s - (time.monotonic() - self.last_event)
        if quiet_left > 0:
            return f"waiting for git to be quiet for {self.opts.quiet_s:.0f} s", quiet_left
        if editor_generating(self.state, self.opts.heartbeat_stale_s):
            return "the editor is generating", 1.0
        if self.opts.when == "idle":
            why = machine_busy(self.pick_device(), self.opts.max_load, self.opts.min_gpu_free)
            if why:
                return why, 15.0
        return None, 0.0

    def pick_device(self) -> str:
        if self.device is None:
            from trainer.model_io import pick_device

            self.device = pick_device(self.opts.device)
        return self.device

    def lower_priority(self) -> None:
        if self._niced or self.pick_device() == "cuda" or self.opts.nice <= 0:
            return
        self._niced = True
        try:
            os.nice(self.opts.nice)
            log.info("training on the CPU at nice %d", os.nice(0))
        except OSError as exc:
            log.warning("could not lower the priority: %s", exc)

    # ---- one run --------------------------------------------------------------------------------------
    def run_refresh(self, pending: Pending) -> None:
        from trainer.pipeline import Interrupted, RefreshOptions, refresh

        self.lower_priority()
        if pending.forced:
            (self.state / RETRAIN_REQUEST).unlink(missing_ok=True)  # consumed: one request, one run
        self.run = _Run(pending.head, time.monotonic())
        self.queued = []  # a run trains on HEAD, which holds every commit queued before it
        self.pending = None
        self._waiting_why = None
        log.info("refresh for %s (%s)", pending.head[:10], pending.reason)
        self.status(phase="experience", progress=0.0, run={"commit": pending.head, "reason": pending.reason, "started_at": time.time()},
                    queued=list(self.queued), message=f"refreshing for {pending.head[:10]}: {pending.reason}")
        opts = RefreshOptions(repo=self.repo, base=self.opts.base, profile=self.opts.profile, cutoff=pending.head,
                              continue_training=self.opts.continue_training, gate=self.opts.gate, keep=self.opts.keep,
                              steps=self.opts.steps, state=self.state, progress=False, device=self.opts.device,
                              extra_manifest={"trigger": pending.reason, "branch": self.git.branch if self.git else None,
                                              "daemon": True})
        result = None
        error = None
        try:
            result = refresh(opts, on_phase=self.on_phase, control=Control(self))
        except Interrupted:
            phase = self.run.phase
            log.info("refresh for %s interrupted during %s; the next start resumes it", pending.head[:10], phase)
            self.status(phase="stopped", message=f"interrupted during {phase}; the next start resumes", run=None)
            return
        except (SwespotError, OSError) as exc:
            error = describe_error(exc, self.run.phase, self.state)
        except Exception as exc:  # noqa: BLE001 — the one boundary: report any failure, keep serving
            log.exception("refresh failed")
            error = describe_error(exc, self.run.phase, self.state)
        finally:
            self._raised = False
            run, self.run = self.run, None
        elapsed = round(time.monotonic() - run.started, 2)
        if error is not None:
            if error.startswith("disk full"):
                # make room to report it: the training scratch (its checkpoints, a half-written one) goes
                shutil.rmtree(self.state / "work", ignore_errors=True)
                error += " (the training scratch folder was removed to make room)"
            log.error("refresh for %s failed: %s", pending.head[:10], error)
            self.refused[pending.head] = (time.monotonic(), error, True)
            self.status(phase="idle", last_error=error, last_error_at=time.time(), run=None, progress=None, eta_s=None,
                        message=f"refresh failed: {error}",
                        last_result={"published": False, "commit": pending.head, "reason": error, "seconds": elapsed,
                                     "finished_at": time.time()})
        else:
            assert result is not None
            if not result.published:
                self.refused[pending.head] = (time.monotonic(), result.reason, False)
            log.info("refresh for %s: %s%s", pending.head[:10], result.reason,
                     f" ({result.version})" if result.version else "")
            self.status(phase="idle", last_error=None, run=None, progress=None, eta_s=None, eta_at=None,
                        message=(f"published {result.version} for {pending.head[:10]}" if result.published
                                 else f"kept the served version: {result.reason}"),
                        last_result={**result.to_dict(), "seconds": elapsed, "finished_at": time.time()})
        # HEAD may have moved meanwhile (a queued commit, a checkout): serve and decide again
        if self.repo_present():
            self.observe(force=True)

    # ---- signals and the loop -----------------------------------------------------------------------
    def on_signal(self, signum, _frame) -> None:
        from trainer.pipeline import Interrupted

        log.info("signal %d: stopping", signum)
        self.stop.set()
        self.wake.set()
        run = self.run
        if run is None or self._raised:
            return
        # Training stops at its next step, after a checkpoint; before the first step, and in the other
        # phases (all restartable, all writing by rename), stop at once. Publishing is short: let it end.
        if run.phase == "publish" or (run.phase == "train" and run.steps_seen > 0):
            return
        self._raised = True
        raise Interrupted(f"signal {signum} during {run.phase}")

    def serve(self) -> int:
        try:
            if not self.repo.is_dir():
                raise SwespotError(f"repository not found: {self.repo}")
            read_git_state(self.repo)  # fails clearly when it is not a git repository
        except SwespotError as exc:
            if lock_holder(self.state) is None:  # say why in status.json, where the editor looks
                self.status(phase="error", error=str(exc), pid=None, message=str(exc))
            raise
        self.lock.acquire(self.repo)
        previous = read_status(self.state)
        last = previous.get("last_result") or {}
        if last.get("commit") and not last.get("published") and str(last.get("reason", "")).startswith("gate"):
            self.refused[last["commit"]] = (time.monotonic(), last["reason"], False)
        old_handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            recovered = (f"recovered from daemon pid {self.lock.recovered['pid']}, which did not exit cleanly"
                         if self.lock.recovered else None)
            self.status(phase="starting", pid=os.getpid(), repo=str(self.repo), started_at=time.time(), error=None,
                        run=None, queued=[], paused=False, message=recovered or "starting",
                        options={"profile": self.opts.profile, "base": self.opts.base, "gate": self.opts.gate,
                                 "quiet_s": self.opts.quiet_s, "min_commits": self.opts.min_commits, "when": self.opts.when})
            log.info("watching %s (state %s)%s", self.repo, self.state, f"; {recovered}" if recovered else "")
            # git may have changed just before we started (and the editor that starts us is loading its
            # model): the quiet period counts from now
            self.last_event = time.monotonic()
            self.start_watcher()
            self.observe()
            self.loop()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            self.status(phase="stopped", pid=None, run=None, paused=False, progress=None, eta_s=None, eta_at=None,
                        message="the daemon is not running")
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self.lock.release()
        return 0

    def loop(self) -> None:
        from trainer.pipeline import Interrupted

        timeout = self.opts.poll_s
        while not self.stop.is_set():
            self.wake.wait(timeout)
            self.wake.clear()
            if self.stop.is_set():
                break
            # debounce: a checkout or rebase is a burst of ref writes; act once it settles
            while not self.stop.is_set() and time.monotonic() - self.last_event < self.opts.debounce_s:
                self.stop.wait(self.opts.debounce_s)
            timeout = self.opts.poll_s
            if not self.repo_present():
                continue
            self.observe()
            if self.pending is None:
                continue
            why, retry_in = self.not_now(self.pending)
            if why:
                self.set_waiting(f"{why} before training {self.pending.head[:10]}")
                timeout = min(self.opts.poll_s, max(0.05, retry_in))
                continue
            try:
                self.run_refresh(self.pending)
            except Interrupted:  # a signal between phases, outside refresh's own handling
                self.status(phase="stopped", run=None, message="interrupted")
                break


def run_daemon(opts: DaemonOptions) -> int:
    return Daemon(opts).serve()
