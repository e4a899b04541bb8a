"""What the runtime unit's parts share: the trace's version (in every shard key), the time budget, how many
tests an answer names, the teacher's episode, and the shard bookkeeping against the unit's target."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agent.episode import save_episodes
from trainer.experience import units as U
from trainer.experience.teacher import Teacher, taught

TRACE_VERSION = 4  # 2: the repository's own test environment, a sampled subset, node ids and callers; 3: whole-statement mutations;
# 4: caller -> callee edges between the repository's functions (they confirm the design unit's calls)
UNIT_SECONDS = 480  # mutations and reproductions start no new run after this (the trace not counted)
MAX_LISTED = 12  # failing tests an answer names


def symbol_at(index, path: str, line: int):
    """The indexed definition of ``path`` that starts at ``line`` (None when there is none)."""
    entry = index.files.get(path)
    return next((s for s in entry.symbols if s.start_line == line), None) if entry else None


def taught_episode(teacher: Teacher | None, stats: U.UnitStats, ws, task: str, verify, *, commit: str, meta: dict,
                   read_only: bool = False) -> dict | None:
    """The teacher's verified episode for ``task``, or None (then the oracle's is made)."""
    return taught(teacher, stats, ws, task, verify, unit="runtime", commit=commit, meta=meta, read_only=read_only)


def unit_full(opts, counts: Counter | None) -> bool:
    """Whether the runtime unit has reached its target number of episodes (the balanced mix)."""
    target = (getattr(opts, "targets", None) or {}).get("runtime") or 0
    return target > 0 and counts is not None and counts["runtime"] >= target


def save_shard(shard: Path, episodes: list, stats: U.UnitStats, counts: Counter | None) -> None:
    n = save_episodes(shard, episodes, dropped=stats.rejected)
    if counts is not None:
        counts["runtime"] += n


def reuse_shard(shard: Path, counts: Counter | None) -> int:
    """A shard already on disk: its episodes count against the unit's target."""
    n = sum(1 for line in open(shard, encoding="utf-8") if line.strip())
    if counts is not None:
        counts["runtime"] += n
    return n
