"""How many threads llama.cpp gets on this machine now: the usable cores, the load others put on them,
and the editor's setting when it names a count. Torch- and llama_cpp-free."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

LOAD_PERIOD_S = 60.0  # the kernel's 1-minute load average decays with this time constant


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


def _cpu_seconds() -> float:
    """CPU time of this process, all its threads (not its children's: a child's whole time arrives at
    once when it is reaped, and a running child is load from others until then)."""
    t = os.times()
    return t.user + t.system


def _process_age() -> float | None:
    """Seconds since this process started (Linux's /proc; None where it cannot be read)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class OwnLoad:
    """This process's own part of the 1-minute load average: its CPU time, averaged and decayed as the
    kernel averages runnable threads. Without it, a process that has just trained on both cores (specialize:
    training, then evaluation) reads its own past work in the load average and starves itself to one thread.
    Between two readings the rate is taken as even; the first reading spreads the time since the process
    started (or, where that is unknown, counts from now)."""

    def __init__(self, cpu_seconds=_cpu_seconds, clock=time.monotonic, age=_process_age) -> None:
        self._cpu_seconds, self._clock, self._age = cpu_seconds, clock, age
        self._lock = threading.Lock()
        self._at: float | None = None
        self._cpu = self._load = 0.0

    def __call__(self) -> float:
        with self._lock:
            now, cpu = self._clock(), self._cpu_seconds()
            if self._at is None:
                age = self._age()
                if age is None:
                    self._at, self._cpu = now, cpu
                    return 0.0
                self._at, self._cpu = now - age, 0.0
            elapsed = now - self._at
            if elapsed > 0:
                decay = math.exp(-elapsed / LOAD_PERIOD_S)
                self._load = self._load * decay + max(0.0, cpu - self._cpu) / elapsed * (1 - decay)
                self._at, self._cpu = now, cpu
            return self._load


own_load = OwnLoad()


def choose_threads(setting: int = 0, *, cores: int | None = None, load: float | None = None, own: float | None = None) -> int:
    """llama.cpp threads for this machine now. The editor's setting wins when it names a count (capped at
    the usable cores: more threads than cores only contend). Otherwise one thread per core that the
    load leaves free, at least one: llama.cpp's threads spin-wait for each other, so a thread that
    shares its core with another busy process stalls every token (on a loaded 2-core machine 2 threads
    fell to 1-6 tokens/s while 1 thread held 13-48). ``load`` is the 1-minute load average; ``own`` is
    the part of it that is this process's own work (counted back, or it would starve itself; default: with
    the load read from the machine, ``own_load()``, measured from its CPU time; with a given load, none)."""
    cores = usable_cores() if cores is None else max(1, cores)
    if setting > 0:
        return min(setting, cores)
    if own is None:
        own = own_load() if load is None else 0.0
    load = recent_load() if load is None else load
    return max(1, min(cores, int(cores - max(0.0, load - own) + 0.5)))
