"""One renderer/parser: render then parse gives back the same messages, for every tool and both templates."""

from __future__ import annotations

import json

import pytest

from agent.episode import tool_call
from agent.render import GEMMA_TEMPLATE, QWEN3_TEMPLATE, Renderer, parse
from agent.tools import Workspace, make_tools

TEMPLATES = {"qwen3": lambda: Renderer(QWEN3_TEMPLATE.read_text()), "chatml-fallback": Renderer.fallback,
             "gemma-fallback": lambda: Renderer(GEMMA_TEMPLATE.read_text())}
TURN_STARTS = ("<|im_start|>", "<start_of_turn>")

EXAMPLE_ARGS = {
    "read_file": {"path": "calc/ops.py", "start_line": 3, "end_line": 9},
    "list_dir": {"path": "calc"},
    "find_files": {"pattern": "test_*.py"},
    "search": {"pattern": "def \\w+\\(", "regex": True, "path": "."},
    "repo_map": {"budget": 512},
    "find_definition": {"symbol": "Cart.add"},
    "find_references": {"symbol": "add"},
    "edit": {"path": "a.py", "old": "x = \"1\"\n\ty = {'k': [1, 2]}", "new": "x = 2  # ünïcode ✓"},
    "create_file": {"path": "new.py", "content": "<tool_call>not a call</tool_call>\n"},
    "delete_file": {"path": "old/legacy.py"},
    "run": {"command": "python -m pytest -q", "timeout": 60},
    "diff": {},
    "submit": {"summary": "Done: fixed add()."},
}


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return [t.schema() for t in make_tools(Workspace(tmp_path_factory.mktemp("ws"))).values()]


def conversation(tool_names: list[str]) -> list[dict]:
    messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Please fix the bug."}]
    for step, name in enumerate(tool_names):
        call = tool_call(name, EXAMPLE_ARGS[name], f"call_{step}_0")
        assistant = {"role": "assistant", "content": f"Step {step}: using {name}.", "tool_calls": [call]}
        if step % 3 == 1:
            assistant = {"role": "assistant", "content": None, "reasoning_content": "I should look closer.", "tool_calls": [call]}
        messages += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": f"result of {name}\nline 2"}]
    messages.append({"role": "assistant", "content": "All done."})
    return messages


def test_every_tool_is_exercised():
    assert set(EXAMPLE_ARGS) == {t for t in make_tools(Workspace(".")).keys()}


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_render_then_parse_returns_every_assistant_message(template, tools):
    renderer = TEMPLATES[template]()
    messages = conversation(list(EXAMPLE_ARGS))
    text, spans = renderer.render_with_spans(messages, tools)
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(assistants)
    for step, ((start, end), original) in enumerate(zip(spans, assistants)):
        parsed = parse(text[start:end], id_prefix=f"call_{step}_")
        assert parsed.errors == []
        assert parsed.message == original


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_assistant_spans_cover_only_what_the_assistant_wrote(template, tools):
    renderer = TEMPLATES[template]()
    messages = conversation(["read_file", "edit"])
    text, spans = renderer.render_with_spans(messages, tools)
    covered = "".join(text[a:b] for a, b in spans)
    assert "Please fix the bug." not in covered and "result of read_file" not in covered and "You are a coding agent" not in covered
    assert all(text[a:b].endswith(renderer.end_of_turn) for a, b in spans)
    assert all(not text[a:b].startswith(TURN_STARTS) for a, b in spans)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_the_prompt_ends_where_the_assistant_begins(template, tools):
    renderer = TEMPLATES[template]()
    messages = conversation(["search"])
    text, spans = renderer.render_with_spans(messages, tools)
    assert renderer.prompt(messages[:2], tools) == text[: spans[0][0]]


def test_templates_differ_in_how_tool_results_are_shown(tools):
    messages = conversation(["read_file"])
    assert "<tool_response>" in Renderer(QWEN3_TEMPLATE.read_text()).render(messages, tools)
    assert "<|im_start|>tool\n" in Renderer.fallback().render(messages, tools)
    assert "<start_of_turn>user\n<tool_response>\nresult of read_file" in TEMPLATES["gemma-fallback"]().render(messages, tools)


