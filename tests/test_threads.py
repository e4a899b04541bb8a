"""The runtime's thread count fits the machine: the usable cores, the load others put on them, and the
editor's setting when it names one."""

from __future__ import annotations

import os

from agent import generation, threads
from agent.runtime import LlamaRuntime
from agent.threads import choose_threads


def test_an_idle_machine_gets_one_thread_per_core():
    assert choose_threads(cores=2, load=0.0) == 2
    assert choose_threads(cores=8, load=0.3) == 8


def test_a_busy_machine_leaves_the_loaded_cores_alone_but_keeps_one_thread():
    assert choose_threads(cores=2, load=1.0) == 1  # another heavy job on one of the two cores
    assert choose_threads(cores=8, load=5.2) == 3
    assert choose_threads(cores=2, load=7.0) == 1


def test_the_process_own_generation_is_not_counted_as_load():
    # the 1-minute load includes this process's own 2 spinning threads: they must not push it down to 1
    assert choose_threads(cores=2, load=2.0, own=2.0) == 2
    assert choose_threads(cores=2, load=3.0, own=2.0) == 1


def test_the_editor_setting_wins_but_never_exceeds_the_usable_cores():
    assert choose_threads(3, cores=8, load=7.5) == 3
    assert choose_threads(16, cores=4, load=0.0) == 4


def test_the_defaults_read_the_affinity_and_the_load_average(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert threads.usable_cores() == 4
    assert choose_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads() == 4


def test_an_automatic_runtime_re_chooses_its_threads_between_generations(tiny_gguf_q8, monkeypatch):
    monkeypatch.setattr(generation, "THREAD_REFIT_S", 0.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "recent_load", lambda: 0.0)
    with LlamaRuntime(tiny_gguf_q8, n_ctx=256) as runtime:
        assert runtime.n_threads == 2 and runtime.thread_setting == 0
        monkeypatch.setattr(threads, "recent_load", lambda: 9.0)  # the machine got busy
        first = runtime.complete("def f(x):", max_tokens=4)
        assert runtime.n_threads == 1
        monkeypatch.setattr(threads, "recent_load", lambda: 0.0)
        assert runtime.complete("def f(x):", max_tokens=4).text == first.text  # same answer, other thread count
        assert runtime.n_threads == 2
    with LlamaRuntime(tiny_gguf_q8, n_ctx=256, n_threads=1) as fixed:
        monkeypatch.setattr(threads, "recent_load", lambda: 0.0)
        fixed.complete("def f(x):", max_tokens=2)
        assert fixed.n_threads == 1  # a count the user set stays
