"""How many threads llama.cpp gets on this machine now: the usable cores, the load others put on them,
and the editor's setting when it names a count. Torch- and llama_cpp-free."""

from __future__ import annotations

import os


def default_threads() -> int:
    return choose_threads()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def recent_load() -> float:
    """Runnable processes over the last minute (0.0 where the platform does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(setting: int = 0, *, cores: int | None = None, load: float | None = None, own: float = 0.0) -> int:
    """llama.cpp threads for this machine now. The editor's setting wins when it names a count (capped at
    the usable cores: more threads than cores only contend). Otherwise one thread per core that the
    load leaves free, at least one: llama.cpp's threads spin-wait for each other, so a thread that
    shares its core with another busy process stalls every token (on a loaded 2-core machine 2 threads
    fell to 1-6 tokens/s while 1 thread held 13-48). ``load`` is the 1-minute load average; ``own`` is
    the part of it that is this process's own generation (counted back, or it would starve itself)."""
    cores = usable_cores() if cores is None else max(1, cores)
    if setting > 0:
        return min(setting, cores)
    load = recent_load() if load is None else load
    return max(1, min(cores, int(cores - max(0.0, load - own) + 0.5)))
