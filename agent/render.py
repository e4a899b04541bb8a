"""The one renderer/parser: messages → model text, and model text → an assistant message with tool calls.

Training renders episodes with ``render_with_spans`` (the spans are what the loss covers) and inference
renders prompts with ``render`` and parses completions with ``parse``: the same code both ways.

Templates: a model's own chat template is used when it knows tools (Qwen3's format: tool results as
``<tool_response>`` blocks in a user turn; ``agent/templates/qwen3.jinja`` is the tiny test model's copy).
Otherwise one of two documented fallbacks, which share the tool list (``tools.jinja``) and the assistant's
turn (``assistant.jinja``):
- ``agent/templates/gemma.jinja`` when the model's own template speaks Gemma's turns
  (``<start_of_turn>ROLE\\n…<end_of_turn>``, single control tokens for Gemma): no system role, so the
  system text and the tools open the first user turn, and tool results are user turns;
- ``agent/templates/chatml.jinja`` for every other model, and for one without a template (the embedded
  Gemma 3 270M is the pretrained base: its GGUF has no template, and its turn tokens are untrained):
  ChatML turns (``<|im_start|>ROLE\\n…<|im_end|>``), tools listed in the system turn inside
  ``<tools></tools>``, each tool result its own ``tool`` turn.
All write calls as ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`` after optional ``<think>``
reasoning, so one parser reads them all. Models without these special tokens (the embedded Gemma base)
read and write them as plain text. Each renderer knows its end-of-turn marker (``end_of_turn``) and the
strings generation stops at (``stop``).
"""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import FileSystemLoader, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.errors import SwespotError

TEMPLATES = Path(__file__).resolve().parent / "templates"
FALLBACK_TEMPLATE = TEMPLATES / "chatml.jinja"
GEMMA_TEMPLATE = TEMPLATES / "gemma.jinja"
QWEN3_TEMPLATE = TEMPLATES / "qwen3.jinja"
END_OF_TURN = "<|im_end|>"  # ChatML's (and Qwen's) end of a turn
GEMMA_START_OF_TURN, GEMMA_END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
TURN_ENDS = (END_OF_TURN, GEMMA_END_OF_TURN)  # what ends an assistant turn in the templates we render
STOPS = {END_OF_TURN: (END_OF_TURN, "<|endoftext|>"), GEMMA_END_OF_TURN: (GEMMA_END_OF_TURN, GEMMA_START_OF_TURN)}
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ParseResult:
    message: dict  # an assistant message in the episode schema
    errors: list[str] = field(default_factory=list)  # what a model should be told about its output


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' ``tojson`` (same keywords and defaults), so model templates render as HF renders them."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    """transformers provides this global (Llama 3 templates print today's date)."""
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    # Not StrictUndefined: chat templates test optional keys (message.tool_calls) for truthiness. Unknown
    # features still fail loudly: an unknown filter or test does not compile, and calling an unknown
    # function (an undefined global) raises when rendering; both become a SwespotError naming the cause.
    # The loader serves our own templates' shared parts ({% include 'tools.jinja' %}); nothing else is on it.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                                        loader=FileSystemLoader(TEMPLATES))
    env.filters["tojson"] = _tojson

    def raise_exception(message):
        raise SwespotError(f"chat template refused the conversation: {message}")

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise SwespotError(f"the chat template does not compile: {exc}") from exc


class Renderer:
    """One chat template, rendered the way transformers renders it (sandboxed jinja2, ``tojson``,
    ``raise_exception``, ``strftime_now``, and the ``bos_token``/``eos_token`` variables)."""

    def __init__(self, template: str, *, bos_token: str | None = None, eos_token: str | None = None) -> None:
        self.template_source = template
        self.special = {"bos_token": bos_token or "", "eos_token": eos_token or ""}
        self._template = _compile(template)
        # the end-of-turn marker this template writes after an assistant turn (ChatML's unless it is Gemma's)
        self.end_of_turn = next((end for end in TURN_ENDS if end in template), END_OF_TURN)
        self.stop: tuple[str, ...] = STOPS[self.end_of_turn]  # what generation stops at

    @classmethod
    def for_template(cls, template: str | None, **special: str | None) -> Renderer:
        """The model's own template when it renders tools in our call format (Qwen2.5/Qwen3 style), else a
        fallback in the model's own turns: Gemma's when its template uses them, ChatML's otherwise (a
        template that knows tools in another call format would need its own parser)."""
        if template and "tools" in template and CALL_OPEN in template:
            return cls(template, **special)
        if template and GEMMA_START_OF_TURN in template and GEMMA_END_OF_TURN in template:
            return cls(GEMMA_TEMPLATE.read_text(encoding="utf-8"), **special)
        return cls.fallback()

    @classmethod
    def fallback(cls) -> Renderer:
        return cls(FALLBACK_TEMPLATE.read_text(encoding="utf-8"))

    # ---- messages → text ----------------------------------------------------------------------
    def render(self, messages: list[dict], tools: list[dict] | None = None, *, add_generation_prompt: bool = False) -> str:
        try:
            return self._template.render(messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                         **self.special)
        except SwespotError:
            raise
        except Exception as exc:  # a template error on these messages: name it
            raise SwespotError(f"chat template failed on these messages: {type(exc).__name__}: {exc}") from exc

    def render_with_spans(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation and the character spans the assistant wrote (each assistant turn from
        after its header through its end-of-turn marker): exactly what the loss should cover."""
        text = self.render(messages, tools)
        spans = []
        for i, msg in enumerate(messages):
            if msg.get("role") != "assistant":
                continue
            start = len(self.render(messages[:i], tools, add_generation_prompt=True))
            upto = self.render(messages[: i + 1], tools)
            if not text.startswith(upto) or not upto.startswith(text[:start]):
                raise SwespotError("the chat template is not prefix-stable; episodes cannot be masked turn by turn")
            spans.append((start, len(upto.rstrip("\n"))))
        return text, spans

    def prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """What the model continues: the conversation plus the assistant header."""
        return self.render(messages, tools, add_generation_prompt=True)


