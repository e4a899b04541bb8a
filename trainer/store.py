"""The adapter store: per-repository state on disk, the one channel between the trainer daemon and the
language server. Torch-free (the language server reads it).

    <state>/experience/<unit>/<shard>.jsonl   episodes
    <state>/adapters/<version>/               adapter_model.safetensors, adapter.gguf, manifest.json
    <state>/adapters/current                  the published version (temp file, fsync, rename)
    <state>/status.json                       daemon state (agent/state.py owns the folder's contract)

``<state>`` lives outside the work tree (platformdirs user data dir, keyed by the repository's path), so
watching the repository never sees our own writes. Every write is a temp file or folder renamed into
place: a crash at any point leaves ``current`` naming the last good version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import git

from agent.errors import NothingPublished, SwespotError
from agent.state import ADAPTERS_DIR, atomic_dir, fsync_dir, read_json_object, write_atomic

# the state folder's contract lives in agent/state.py; these names stay importable from here for callers
from agent.state import read_status as read_status
from agent.state import state_dir as state_dir
from agent.state import state_root as state_root
from agent.state import status_path as status_path
from agent.state import write_status as write_status

log = logging.getLogger(__name__)

REQUIRED_FILES = ("adapter.gguf", "manifest.json")
CHAT_GGUF = "chat.gguf"  # the chat adapter beside the code adapter, when the manifest's "chat" names it (trainer/pipeline.py)
SELECTION = "selection.json"  # why ``current`` names what it names (branch-aware serving, rollback)
_VERSION = re.compile(r"^v(\d{4,})$")


def _number(name: str) -> int:
    """``v0012`` -> 12 (names already matched ``_VERSION``)."""
    return int(name[1:])


@dataclass
class Version:
    name: str
    path: Path
    manifest: dict

    @property
    def gguf(self) -> Path:
        return self.path / "adapter.gguf"

    @property
    def commit(self) -> str | None:
        return self.manifest.get("commit")

    @property
    def chat_gguf(self) -> Path | None:
        """The chat adapter served for the chat panel's questions, when the version has one."""
        return chat_file(self.path, self.manifest)


def chat_file(path: Path, manifest: dict) -> Path | None:
    """The chat adapter a version folder's manifest names (a file in the folder itself), or None."""
    chat = manifest.get("chat")
    name = chat.get("gguf") if isinstance(chat, dict) else None
    return path / Path(name).name if isinstance(name, str) and name else None


def check_version_dir(path: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) for a whole published version, else (None, why not)."""
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            return None, f"{name} is missing"
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return None, f"manifest.json is unreadable: {exc}"
    if not isinstance(manifest, dict):
        return None, "manifest.json is not an object"
    for gguf in (path / "adapter.gguf", chat_file(path, manifest)):
        if gguf is None:
            continue
        try:
            with open(gguf, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    return None, f"{gguf.name} is not a GGUF file"
        except OSError:
            return None, f"{gguf.name} is missing (the manifest names it)"
    return manifest, None


@dataclass
class Choice:
    """Which version to serve for a HEAD, and why; ``explained``: (version, why it fits or not), newest first."""

    version: Version | None
    reason: str
    head: str
    branch: str | None
    explained: list = field(default_factory=list)
    pinned: bool = False


def git_ancestry(repo: str | os.PathLike):
    """(HEAD sha, branch name or None, is_ancestor) for a repository; ``is_ancestor(commit)`` answers
    (fits, why) for a version's commit. gitpython reads the repository; nothing is written."""
    try:
        r = git.Repo(Path(repo).expanduser().resolve())
        head = r.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as exc:
        raise SwespotError(f"{repo} is not a git repository with commits") from exc
    branch = None if r.head.is_detached else r.active_branch.name

    def is_ancestor(commit: str | None) -> tuple[bool, str]:
        if not commit:
            return False, "its manifest names no commit"
        try:
            r.commit(commit)
        except (ValueError, git.BadName, git.GitCommandError):
            return False, f"commit {commit[:10]} is not in the repository (rewritten by a rebase or amend?)"
        if commit == head:
            return True, f"trained on {commit[:10]}, HEAD itself"
        if r.is_ancestor(r.commit(commit), r.commit(head)):
            return True, f"trained on {commit[:10]}, an ancestor of HEAD"
        return False, f"commit {commit[:10]} is not an ancestor of HEAD (another branch, or rewritten)"

    return head, branch, is_ancestor


