"""Running repository code safely: in a scratch copy, inside a bubblewrap sandbox, with kernel limits.

The user's working tree is never the place code runs: ``scratch_copy`` extracts a commit (``git
archive``) into a temporary folder, and ``Workspace.run`` copies the files it sees. ``run_limited`` runs
a command there inside ``bwrap`` (bubblewrap, the distribution's package; ``scripts/setup`` installs it
where it can), which gives the command

- its own mount namespace: the system (``/usr``, ``/bin``, ``/lib*``, ``/etc`` without its secrets) and
  this interpreter's prefix (the venv) read-only, the folder it runs in (and the caller's ``writable``
  folders) read-write, the caller's ``readable`` folders and those the user lists in
  ``SWESPOT_SANDBOX_READABLE`` read-only, a fresh ``/tmp`` (tmpfs, whose ``/tmp/home`` is ``HOME``), a
  minimal ``/dev`` and a new ``/proc``; everything else is a read-only empty skeleton. Nothing else exists
  inside: not the user's home, not the real work tree, not other repositories, not other processes'
  ``/proc`` entries;
- its own network namespace (only a loopback of its own; ``network=True`` keeps the host's), PID, IPC,
  UTS and user namespaces, no capabilities, no further user namespaces;
- kernel limits: address space (``memory_mb``), CPU seconds, file size, processes (``RLIMIT_NPROC`` is
  not enforced by the kernel for root), a size-capped ``/tmp``. At the time limit the sandbox's init is
  killed and with it every process of its PID namespace, whatever they did (``setsid``, ignoring
  SIGTERM, holding the output open);
- output read as it comes, keeping at most ``output_limit`` bytes (head and tail), never the whole
  (``agent.process_output``).

Where bubblewrap is missing or cannot work (no user namespaces), running repository code is refused
with one message, unless the user sets ``SWESPOT_UNSAFE_NO_SANDBOX=1``: then it runs as before this
sandbox existed (own session, rlimits, ``unshare`` for network and PID namespaces where it works).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import gitsafe
from agent.errors import SwespotError
from agent.process_output import CappedOutput, pump

log = logging.getLogger(__name__)

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers
UNSAFE_OPT_IN = "SWESPOT_UNSAFE_NO_SANDBOX"
READABLE_ENV = "SWESPOT_SANDBOX_READABLE"  # folders (os.pathsep-separated) every sandbox shows read-only
SANDBOX_HOME = "/tmp/home"

# the system, read-only (a symlink such as /bin -> usr/bin is reproduced as a symlink)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# what /etc holds that a test has no business reading: hidden (files by /dev/null, folders by an empty tmpfs)
ETC_SECRETS = ("shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
               "security/opasswd", "krb5.keytab", "ipsec.secrets", "ppp/chap-secrets", "ppp/pap-secrets",
               "NetworkManager/system-connections", "wpa_supplicant", "credstore", "credstore.encrypted",
               "docker", "containerd", "libvirt/secrets", "netplan", "cups/ssl", "pki/private")
TMP_MB = 1024  # size of the sandbox's /tmp
FILE_MB = 1024  # the largest file a sandboxed process may write
EXTRA_PROCESSES = 512  # RLIMIT_NPROC headroom over the threads that exist when the run starts


@dataclass
class RunResult:
    returncode: int | None
    output: str
    timed_out: bool
    seconds: float
    network_isolated: bool
    truncated: bool = False
    sandboxed: bool = False  # inside bubblewrap (False only under SWESPOT_UNSAFE_NO_SANDBOX=1)
    output_bytes: int = 0  # everything the command wrote, of which ``output`` keeps at most the limit

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# ---- is there a sandbox? ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _bwrap() -> tuple[str | None, tuple[str, ...], str]:
    """(path of a bwrap that works here, the flags it supports, "") or (None, (), why not)."""
    exe = shutil.which("bwrap")
    if not exe:
        return None, (), "is not installed"
    try:
        usage = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10).stdout
        flags = ["--unshare-all", "--unshare-user", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
        if "--disable-userns" in usage:
            flags.insert(2, "--disable-userns")
        probe = subprocess.run([exe, *flags, *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--", "true"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, (), f"could not be started ({exc})"
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return None, (), f"does not work here ({why}; user namespaces may be disabled)"
    return exe, tuple(flags) + (("--size-ok",) if "--size" in usage else ()), ""


def sandbox_available() -> bool:
    return _bwrap()[0] is not None


def unsafe_opted_in() -> bool:
    return os.environ.get(UNSAFE_OPT_IN, "").strip().lower() in ("1", "true", "yes")


def require_sandbox() -> None:
    """Raise the one clear message when repository code cannot run isolated and the user did not opt in."""
    if sandbox_available():
        return
    if unsafe_opted_in():
        _warn_unsafe()
        return
    raise SwespotError(
        f"running repository code needs the bubblewrap sandbox (bwrap), which {_bwrap()[2]}; install it "
        f"(Debian/Ubuntu: apt-get install bubblewrap; scripts/setup does it when run as root), or set "
        f"{UNSAFE_OPT_IN}=1 to run repository code without isolation at your own risk")


@functools.lru_cache(maxsize=1)
def _warn_unsafe() -> None:
    log.warning("%s=1: repository code runs WITHOUT the sandbox (bubblewrap %s): it can read and write "
                "whatever this user can", UNSAFE_OPT_IN, _bwrap()[2])


@functools.lru_cache(maxsize=1)
def can_isolate_network() -> bool:
    """Whether commands run without the host's network: always inside bubblewrap; in the unsafe mode,
    where ``unshare -rn`` works."""
    return sandbox_available() or _unshare_flags() is not None


@functools.lru_cache(maxsize=1)
def _unshare_flags() -> tuple[str, ...] | None:
    """For the unsafe mode: ``unshare`` with network and PID namespaces (every descendant dies with the
    first), or only the network one, where the kernel allows them."""
    if not shutil.which("unshare"):
        return None
    for flags in (("-rn", "--pid", "--fork", "--kill-child"), ("-rn",)):
        try:
            if subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                return flags
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


# ---- the sandbox's file system -------------------------------------------------------------------------
def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for rel in ETC_SECRETS:
        path = os.path.join("/etc", rel)
        if os.path.islink(path) or not os.path.exists(path):
            continue
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    return args


def _visible_by_default(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in SYSTEM_PATHS)


def python_paths() -> list[str]:
    """The folders this interpreter needs (its venv and base installation) that the system binds do not
    already show: bound read-only, so ``python -m pytest`` inside means this interpreter and its packages."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths.add(os.path.realpath(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))))
    return sorted(p for p in paths if p != "/" and not _visible_by_default(p))


