"""The runtime's thread count fits the machine: the usable cores, the load others put on them, and the
editor's setting when it names one."""

from __future__ import annotations

import math
import os
import time

from agent import generation, threads
from agent.runtime import LlamaRuntime
from agent.threads import OwnLoad, choose_threads


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


class FakeProcess:
    """A process's CPU seconds and the clock, as OwnLoad reads them."""

    def __init__(self, age: float, cpu: float) -> None:
        self.now, self.cpu, self.age = 1000.0, cpu, age

    def own_load(self) -> OwnLoad:
        return OwnLoad(cpu_seconds=lambda: self.cpu, clock=lambda: self.now, age=lambda: self.age)


def test_a_process_that_just_trained_on_both_cores_counts_that_load_as_its_own():
    # specialize: 8 minutes of training on 2 cores, then the evaluation's runtime is created while the
    # 1-minute load still reads ~2 from that training; counted as others' load it left the evaluation 1 thread
    process = FakeProcess(age=480.0, cpu=900.0)
    own = process.own_load()
    assert 1.8 < own() < 1.9
    assert choose_threads(cores=2, load=2.0, own=own()) == 2
    assert choose_threads(cores=2, load=2.0, own=0.0) == 1  # what it chose before it measured its own part


def test_the_own_load_decays_like_the_kernel_average_and_follows_new_work():
    process = FakeProcess(age=480.0, cpu=900.0)
    own = process.own_load()
    start = own()
    process.now += 60.0  # a minute idle
    idle = own()
    assert abs(idle - start / math.e) < 1e-9
    process.now += 5.0
    process.cpu += 10.0  # then both cores busy for 5 s
    busy = own()
    assert abs(busy - (idle * math.exp(-5 / 60) + 2.0 * (1 - math.exp(-5 / 60)))) < 1e-9
    assert own() == busy  # no time passed: nothing changes


def test_the_own_load_of_a_process_of_unknown_age_counts_from_its_first_reading():
    process = FakeProcess(age=0.0, cpu=900.0)
    own = OwnLoad(cpu_seconds=lambda: process.cpu, clock=lambda: process.now, age=lambda: None)
    assert own() == 0.0  # its past CPU time cannot be spread over an unknown age
    process.now += 10.0
    process.cpu += 10.0
    assert 0.1 < own() < 0.2  # one core for 10 s of a 60 s average


def test_the_own_load_is_read_from_this_process():
    own = OwnLoad()
    started = time.process_time()
    while time.process_time() - started < 0.3:  # this thread busy for 0.3 s of CPU
        pass
    assert own() > 0.0
    assert threads._process_age() is None or threads._process_age() > 0.3


def test_the_editor_setting_wins_but_never_exceeds_the_usable_cores():
    assert choose_threads(3, cores=8, load=7.5) == 3
    assert choose_threads(16, cores=4, load=0.0) == 4


def test_the_defaults_read_the_affinity_and_the_load_average(monkeypatch):
    monkeypatch.setattr(threads, "own_load", lambda: 0.0)
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
    # right after this process trained on both cores, the load it reads is its own: both threads
    process = FakeProcess(age=480.0, cpu=900.0)
    monkeypatch.setattr(threads, "own_load", process.own_load())
    monkeypatch.setattr(threads, "recent_load", lambda: 2.0)
    with LlamaRuntime(tiny_gguf_q8, n_ctx=256) as after_training:
        assert after_training.n_threads == 2
    with LlamaRuntime(tiny_gguf_q8, n_ctx=256, n_threads=1) as fixed:
        monkeypatch.setattr(threads, "recent_load", lambda: 0.0)
        fixed.complete("def f(x):", max_tokens=2)
        assert fixed.n_threads == 1  # a count the user set stays
