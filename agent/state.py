"""The per-repository state folder: the one contract between the trainer daemon (``trainer/``) and the
language server (``lsp_server/``), who talk through these files and nothing else.

    <state>/status.json          the daemon's state (``Status``), written by the daemon only
    <state>/daemon.lock          one daemon (or ``specialize``) per repository: an flock plus the holder's record
    <state>/heartbeat.json       the server says "the user is waiting on the model" (the daemon pauses training)
    <state>/feedback.jsonl       the server appends the user's decisions on what it served (training signal)
    <state>/retrain.request      the server asks the daemon to train now (swespot/retrain); the daemon consumes it
    <state>/adapters/            the adapter store (trainer/store.py): versions, ``current``, ``selection.json``
    <state>/experience/          episodes (trainer/experience)
    <state>/experience-chat/     the chat adapter's episodes (design and recall), when a profile trains one
    <state>/work/                training scratch (checkpoints of an unfinished run)
    <state>/daemon.log, serve.log

``<state>`` lives outside the work tree (platformdirs' user data dir, keyed by the repository's path), so
watching the repository never sees our own writes. Every whole-file write goes through ``atomic_path``
(a temp file next to the target, fsync, rename, fsync of the folder): a reader never sees half a file
and a crash leaves the previous content. It lives in ``agent/``, the bottom layer, because all three
layers write files this way; it imports nothing of the project but ``agent.errors``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TypedDict

import platformdirs

from agent.errors import SwespotError

log = logging.getLogger(__name__)

# ---- file names (contract) ----------------------------------------------------------------------------
STATUS_FILE = "status.json"
LOCK_FILE = "daemon.lock"
HEARTBEAT_FILE = "heartbeat.json"
FEEDBACK_FILE = "feedback.jsonl"
RETRAIN_REQUEST = "retrain.request"
ADAPTERS_DIR = "adapters"
EXPERIENCE_DIR = "experience"
CHAT_EXPERIENCE_DIR = "experience-chat"  # the chat adapter's episodes (trainer/pipeline.py: a profile's "chat")
WORK_DIR = "work"
DAEMON_LOG = "daemon.log"
SERVER_LOG = "serve.log"


# ---- where ---------------------------------------------------------------------------------------------
def state_root() -> Path:
    """``$SWESPOT_STATE_DIR``, else platformdirs' user data dir for swespot."""
    override = os.environ.get("SWESPOT_STATE_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("swespot", appauthor=False))


def state_dir(repo: str | os.PathLike) -> Path:
    """The state folder of one repository: ``<root>/repos/<name>-<hash of its absolute path>``."""
    path = Path(repo).expanduser().resolve()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return state_root() / "repos" / f"{path.name or 'root'}-{key}"


# ---- atomic writes ---------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """Make a rename (or unlink) in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that wants a file name (a GGUF writer, llama.cpp's
    quantizer, ``torch.save``). When the block ends normally the temp file becomes ``path`` by rename;
    when it raises, the temp file is removed and ``path`` is untouched. ``durable``: fsync the file
    before and the folder after the rename (off for hints and caches, which may be lost)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread: two writers of one file (threads, processes) never share a temp file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, durable: bool = True,
                encoding: str | None = "utf-8") -> Iterator[IO]:
    """``open`` for writing whose file appears at ``path`` only when the block ends normally."""
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """``atomic_path`` for a folder (a checkpoint, a converted model): filled under a temporary name next
    to ``path``, then renamed over it when the block ends normally (an existing ``path`` is removed just
    before: a reader then finds the old folder, nothing, or the new one, never a half-written one). When
    the block raises, the temporary folder goes and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            for item in tmp.rglob("*"):
                if item.is_file():
                    with open(item, "rb") as fh:
                        os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8) atomically; a failure is a ``SwespotError`` naming
    the file, and leaves the old content."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        with atomic_open(path, "wb", durable=durable) as fh:
            fh.write(raw)
    except OSError as exc:
        raise SwespotError(f"could not write {path}: {exc}") from exc


def write_json_atomic(path: str | os.PathLike, value: object, *, durable: bool = True, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(value, indent=indent), durable=durable)


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object (a reader of
    another process's file never fails on it)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- status.json ----------------------------------------------------------------------------------------
PHASES = ("experience", "train", "export", "chat", "gate", "publish")  # a refresh's phases, in order ("chat": when one is trained)
DAEMON_PHASES = ("starting", "waiting", "idle", "paused", "stopped", "error", *PHASES)  # status["phase"]


class Status(TypedDict, total=False):
    """``status.json``: written by the daemon (``write_status`` merges fields), read by the server and
    ``swespot daemon --status``. Every field is optional; ``write_status`` refuses names not listed here."""

    phase: str  # one of DAEMON_PHASES
    message: str  # one line for people
    pid: int | None  # the daemon's, None once it stopped
    repo: str
    started_at: float
    options: dict  # the daemon's profile, base, gate, quiet_s, min_commits, when
    head: str | None  # the HEAD the daemon last read, its branch and what changed
    branch: str | None
    change: str
    serving: dict  # {"version", "reason"}: what ``current`` names and why
    error: str | None  # why the daemon cannot work now (no repository...), None when it can
    run: dict | None  # the refresh in progress: {"commit", "reason", "started_at"}
    queued: list  # commits that landed during the run (the next run trains on HEAD, which holds them)
    paused: bool  # training waits for the editor
    phase_progress: float | None  # 0..1 within the phase
    progress: float | None  # 0..1 of the whole run
    eta_s: float | None
    eta_at: float | None
    last_error: str | None  # the last failed run's one line, None after a success
    last_error_at: float
    last_result: dict  # the last run's outcome: published, version, commit, reason, seconds, phase_seconds...
    updated_at: float  # set by write_status


STATUS_FIELDS = frozenset(Status.__annotations__)


def status_path(state: str | os.PathLike) -> Path:
    return Path(state) / STATUS_FILE


def read_status(state: str | os.PathLike) -> Status:
    return Status(**read_json_object(status_path(state)))


def write_status(state: str | os.PathLike, **fields: object) -> Status:
    """Merge ``fields`` into status.json (atomically) and return the whole record."""
    unknown = set(fields) - STATUS_FIELDS
    if unknown:
        raise TypeError(f"unknown status.json field(s): {', '.join(sorted(unknown))}")
    current = dict(read_status(state))
    current.update(fields, updated_at=time.time())
    write_json_atomic(status_path(state), current)
    return Status(**current)  # type: ignore[typeddict-item]


# ---- signal files: the server's heartbeat and retrain request ------------------------------------------
def write_heartbeat(state: str | os.PathLike, generating: bool, since: float | None) -> None:
    """``heartbeat.json``: ``{"pid", "generating", "since", "updated_at"}``. Only a hint (no fsync)."""
    record = {"pid": os.getpid(), "generating": generating, "since": since, "updated_at": time.time()}
    write_json_atomic(Path(state) / HEARTBEAT_FILE, record, durable=False, indent=None)


def editor_generating(state: str | os.PathLike, stale_s: float) -> bool:
    """Whether the server's heartbeat says the user is waiting on the model right now. A heartbeat older
    than ``stale_s``, or from a process that no longer exists, does not count."""
    beat = read_json_object(Path(state) / HEARTBEAT_FILE)
    if not beat.get("generating"):
        return False
    try:
        if time.time() - float(beat.get("updated_at") or 0) > stale_s:
            return False
    except (TypeError, ValueError):
        return False
    pid = beat.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return True


def request_retrain(state: str | os.PathLike, by: str) -> Path:
    """Ask the daemon to train now, whatever its schedule (it watches for this file)."""
    path = Path(state) / RETRAIN_REQUEST
    write_json_atomic(path, {"by": by, "at": time.time()})
    return path


def retrain_requested(state: str | os.PathLike) -> bool:
    return (Path(state) / RETRAIN_REQUEST).exists()


def consume_retrain_request(state: str | os.PathLike) -> None:
    """One request, one run: the daemon removes it when the run starts."""
    (Path(state) / RETRAIN_REQUEST).unlink(missing_ok=True)


# ---- the lock -------------------------------------------------------------------------------------------
class DaemonLock:
    """``<state>/daemon.lock``: an exclusive flock held for the holder's life, with its pid in the file.
    The kernel drops the flock when its process dies, however it dies, so a lock left by kill -9 is
    recovered by the next start (which says so); a live holder makes a second one refuse politely."""

    def __init__(self, state: str | os.PathLike) -> None:
        self.path = Path(state) / LOCK_FILE
        self.fd: int | None = None
        self.recovered: dict | None = None  # what a holder that died without releasing left behind

    def acquire(self, repo: Path, who: str = "trainer daemon") -> None:
        """Hold the lock or refuse politely. ``who`` names the holder in the refusal a second process
        gets (``swespot specialize`` takes the same lock, so the two never train into one state dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
            raise SwespotError(f"a {holder.get('who', 'trainer daemon')} is already running for {repo} (pid {holder.get('pid', '?')}, "
                               f"since {since}); not starting a second one") from None
        previous = _read_record(fd)
        if previous.get("pid"):
            self.recovered = previous
            log.warning("recovered the lock of daemon pid %s, which ended without releasing it", previous["pid"])
        record = json.dumps({"pid": os.getpid(), "repo": str(repo), "started_at": time.time(), "who": who}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file: the last holder exited cleanly
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_record(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        value = json.loads(os.read(fd, 65536) or b"{}")
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def lock_holder(state: str | os.PathLike) -> dict | None:
    """The live process holding ``state``'s lock (its record), or None."""
    path = Path(state) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
