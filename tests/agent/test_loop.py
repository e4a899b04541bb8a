"""The loop end to end: scripted turns make a real diff; malformed output is fed back; budgets stop it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from agent.episode import load_episodes, validate_episode
from agent.loop import Agent, Budget
from agent.models import OpenAIModel, ScriptedModel
from agent.tools import CommandPolicy, Workspace

ROOT = Path(__file__).resolve().parents[2]


def call(name: str, **args) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


FIX_TURNS = [
    "I will look at the failing function.\n" + call("find_definition", symbol="add"),
    call("read_file", path="calc/ops.py", start_line=4, end_line=6),
    call("edit", path="calc/ops.py", old="return a - b", new="return a + b"),
    call("run", command=f"{sys.executable} -m pytest -q tests"),
    call("submit", summary="add() subtracted; it adds now and the test passes"),
]


def workspace(repo) -> Workspace:
    return Workspace(repo, policy=CommandPolicy(approve=lambda cmd: cmd.startswith(sys.executable)))


def test_scripted_run_produces_the_real_diff_and_a_valid_episode(repo):
    result = Agent(ScriptedModel(FIX_TURNS), workspace(repo)).run("Fix add()")
    assert result.exit == "submitted" and result.steps == 5
    assert "-    return a - b\n+    return a + b" in result.diff
    assert "return a + b" in (repo / "calc/ops.py").read_text()
    validate_episode(result.episode)
    tool_outputs = [m["content"] for m in result.episode["messages"] if m["role"] == "tool"]
    assert tool_outputs[0].startswith("calc/ops.py:4-6 function add")
    assert "1 passed" in tool_outputs[3] and "[exit code 0" in tool_outputs[3]
    assert result.episode["meta"]["diff"] == result.diff
    assert result.episode["repo_commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_malformed_output_is_shown_to_the_model_and_the_loop_goes_on(repo):
    turns = ['<tool_call>\n{"name": "read_file", "arguments": {"path": \n</tool_call>',
             call("teleport", to="mars"),
             "I think I am done.",
             call("submit", summary="gave up politely")]
    result = Agent(ScriptedModel(turns), workspace(repo)).run("Explore")
    assert result.exit == "submitted" and result.format_errors == 2
    feedback = [m["content"] for m in result.episode["messages"] if m["role"] == "user"][1:]
    assert "not valid JSON" in feedback[0] and "unknown tool 'teleport'" in feedback[1]
    assert "call submit" in feedback[2]


def test_step_and_token_budgets_stop_the_run(repo):
    looping = [call("list_dir", path=".")] * 10
    by_steps = Agent(ScriptedModel(looping), workspace(repo), Budget(max_steps=3)).run("Loop")
    assert (by_steps.exit, by_steps.steps) == ("limits", 3) and "step limit" in by_steps.summary
    by_tokens = Agent(ScriptedModel(looping), workspace(repo), Budget(max_steps=10, max_tokens=150)).run("Loop")
    assert by_tokens.exit == "limits" and "token budget" in by_tokens.summary and by_tokens.steps < 10


def test_cli_prints_json_and_saves_the_episode(repo, tmp_path):
    turns = tmp_path / "turns.json"
    turns.write_text(json.dumps(FIX_TURNS[2:3] + FIX_TURNS[4:]))
    episode = tmp_path / "ep.jsonl"
    done = subprocess.run([sys.executable, "-m", "swespot", "agent", "--repo", str(repo), "--model", f"scripted:{turns}",
                           "--json", "--episode-out", str(episode), "Fix add()"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["exit"] == "submitted" and "+    return a + b" in result["diff"] and result["steps"] == 2
    assert load_episodes(episode)[0]["meta"]["exit"] == "submitted"


def _unanswered_call(messages: list[dict]) -> str | None:
    waiting: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            waiting.discard(m["tool_call_id"])
        elif waiting:
            return f"tool calls {sorted(waiting)} have no tool message"
        if m["role"] == "assistant":
            waiting = {c["id"] for c in m.get("tool_calls") or []}
    return None


class _FakeEndpoint(BaseHTTPRequestHandler):
    """A local OpenAI-compatible endpoint (127.0.0.1 only) that answers with structured tool calls."""

    replies: list = []
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        problem = _unanswered_call(body["messages"])
        if problem:  # as OpenAI and llama-server do: every tool call needs its result before the next turn
            data, status = json.dumps({"error": {"message": problem}}).encode(), 400
        else:
            reply = type(self).replies.pop(0)
            data, status = json.dumps({"choices": [{"message": reply, "finish_reason": "tool_calls"}],
                                       "usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    """The fake endpoint on 127.0.0.1 (an ephemeral port), for the length of one test."""
    _FakeEndpoint.requests = []
    server = HTTPServer(("127.0.0.1", 0), _FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def test_a_malformed_structured_reply_keeps_the_conversation_valid_for_the_endpoint(repo, endpoint):
    _FakeEndpoint.replies = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "x1", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}},
            {"id": "x2", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": "}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x3", "type": "function", "function": {"name": "submit", "arguments": "{\"summary\": \"ok\"}"}}]},
    ]
    result = Agent(OpenAIModel(endpoint), workspace(repo), Budget(max_steps=4)).run("Look around")
    assert result.exit == "submitted" and result.format_errors == 1
    assert len(_FakeEndpoint.requests) == 2  # the second request was accepted: no call left unanswered


def test_an_endpoint_refusal_quotes_the_servers_reason(repo, endpoint):
    from agent.errors import SwespotError

    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "q", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]}, {"role": "user", "content": "y"}]
    with pytest.raises(SwespotError, match=r"HTTP 400: .*have no tool message"):
        OpenAIModel(endpoint).query(messages, [])


def test_openai_compatible_backend_runs_the_loop(repo, endpoint):
    _FakeEndpoint.replies = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x1", "type": "function", "function": {"name": "list_dir", "arguments": "{}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x2", "type": "function", "function": {"name": "submit", "arguments": "{\"summary\": \"seen\"}"}}]},
    ]
    result = Agent(OpenAIModel(endpoint), workspace(repo), Budget(max_steps=4)).run("Look around")
    assert result.exit == "submitted" and result.summary == "seen"
    assert (result.prompt_tokens, result.completion_tokens) == (22, 14)
    assert {t["function"]["name"] for t in _FakeEndpoint.requests[0]["tools"]} >= {"read_file", "submit"}
    assert "calc/" in [m for m in result.episode["messages"] if m["role"] == "tool"][0]["content"]


def test_an_unreachable_endpoint_is_a_clear_error(repo):
    from agent.errors import SwespotError

    with pytest.raises(SwespotError, match="failed"):
        Agent(OpenAIModel("http://127.0.0.1:9/v1", timeout=5), workspace(repo)).run("x")


def test_the_episode_records_usage(repo):
    result = Agent(ScriptedModel(FIX_TURNS), workspace(repo)).run("Fix add()")
    usage = result.episode["meta"]["usage"]
    assert usage == {"turns": 5, "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_a_script_that_runs_out_ends_the_run_as_over_its_limits(repo):
    result = Agent(ScriptedModel(FIX_TURNS[:2]), workspace(repo)).run("Fix add()")
    assert result.exit == "limits" and "no more turns" in result.summary and result.steps == 3
    validate_episode(result.episode)


def test_a_recorded_episode_replays_to_the_same_observations(repo, tmp_path):
    from agent.episode import save_episodes

    turns = ["<think>\nStart with the code.\n</think>\n\nLooking.", call("teleport", to="mars"), *FIX_TURNS]
    first = Agent(ScriptedModel(turns), workspace(repo)).run("Fix add()")
    save_episodes(tmp_path / "ep.jsonl", [first.episode])
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)
    again = Agent(ScriptedModel.from_file(tmp_path / "ep.jsonl"), workspace(repo)).run("Fix add()")
    assert again.diff == first.diff and again.exit == "submitted" and again.format_errors == first.format_errors == 1
    assert [m for m in again.episode["messages"] if m["role"] != "tool"] == [m for m in first.episode["messages"] if m["role"] != "tool"]
    # the test run's output carries timings; every other observation is reproduced exactly
    def observations(result):
        return [m["content"] for m in result.episode["messages"] if m["role"] == "tool" and not m["content"].startswith("$ ")]
    assert observations(again) == observations(first)


def test_structured_replies_naming_unknown_tools_get_an_error_result(repo):
    turns = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "teleport", "arguments": {"to": "mars"}}}]},
             {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "submit", "arguments": {"summary": "ok"}}}]}]
    result = Agent(ScriptedModel(turns), workspace(repo)).run("Explore")
    results = [m for m in result.episode["messages"] if m["role"] == "tool"]
    assert results[0]["content"].startswith("error: unknown tool 'teleport'") and result.exit == "submitted"
    validate_episode(result.episode)


def test_cli_prints_the_diff_and_a_summary_of_turns_and_tokens(repo, tmp_path):
    turns = tmp_path / "turns.json"
    turns.write_text(json.dumps(FIX_TURNS[2:3] + FIX_TURNS[4:]))
    done = subprocess.run([sys.executable, "-m", "swespot", "agent", "--repo", str(repo), "--model", f"scripted:{turns}",
                           "Fix add()"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("--- a/calc/ops.py\n+++ b/calc/ops.py") and "+    return a + b" in done.stdout
    assert "submitted: add() subtracted" in done.stderr
    assert re.search(r"^2 turns, \d+ prompt \+ \d+ completion tokens$", done.stderr, re.M), done.stderr


def test_cli_names_an_unknown_model_clearly(repo):
    done = subprocess.run([sys.executable, "-m", "swespot", "agent", "--repo", str(repo), "--model", "no-such-model", "x"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "model not found: no-such-model (give 'default', a .gguf file, scripted:FILE" in done.stderr


def test_structured_calls_with_bad_arguments_are_reported_and_nothing_of_that_reply_runs(repo):
    bad = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "edit", "arguments": '{"path": "calc/ops.py", "old": "return a - b", "new": "return a + b"}'}},
        {"id": "b", "type": "function", "function": {"name": "read_file", "arguments": "{oops"}}]}
    done = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                   "function": {"name": "submit", "arguments": '{"summary": "stopped"}'}}]}
    result = Agent(ScriptedModel([bad, done]), workspace(repo)).run("Fix add()")
    assert result.format_errors == 1 and result.diff == "" and result.exit == "submitted"
    messages = result.episode["messages"]
    assert [m["role"] for m in messages[2:5]] == ["assistant", "tool", "user"]
    assert messages[3]["tool_call_id"] == "a" and messages[3]["content"].startswith("error: not run")
    assert "arguments of read_file are not a JSON object" in messages[4]["content"]
    validate_episode(result.episode)


def test_the_agent_runs_without_llama_cpp_or_torch_loaded(repo, tmp_path):
    """Scripted and OpenAI backends must work where llama_cpp (or torch) is missing: nothing on the
    agent's path imports them."""
    turns = tmp_path / "turns.json"
    turns.write_text(json.dumps(FIX_TURNS[2:3] + FIX_TURNS[4:]))
    script = (
        "import sys\n"
        "from swespot.cli import main\n"
        f"code = main(['agent', '--repo', {str(repo)!r}, '--model', 'scripted:{turns}', '--json', 'Fix add()'])\n"
        "loaded = [m for m in ('llama_cpp', 'torch', 'transformers') if m in sys.modules]\n"
        "assert code == 0 and not loaded, (code, loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
