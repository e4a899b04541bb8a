"""Escapes 2 and 4 of issue 17 and the limits that did not hold, replayed against the real ``run`` tool
and ``run_limited``: what a command or a test the agent writes can see and change, and how long and how
loud it may be. Everything runs in the bubblewrap sandbox (``agent.sandbox``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.sandbox import run_limited, sandbox_available
from agent.tools import Workspace, call_tool, make_tools

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="bubblewrap (bwrap) is not installed or cannot work here")

SECRET = "swespot-test-secret-7d1c"


@pytest.fixture
def places(tmp_path) -> dict[str, Path]:
    """A repository, a stand-in for the user's home (with a key in it), and another repository."""
    repo = tmp_path / "work" / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(SECRET)
    other = tmp_path / "work" / "other-repo"
    other.mkdir()
    (other / "private.py").write_text(f"TOKEN = '{SECRET}'\n")
    return {"repo": repo, "home": home, "other": other}


@pytest.fixture
def other_process():
    """Another process of the user's, with a secret in its command line and its environment (as the
    editor or the language server holds the repository's path)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", SECRET],
                            env={**os.environ, "SWESPOT_TEST_SECRET": SECRET})
    yield proc.pid
    proc.kill()
    proc.wait()


def run_tool(repo: Path, command: str, timeout: float = 60) -> str:
    """The agent's ``run`` with the default policy (tests and read-only inspection need no approval)."""
    return call_tool(make_tools(Workspace(repo, run_timeout=timeout)), "run", {"command": command})


@pytest.mark.parametrize("command", [
    "cat {other}/private.py",
    "cat {home}/.ssh/id_ed25519",
    "ls -la {home}/.ssh",
    "grep -r swespot-test-secret {home} {other}",
    "find {home} {other}",
    "head -c 100000 /proc/{pid}/environ",
    "cat /proc/{pid}/cmdline",
    "cat /etc/shadow",
])
def test_inspection_commands_read_nothing_outside_the_copy(places, command, other_process):
    command = command.format(other=places["other"], home=places["home"], pid=other_process)
    out = run_tool(places["repo"], command)
    assert out.startswith(f"$ {command}\n[exit code") and "needs the user's approval" not in out
    listed = [line for line in out.splitlines()[2:] if "No such file or directory" not in line]
    assert SECRET not in out and not any("id_ed25519" in line or "private.py" in line for line in listed), out
    assert "root:" not in out  # /etc/shadow is hidden


def test_other_processes_and_the_real_tree_are_invisible(places, other_process):
    """A test the agent writes looks for the real repository through /proc/<ancestor>/cmdline and
    environ, for the user's home, and writes wherever it can."""
    repo = places["repo"]
    probe = textwrap.dedent(f"""
        import json, os, pathlib, pwd
        seen = {{"pids": [], "cmdlines": [], "secret": False, "wrote": []}}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            seen["pids"].append(int(entry))
            for name in ("cmdline", "environ"):
                try:
                    data = open(f"/proc/{{entry}}/{{name}}", "rb").read()
                except OSError:
                    continue
                seen["secret"] |= b"{SECRET}" in data
                if name == "cmdline":
                    seen["cmdlines"].append(data.decode(errors="replace"))
        targets = [{str(repo)!r}, {str(places["home"])!r}, {str(places["other"])!r}, pwd.getpwuid(os.getuid()).pw_dir,
                   os.path.expanduser("~"), "/tmp", "/usr", "/etc"]
        for target in targets:
            try:
                pathlib.Path(target, "planted-by-a-test").write_text("x")
                seen["wrote"].append(target)
            except OSError:
                pass
        seen["visible"] = [t for t in targets[:3] if os.path.exists(t)]
        print(json.dumps(seen))
    """)
    (repo / "tests" / "test_probe.py").write_text("def test_probe():\n" + textwrap.indent(probe, "    "))
    out = run_tool(repo, "python -m pytest -q -s tests/test_probe.py")
    assert "[exit code 0" in out, out
    seen = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert not seen["secret"] and seen["visible"] == []
    assert other_process not in seen["pids"] and max(seen["pids"]) < 100  # its own PID namespace
    assert not any(str(repo) in c or "pytest" in c and "test_probe" not in c for c in seen["cmdlines"])
    # what it could write was its own: a throw-away /tmp and HOME, never the user's places
    assert set(seen["wrote"]) <= {"/tmp", "/tmp/home"}
    for place in (repo, places["home"], places["other"], Path.home(), Path("/tmp")):
        assert not (place / "planted-by-a-test").exists()


def test_no_network_for_commands(places):
    code = "import socket; s = socket.socket(); s.settimeout(2); print('rc', s.connect_ex(('192.0.2.1', 80)))"
    result = run_limited([sys.executable, "-c", code], places["repo"])
    assert result.sandboxed and result.network_isolated and "rc 0" not in result.output


def test_a_child_that_calls_setsid_ignores_sigterm_and_holds_stdout_dies_at_the_time_limit(tmp_path):
    alive = tmp_path / "alive"
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        if os.fork() == 0:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for _ in range(600):
                open({str(alive)!r}, "a").write("x")  # a heartbeat the test can watch
                print("still here", flush=True)  # and stdout stays open
                time.sleep(0.05)
            os._exit(0)
        time.sleep(60)
    """)
    started = time.monotonic()
    result = run_limited([sys.executable, "-c", code], tmp_path, timeout_s=2)
    took = time.monotonic() - started
    assert result.timed_out and took < 6, took
    size = alive.stat().st_size
    subprocess.run(["sleep", "0.5"])  # the heartbeat would have grown by ten beats meanwhile
    assert alive.stat().st_size == size


def test_500_mb_of_output_are_streamed_through_a_cap_not_held(tmp_path):
    """``head -c 500000000 /dev/zero`` once made the caller 1.49 GB resident: measured in a fresh
    process, so this test's own peak does not hide it."""
    # VmHWM: this process's own peak (ru_maxrss would include the pytest process it was forked from)
    probe = ("import re, sys; from agent.sandbox import run_limited; "
             "r = run_limited('head -c 500000000 /dev/zero', sys.argv[1], output_limit=8000, timeout_s=240); "
             "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
             "print(r.output_bytes, len(r.output), r.truncated, peak, r.timed_out)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    total, kept, truncated, peak_kib, timed_out = done.stdout.split()[-5:]
    assert int(total) == 500_000_000 and int(kept) < 8200 and truncated == "True"
    assert int(peak_kib) < 200 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_the_run_tool_is_refused_without_a_sandbox_unless_the_user_opts_in(places, monkeypatch):
    import agent.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_bwrap", lambda: (None, (), "is not installed"))
    monkeypatch.delenv(sandbox.UNSAFE_OPT_IN, raising=False)
    out = run_tool(places["repo"], "python -m pytest -q")
    assert out.startswith("error: running repository code needs the bubblewrap sandbox (bwrap), which is not installed")
    assert sandbox.UNSAFE_OPT_IN in out
    monkeypatch.setenv(sandbox.UNSAFE_OPT_IN, "1")
    result = run_limited([sys.executable, "-c", "print('ran')"], places["repo"])
    assert result.output.strip() == "ran" and not result.sandboxed
