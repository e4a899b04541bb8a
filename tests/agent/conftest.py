"""A fixture repository made with real git: a package, tests, and every awkward kind of file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CALC = '''"""Arithmetic helpers."""


def add(a, b):
    """Return a + b."""
    return a - b


def mul(a, b):
    return a * b
'''


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "calc").mkdir(parents=True)
    (root / "calc" / "__init__.py").write_text("from calc.ops import add, mul\n")
    (root / "calc" / "ops.py").write_text(CALC)
    (root / "calc" / "report.py").write_text("from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        out = add(out, x)\n    return out\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_ops.py").write_text("from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (root / "legacy.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "image.bin").write_bytes(b"\x00\x01\x02binary\x00")
    (root / "big.log.txt").write_text("".join(f"line {i}\n" for i in range(5000)))
    (root / ".gitignore").write_text("secret.txt\n")
    (root / "secret.txt").write_text("ignored by git\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    os.symlink(outside, root / "escape.txt")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root
