"""The trainer daemon without training: watching git, branch-aware serving, the lock, pausing for the
editor, status.json, the repository going away, failures reported, and feedback episodes. Real git, real
daemon processes, the language server's own heartbeat and feedback writers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.errors import DiskFull, NothingPublished, SwespotError
from agent.state import DaemonLock, editor_generating, request_retrain, state_dir
from daemon_support import GIT_ENV, NEXT_COMMITS, ROOT, commit, git, make_repo, read_json, stop_daemon, wait_for
from trainer.daemon import Control, Daemon, DaemonOptions, GitState, GitWatcher, Run, describe_change, describe_error, read_git_state
from trainer.store import AdapterStore


def fake_version(store: AdapterStore, tmp: Path, commit_sha: str):
    """A whole version naming ``commit_sha`` (the store checks files, not weights)."""
    src = tmp / f"adapter-{commit_sha[:8]}-{len(store.version_names())}"
    src.mkdir()
    (src / "adapter.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (src / "manifest.json").write_text(json.dumps({"commit": commit_sha}))
    return store.publish(src)


def cli(*args: str, state_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWESPOT_STATE_DIR": str(state_root), **GIT_ENV}
    return subprocess.run([sys.executable, "-m", "swespot", *args], cwd=ROOT, env=env, capture_output=True, text=True)


# ---- git ---------------------------------------------------------------------------------------------
def test_the_watcher_reports_ref_changes_and_names_commits_switches_and_rewrites(tmp_path):
    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    seen: list[str] = []
    got = threading.Event()

    def on_change(path: str) -> None:
        seen.append(path)
        got.set()

    watcher = GitWatcher(repo, on_change)
    watcher.start()
    try:
        before = read_git_state(repo)
        (repo / "ledger" / "money.py").write_text("# an unsaved thought\n")  # a file save: not watched
        git(repo, "checkout", "-q", "--", "ledger/money.py")
        c2 = commit(repo, *NEXT_COMMITS[0])
        assert got.wait(30), "no event for a commit"
        assert seen and all(Path(p).name in ("HEAD", "main", "packed-refs") or "/refs/" in p for p in seen), seen
        after = read_git_state(repo)
        assert (after.head, after.branch) == (c2, "main")
        assert describe_change(repo, before, after) == "1 new commit(s)"

        got.clear()
        git(repo, "checkout", "-q", "-b", "feature", c1)
        assert got.wait(30), "no event for a checkout"
        switched = read_git_state(repo)
        assert describe_change(repo, after, switched) == "switch to feature"

        c3 = commit(repo, *NEXT_COMMITS[1])
        git(repo, "commit", "-q", "--amend", "-m", "Reworded")
        amended = read_git_state(repo)
        assert amended.head != c3
        assert describe_change(repo, GitState(c3, "feature", None), amended) == "history rewritten (amend or rebase)"
        git(repo, "reset", "-q", "--hard", c1)
        assert describe_change(repo, amended, read_git_state(repo)) == "reset to an earlier commit"
    finally:
        watcher.stop()


def test_a_rebase_in_progress_is_seen_as_busy(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "ledger" / "money.py").write_text("CONFLICT = 1\n")
    git(repo, "commit", "-qam", "feature side")
    git(repo, "checkout", "-q", "main")
    (repo / "ledger" / "money.py").write_text("CONFLICT = 2\n")
    git(repo, "commit", "-qam", "main side")
    git(repo, "checkout", "-q", "feature")
    env = {**os.environ, **GIT_ENV}
    assert subprocess.run(["git", "rebase", "main"], cwd=repo, capture_output=True, env=env).returncode != 0
    assert read_git_state(repo).busy in ("rebase-merge", "rebase-apply")
    git(repo, "rebase", "--abort")
    assert read_git_state(repo).busy is None


# ---- branch-aware serving -------------------------------------------------------------------------------
def test_after_a_checkout_the_newest_version_on_an_ancestor_is_served_and_list_says_why(tmp_path, monkeypatch):
    repo, state_root = tmp_path / "repo", tmp_path / "data"
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    if True:
        store = AdapterStore.for_repo(repo)
        c1 = make_repo(repo)
        v1 = fake_version(store, tmp_path, c1)
        c2 = commit(repo, *NEXT_COMMITS[0])
        v2 = fake_version(store, tmp_path, c2)
        git(repo, "checkout", "-q", "-b", "feature", c1)
        f1 = commit(repo, *NEXT_COMMITS[1])
        v3 = fake_version(store, tmp_path, f1)
        assert store.current_name() == v3.name

        git(repo, "checkout", "-q", "main")
        choice = store.serve_for_head(repo)
        assert choice.version.name == v2.name and store.current_name() == v2.name
        assert "newest version trained on an ancestor of HEAD" in choice.reason and "(main)" in choice.reason
        listed = cli("adapters", "list", "--json", "--repo", str(repo), state_root=state_root)
        assert listed.returncode == 0, listed.stderr
        data = json.loads(listed.stdout)
        assert data["current"] == v2.name and data["branch"] == "main" and data["for_head"] == v2.name
        assert "newest version trained on an ancestor" in data["why_current"]
        rows = {r["version"]: r for r in data["versions"]}
        assert rows[v3.name]["fits_head"] is False and "not an ancestor of HEAD" in rows[v3.name]["why"]
        assert rows[v1.name]["fits_head"] is True and rows[v2.name]["why"].endswith("HEAD itself")
        human = cli("adapters", "list", "--repo", str(repo), state_root=state_root).stdout
        assert f"serving: {v2.name}" in human and "on main" in human

        # amend the commit v2 was trained on: v2 no longer describes this history, v1 does
        git(repo, "commit", "-q", "--amend", "-m", "Reworded")
        assert store.serve_for_head(repo).version.name == v1.name
        # an orphan branch shares nothing: the base model is served
        git(repo, "checkout", "-q", "--orphan", "fresh")
        git(repo, "commit", "-q", "-m", "unrelated start")
        choice = store.serve_for_head(repo)
        assert choice.version is None and store.current() is None and "serving the base model" in choice.reason


def test_a_rollback_is_kept_while_it_fits_until_a_new_version_is_published(tmp_path):
    repo, state_root = tmp_path / "repo", tmp_path / "data"
    c1 = make_repo(repo)
    store = AdapterStore(state_root)
    v1 = fake_version(store, tmp_path, c1)
    c2 = commit(repo, *NEXT_COMMITS[0])
    v2 = fake_version(store, tmp_path, c2)
    store.rollback(v1.name)
    choice = store.serve_for_head(repo)
    assert choice.version.name == v1.name and choice.pinned and "rolled back" in choice.reason
    assert store.current_name() == v1.name
    v3 = fake_version(store, tmp_path, commit(repo, *NEXT_COMMITS[1]))
    assert store.serve_for_head(repo).version.name == v3.name  # a publish ends the pin
    assert v2.name != v3.name


# ---- the lock ----------------------------------------------------------------------------------------
def test_a_held_lock_refuses_and_a_dead_holders_lock_is_recovered(tmp_path):
    first = DaemonLock(tmp_path)
    first.acquire(tmp_path / "repo")
    with pytest.raises(SwespotError, match=rf"already running .*pid {os.getpid()}"):
        DaemonLock(tmp_path).acquire(tmp_path / "repo")
    first.release()
    again = DaemonLock(tmp_path)
    again.acquire(tmp_path / "repo")
    assert again.recovered is None  # a clean release leaves nothing to recover
    again.release()
    # a holder killed with -9 never releases: the kernel drops its flock, its record stays. It holds the
    # lock until its stdin closes, so it cannot outlive this test even if the test process dies.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from agent.state import DaemonLock; "
        "DaemonLock(Path(sys.argv[2])).acquire(Path('r')); print('locked', flush=True); sys.stdin.read()"), str(ROOT), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SwespotError, match=f"pid {holder.pid}"):
            DaemonLock(tmp_path).acquire(tmp_path / "repo")
    finally:
        holder.kill()
        holder.communicate()
    recovered = DaemonLock(tmp_path)
    recovered.acquire(tmp_path / "repo")
    assert recovered.recovered["pid"] == holder.pid
    recovered.release()


# ---- a real daemon process, no training ------------------------------------------------------------------
def test_daemon_process_watches_refuses_a_second_one_survives_the_repo_moving_and_stops_on_sigterm(tmp_path, monkeypatch, daemons):
    repo, state_root, log = tmp_path / "repo", tmp_path / "data", tmp_path / "daemon.log"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")  # no commit yet: nothing to train, the daemon waits
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    state = state_dir(repo)
    status = state / "status.json"
    # --quiet 3600: a commit is noticed and queued, never trained in this test
    proc = daemons(repo, state_root, log, "--quiet", "3600", "--when", "always")
    wait_for(lambda: read_json(status).get("pid") == proc.pid and read_json(status).get("phase") == "waiting", "waiting",
             60, proc, log)
    assert "no commit yet" in read_json(status)["message"]

    second = subprocess.run(
        [sys.executable, "-m", "swespot", "daemon", "--repo", str(repo)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "SWESPOT_STATE_DIR": str(state_root)}, timeout=120)
    assert second.returncode == 1
    assert f"a trainer daemon is already running for {repo} (pid {proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr

    c1 = make_repo_commit(repo)
    s = wait_for(lambda: (lambda st: st if st.get("head") == c1 and "quiet" in st.get("message", "") else None)(read_json(status)),
                 "the commit noticed and held for the quiet period", 60, proc, log)
    assert s["branch"] == "main" and s["phase"] == "waiting" and c1[:10] in s["message"]

    moved = tmp_path / "moved"
    shutil.move(repo, moved)
    wait_for(lambda: "is gone" in (read_json(status).get("error") or ""), "the repository reported gone", 60, proc, log)
    assert proc.poll() is None
    shutil.move(moved, repo)
    wait_for(lambda: read_json(status).get("error") is None and read_json(status).get("phase") == "waiting",
             "the repository back", 60, proc, log)

    assert stop_daemon(proc, signal.SIGTERM) == 0
    final = read_json(status)
    assert final["phase"] == "stopped" and final["pid"] is None
    assert (state / "daemon.lock").read_text() == ""  # released cleanly
    assert not (state / "adapters").exists()  # nothing was ever published


def make_repo_commit(repo: Path) -> str:
    from daemon_support import FILES

    return commit(repo, "Start the ledger", FILES)


def test_a_failed_refresh_is_reported_and_the_daemon_keeps_serving(tmp_path, monkeypatch, daemons):
    repo, state_root, log = tmp_path / "repo", tmp_path / "data", tmp_path / "daemon.log"
    c1 = make_repo(repo)
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    state = state_dir(repo)
    status = state / "status.json"
    proc = daemons(repo, state_root, log, "--quiet", "0", "--when", "always", "--base", str(tmp_path / "no-such-model"),
                        "--profile", "tiny")
    s = wait_for(lambda: (lambda st: st if st.get("last_error") else None)(read_json(status)), "the failure", 300, proc, log)
    assert "base model not found" in s["last_error"] and "nothing was published" in s["last_error"]
    assert s["last_result"]["commit"] == c1 and s["last_result"]["published"] is False
    assert s["phase"] == "idle" and proc.poll() is None
    assert AdapterStore(state).current() is None
    assert stop_daemon(proc) == 0


# ---- pausing for the editor, progress --------------------------------------------------------------------
def test_training_pauses_while_the_editor_generates_and_stops_on_request(tmp_path):
    from lsp_server.state_files import Heartbeat
    from trainer.pipeline import Interrupted

    repo = tmp_path / "repo"
    make_repo(repo)
    daemon = Daemon(DaemonOptions(repo=repo, quiet_s=0), state=tmp_path / "state")
    control = Control(daemon)
    heartbeat = Heartbeat(daemon.state)
    control.between_steps(1, 10)  # nobody is generating: returns at once
    heartbeat.start()
    assert editor_generating(daemon.state, 10.0)
    returned = threading.Event()
    worker = threading.Thread(target=lambda: (control.between_steps(2, 10), returned.set()))
    worker.start()
    wait_for(lambda: read_json(daemon.state / "status.json").get("phase") == "paused", "paused", 30)
    assert not returned.is_set()
    heartbeat.stop()
    worker.join(30)
    assert returned.is_set() and read_json(daemon.state / "status.json")["phase"] == "train"
    # a heartbeat from a process that is gone does not hold training back
    (daemon.state / "heartbeat.json").write_text(json.dumps({"pid": 2**22 + 7, "generating": True, "updated_at": 9e12}))
    assert not editor_generating(daemon.state, 10.0)
    daemon.stop.set()
    with pytest.raises(Interrupted):
        control.between_steps(3, 10)


def test_status_reports_phase_progress_and_an_eta(tmp_path):
    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    daemon = Daemon(DaemonOptions(repo=repo), state=tmp_path / "state")
    daemon.run = Run(c1, 0.0)
    daemon.status_writer.interval_s = 0.0  # every progress report is written (the daemon throttles them)
    seen = []
    for phase, fraction, detail in [("experience", 0.0, {}), ("experience", 1.0, {}), ("train", 0.0, {}),
                                    ("train", 0.5, {"step": 3, "total": 6}), ("train", 1.0, {"step": 6, "total": 6}),
                                    ("export", 0.0, {}), ("gate", 0.0, {}), ("publish", 0.0, {})]:
        daemon.on_phase(phase, fraction, detail)
        seen.append(read_json(daemon.state / "status.json"))
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress) and 0 <= progress[0] < progress[-1] <= 1
    assert all(s["eta_s"] >= 0 for s in seen) and seen[3]["message"] == f"train (3/6) for {c1[:10]}"
    assert seen[-1]["phase"] == "publish"


def test_a_signal_only_sets_the_stop_flag_and_a_run_stops_at_its_next_report_but_publishing_ends(tmp_path):
    from trainer.pipeline import Interrupted

    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    daemon = Daemon(DaemonOptions(repo=repo), state=tmp_path / "state")
    daemon.run = Run(c1, 0.0)
    daemon.on_phase("experience", 0.0, {})
    daemon.on_signal(signal.SIGTERM, None)  # returns: nothing is raised wherever the main thread is
    assert daemon.stop.is_set() and daemon.wake.is_set()
    with pytest.raises(Interrupted):
        daemon.on_phase("experience", 1.0, {})
    assert daemon.run.phase == "experience"
    daemon.on_phase("publish", 0.0, {})  # a publish already under way is let to end
    with pytest.raises(Interrupted):
        Control(daemon).between_steps(1, 10)


def test_a_signal_during_the_experience_build_stops_it_at_the_next_file(tmp_path, monkeypatch):
    import trainer.pipeline as P

    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    daemon = Daemon(DaemonOptions(repo=repo), state=tmp_path / "state")
    daemon.run = Run(c1, 0.0)
    monkeypatch.setattr(P, "BUILD_REPORT_EVERY_S", 0.0)  # report (and check the flag) before every file
    files = []

    def on_phase(phase: str, fraction: float | None, detail: dict) -> None:
        if "done" in detail:
            files.append(detail["done"])
            if detail["done"] == 1:  # a SIGTERM once the first file is built
                daemon.on_signal(signal.SIGTERM, None)
        daemon.on_phase(phase, fraction, detail)

    with pytest.raises(P.Interrupted, match="during experience"):
        P.refresh(P.RefreshOptions(repo, profile="tiny", state=daemon.state, progress=False), on_phase=on_phase)
    assert files == [0, 1]  # stopped before the second file, not at the end of the phase
    experience = daemon.state / "experience"
    assert len(list(experience.glob("*/*.jsonl"))) == 1 and not (experience / "experience.json").exists()


def test_failures_are_one_line_that_says_nothing_was_published_and_names_a_full_disk(tmp_path):
    full = describe_error(OSError(errno.ENOSPC, "No space left on device"), "train")
    assert isinstance(full, DiskFull)
    assert str(full) == "disk full during train: [Errno 28] No space left on device; nothing was published"
    wrapped = NothingPublished("training failed writing to w: [Errno 28] No space left on device (is the disk full?)")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(describe_error(wrapped, "train", tmp_path), DiskFull)  # the kind, not the words, says so
    published = describe_error(NothingPublished("could not publish: x"), "publish", tmp_path)
    assert str(published) == "could not publish: x; nothing was published" and not isinstance(published, DiskFull)
    assert str(describe_error(RuntimeError("boom"), "gate", tmp_path)) == "RuntimeError: boom during gate; nothing was published"


# ---- feedback episodes ---------------------------------------------------------------------------------
def test_feedback_accepted_become_episodes_and_rejected_are_kept_apart_as_contrast(tmp_path):
    from lsp_server.state_files import FeedbackLog
    from trainer import data as D
    from trainer.experience.feedback import CONTRAST, build_feedback

    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    state = tmp_path / "state"
    journal = FeedbackLog(state)
    uri = (repo / "ledger" / "money.py").as_uri()
    served = {"kind": "inlineCompletion", "uri": uri, "prefix_tail": "def cents(amount):\n    ", "text": "return int(amount * 100)\n"}
    journal.record({"id": "c1", "kind": "inlineCompletion", "action": "accepted", "uri": uri, "served": served})
    journal.record({"id": "c2", "kind": "inlineCompletion", "action": "rejected", "uri": uri,
                    "served": {**served, "text": "return amount\n"}})
    journal.record({"id": "c3", "kind": "inlineCompletion", "action": "accepted", "uri": uri, "served": {**served, "text": "x = 1\n"}})
    journal.record({"id": "c3", "kind": "inlineCompletion", "action": "editedAfterAccept", "uri": uri, "final_text": "x = 2\n",
                    "served": {**served, "text": "x = 1\n"}})
    journal.record({"id": "t1", "kind": "task", "action": "accepted",
                    "served": {"kind": "task", "request": "add a fee", "diff": "--- a/f.py\n+++ b/f.py\n@@\n+FEE = 1\n"}})
    journal.record({"id": "h1", "kind": "chat", "action": "accepted", "served": {}})
    journal.record({"id": "o1", "kind": "inlineCompletion", "action": "accepted", "uri": "file:///etc/passwd",
                    "served": {**served, "uri": "file:///etc/passwd"}})
    with open(journal.path, "a") as fh:
        fh.write('{"id": "cut short by a cra')

    out = tmp_path / "experience"
    result = build_feedback(journal.path, repo, out, c1)
    assert (result.positives, result.contrast) == (3, 1)
    assert result.skipped == {"chat feedback carries no text to learn": 1, "file outside the repository": 1,
                              "unreadable journal line": 1}
    episodes = D.read_episodes(out)  # what training reads: positives only
    assert {e["meta"]["feedback_id"] for e in episodes} == {"c1", "c3", "t1"}
    edited = next(e for e in episodes if e["meta"]["feedback_id"] == "c3")
    assert edited["messages"][-1]["content"] == "x = 2\n" and edited["unit"] == "feedback"
    assert "ledger/money.py" in episodes[0]["messages"][0]["content"]
    contrast = [json.loads(line) for shard in (out / CONTRAST).glob("*.jsonl") for line in shard.read_text().splitlines()]
    assert [e["meta"]["feedback_id"] for e in contrast] == ["c2"]
    shard = result.shard
    assert build_feedback(journal.path, repo, out, c1).shard == shard  # same decisions: same shard, kept
    journal.record({"id": "c1", "kind": "inlineCompletion", "action": "rejected", "uri": uri, "served": served})
    again = build_feedback(journal.path, repo, out, c1)
    assert (again.positives, again.contrast) == (2, 2) and not shard.exists()


def test_a_retrain_request_from_the_editor_wakes_the_daemon_and_skips_the_schedule(tmp_path):
    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    daemon = Daemon(DaemonOptions(repo=repo, quiet_s=3600), state=tmp_path / "state")
    fake_version(daemon.store, tmp_path, c1)
    daemon.observe()
    assert daemon.pending is None and read_json(daemon.state / "status.json")["message"].startswith("up to date: v0001")
    daemon.start_watcher()
    try:
        daemon.wake.clear()
        request_retrain(daemon.state, by="swespot serve")  # what the language server's swespot/retrain does
        assert daemon.wake.wait(30), "the request did not wake the daemon"
    finally:
        daemon.watcher.stop()
    daemon.observe()
    assert daemon.pending.forced and daemon.pending.head == c1
    assert daemon.not_now(daemon.pending) == (None, 0.0)
    # a commit, by contrast, waits for the quiet period
    (daemon.state / "retrain.request").unlink()
    c2 = commit(repo, *NEXT_COMMITS[0])
    daemon.on_git_event(str(repo / ".git" / "refs" / "heads" / "main"))
    daemon.observe()
    assert daemon.pending.head == c2 and not daemon.pending.forced
    why, retry_in = daemon.not_now(daemon.pending)
    assert "quiet" in why and 0 < retry_in <= 3600


def test_corrupt_store_files_do_not_stop_the_daemon_from_serving_the_last_good_version(tmp_path):
    repo = tmp_path / "repo"
    c1 = make_repo(repo)
    state = tmp_path / "state"
    store = AdapterStore(state)
    fake_version(store, tmp_path, c1)
    fake_version(store, tmp_path, c1)
    (store.root / "v0002" / "manifest.json").write_text('{"commit": "half-wri')  # a crash mid-write (by hand)
    (state / "status.json").write_text("\0\0garbage")
    store.selection_file.write_text("[not an object")
    (state / "daemon.lock").write_text("}{ not json")
    (store.root / ".incoming-v0003-999").mkdir()  # a publish killed half-way
    daemon = Daemon(DaemonOptions(repo=repo), state=state)
    daemon.lock.acquire(repo)
    try:
        assert daemon.lock.recovered is None
        daemon.observe()
        assert store.current_name() == "v0001"  # the damaged v0002 is never served
        status = read_json(state / "status.json")
        assert status["serving"]["version"] == "v0001" and status["phase"] == "idle"
        assert status["message"] == "up to date: v0001 is trained on HEAD " + c1[:10]
        listed = dict((n, why) for n, _, why in store.choose_for_head(repo).explained)
        assert listed["v0002"].startswith("damaged: manifest.json is unreadable")
    finally:
        daemon.lock.release()


def test_a_folder_that_is_not_a_repository_is_refused_with_the_reason_in_status(tmp_path, monkeypatch):
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "data"))
    folder = tmp_path / "plain"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "swespot", "daemon", "--repo", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == f"swespot: error: {folder} is not a git repository"
    assert read_json(state_dir(folder) / "status.json")["error"] == f"{folder} is not a git repository"


def test_a_running_daemon_switches_the_served_version_when_the_branch_changes(tmp_path, monkeypatch, daemons):
    repo, state_root, log = tmp_path / "repo", tmp_path / "data", tmp_path / "daemon.log"
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    c1 = make_repo(repo)
    store = AdapterStore.for_repo(repo)
    on_main = fake_version(store, tmp_path, commit(repo, *NEXT_COMMITS[0]))
    git(repo, "checkout", "-q", "-b", "feature", c1)
    on_feature = fake_version(store, tmp_path, commit(repo, *NEXT_COMMITS[1]))
    git(repo, "checkout", "-q", "main")  # while no daemon runs: current still names the feature's version
    assert store.current_name() == on_feature.name
    # every HEAD here has a version trained on it: nothing to train, only serving to decide
    proc = daemons(repo, state_root, log, "--quiet", "0", "--when", "always")
    status = store.state / "status.json"
    wait_for(lambda: store.current_name() == on_main.name and read_json(status).get("phase") == "idle",
             "the main branch's version served at start", 60, proc, log)
    git(repo, "checkout", "-q", "feature")
    wait_for(lambda: store.current_name() == on_feature.name, "the feature branch's version served", 60, proc, log)
    s = wait_for(lambda: (lambda st: st if st.get("branch") == "feature" and st.get("phase") == "idle" else None)(read_json(status)),
                 "status for the feature branch", 60, proc, log)
    assert s["serving"] == {"version": on_feature.name, "reason": store.choose_for_head(repo).reason}
    assert s["change"] == "switch to feature" and s["message"].startswith(f"up to date: {on_feature.name}")
    git(repo, "checkout", "-q", "main")
    wait_for(lambda: store.current_name() == on_main.name, "back to the main branch's version", 60, proc, log)
    assert stop_daemon(proc) == 0
    assert store.version_names() == [on_main.name, on_feature.name]  # nothing was trained
