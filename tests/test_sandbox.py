"""Repository code runs in a scratch copy with time, memory and network limits."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import SwespotError
from agent.sandbox import can_isolate_network, run_limited, scratch_copy


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "mod.py").write_text("print('committed')\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    (root / "mod.py").write_text("print('uncommitted edit')\n")
    return root


def test_scratch_copy_holds_the_commit_and_leaves_the_work_tree_alone(repo):
    with scratch_copy(repo) as scratch:
        assert (scratch / "mod.py").read_text() == "print('committed')\n"
        result = run_limited([sys.executable, "mod.py"], scratch)
        (scratch / "mod.py").write_text("clobbered")
        assert result.ok and result.output.strip() == "committed"
    assert not scratch.exists()
    assert (repo / "mod.py").read_text() == "print('uncommitted edit')\n"


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "grandchild-survived"
    script = f"(sleep 3; touch {marker}) & sleep 30"
    result = run_limited(script, tmp_path, timeout_s=1)
    assert result.timed_out and result.returncode is None
    # wait for longer than the grandchild would need, by blocking on a process that outlives it
    subprocess.run(["sleep", "3.5"])
    assert not marker.exists()


def test_memory_is_capped(tmp_path):
    result = run_limited([sys.executable, "-c", "x = bytearray(800 * 2**20)"], tmp_path, memory_mb=300)
    assert result.returncode != 0
    assert "MemoryError" in result.output


@pytest.mark.skipif(not can_isolate_network(), reason="this kernel does not allow unprivileged network namespaces")
def test_no_network_inside(tmp_path):
    # a server on the host's loopback is not reachable (the sandbox has a loopback of its own), nor is any
    # other address (no route at all)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = ("import socket\n"
                f"for where in [('127.0.0.1', {port}), ('192.0.2.1', 80)]:\n"
                "    s = socket.socket(); s.settimeout(2); print(s.connect_ex(where))")
        result = run_limited([sys.executable, "-c", code], tmp_path)
    assert result.network_isolated
    host_loopback, elsewhere = result.output.split()
    assert host_loopback in (str(errno.ECONNREFUSED), str(errno.ENETUNREACH))  # not the host's listener
    assert elsewhere == str(errno.ENETUNREACH)


def test_output_is_cut_to_the_budget_keeping_head_and_tail(tmp_path):
    result = run_limited([sys.executable, "-c", "print('HEAD'); print('x' * 50000); print('TAIL')"], tmp_path, output_limit=1000)
    assert result.truncated and result.output.startswith("HEAD") and result.output.rstrip().endswith("TAIL")
    assert len(result.output) < 1200


def test_a_bad_commit_is_a_clear_error(repo):
    with pytest.raises(SwespotError, match="cannot make a scratch copy"):
        with scratch_copy(repo, "nope"):
            pass


def test_kernel_limits_bind_inside(tmp_path):
    """File size (a sparse write past the limit fails without using disk), process count and CPU time
    are rlimits the kernel enforces; /tmp is a tmpfs of bounded size."""
    code = ("import resource, os, shutil\n"
            "print(*(resource.getrlimit(getattr(resource, 'RLIMIT_' + n))[0] for n in ('NPROC', 'CPU', 'FSIZE')))\n"
            "print(shutil.disk_usage('/tmp').total // 2**20)\n"
            "f = open('sparse', 'wb')\n"
            "f.seek(2 * 2**30)\n"
            "try:\n"
            "    f.write(b'x'); f.flush(); print('wrote')\n"
            "except OSError as exc:\n"
            "    print('refused', exc.errno)\n")
    result = run_limited([sys.executable, "-c", code], tmp_path, timeout_s=10)
    nproc, cpu, fsize, tmp_mb, outcome = result.output.split()[:5]
    assert 0 < int(nproc) < 10**6 and 0 < int(cpu) <= 15 and int(fsize) == 2**30
    assert "refused" in outcome or "wrote" not in result.output
    if result.sandboxed:
        assert int(tmp_mb) <= 1024