class AdapterStore:
    def __init__(self, state: str | os.PathLike) -> None:
        self.state = Path(state)
        self.root = self.state / ADAPTERS_DIR

    @classmethod
    def for_repo(cls, repo: str | os.PathLike) -> AdapterStore:
        return cls(state_dir(repo))

    @property
    def current_file(self) -> Path:
        return self.root / "current"

    # ---- reading ------------------------------------------------------------------------------
    def version_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(names, key=_number)

    def get(self, name: str) -> Version:
        if not _VERSION.match(name):
            raise SwespotError(f"{name!r} is not a version name (like v0003)")
        path = self.root / name
        if not path.is_dir():
            raise SwespotError(f"no version {name} in {self.root}")
        manifest, why = check_version_dir(path)
        if manifest is None:
            raise SwespotError(f"version {name} is damaged: {why}")
        return Version(name, path, manifest)

    def versions(self) -> list[tuple[str, Version | None, str | None]]:
        """Every version folder: (name, Version or None, why it is unusable)."""
        out = []
        for name in self.version_names():
            manifest, why = check_version_dir(self.root / name)
            out.append((name, Version(name, self.root / name, manifest) if manifest else None, why))
        return out

    def current_name(self) -> str | None:
        try:
            name = self.current_file.read_text().strip()
        except OSError:
            return None
        return name if _VERSION.match(name) else None

    def current(self) -> Version | None:
        """The published version. If ``current`` is damaged (a disk error, a hand edit), fall back to the
        newest whole version before it and say so in the log; never serve a broken adapter."""
        name = self.current_name()
        if name is None:
            return None
        manifest, why = check_version_dir(self.root / name)
        if manifest is not None:
            return Version(name, self.root / name, manifest)
        log.warning("current version %s is unusable (%s); falling back", name, why)
        for older, version, _ in reversed(self.versions()):
            if version is not None and int(older[1:]) < int(name[1:]):
                return version
        return None

    # ---- writing ------------------------------------------------------------------------------
    def next_name(self) -> str:
        numbers = [_number(n) for n in self.version_names()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def publish(self, src: str | os.PathLike, *, make_current: bool = True, extra: dict | None = None) -> Version:
        """Copy a finished adapter folder into the store as a new version and (by default) make it
        current. The copy is assembled in a hidden folder and renamed (``agent.state.atomic_dir``);
        ``current`` is replaced last."""
        src = Path(src)
        manifest, why = check_version_dir(src)
        if manifest is None:
            raise SwespotError(f"cannot publish {src}: {why}")
        self.root.mkdir(parents=True, exist_ok=True)
        name = self.next_name()
        try:
            with atomic_dir(self.root / name) as incoming:  # hidden until complete and on disk
                for item in src.iterdir():
                    if item.is_file() and not item.name.startswith("."):
                        shutil.copy2(item, incoming / item.name)
                manifest = {**manifest, **(extra or {}), "version": name, "published_at": time.time()}
                (incoming / "manifest.json").write_text(json.dumps(manifest, indent=2))
        except OSError as exc:
            raise NothingPublished(f"could not publish into {self.root}: {exc}") from exc
        if make_current:
            self.set_current(name)
            try:  # only an explanation: a failure to write it must not undo a publish
                self.write_selection({"version": name, "pinned": False, "head": None, "branch": None,
                                      "reason": f"newly published, trained on {(manifest.get('commit') or '?')[:10]}"})
            except SwespotError as exc:
                log.warning("%s", exc)
        return Version(name, self.root / name, manifest)

    def set_current(self, name: str) -> Version:
        version = self.get(name)  # refuses damaged or unknown versions
        write_atomic(self.current_file, (name + "\n").encode())
        return version

    def clear_current(self) -> None:
        """Serve the bare base model: no version fits (e.g. a branch none was trained on)."""
        try:
            self.current_file.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.root)

    def rollback(self, name: str) -> Version:
        """Serve an earlier version again, pinned: branch-aware serving keeps it while it is trained on an
        ancestor of HEAD (a new publish replaces it)."""
        version = self.set_current(name)
        self.write_selection({"version": name, "pinned": True, "reason": f"rolled back to {name} by the user",
                              "head": None, "branch": None})
        return version

    # ---- branch-aware serving -----------------------------------------------------------------
    @property
    def selection_file(self) -> Path:
        return self.root / SELECTION

    def read_selection(self) -> dict:
        return read_json_object(self.selection_file)

    def write_selection(self, record: dict) -> None:
        write_atomic(self.selection_file, json.dumps({**record, "at": time.time()}, indent=2).encode())

    def choose_for_head(self, repo: str | os.PathLike) -> Choice:
        """The version to serve for the repository's HEAD: the newest whole version trained on HEAD or an
        ancestor of it (a version trained on another branch, or on commits a rebase or amend replaced,
        would teach code that is not there). A version the user rolled back to stays while it fits."""
        head, branch, is_ancestor = git_ancestry(repo)
        explained = []  # (name, fits, why), newest first
        for name, version, why in reversed(self.versions()):
            explained.append((name, False, f"damaged: {why}") if version is None else (name, *is_ancestor(version.commit)))
        fitting = [name for name, fits, _ in explained if fits]
        where = f"HEAD {head[:10]}" + (f" ({branch})" if branch else " (detached)")
        pin = self.read_selection()
        if pin.get("pinned") and pin.get("version") in fitting and pin["version"] == self.current_name():
            return Choice(self.get(pin["version"]), f"{pin.get('reason', 'pinned')}; trained on an ancestor of {where}",
                          head, branch, explained, pinned=True)
        if not fitting:
            reason = (f"no published version is trained on an ancestor of {where}: serving the base model"
                      if explained else "no version published yet")
            return Choice(None, reason, head, branch, explained)
        return Choice(self.get(fitting[0]), f"newest version trained on an ancestor of {where}", head, branch, explained)

    def serve_for_head(self, repo: str | os.PathLike) -> Choice:
        """Point ``current`` at ``choose_for_head``'s version (or at nothing) and record why."""
        choice = self.choose_for_head(repo)
        if choice.version is None:
            if self.current_name() is not None and self.versions():
                self.clear_current()
        elif self.current_name() != choice.version.name:
            self.set_current(choice.version.name)
        record = {"version": choice.version.name if choice.version else None, "pinned": choice.pinned,
                  "reason": choice.reason, "head": choice.head, "branch": choice.branch}
        before = self.read_selection()
        if (choice.version is not None or self.versions()) and any(before.get(k) != v for k, v in record.items()):
            try:  # only an explanation: failing to write it (a full disk) must not stop serving
                self.write_selection(record)
            except SwespotError as exc:
                log.warning("%s", exc)
        return choice

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond ``keep`` (never the current one) and leftovers of crashed
        publishes. Returns what was removed."""
        if keep < 1:
            raise SwespotError("keep at least one version")
        removed = []
        # atomic_dir's hidden folders (".v0003.<pid>-<thread>.tmp"; ".incoming-*" from older releases)
        for leftover in [*self.root.glob(".*.tmp"), *self.root.glob(".incoming-*")] if self.root.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
        current = self.current_name()
        names = self.version_names()
        for name in names[: max(0, len(names) - keep)]:
            if name != current:
                shutil.rmtree(self.root / name, ignore_errors=True)
                removed.append(name)
        return removed
