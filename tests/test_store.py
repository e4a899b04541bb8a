"""The adapter store: versions, the atomic `current` pointer, damage tolerance, rollback and pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import SwespotError
from agent.state import read_status, state_dir, write_status
from trainer.store import AdapterStore


def make_adapter_dir(root: Path, commit: str) -> Path:
    root.mkdir(parents=True)
    (root / "adapter.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (root / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (root / "manifest.json").write_text(json.dumps({"commit": commit}))
    return root


@pytest.fixture
def store(tmp_path) -> AdapterStore:
    return AdapterStore(tmp_path / "state")


def test_state_lives_outside_the_repository_and_is_keyed_by_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "data"))
    a, b = tmp_path / "work" / "proj", tmp_path / "other" / "proj"
    assert state_dir(a) != state_dir(b)
    assert state_dir(a).is_relative_to(tmp_path / "data")
    assert not state_dir(a).is_relative_to(a)


def test_publishing_makes_numbered_versions_and_moves_current(store, tmp_path):
    v1 = store.publish(make_adapter_dir(tmp_path / "a1", "c1"))
    v2 = store.publish(make_adapter_dir(tmp_path / "a2", "c2"))
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert store.current().name == "v0002"
    assert store.current().commit == "c2"
    assert store.current().manifest["version"] == "v0002"
    assert (store.root / "v0001" / "adapter_model.safetensors").exists()


def test_an_incomplete_adapter_folder_is_not_published(store, tmp_path):
    src = make_adapter_dir(tmp_path / "a1", "c1")
    (src / "adapter.gguf").unlink()
    with pytest.raises(SwespotError, match="adapter.gguf is missing"):
        store.publish(src)
    assert store.current() is None and store.version_names() == []


def test_a_damaged_current_version_falls_back_to_the_last_good_one(store, tmp_path):
    store.publish(make_adapter_dir(tmp_path / "a1", "c1"))
    store.publish(make_adapter_dir(tmp_path / "a2", "c2"))
    (store.root / "v0002" / "manifest.json").write_text("{ half-writ")
    assert store.current().name == "v0001"
    (store.current_file).write_text("garbage")
    assert store.current() is None


def test_leftovers_of_a_crashed_publish_are_ignored_and_pruned(store, tmp_path):
    store.publish(make_adapter_dir(tmp_path / "a1", "c1"))
    crashed = store.root / ".v0002.999-1.tmp"  # atomic_dir's folder, as a kill leaves it
    crashed.mkdir()
    (crashed / "adapter.gguf").write_bytes(b"GG")
    assert store.current().name == "v0001"
    assert store.version_names() == ["v0001"]
    assert store.publish(make_adapter_dir(tmp_path / "a2", "c2")).name == "v0002"
    (store.root / ".incoming-v0003-999").mkdir()  # an older release's name for it
    assert {".v0002.999-1.tmp", ".incoming-v0003-999"} <= set(store.prune(keep=5))


def test_rollback_and_prune_never_remove_the_current_version(store, tmp_path):
    for i in range(1, 5):
        store.publish(make_adapter_dir(tmp_path / f"a{i}", f"c{i}"))
    store.rollback("v0001")
    assert store.current().name == "v0001"
    removed = store.prune(keep=2)
    assert sorted(removed) == ["v0002"]
    assert store.version_names() == ["v0001", "v0003", "v0004"]
    with pytest.raises(SwespotError, match="no version v0002"):
        store.rollback("v0002")


def test_status_is_merged_and_survives_a_corrupt_file(store):
    write_status(store.state, phase="training", progress=0.5)
    write_status(store.state, progress=0.75)
    assert read_status(store.state)["phase"] == "training"
    assert read_status(store.state)["progress"] == 0.75
    (store.state / "status.json").write_text("{not json")
    assert read_status(store.state) == {}
    assert write_status(store.state, phase="idle")["phase"] == "idle"


def test_adapters_cli_lists_marks_current_and_rolls_back(tmp_path, monkeypatch, capsys):
    from swespot.cli import main

    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "data"))
    repo = tmp_path / "repo"
    repo.mkdir()
    store = AdapterStore.for_repo(repo)
    store.publish(make_adapter_dir(tmp_path / "a1", "c1"))
    store.publish(make_adapter_dir(tmp_path / "a2", "c2"))
    assert main(["adapters", "list", "--repo", str(repo), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == "v0002"
    assert [(v["version"], v["current"]) for v in listed["versions"]] == [("v0001", False), ("v0002", True)]
    assert listed["versions"][0]["manifest"]["commit"] == "c1"
    assert main(["adapters", "rollback", "v0001", "--repo", str(repo)]) == 0
    assert store.current().name == "v0001"
    capsys.readouterr()
    assert main(["adapters", "rollback", "v0002", "--repo", str(repo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"current": "v0002", "commit": "c2"}
    assert main(["adapters", "rollback", "v0001", "--repo", str(repo)]) == 0
    assert main(["adapters", "rollback", "v0009", "--repo", str(repo)]) == 1
    assert "no version v0009" in capsys.readouterr().err
