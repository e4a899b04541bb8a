"""The state folder's contract (agent/state.py): atomic writes, status.json's schema, the signal files
the language server and the daemon exchange, and the lock as another process sees it."""

from __future__ import annotations

import json
import os
import time

import pytest

from agent.errors import SwespotError
from agent.state import (
    HEARTBEAT_FILE,
    RETRAIN_REQUEST,
    DaemonLock,
    atomic_dir,
    atomic_open,
    atomic_path,
    consume_retrain_request,
    editor_generating,
    lock_holder,
    read_json_object,
    read_status,
    request_retrain,
    retrain_requested,
    write_atomic,
    write_heartbeat,
    write_status,
)


def test_an_atomic_write_that_fails_leaves_the_old_content_and_no_temporary_file(tmp_path):
    target = tmp_path / "deep" / "file.json"
    write_atomic(target, '{"a": 1}')
    assert read_json_object(target) == {"a": 1}
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write('{"a": 2, "half-writ')
        raise RuntimeError("the writer died")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("not even JSON")
        raise ValueError("a converter failed")
    assert read_json_object(target) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.json"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SwespotError, match="could not write .*a-file/x"):
        write_atomic(blocker / "x", b"data")


def test_a_folder_written_atomically_replaces_the_old_one_only_when_whole(tmp_path):
    target = tmp_path / "checkpoints" / "step-0000002"
    with atomic_dir(target) as tmp:
        (tmp / "state.json").write_text('{"step": 2}')
        (tmp / "weights").mkdir()
        (tmp / "weights" / "a.bin").write_bytes(b"1")
    assert read_json_object(target / "state.json") == {"step": 2} and (target / "weights" / "a.bin").read_bytes() == b"1"
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "state.json").write_text('{"step": 4}')
        raise KeyboardInterrupt  # killed mid-save
    assert read_json_object(target / "state.json") == {"step": 2}
    with atomic_dir(target) as tmp:
        (tmp / "state.json").write_text('{"step": 4}')
    assert sorted(p.name for p in target.iterdir()) == ["state.json"]  # the old folder is replaced, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["step-0000002"]


def test_status_merges_fields_and_refuses_a_field_the_schema_does_not_name(tmp_path):
    write_status(tmp_path, phase="waiting", message="quiet period")
    status = write_status(tmp_path, progress=0.5)
    assert (status["phase"], status["progress"]) == ("waiting", 0.5) and status["updated_at"] <= time.time()
    with pytest.raises(TypeError, match="unknown status.json field.*: progres"):
        write_status(tmp_path, progres=0.6)
    assert read_status(tmp_path)["progress"] == 0.5
    (tmp_path / "status.json").write_text("[1, 2]")  # a hand edit: read as empty, never a crash
    assert read_status(tmp_path) == {}


def test_the_retrain_request_and_the_heartbeat_carry_their_meaning_between_processes(tmp_path):
    assert not retrain_requested(tmp_path)
    path = request_retrain(tmp_path, by="swespot serve")
    assert path.name == RETRAIN_REQUEST and json.loads(path.read_text())["by"] == "swespot serve"
    assert retrain_requested(tmp_path)
    consume_retrain_request(tmp_path)
    consume_retrain_request(tmp_path)  # twice is fine: one request, one run
    assert not retrain_requested(tmp_path)

    assert not editor_generating(tmp_path, 10.0)  # no heartbeat yet
    write_heartbeat(tmp_path, True, time.time())
    assert editor_generating(tmp_path, 10.0)
    write_heartbeat(tmp_path, False, None)
    assert not editor_generating(tmp_path, 10.0)
    beat = {"pid": os.getpid(), "generating": True, "since": 0, "updated_at": time.time() - 60}
    (tmp_path / HEARTBEAT_FILE).write_text(json.dumps(beat))
    assert not editor_generating(tmp_path, 10.0)  # stale: a server that crashed mid-generation
    (tmp_path / HEARTBEAT_FILE).write_text(json.dumps({**beat, "updated_at": "soon"}))
    assert not editor_generating(tmp_path, 10.0)


def test_lock_holder_names_the_live_holder_and_nothing_once_it_released(tmp_path):
    assert lock_holder(tmp_path) is None
    lock = DaemonLock(tmp_path)
    lock.acquire(tmp_path / "repo", who="specialize run")
    try:
        holder = lock_holder(tmp_path)
        assert holder is not None and holder["pid"] == os.getpid() and holder["who"] == "specialize run"
    finally:
        lock.release()
    assert lock_holder(tmp_path) is None