def _inside(path: str, folders: Iterable[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def bwrap_argv(argv: Sequence[str], cwd: str | os.PathLike, *, env: dict[str, str], network: bool = False,
               writable: Sequence[str | os.PathLike] = (), readable: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` in ``cwd`` isolated as the module says. ``env`` is
    adjusted in place (``HOME``, ``TMPDIR``)."""
    exe, supported, why = _bwrap()
    if exe is None:
        raise SwespotError(f"bubblewrap {why}")
    flags = [f for f in supported if f != "--size-ok"]
    if network:
        flags.insert(flags.index("--unshare-all") + 1, "--share-net")
    where = os.path.realpath(cwd)
    rw = [where, *(os.path.realpath(p) for p in writable)]
    ro = [os.path.realpath(p) for p in [*readable, *os.environ.get(READABLE_ENV, "").split(os.pathsep)] if p and os.path.exists(p)]
    args = [exe, *flags, *_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    if "--size-ok" in _bwrap()[1]:
        args += ["--size", str(TMP_MB * 2**20)]
    args += ["--tmpfs", "/tmp"]
    # parents before children, so a folder bound inside another one is not hidden by it
    binds = [(p, "--ro-bind") for p in python_paths()] + [(p, "--ro-bind") for p in ro] + [(p, "--bind") for p in rw]
    for path, how in sorted(dict(binds).items(), key=lambda b: (b[0].count("/"), b[0])):
        args += [how, path, path]
    home = env.get("HOME", "")
    if not (home and _inside(os.path.realpath(home), rw)):
        env["HOME"] = SANDBOX_HOME
        args += ["--dir", SANDBOX_HOME]
    env["TMPDIR"] = "/tmp"
    env.pop("PWD", None)
    # the sandbox's own root (the folders made to hold the binds) is read-only too; binds keep their mode
    return [*args, "--remount-ro", "/", "--chdir", where, "--", *argv]


# ---- limits and output ---------------------------------------------------------------------------------
def _limits(memory_mb: int | None, cpu_s: int | None, *, processes: int | None = None, file_mb: int | None = FILE_MB):
    def apply() -> None:
        if memory_mb:
            limit = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_s:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        if file_mb:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
        if processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _threads_now() -> int | None:
    """How many threads the system runs now (the fourth field of /proc/loadavg: running/total)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return None


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def clean_env(extra: dict[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    """A minimal environment: PATH and locale from ours, proxies to nowhere, no credentials, git that
    runs no configured programs."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")}
    # `python` means the interpreter SWE-Spot runs in (its venv has pytest), not whatever PATH finds first
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[key] = DEAD_PROXY
    env.update(NO_PROXY="", PYTHONDONTWRITEBYTECODE="1", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1")
    env = gitsafe.safe_env(env)
    if home:
        env["HOME"] = home
    env.update(extra or {})
    return env


def run_limited(
    cmd: Sequence[str] | str,
    cwd: str | os.PathLike,
    *,
    timeout_s: float = 60,
    memory_mb: int | None = 2048,
    output_limit: int = 20_000,
    network: bool = False,
    env: dict[str, str] | None = None,
    writable: Sequence[str | os.PathLike] = (),
    readable: Sequence[str | os.PathLike] = (),
) -> RunResult:
    """Run ``cmd`` (argv list, or a shell string) in ``cwd`` inside the sandbox and return its combined
    output, cut to ``output_limit`` bytes (head and tail kept: failures print their summary last).

    ``cwd`` is the one folder the command may change, besides ``writable``; ``readable`` folders are
    shown read-only, and so are the folders the user lists in ``SWESPOT_SANDBOX_READABLE`` (a toolchain
    in the home folder, say). Paths in ``env`` (``PYTHONPATH``...) must lie in one of them to be seen; a
    ``HOME`` outside them becomes ``/tmp/home``. Raises ``SwespotError`` when no sandbox is available and the user
    did not opt out of it (``SWESPOT_UNSAFE_NO_SANDBOX=1``)."""
    require_sandbox()
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    env = dict(env) if env is not None else clean_env()
    sandboxed = sandbox_available()
    isolated = not network
    if sandboxed:
        argv = bwrap_argv(argv, cwd, env=env, network=network, writable=writable, readable=readable)
    elif not network and (unshare := _unshare_flags()):
        argv = ["unshare", *unshare, *argv]
    else:
        isolated = False
    threads = _threads_now()
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
            preexec_fn=_limits(memory_mb, int(timeout_s) + 5, processes=threads + EXTRA_PROCESSES if threads else None),
        )
    except OSError as exc:
        return RunResult(None, f"could not start {argv[0]!r}: {exc}", False, 0.0, isolated, sandboxed=sandboxed)
    out = CappedOutput(output_limit)
    try:
        timed_out = pump(proc, out, time.monotonic() + timeout_s)
        if timed_out:
            # the sandbox's init dies, and the kernel kills every process of its PID namespace
            _kill(proc)
            pump(proc, out, time.monotonic() + 2)  # what is still in the pipe
    finally:
        if proc.poll() is None:
            _kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    return RunResult(None if timed_out else proc.returncode, out.text(), timed_out, time.perf_counter() - started,
                     isolated, out.truncated, sandboxed, out.total)


@contextlib.contextmanager
def scratch_copy(repo: str | os.PathLike, commit: str = "HEAD", *, prefix: str = "swespot-scratch-") -> Iterator[Path]:
    """A throw-away copy of ``commit``'s tree (tracked files only), removed afterwards."""
    repo = Path(repo)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        gitsafe.protect_repo(repo)  # git archive applies filter drivers: none runs
        with tempfile.TemporaryFile() as errors:
            archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=repo, stdout=subprocess.PIPE,
                                       stderr=errors, env=gitsafe.safe_env())
            tar = subprocess.run(["tar", "-x", "--no-same-owner", "-C", str(tmp)], stdin=archive.stdout, capture_output=True)
            if archive.stdout is not None:
                archive.stdout.close()
            if archive.wait() != 0:
                errors.seek(0)
                raise SwespotError(f"cannot make a scratch copy of {commit} in {repo}: {errors.read().decode(errors='replace').strip()}")
            if tar.returncode != 0:
                raise SwespotError(f"cannot make a scratch copy of {commit} in {repo}: {tar.stderr.decode(errors='replace').strip()}")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
