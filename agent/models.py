"""Model backends behind one small protocol.

- ``ScriptedModel``: replays given assistant turns (tests, and the trainer's oracle policies). Ships in
  the package and is selectable by name (``scripted:FILE``).
- ``LlamaModel``: the llama.cpp runtime (base GGUF + adapters), rendered and parsed by ``agent.render``.
- ``OpenAIModel``: any OpenAI-compatible chat endpoint the user runs (e.g. a bigger local server).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.episode import canonical_arguments, load_episodes
from agent.errors import SwespotError
from agent.model_spec import serving_gguf_of
from agent.render import THINK_CLOSE, THINK_OPEN, Renderer
from agent.runtime import LlamaRuntime


@dataclass
class Reply:
    text: str  # what the model wrote, raw (parsed by the agent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    message: dict | None = None  # set by backends that return structured messages (OpenAI)
    finish_reason: str = "stop"  # "stop", "length", or "cancelled"
    errors: list[str] = field(default_factory=list)  # what was wrong with a structured message


class Model(Protocol):
    """What the loop needs of a model: one assistant turn for a conversation and the tools' schemas.
    A backend returns raw text (parsed by ``agent.render.parse``) or a structured message."""

    name: str

    def query(self, messages: list[dict], tools: list[dict]) -> Reply: ...


class Runtime(Protocol):
    """What ``LlamaModel`` needs of a local runtime; ``agent.runtime.LlamaRuntime`` is the one we ship
    (and the only module that imports llama_cpp)."""

    @property
    def model_path(self) -> str | os.PathLike: ...

    @property
    def n_ctx(self) -> int: ...

    chat_template: str | None
    bos_token: str | None
    eos_token: str | None

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]: ...

    def generate(self, prompt: str, *, max_tokens: int = 256, stop: Sequence[str] = (), temperature: float = 0.0,
                 cancel: threading.Event | None = None, stats: dict | None = None) -> Iterator[str]: ...


class OutOfTurns(SwespotError):
    """A scripted model has replayed all its turns (the loop ends the run as over its limits)."""


class ContextFull(SwespotError):
    """The conversation no longer fits the model's context (the loop ends the run as over its limits)."""


