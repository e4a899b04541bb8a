"""Server settings: the ``swespot`` section of ``workspace/configuration`` (and ``initializationOptions``).

One typed dataclass with help text; keys are camelCase as the editor writes them. Unknown keys and
values of the wrong type or below their minimum fail loudly with a message naming them (the server reports it in its status
instead of guessing what was meant).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from agent.errors import SwespotError
from lsp_server.protocol import camel

SECTION = "swespot"


@dataclass(frozen=True)
class Settings:
    model: str = field(default="", metadata={"help": "base model GGUF; empty: --model or the embedded default"})
    agent_model: str = field(default="", metadata={
        "help": "model for chat and tasks when it is not the served GGUF: scripted:FILE or openai:URL[#model]"})
    threads: int = field(default=0, metadata={
        "help": "llama.cpp threads (0: chosen from the usable cores and the load, re-chosen as the load changes)", "min": 0})
    context_size: int = field(default=8192, metadata={"help": "context window in tokens", "min": 256})
    gpu_layers: int = field(default=0, metadata={"help": "layers offloaded to the GPU (-1: all)", "min": -1})
    background_training: bool = field(default=False, metadata={"help": "run `swespot daemon` for this repository"})
    excluded_paths: tuple[str, ...] = field(default=(), metadata={
        "help": "glob patterns (repository-relative) never shown to the model: no completion, snippets or agent access"})
    feedback_logging: bool = field(default=True, metadata={"help": "log accepted/rejected suggestions in the state dir"})
    completion_max_tokens: int = field(default=64, metadata={"help": "tokens per inline completion", "min": 1})
    completion_debounce_ms: int = field(default=0, metadata={
        "help": "wait this long before generating; a newer request for the document supersedes the wait", "min": 0})
    completion_max_ms: int = field(default=700, metadata={
        "help": "an inline completion is due this many milliseconds after its request (after the debounce): "
                "waiting for the model, reading the prompt and generating all count, and generation stops before a "
                "token that would come later, keeping what came (as llama.vscode's t_max_predict_ms); the prompt is "
                "read whole and gets its first token whatever the time (a new place's prompt is read ahead while the "
                "cursor rests there); 0: no limit",
        "min": 0})
    completion_context_tokens: int = field(default=0, metadata={
        "help": "tokens of repository context per inline completion: the signatures of the names used near the "
                "cursor (tree-sitter index) first, then snippets of their code; 0 (default: on click with the "
                "270M base they saved no typing, README): only the snippets, no signatures", "min": 0})
    chat_max_tokens: int = field(default=512, metadata={"help": "tokens per model turn in chat and tasks", "min": 1})
    chat_max_steps: int = field(default=6, metadata={"help": "tool-using turns of a chat", "min": 1})
    task_max_steps: int = field(default=20, metadata={"help": "tool-using turns of a task", "min": 1})
    adapter_poll_s: float = field(default=1.0, metadata={"help": "how often the adapter store is checked while idle", "min": 0.01})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def model_key(self) -> tuple:
        """The settings that need the model reloaded when they change."""
        return (self.model, self.threads, self.context_size, self.gpu_layers)


_FIELDS = {camel(f.name): f for f in fields(Settings)}


def merge(base: Settings, raw: Any, *, where: str) -> Settings:
    """``base`` updated with the camelCase keys of ``raw`` (None or {} changes nothing)."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise SwespotError(f"{where}: settings must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise SwespotError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    changes = {}
    for key, value in raw.items():
        f = _FIELDS[key]
        what = f"{where}: {SECTION}.{key}"
        changes[f.name] = _typed(value, str(f.type), what)  # a string: this module has postponed annotations
        low = f.metadata.get("min")
        if low is not None and changes[f.name] < low:  # e.g. a poll interval of 0 would spin a core
            raise SwespotError(f"{what} must be at least {low}, got {value!r}")
    return dataclasses.replace(base, **changes)


def _typed(value: Any, type_name: str, what: str) -> Any:
    """Check a JSON value against the field's annotation (annotations are strings here)."""
    if type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "str":
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif type_name == "tuple[str, ...]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise SwespotError(f"{what} must be a {type_name}, got {value!r}")
