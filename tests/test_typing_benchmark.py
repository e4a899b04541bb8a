"""The typing benchmark's user model and statistics (the replay itself runs in benchmarks/keystrokes.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("typing_benchmark", ROOT / "benchmarks" / "keystrokes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_user_takes_the_longest_matching_prefix_char_or_word_granular():
    bench = load()
    assert bench.accepted_length("return value + 1", "return value * 2", "char") == len("return value ")
    assert bench.accepted_length("return values", "return value\n", "char") == len("return value")
    assert bench.accepted_length("return values", "return value\n", "word") == len("return ")  # no half word
    assert bench.accepted_length("x = 1", "x = 1\ny", "word") == 5  # all of it fits
    assert bench.accepted_length("abc", "xyz", "char") == 0


def test_a_target_is_capped_at_a_line_end():
    bench = load()
    assert bench.cap("a = 1\nb = 2\nc = 3", 9) == "a = 1"
    assert bench.cap("a_long_first_line = 1\nb", 5) == "a_long_first_line = 1"
    assert bench.cap("short", 50) == "short"


def test_the_paired_interval_compares_the_same_tasks():
    bench = load()

    def replays(saved):
        return [bench.Replay(chars=100, keystrokes=100 - s) for s in saved]

    base, better = replays([10, 20, 5, 15, 10, 30]), replays([20, 40, 10, 30, 20, 60])
    out = bench.paired(base, better)
    assert out["saved_ratio"] == 2.0 and out["saved_ratio_ci95"] == [2.0, 2.0]
    lo, hi = out["ratio_difference_ci95"]
    assert 0 < lo <= out["ratio_difference"] <= hi
    assert "note" in bench.paired(base[:3], better[:3])  # too few tasks: no interval


def test_the_ceiling_is_what_a_perfect_model_saves_against_the_base():
    bench = load()
    # a perfect model takes each task in one keystroke: 99 of 100 characters saved, 0 of a 1-character task
    assert bench.Replay(chars=100, keystrokes=100).most_saved == 99 and bench.Replay(chars=1, keystrokes=1).most_saved == 0
    base = [bench.Replay(chars=100, keystrokes=100 - s) for s in (60, 70, 66, 64, 70, 66)]  # saves 2/3 already
    cand = [bench.Replay(chars=100, keystrokes=100 - s) for s in (70, 75, 70, 70, 72, 70)]
    out = bench.paired(base, cand)
    assert out["saved_ratio_ceiling"] == round(6 * 99 / 396, 3) == 1.5  # no model could save more than 1.5x this base
    lo, hi = out["saved_ratio_ceiling_ci95"]
    assert lo <= 1.5 <= hi and out["saved_ratio"] < out["saved_ratio_ceiling"]
    assert bench.summary("base", base)["ceiling_per_char"] == 0.99


def test_the_paired_comparison_also_gives_the_latency_difference_per_task():
    bench = load()
    base = [bench.Replay(chars=10, keystrokes=8, latencies_ms=[100.0, 200.0, 300.0]) for _ in range(6)]
    slower = [bench.Replay(chars=10, keystrokes=8, latencies_ms=[150.0, 250.0, 350.0]) for _ in range(6)]
    out = bench.paired(base, slower)
    assert out["p50_ms_difference"] == 50.0 and out["p50_ms_difference_ci95"] == [50.0, 50.0]