def test_a_model_template_without_tools_falls_back_to_its_own_turns():
    gemma_like = "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    gemma = Renderer.for_template(gemma_like, bos_token="<bos>", eos_token="<eos>")
    assert gemma.template_source == GEMMA_TEMPLATE.read_text()
    assert gemma.end_of_turn == "<end_of_turn>" and "<end_of_turn>" in gemma.stop and "<|im_end|>" not in gemma.stop
    llama_like = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}{% endfor %}"
    for other in (llama_like, None):
        assert Renderer.for_template(other).template_source == Renderer.fallback().template_source
    assert Renderer.fallback().stop == ("<|im_end|>", "<|endoftext|>")
    qwen = QWEN3_TEMPLATE.read_text()
    assert Renderer.for_template(qwen).template_source == qwen


@pytest.mark.parametrize("text, error", [
    ('<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"\n</tool_call>', "not valid JSON"),
    ('<tool_call>\n{"name": "teleport", "arguments": {}}\n</tool_call>', "unknown tool 'teleport'"),
    ('<tool_call>\n{"name": "read_file", "arguments": {"path": "a', "was not closed"),
    ('<tool_call>\n["read_file"]\n</tool_call>', 'must be {"name"'),
    ('<think>\nhmm, and then', "never closed"),
])
def test_malformed_output_becomes_errors_not_exceptions(text, error):
    parsed = parse(text, known_tools={"read_file", "submit"})
    assert any(error in e for e in parsed.errors), parsed.errors
    assert parsed.message["role"] == "assistant"


def test_arguments_given_as_a_json_string_are_normalised():
    parsed = parse('<tool_call>\n{"name": "read_file", "arguments": "{\\"path\\": \\"a.py\\"}"}\n</tool_call>')
    assert json.loads(parsed.message["tool_calls"][0]["function"]["arguments"]) == {"path": "a.py"}


def test_text_after_the_end_of_turn_is_ignored():
    assert parse("Answer.<|im_end|>\n<|im_start|>user\nmore").message == {"role": "assistant", "content": "Answer."}
    assert parse("Answer.<end_of_turn>\n<start_of_turn>user\nmore").message == {"role": "assistant", "content": "Answer."}


def test_unknown_template_features_fail_loudly():
    from agent.errors import SwespotError

    with pytest.raises(SwespotError, match="does not compile"):
        Renderer("{{ messages | no_such_filter }}")
    with pytest.raises(SwespotError, match="failed on these messages"):
        Renderer("{{ no_such_function() }}").render([{"role": "user", "content": "hi"}])
    with pytest.raises(SwespotError, match="refused the conversation: roles must alternate"):
        Renderer("{{ raise_exception('roles must alternate') }}").render([{"role": "user", "content": "hi"}])


def test_templates_get_what_transformers_gives_them():
    source = "{{ bos_token }}{{ messages[0] | tojson(indent=1) }}{{ eos_token }}"
    text = Renderer(source, bos_token="<s>", eos_token="</s>").render([{"role": "user", "content": "é"}])
    assert text == '<s>{\n "role": "user",\n "content": "é"\n}</s>'


def test_a_reply_with_a_broken_call_keeps_what_the_model_wrote_and_runs_nothing():
    text = 'Reading.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n<tool_call>\n{"name": oops}\n</tool_call>'
    parsed = parse(text + "<|im_end|>", known_tools={"read_file"})
    assert parsed.message == {"role": "assistant", "content": text} and len(parsed.errors) == 1


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_an_agent_episode_with_malformed_replies_renders_and_parses_back(template, repo):
    from agent.loop import Agent
    from agent.models import ScriptedModel

    turns = ['<tool_call>\n{"name": "list_dir", "arguments": {"path": \n</tool_call>',
             '<think>\nLook first.\n</think>\n\n<tool_call>\n{"name": "list_dir", "arguments": {"path": "calc"}}\n</tool_call>',
             '<tool_call>\n{"name": "submit", "arguments": {"summary": "seen"}}\n</tool_call>']
    episode = Agent(ScriptedModel(turns), Workspace(repo)).run("Look").episode
    renderer = TEMPLATES[template]()
    text, spans = renderer.render_with_spans(episode["messages"], episode["tools"])
    for (start, end), turn in zip(spans, turns):
        assert text[start:end] == turn + renderer.end_of_turn  # exactly what the model wrote is what it learns


COMPACT_LINE = r"^(\w+)\((.*)\)(?:: (.*))?$"


def read_compact_tools(text: str) -> dict:
    """Read the fallback's compact tool lines back into (description, {arg: (type, required)})."""
    import re

    block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    out = {}
    for line in block.splitlines():
        name, args, description = re.match(COMPACT_LINE, line).groups()
        params = {}
        for arg in filter(None, args.split(", ")):
            head, _, kind = arg.partition(": ")
            params[head.rstrip("?")] = (kind or "string", not head.endswith("?"))
        out[name] = (description, params)
    return out


