"""The loop with the real tiny model in llama.cpp: it solves nothing, but it must run, parse or report
its output, and stop within budget."""

from __future__ import annotations

from agent.episode import validate_episode
from agent.loop import Agent, Budget
from agent.models import LlamaModel
from agent.runtime import LlamaRuntime
from agent.tools import Workspace


def test_tiny_model_runs_the_loop_and_stops_within_budget(tiny_gguf_f32, repo):
    with LlamaRuntime(tiny_gguf_f32, n_ctx=4096, n_threads=1) as runtime:
        model = LlamaModel(runtime, max_tokens=48)
        assert model.renderer.template_source.startswith("{#- Qwen3-format")  # its own template knows tools
        result = Agent(model, Workspace(repo), Budget(max_steps=3)).run("Fix add() in calc/ops.py")
    assert result.exit in ("limits", "submitted")
    assert result.steps <= 3
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 3 * 48
    validate_episode(result.episode)
    replies = [m for m in result.episode["messages"] if m["role"] == "assistant"]
    assert len(replies) == result.steps
    # every reply was either used (tool results follow) or answered with feedback: nothing is dropped
    assert len(result.episode["messages"]) >= 2 + 2 * result.steps


def test_replies_stream_as_they_are_written_and_the_context_limit_ends_the_run(tiny_gguf_f32, repo):
    pieces: list[str] = []
    with LlamaRuntime(tiny_gguf_f32, n_ctx=4096, n_threads=1) as runtime:
        model = LlamaModel(runtime, max_tokens=24, on_text=pieces.append)
        result = Agent(model, Workspace(repo), Budget(max_steps=1)).run("Say hello")
    assert pieces and 0 < result.completion_tokens <= 24
    assert result.episode["messages"][2]["role"] == "assistant"  # whatever it wrote was recorded and judged
    with LlamaRuntime(tiny_gguf_f32, n_ctx=512, n_threads=1) as small:
        # the tools' schemas alone overflow 512 tokens: the run ends as over its limits, not with a crash
        cramped = Agent(LlamaModel(small, max_tokens=8), Workspace(repo), Budget(max_steps=3)).run("Say hello")
    assert cramped.exit == "limits" and "context" in cramped.summary


def test_a_cancelled_generation_ends_the_run_as_cancelled(tiny_gguf_f32, repo):
    import threading

    cancel = threading.Event()
    cancel.set()  # the user pressed stop before the first token
    with LlamaRuntime(tiny_gguf_f32, n_ctx=4096, n_threads=1) as runtime:
        result = Agent(LlamaModel(runtime, cancel=cancel), Workspace(repo), Budget(max_steps=5)).run("Fix add()")
    assert (result.exit, result.steps) == ("cancelled", 1) and result.completion_tokens == 0
    validate_episode(result.episode)
