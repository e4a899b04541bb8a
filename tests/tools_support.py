"""Tools the tests drive that scripts/test installs (Neovim, the VS Code toolchain): when one is missing a test
skips with the reason, except in CI (``$CI`` set), where a set-up that failed must not read as green."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(why: str) -> NoReturn:
    """A tool a test needs is not installed: a failure in CI, a skip that says why elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the set-up in scripts/test must provide it)")
    pytest.skip(why)
