"""An independent, third-party LSP client talks to the server: headless Neovim (Debian's 0.7.2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools_support import missing_tool

SCRIPT = Path(__file__).with_name("nvim_smoke.lua")


def test_neovim_gets_an_inline_completion_and_code_actions(repo, state_root, tiny_gguf_q8):
    if shutil.which("nvim") is None:
        missing_tool("Neovim is not installed (scripts/test installs it: apt-get install -y neovim)")
    env = {**os.environ, "SWESPOT_STATE_DIR": str(state_root), "SWESPOT_SMOKE_PYTHON": sys.executable,
           "SWESPOT_SMOKE_MODEL": str(tiny_gguf_q8), "SWESPOT_SMOKE_REPO": str(repo),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "XDG_STATE_HOME": str(state_root / "nvim")}
    done = subprocess.run(["nvim", "--headless", "--clean", "-c", f"luafile {SCRIPT}"], env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert "nvim smoke: ok" in done.stdout + done.stderr