# ---- text → message ---------------------------------------------------------------------------------
def parse(text: str, *, id_prefix: str = "call_", known_tools: set[str] | None = None) -> ParseResult:
    """Parse one assistant turn as generated (after the assistant header). Never raises: malformed
    output yields a message holding the raw text (and no calls) plus errors the agent feeds back to the
    model."""
    errors: list[str] = []
    body = min((text.split(end, 1)[0] for end in TURN_ENDS), key=len)  # up to the first end of turn
    message: dict = {"role": "assistant"}
    if body.startswith(THINK_OPEN):
        end = body.find(THINK_CLOSE)
        if end < 0:
            errors.append(f"reasoning opened with {THINK_OPEN} but never closed with {THINK_CLOSE}")
            body = body[len(THINK_OPEN):]
        else:
            message["reasoning_content"] = body[len(THINK_OPEN):end].strip("\n")
            body = body[end + len(THINK_CLOSE):].lstrip("\n")
    first = body.find(CALL_OPEN)
    content = body if first < 0 else body[:first]
    calls: list[dict] = []
    pos = first
    while pos >= 0:
        close = _closing(body, pos)
        if close < 0:
            errors.append(f"a {CALL_OPEN} was not closed with {CALL_CLOSE} (output cut off?)")
            break
        raw = body[pos + len(CALL_OPEN):close].strip()
        call, why = _parse_call(raw, known_tools)
        if why:
            errors.append(why)
        else:
            calls.append({"id": f"{id_prefix}{len(calls)}", "type": "function", "function": call})
        pos = body.find(CALL_OPEN, close)
    if errors and first >= 0:
        # a reply with a broken call is kept as the text the model wrote (no calls are run): rendering the
        # episode shows what it really wrote, followed by the feedback it got
        message["content"] = body
        return ParseResult(message, errors)
    content = content.rstrip("\n") if calls or first >= 0 else content
    message["content"] = content if content or not calls else None
    if calls:
        message["tool_calls"] = calls
    return ParseResult(message, errors)


def _closing(body: str, pos: int) -> int:
    """Where the call opened at ``pos`` ends: the first ``</tool_call>`` after which the enclosed text is
    valid JSON (arguments may themselves contain the marker, e.g. a file that mentions it), else the
    first one at all (so the JSON error can be reported), else -1."""
    first = close = body.find(CALL_CLOSE, pos)
    while close >= 0:
        try:
            json.loads(body[pos + len(CALL_OPEN):close])
            return close
        except ValueError:
            close = body.find(CALL_CLOSE, close + 1)
    return first


def _parse_call(raw: str, known_tools: set[str] | None) -> tuple[dict | None, str | None]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"a tool call is not valid JSON ({exc.msg} at character {exc.pos}): {raw[:200]}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, 'a tool call must be {"name": <tool name>, "arguments": {...}}'
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None, f"the arguments of {obj['name']} are not a JSON object"
    if not isinstance(args, dict):
        return None, f"the arguments of {obj['name']} must be a JSON object"
    if known_tools is not None and obj["name"] not in known_tools:
        return None, f"unknown tool {obj['name']!r}; available: {', '.join(sorted(known_tools))}"
    return {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}, None
