"""The daemon's service loop: hold the lock, watch git, serve the right version for HEAD, ask the policy,
run one refresh at a time and report everything in status.json.

Signals only set a flag (``stop``) and wake the loop; nothing is raised wherever the main thread happens
to be. The flag is checked by the loop between decisions, and during a run by the refresh's own
callbacks: at every training step (``Control.between_steps``: a checkpoint is saved first, the next
start resumes) and at every phase report (``on_phase``; the experience build reports between its files),
so a run stops at the next step of training, the next file of the experience build, or the next phase
boundary otherwise. Publishing is short and is let to end."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import git

from agent.errors import DiskFull, NothingPublished, SwespotError
from agent.state import RETRAIN_REQUEST, WORK_DIR, DaemonLock, consume_retrain_request, editor_generating, lock_holder, read_status, state_dir
from trainer.daemon.failures import describe_error
from trainer.daemon.policy import DaemonOptions, Hold, Pending, Policy
from trainer.daemon.progress import Run, StatusWriter, expected_seconds
from trainer.daemon.watching import GitState, GitWatcher, describe_change, read_git_state
from trainer.pipeline import Interrupted, RefreshOptions, RefreshResult, refresh
from trainer.store import AdapterStore

log = logging.getLogger(__name__)


class Control:
    """What training calls between optimizer steps: stop when the flag is set (training saves a
    checkpoint first) and pause while the editor generates."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def between_steps(self, step: int, total: int) -> None:
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
        self.policy = Policy(self.opts, self.repo, self.state, self.store)
        self.status_writer = StatusWriter(self.state)
        self.stop = threading.Event()  # set by a signal: the loop and the run's callbacks stop at their next check
        self.wake = threading.Event()
        self.watcher: GitWatcher | None = None
        self.git: GitState | None = None
        self.pending: Pending | None = None
        self.run: Run | None = None
        self.last_event = 0.0  # monotonic time of the last git event
        self.queued: list[str] = []
        self._niced = False
        self._repo_gone = False
        self._waiting_why: str | None = None

    def status(self, *, throttle: bool = False, **fields: object) -> None:
        """Update status.json; never fatal (see StatusWriter)."""
        self.status_writer.write(throttle=throttle, **fields)

    # ---- progress ----------------------------------------------------------------------------------
    def on_phase(self, phase: str, fraction: float | None, detail: dict) -> None:
        """The refresh's progress callback: time the phase, report progress and an ETA; stop here when
        the flag is set (publishing, which is short, is let to end)."""
        run = self.run
        if run is None:
            return
        if run.enter(phase):
            log.info("phase %s (%s)", phase, run.commit[:10])
        if self.stop.is_set() and phase != "publish":
            raise Interrupted(f"stopped by a signal during {phase}")
        progress, eta = run.progress_and_eta(phase, fraction, expected_seconds(read_status(self.state)))
        step = f" ({detail['step']}/{detail['total']})" if "step" in detail and "total" in detail else ""
        self.status(throttle=fraction not in (0.0, 1.0, None), phase=phase, phase_progress=fraction, progress=progress,
                    eta_s=eta, eta_at=time.time() + eta if eta is not None else None,
                    message=f"{phase}{step} for {run.commit[:10]}", paused=False)

    # ---- git events -------------------------------------------------------------------------------
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
        """Read HEAD; when it moved (or ``force``): serve the right version for it. Then ask the policy
        whether to train (``pending``)."""
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
            self.pending = None
            self.hold(Hold(f"a git operation is in progress ({now.busy}); waiting for it to finish"))
            return
        if now.head is None:
            self.pending = None
            self.hold(Hold("the repository has no commit yet"))
            return
        if self.git != now or force:
            change = describe_change(self.repo, self.git, now)
            if self.git is not None and change != "no change":
                log.info("git: %s (HEAD %s%s)", change, now.head[:10], f" on {now.branch}" if now.branch else "")
            self.git = now
            choice = self.store.serve_for_head(self.repo)
            self.status(head=now.head, branch=now.branch, change=change,
                        serving={"version": choice.version.name if choice.version else None, "reason": choice.reason})
        decision = self.policy.decide(now.head)
        if isinstance(decision, Hold):
            self.pending = None
            self.hold(decision)
        else:
            self.pending = decision

    def hold(self, hold: Hold) -> None:
        """Say in status.json why nothing runs: idle (nothing to do) or waiting (for something)."""
        if hold.idle:
            self._waiting_why = None
            phase = "idle"
        else:
            if hold.message != self._waiting_why:
                log.info("waiting: %s", hold.message)
            self._waiting_why = hold.message
            phase = "waiting"
        self.status(phase=phase, message=hold.message, progress=None, eta_s=None, eta_at=None, paused=False)

    def not_now(self, pending: Pending) -> tuple[str | None, float]:
        return self.policy.not_now(pending, self.last_event)

    def lower_priority(self) -> None:
        if self._niced or self.policy.device() == "cuda" or self.opts.nice <= 0:
            return
        self._niced = True
        try:
            os.nice(self.opts.nice)
            log.info("training on the CPU at nice %d", os.nice(0))
        except OSError as exc:
            log.warning("could not lower the priority: %s", exc)

    # ---- one run ----------------------------------------------------------------------------------
    def run_refresh(self, pending: Pending) -> None:
        self.lower_priority()
        if pending.forced:
            consume_retrain_request(self.state)  # one request, one run
        run = self.run = Run(pending.head, time.monotonic())
        self.queued = []  # a run trains on HEAD, which holds every commit queued before it
        self.pending = None
        self._waiting_why = None
        log.info("refresh for %s (%s)", pending.head[:10], pending.reason)
        self.status(phase="experience", progress=0.0, run={"commit": pending.head, "reason": pending.reason, "started_at": time.time()},
                    queued=list(self.queued), message=f"refreshing for {pending.head[:10]}: {pending.reason}")
        outcome: RefreshResult | NothingPublished
        try:
            outcome = refresh(self.refresh_options(pending), on_phase=self.on_phase, control=Control(self))
        except Interrupted:
            log.info("refresh for %s interrupted during %s; the next start resumes it", pending.head[:10], run.phase)
            self.status(phase="stopped", message=f"interrupted during {run.phase}; the next start resumes", run=None)
            return
        except (SwespotError, OSError) as exc:
            outcome = describe_error(exc, run.phase, self.state)
        except Exception as exc:  # the one boundary: report any failure, keep serving
            log.exception("refresh failed")
            outcome = describe_error(exc, run.phase, self.state)
        finally:
            self.run = None
        elapsed = round(time.monotonic() - run.started, 2)
        if isinstance(outcome, NothingPublished):
            self.report_failure(pending, outcome, elapsed)
        else:
            self.report_result(pending, outcome, elapsed)
        # HEAD may have moved meanwhile (a queued commit, a checkout): serve and decide again
        if self.repo_present():
            self.observe(force=True)

    def refresh_options(self, pending: Pending) -> RefreshOptions:
        o = self.opts
        return RefreshOptions(repo=self.repo, base=o.base, profile=o.profile, cutoff=pending.head,
                              continue_training=o.continue_training, gate=o.gate, keep=o.keep, steps=o.steps, state=self.state,
                              progress=False, device=o.device,
                              chat=False,  # 20-35 min a refresh on 2 cores: the served chat adapter is carried over
                              extra_manifest={"trigger": pending.reason, "branch": self.git.branch if self.git else None,
                                              "daemon": True})

    def report_failure(self, pending: Pending, failure: NothingPublished, elapsed: float) -> None:
        error = str(failure)
        if isinstance(failure, DiskFull):
            # make room to report it: the training scratch (its checkpoints, a half-written one) goes
            shutil.rmtree(self.state / WORK_DIR, ignore_errors=True)
            error += " (the training scratch folder was removed to make room)"
        log.error("refresh for %s failed: %s", pending.head[:10], error)
        self.policy.refuse(pending.head, error, retry=True)
        self.status(phase="idle", last_error=error, last_error_at=time.time(), run=None, progress=None, eta_s=None,
                    message=f"refresh failed: {error}",
                    last_result={"published": False, "commit": pending.head, "reason": error, "seconds": elapsed,
                                 "finished_at": time.time()})

    def report_result(self, pending: Pending, result: RefreshResult, elapsed: float) -> None:
        if not result.published:
            self.policy.refuse(pending.head, result.reason, retry=False)
        log.info("refresh for %s: %s%s", pending.head[:10], result.reason, f" ({result.version})" if result.version else "")
        self.status(phase="idle", last_error=None, run=None, progress=None, eta_s=None, eta_at=None,
                    message=(f"published {result.version} for {pending.head[:10]}" if result.published
                             else f"kept the served version: {result.reason}"),
                    last_result={**result.to_dict(), "seconds": elapsed, "finished_at": time.time()})

    # ---- signals and the loop ---------------------------------------------------------------------
    def on_signal(self, signum: int, _frame: object) -> None:
        """SIGTERM, SIGINT: set the flag and wake the loop; nothing is raised here."""
        log.info("signal %d: stopping", signum)
        self.stop.set()
        self.wake.set()

    def serve(self) -> int:
        self.check_repository()
        self.lock.acquire(self.repo)
        self.policy.remember(read_status(self.state).get("last_result") or {})
        old_handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.announce_start()
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

    def check_repository(self) -> None:
        """Refuse a folder that is not a git repository, and say why in status.json, where the editor
        looks (unless another daemon owns that file)."""
        try:
            if not self.repo.is_dir():
                raise SwespotError(f"repository not found: {self.repo}")
            read_git_state(self.repo)
        except SwespotError as exc:
            if lock_holder(self.state) is None:
                self.status(phase="error", error=str(exc), pid=None, message=str(exc))
            raise

    def announce_start(self) -> None:
        recovered = (f"recovered from daemon pid {self.lock.recovered['pid']}, which did not exit cleanly"
                     if self.lock.recovered else None)
        o = self.opts
        self.status(phase="starting", pid=os.getpid(), repo=str(self.repo), started_at=time.time(), error=None,
                    run=None, queued=[], paused=False, message=recovered or "starting",
                    options={"profile": o.profile, "base": o.base, "gate": o.gate, "quiet_s": o.quiet_s,
                             "min_commits": o.min_commits, "when": o.when})
        log.info("watching %s (state %s)%s", self.repo, self.state, f"; {recovered}" if recovered else "")

    def loop(self) -> None:
        timeout = self.opts.poll_s
        while not self.stop.is_set():
            self.wake.wait(timeout)
            self.wake.clear()
            # debounce: a checkout or rebase is a burst of ref writes; act once it settles
            while not self.stop.is_set() and time.monotonic() - self.last_event < self.opts.debounce_s:
                self.stop.wait(self.opts.debounce_s)
            if self.stop.is_set():
                break
            timeout = self.opts.poll_s
            if not self.repo_present():
                continue
            self.observe()
            if self.pending is None:
                continue
            why, retry_in = self.not_now(self.pending)
            if why:
                self.hold(Hold(f"{why} before training {self.pending.head[:10]}"))
                timeout = min(self.opts.poll_s, max(0.05, retry_in))
                continue
            self.run_refresh(self.pending)


def run_daemon(opts: DaemonOptions) -> int:
    return Daemon(opts).serve()
