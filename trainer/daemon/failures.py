"""What a failed run says in status.json: one line naming what failed, where, and that nothing was
published (a failed run never is), as a ``NothingPublished`` (or ``DiskFull``) the daemon matches by
type. A full disk does not always raise ENOSPC (torch's checkpoint writer raises a RuntimeError about a
stream position), so the free space of the state folder is asked too."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from agent.errors import DiskFull, NothingPublished, SwespotError

LOW_DISK_BYTES = 64 * 2**20  # less free space than this in the state folder counts as a full disk


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _no_space(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's chain: a writer may wrap the OSError (``raise ... from``)
    or fail while handling it. Foreign exceptions without an errno are judged by the free space instead."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain is short; a cycle is not followed forever
        if seen is None:
            return False
        if isinstance(seen, DiskFull) or (isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_error(exc: BaseException, phase: str | None, state: Path | None = None) -> NothingPublished:
    """The failure of a run in ``phase`` as one line (``str()`` of the result)."""
    where = f" during {phase}" if phase else ""
    text = exc.detail if isinstance(exc, NothingPublished) else str(exc)
    if not isinstance(exc, (SwespotError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    if _no_space(exc):
        return DiskFull(f"disk full{where}: {text}")
    free = free_bytes(state) if state is not None else None
    if free is not None and free < LOW_DISK_BYTES:
        return DiskFull(f"disk full{where} ({free // 1024} KiB free in {state}): {text}")
    return NothingPublished(text + ("" if isinstance(exc, SwespotError) else where))
