"""``swespot daemon``: keeps one repository's adapter fresh in the background.

    git refs/HEAD change ─► debounce ─► serve the right version for HEAD (branch-aware)
                                    └─► policy (new commits, quiet period, idle machine, editor not busy)
                                          └─► refresh (trainer/pipeline.py) ─► status.json, publish

The daemon is its own process (the language server starts it as ``swespot daemon --repo REPO`` and stops
it with SIGTERM to its process group, lsp_server/daemon.py). It talks to the language
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
  never blocks); SIGTERM sets a flag: a run stops at the next training step with a checkpoint, at the next
  file of the experience build (the shards made so far are reused), or at the next phase boundary, and the
  next start resumes. Training runs at low
  CPU priority (nice) and pauses while the language server's heartbeat says the user is waiting on the model. A failed
  run (a full disk, a vanished repository, a damaged file) is one line in status.json's ``last_error``;
  the daemon keeps serving what it served.

The package, by concern:
    watching.py   git state, what changed, watchdog on the git folder
    policy.py     DaemonOptions; whether HEAD needs a run and whether now is the time
    progress.py   phase timing, progress and ETA, status.json writes cheap enough for every step
    failures.py   one line per failed run, typed (NothingPublished, DiskFull)
    service.py    the Daemon: lock, signals (a flag), the loop, one refresh at a time
The state folder's files (status.json, the lock, heartbeat, retrain.request) are agent/state.py's.
"""

from agent.state import PHASES, RETRAIN_REQUEST, DaemonLock, editor_generating, lock_holder
from trainer.daemon.failures import LOW_DISK_BYTES, describe_error, free_bytes
from trainer.daemon.policy import DaemonOptions, Hold, Pending, Policy, machine_busy
from trainer.daemon.progress import DEFAULT_PHASE_SECONDS, Run, StatusWriter
from trainer.daemon.service import Control, Daemon, run_daemon
from trainer.daemon.watching import IN_PROGRESS, GitState, GitWatcher, commits_between, describe_change, read_git_state

__all__ = ["DEFAULT_PHASE_SECONDS", "IN_PROGRESS", "LOW_DISK_BYTES", "PHASES", "RETRAIN_REQUEST", "Control", "Daemon", "DaemonLock",
           "DaemonOptions", "GitState", "GitWatcher", "Hold", "Pending", "Policy", "Run", "StatusWriter", "commits_between",
           "describe_change", "describe_error", "editor_generating", "free_bytes", "lock_holder", "machine_busy", "read_git_state",
           "run_daemon"]