@dataclass
class ScriptedModel:
    """Replays assistant turns in order, as text in the renderer's format or as message dicts."""

    turns: list
    name: str = "scripted"
    position: int = field(default=0)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ScriptedModel:
        """A JSON list of turns (strings in the model's text format, or assistant message dicts), or an
        episode file (``.jsonl``): its first episode's assistant messages are replayed, which re-runs a
        recorded episode against the tools."""
        if str(path).endswith(".jsonl"):
            episodes = load_episodes(path)
            if not episodes:
                raise SwespotError(f"{path} holds no episode to replay")
            turns = [_replay_turn(m) for m in episodes[0]["messages"] if m["role"] == "assistant"]
            return cls(turns, name=f"scripted:{path}")
        try:
            turns = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SwespotError(f"cannot read scripted turns from {path}: {exc}") from exc
        if not isinstance(turns, list) or not all(isinstance(t, (str, dict)) for t in turns):
            raise SwespotError(f"{path} must hold a JSON list of assistant turns (strings or message objects)")
        return cls(turns, name=f"scripted:{path}")

    def query(self, messages: list[dict], tools: list[dict]) -> Reply:
        if self.position >= len(self.turns):
            raise OutOfTurns(f"the scripted model has no more turns (it had {len(self.turns)})")
        turn = self.turns[self.position]
        self.position += 1
        # token counts are estimates (~4 characters a token) so that budgets apply to scripts too
        prompt = sum(len(m.get("content") or "") for m in messages) // 4 + 1
        if isinstance(turn, dict):
            message, errors = structured_message(turn, id_prefix=f"call_{self.position}_")
            return Reply(text=message.get("content") or "", message=message, prompt_tokens=prompt,
                         completion_tokens=len(json.dumps(turn)) // 4 + 1, errors=errors)
        return Reply(text=str(turn), prompt_tokens=prompt, completion_tokens=len(str(turn)) // 4 + 1)


def _replay_turn(message: dict) -> dict | str:
    """A recorded assistant message as a scripted turn. Replies without calls go back through the text
    parser (a malformed reply is recorded as its text), so replaying gives the same feedback again."""
    if message.get("tool_calls"):
        return message
    thought = message.get("reasoning_content")
    return (f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n" if thought else "") + (message.get("content") or "")


def structured_message(raw: dict, id_prefix: str) -> tuple[dict, list[str]]:
    """A structured assistant message (scripted, or from an OpenAI endpoint) in the episode schema: role
    assistant, known keys only, call arguments as canonical JSON text (scripts may write objects), ids
    filled in where missing. A call whose arguments are not a JSON object is dropped and reported, as the
    text parser reports it, so the model is told instead of the run crashing."""
    message = {k: v for k, v in raw.items() if k in ("content", "tool_calls", "reasoning_content")}
    message = {"role": "assistant", **message, "content": raw.get("content")}
    calls, errors = [], []
    for n, call in enumerate(raw.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            errors.append('a tool call must name a function: {"function": {"name": ..., "arguments": {...}}}')
            continue
        name = fn["name"]
        try:
            arguments = canonical_arguments(fn.get("arguments") or {})
        except SwespotError:
            errors.append(f"the arguments of {name} are not a JSON object")
            continue
        if not arguments.startswith("{"):
            errors.append(f"the arguments of {name} must be a JSON object")
            continue
        calls.append({"id": call.get("id") or f"{id_prefix}{n}", "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    message.pop("tool_calls", None)
    if calls:
        message["tool_calls"] = calls
    return message, errors


class LlamaModel:
    """The llama.cpp runtime (``agent.runtime.LlamaRuntime``: base GGUF plus adapters), prompted with the
    one renderer. ``on_text`` receives the reply as it streams (an editor shows it while it is written);
    ``cancel`` stops generation between tokens."""

    def __init__(self, runtime: Runtime, *, renderer=None, max_tokens: int = 512, temperature: float = 0.0,
                 cancel: threading.Event | None = None, on_text: Callable[[str], None] | None = None) -> None:
        self.runtime = runtime
        self.renderer = renderer or Renderer.for_template(
            runtime.chat_template, bos_token=getattr(runtime, "bos_token", None), eos_token=getattr(runtime, "eos_token", None))
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cancel = cancel
        self.on_text = on_text
        self.name = f"llama.cpp:{Path(runtime.model_path).name}"

    def query(self, messages: list[dict], tools: list[dict]) -> Reply:
        prompt = self.renderer.prompt(messages, tools)
        room = self.runtime.n_ctx - len(self.runtime.tokenize(prompt, add_bos=True)) - 1
        if room < 16:
            raise ContextFull(f"the conversation no longer fits the model's context ({self.runtime.n_ctx} tokens)")
        stats: dict = {}
        pieces = []
        for piece in self.runtime.generate(prompt, max_tokens=min(self.max_tokens, room), stop=list(self.renderer.stop),
                                           temperature=self.temperature, cancel=self.cancel, stats=stats):
            pieces.append(piece)
            if self.on_text is not None:
                self.on_text(piece)
        return Reply("".join(pieces), stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0),
                     finish_reason=stats.get("finish_reason", "stop"))


class OpenAIModel:
    """POST {url}/chat/completions with the tools in OpenAI's schema; the reply's message is used as is."""

    def __init__(self, url: str, model: str = "default", *, api_key: str | None = None, timeout: float = 300,
                 max_tokens: int = 1024, temperature: float = 0.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key or os.environ.get("SWESPOT_OPENAI_API_KEY")
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.name = f"openai:{self.url}"
        self.replies = 0

    def query(self, messages: list[dict], tools: list[dict]) -> Reply:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if tools:
            body["tools"] = tools
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # the server's own explanation is in the body
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise SwespotError(f"the model endpoint {self.url} failed: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise SwespotError(f"the model endpoint {self.url} failed: {exc}") from exc
        try:
            choice = data["choices"][0]
            message = dict(choice["message"])
        except (KeyError, IndexError, TypeError) as exc:
            raise SwespotError(f"unexpected reply from {self.url}: {str(data)[:300]}") from exc
        self.replies += 1
        message, errors = structured_message(message, id_prefix=f"call_{self.replies}_")
        usage = data.get("usage") or {}
        return Reply(message.get("content") or "", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                     message=message, finish_reason=choice.get("finish_reason") or "stop", errors=errors)


def model_from_spec(spec: str, **kwargs) -> Model:
    """``scripted:FILE``, ``openai:URL[#model]``, a .gguf path, or ``default`` (the embedded model)."""
    if spec.startswith("scripted:"):
        return ScriptedModel.from_file(spec.split(":", 1)[1])
    if spec.startswith("openai:"):
        url, _, model = spec.split(":", 1)[1].partition("#")
        return OpenAIModel(url, model or "default")
    gguf = serving_gguf_of(spec, choices="'default', a .gguf file, scripted:FILE or openai:URL[#model]")
    runtime = LlamaRuntime(gguf, n_ctx=kwargs.pop("n_ctx", 8192))
    adapter = kwargs.pop("adapter", None)
    if adapter:
        runtime.set_adapters({runtime.load_adapter(adapter): 1.0})
    return LlamaModel(runtime, **kwargs)