def test_the_fallback_lists_tools_compactly_and_every_signature_reads_back(tools):
    """The compact form (training and inference render the same) loses nothing a call needs: every tool,
    argument, type, required flag and description reads back from the system turn."""
    short = {"integer": "int", "boolean": "bool"}
    text = Renderer.fallback().render([{"role": "system", "content": "S"}], tools)
    assert "{\"type\": \"function\"" not in text and len(text) < 1400  # JSON schemas were ~4,000 characters
    expected = {}
    for schema in tools:
        fn = schema["function"]
        params = {k: (short.get(v["type"], v["type"]), k in fn["parameters"]["required"]) for k, v in fn["parameters"]["properties"].items()}
        expected[fn["name"]] = (fn["description"], params)
    assert read_compact_tools(text) == expected


def test_an_agent_prompt_and_its_recorded_episode_render_the_same_tools(repo):
    """Inference (the prompt the model continues) and training (the episode the loop recorded) show the
    model one and the same compact tool list."""
    from agent.loop import Agent
    from agent.models import ScriptedModel

    prompts = []

    class Recording(ScriptedModel):
        def query(self, messages, tools):
            prompts.append(Renderer.fallback().prompt(messages, tools))
            return super().query(messages, tools)

    turn = '<tool_call>\n{"name": "submit", "arguments": {"summary": "ok"}}\n</tool_call>'
    episode = Agent(Recording([turn]), Workspace(repo)).run("Look").episode
    text, spans = Renderer.fallback().render_with_spans(episode["messages"], episode["tools"])
    assert text[: spans[0][0]] == prompts[0]
    assert read_compact_tools(text).keys() == {t["function"]["name"] for t in episode["tools"]}


READ = {"type": "function", "function": {"name": "read_file", "description": "Read a file.",
                                         "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}


def test_the_gemma_fallback_opens_the_first_user_turn_with_the_system_text_and_the_tools():
    """Gemma has no system role: as its own template does, the system text (and here the tools) opens the
    first user turn; the model's turn is `model`, and each turn ends with <end_of_turn>."""
    renderer = TEMPLATES["gemma-fallback"]()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is main?"}]
    tools_text = ('Tools (call them as <tool_call>\n{"name": <tool name>, "arguments": {...}}\n</tool_call>; '
                  "? marks an optional argument):\n<tools>\nread_file(path): Read a file.\n</tools>")
    assert renderer.prompt(messages, [READ]) == (
        f"<start_of_turn>user\nBe brief.\n\n{tools_text}\n\nWhere is main?<end_of_turn>\n<start_of_turn>model\n")
    assert renderer.prompt(messages) == "<start_of_turn>user\nBe brief.\n\nWhere is main?<end_of_turn>\n<start_of_turn>model\n"
    assert renderer.render(messages[1:]) == "<start_of_turn>user\nWhere is main?<end_of_turn>\n"
    # with no user message to open, the system text and the tools are a user turn of their own
    assert renderer.render(messages[:1], [READ]) == f"<start_of_turn>user\nBe brief.\n\n{tools_text}<end_of_turn>\n"


def test_the_gemma_fallback_shows_a_run_of_tool_results_as_one_user_turn():
    """Gemma's turns alternate user/model: the results of one reply's calls are one user turn."""
    renderer = TEMPLATES["gemma-fallback"]()
    calls = [tool_call("read_file", {"path": p}, f"call_0_{i}") for i, p in enumerate(("a.py", "b.py"))]
    messages = [{"role": "user", "content": "Compare."}, {"role": "assistant", "content": None, "tool_calls": calls},
                *({"role": "tool", "tool_call_id": c["id"], "content": f"text of {n}"} for c, n in zip(calls, "ab")),
                {"role": "assistant", "content": "Same."}]
    text, spans = renderer.render_with_spans(messages, [READ])
    turns = [t.split("\n", 1)[0] for t in text.split("<start_of_turn>")[1:]]
    assert turns == ["user", "model", "user", "model"]
    assert ("<start_of_turn>user\n<tool_response>\ntext of a\n</tool_response>\n<tool_response>\ntext of b\n"
            "</tool_response><end_of_turn>\n") in text
    assert [parse(text[a:b], id_prefix="call_0_").message for a, b in spans] == [messages[1], messages[4]]

