"""The trainer daemon end to end: a real ``swespot daemon`` process, the tiny model trained on CPU, and a
fixture repository that gets commits while the daemon runs. Slow (each refresh trains and verifies an
adapter in llama.cpp), so kept to two tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.state import state_dir
from daemon_support import GIT_ENV, NEXT_COMMITS, ROOT, commit, make_repo, read_json, stop_daemon, wait_for
from trainer.store import AdapterStore

pytestmark = pytest.mark.slow
ARGS = ("--profile", "tiny", "--quiet", "0", "--when", "always")


def published(store: AdapterStore, commit_sha: str):
    """The current version once the daemon has finished the run for ``commit_sha`` and it is trained on it."""
    last = read_json(store.state / "status.json").get("last_result") or {}
    current = store.current()
    return current if last.get("commit") == commit_sha and current is not None and current.commit == commit_sha else None


def assert_loads_in_llama_cpp(version) -> None:
    from agent.runtime import LlamaRuntime

    with LlamaRuntime(version.manifest["export"]["base_gguf"], n_ctx=128, n_threads=1, logits_all=True) as rt:
        rt.set_adapters({rt.load_adapter(version.gguf, name=version.name): 1.0})
        assert len(rt.logits([1, 2, 3])) > 0


def test_commits_become_published_versions_and_a_kill_during_training_changes_nothing(tmp_path, tiny_hf_dir, monkeypatch, daemons):
    from lsp_server.state_files import FeedbackLog

    repo, state_root, log = tmp_path / "repo", tmp_path / "data", tmp_path / "daemon.log"
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    c1 = make_repo(repo)
    state = state_dir(repo)
    store = AdapterStore(state)
    args = (*ARGS, "--base", str(tiny_hf_dir), "--steps", "3", "--gate", "none")
    proc = daemons(repo, state_root, log, *args)
    # no adapter yet: the first one is trained on HEAD
    v1 = wait_for(lambda: published(store, c1), "v0001 for the first commit", 900, proc, log)
    assert v1.name == "v0001"

    # an accepted completion in the editor, then a commit: a new version that names the commit
    uri = (repo / "ledger" / "money.py").as_uri()
    FeedbackLog(state).record({"id": "c1", "kind": "inlineCompletion", "action": "accepted", "uri": uri,
                               "served": {"uri": uri, "prefix_tail": "def cents(amount):\n    ", "text": "return int(amount * 100)\n"}})
    c2 = commit(repo, *NEXT_COMMITS[0])
    v2 = wait_for(lambda: published(store, c2), "a version for the new commit", 900, proc, log)
    assert v2.name == "v0002" and v2.manifest["continued_from"] == "v0001"
    assert v2.manifest["trigger"] == "1 new commit(s) since v0001" and v2.manifest["branch"] == "main"
    assert v2.manifest["experience"]["feedback"]["positives"] == 1
    assert v2.manifest["train"]["data"]["episodes"].get("feedback") == 1
    status = read_json(state / "status.json")
    assert status["last_result"]["published"] and status["last_result"]["version"] == "v0002"
    assert set(status["last_result"]["phase_seconds"]) >= {"experience", "train", "gate", "publish"}

    # rollback through the command line
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run([sys.executable, "-m", "swespot", "adapters", "rollback", "v0001", "--repo", str(repo)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert store.current_name() == "v0001"

    # a commit during training is queued; kill -9 mid-training: nothing changes, the served adapter loads
    c3 = commit(repo, *NEXT_COMMITS[1])
    wait_for(lambda: (lambda s: s.get("phase") == "train" and (s.get("phase_progress") or 0) > 0
                      and (s.get("run") or {}).get("commit") == c3)(read_json(state / "status.json")),
             "training on the third commit", 900, proc, log)
    c4 = commit(repo, *NEXT_COMMITS[2])
    wait_for(lambda: c4 in (read_json(state / "status.json").get("queued") or []), "the fourth commit queued", 60, proc, log)
    stop_daemon(proc, signal.SIGKILL)
    assert store.current_name() == "v0001" and store.version_names() == ["v0001", "v0002"]
    assert_loads_in_llama_cpp(store.current())

    # the next start recovers the lock and trains what it missed, up to HEAD
    proc = daemons(repo, state_root, log, *args)
    v3 = wait_for(lambda: published(store, c4), "a version for HEAD after the kill", 900, proc, log)
    assert v3.name == "v0003" and v3.manifest["continued_from"] == "v0001"
    assert v3.manifest["trigger"] == "3 new commit(s) since v0001"  # c2 (v0002 was rolled back), c3, c4
    assert "recovered the lock of daemon pid" in log.read_text()
    assert_loads_in_llama_cpp(v3)
    assert stop_daemon(proc) == 0
    assert read_json(state / "status.json")["phase"] == "stopped"


def repo_with_heldout_shards(root: Path, scratch: Path) -> str:
    """The fixture repository, grown by small modules until its experience has held-out shards (the
    loss gate needs enough shards to hold some out)."""
    from trainer.pipeline import all_shards, build_repo_experience, heldout_shards

    head = make_repo(root)
    for i in range(40):
        build_repo_experience(root, scratch, "HEAD", "tiny", progress=False)
        if heldout_shards(all_shards(scratch)):
            return head
        head = commit(root, f"Add helper {i}", {f"ledger/helper_{i}.py": f'"""Helper {i}."""\n\n\ndef helper_{i}(x):\n    """Scale x by {i + 2}."""\n    return x * {i + 2}\n'})
    raise AssertionError("no held-out shard after 40 modules")


def test_sigterm_resumes_and_a_candidate_the_gate_refuses_is_not_published(tmp_path, tiny_hf_dir, monkeypatch, daemons):
    repo, state_root, log = tmp_path / "repo", tmp_path / "data", tmp_path / "daemon.log"
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    c1 = repo_with_heldout_shards(repo, tmp_path / "scratch")
    state = state_dir(repo)
    store = AdapterStore(state)
    args = (*ARGS, "--base", str(tiny_hf_dir), "--steps", "8", "--gate", "loss")
    proc = daemons(repo, state_root, log, *args)
    # SIGTERM (how the language server stops it) mid-training: a checkpoint, a clean exit, then a resume
    wait_for(lambda: (lambda s: s.get("phase") == "train" and (s.get("phase_progress") or 0) > 0)(read_json(state / "status.json")),
             "training", 900, proc, log)
    assert stop_daemon(proc, signal.SIGTERM) == 0
    stopped = read_json(state / "status.json")
    assert stopped["phase"] == "stopped" and stopped["pid"] is None and store.current() is None
    assert list((state / "work").glob("run-*/adapter/checkpoints/step-*/state.json"))
    proc = daemons(repo, state_root, log, *args)
    v1 = wait_for(lambda: published(store, c1), "a first version that beats the base model", 900, proc, log)
    assert "resuming from step-" in log.read_text()
    assert v1.manifest["gate"]["kind"] == "heldout-loss" and v1.manifest["gate"]["reference"] == "base"
    assert stop_daemon(proc) == 0
    # an under-trained candidate (one step from scratch) must lose to v0001 on held-out loss
    proc = daemons(repo, state_root, log, *ARGS, "--base", str(tiny_hf_dir), "--steps", "1", "--no-continue",
                        "--gate", "loss")
    c2 = commit(repo, *NEXT_COMMITS[0])
    status = wait_for(lambda: (lambda s: s if (s.get("last_result") or {}).get("commit") == c2 else None)(read_json(state / "status.json")),
                      "the gate's verdict on the new commit", 900, proc, log)
    result = status["last_result"]
    assert result["published"] is False and result["reason"].startswith("gate refused"), result
    assert result["gate"]["losses"]["candidate"] > result["gate"]["losses"]["current"]
    assert store.current_name() == "v0001" and store.version_names() == ["v0001"]
    assert "gate refused the candidate" in status["message"]
    assert stop_daemon(proc) == 0
    assert json.loads((store.root / "v0001" / "manifest.json").read_text())["commit"] == c1


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: room for the experience of the fixture repository, not for a trained adapter."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_reported_and_nothing_is_published(tmp_path, tiny_hf_dir, small_disk, monkeypatch, daemons):
    repo, log = tmp_path / "repo", tmp_path / "daemon.log"
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(small_disk))
    c0 = make_repo(repo)
    state = state_dir(repo)
    store = AdapterStore(state)
    src = tmp_path / "older"  # an earlier version (its weights do not matter: it is never loaded here)
    src.mkdir()
    (src / "adapter.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (src / "manifest.json").write_text(json.dumps({"commit": c0}))
    store.publish(src)
    c1 = commit(repo, *NEXT_COMMITS[0])
    proc = daemons(repo, small_disk, log, *ARGS, "--base", str(tiny_hf_dir), "--steps", "3", "--gate", "none")
    status = wait_for(lambda: (lambda s: s if (s.get("last_result") or {}).get("commit") == c1 else None)(read_json(state / "status.json")),
                      "the refresh to fail", 900, proc, log)
    assert status["last_result"]["published"] is False
    # torch's checkpoint writer fails with a RuntimeError, not ENOSPC: the free space names the cause
    assert status["last_error"].startswith("disk full during train"), status["last_error"]
    assert "nothing was published" in status["last_error"]
    assert proc.poll() is None  # still running, still serving
    assert store.current_name() == "v0001" and store.version_names() == ["v0001"]
    assert not list(store.root.glob(".incoming-*"))
    assert stop_daemon(proc) == 0
