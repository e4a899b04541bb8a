"""The episode schema: validation names the problem; files round-trip; ids are content addresses."""

from __future__ import annotations

import json

import pytest

from agent.episode import load_episodes, new_episode, save_episodes, tool_call, validate_episode
from agent.errors import SwespotError


def sample(**over):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [tool_call("read_file", {"path": "a"}, "c0")]},
                {"role": "tool", "tool_call_id": "c0", "content": "1: x"},
                {"role": "assistant", "content": "done"}]
    return new_episode(over.pop("unit", "design"), "abc", over.pop("messages", messages), [], **over)


def test_same_content_gives_the_same_id_and_files_round_trip(tmp_path):
    a, b = sample(), sample()
    assert a["id"] == b["id"] and a["id"] != sample(unit="runtime")["id"]
    assert save_episodes(tmp_path / "u" / "s.jsonl", [a, sample(unit="runtime")]) == 2
    assert load_episodes(tmp_path / "u" / "s.jsonl") == [a, sample(unit="runtime")]


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("unit"), "missing unit"),
    (lambda e: e["messages"][1]["tool_calls"][0]["function"].update(arguments="{bad"), "are not JSON"),
    (lambda e: e["messages"][2].update(tool_call_id="zzz"), "answers no earlier tool call"),
    (lambda e: e["messages"][0].update(role="robot"), "message 0"),
    (lambda e: e.update(messages=[]), "non-empty list"),
])
def test_validation_says_what_is_wrong(mutate, message):
    ep = sample()
    mutate(ep)
    with pytest.raises(SwespotError, match=message):
        validate_episode(ep)


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(sample()) + "\n{oops\n")
    with pytest.raises(SwespotError, match=r"s.jsonl:2: not JSON"):
        load_episodes(path)
