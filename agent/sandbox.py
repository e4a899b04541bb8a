"""Running repository code safely: in a scratch copy, with time and memory limits, without network.

The user's working tree is never the place code runs: ``scratch_copy`` extracts a commit (``git
archive``) into a temporary folder. ``run_limited`` starts a process in its own session (so a timeout
kills the whole process group, grandchildren included), caps its address space and CPU seconds, and —
where the kernel allows unprivileged user namespaces (``unshare -rn``) — gives it a network namespace
with no interfaces up. Where that is not possible, proxies point at a dead local port and the result
says the network was not isolated.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from agent.errors import SwespotError

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers


@dataclass
class RunResult:
    returncode: int | None
    output: str
    timed_out: bool
    seconds: float
    network_isolated: bool
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.lru_cache(maxsize=1)
def can_isolate_network() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limits(memory_mb: int | None, cpu_s: int | None):
    def apply() -> None:
        if memory_mb:
            limit = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_s:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def clean_env(extra: dict[str, str] | None = None, home: str | None = None) -> dict[str, str]:
    """A minimal environment: PATH and locale from ours, proxies to nowhere, no credentials."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")}
    # `python` means the interpreter SWE-Spot runs in (its venv has pytest), not whatever PATH finds first
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[key] = DEAD_PROXY
    env.update(NO_PROXY="", PYTHONDONTWRITEBYTECODE="1", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1", GIT_TERMINAL_PROMPT="0")
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
) -> RunResult:
    """Run ``cmd`` (argv list, or a shell string) and return its combined output, cut to ``output_limit``
    characters (head and tail kept: failures print their summary last)."""
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    isolated = False
    if not network and can_isolate_network():
        argv = ["unshare", "-rn", *argv]
        isolated = True
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_limits(memory_mb, int(timeout_s) + 5),
            env=env if env is not None else clean_env(),
        )
    except OSError as exc:
        return RunResult(None, f"could not start {argv[0]!r}: {exc}", False, 0.0, isolated)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    text = out.decode("utf-8", errors="replace")
    truncated = len(text) > output_limit
    if truncated:
        half = output_limit // 2
        text = f"{text[:half]}\n... [{len(text) - output_limit} characters cut] ...\n{text[-half:]}"
    return RunResult(None if timed_out else proc.returncode, text, timed_out, time.perf_counter() - started, isolated, truncated)


@contextlib.contextmanager
def scratch_copy(repo: str | os.PathLike, commit: str = "HEAD", *, prefix: str = "swespot-scratch-") -> Iterator[Path]:
    """A throw-away copy of ``commit``'s tree (tracked files only), removed afterwards."""
    repo = Path(repo)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True)
        if archive.returncode != 0:
            raise SwespotError(f"cannot make a scratch copy of {commit} in {repo}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True, capture_output=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
