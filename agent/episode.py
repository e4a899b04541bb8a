"""Episodes: the one record that inference writes and training reads (ARCHITECTURE.md, "Episodes").

    {"id", "unit", "repo_commit", "messages": [...], "tools": [...], "verified": {...}, "meta": {...}}

``messages`` follow the OpenAI chat schema: ``system``, ``user``, ``assistant`` (optional
``reasoning_content``; ``tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]``
with ``arguments`` a JSON string), and ``tool`` results (``tool_call_id``, ``content``). Ids are
content addresses, so the same episode made twice is stored once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from agent.errors import SwespotError
from agent.secret_scan import episode_secret
from agent.state import atomic_open

REQUIRED = ("id", "unit", "repo_commit", "messages", "tools", "verified", "meta")
ROLES = ("system", "user", "assistant", "tool")


def canonical_arguments(args: dict | str) -> str:
    """Tool-call arguments as the one JSON text the renderer writes and the parser returns."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as exc:
            raise SwespotError(f"tool-call arguments are not JSON: {exc}") from exc
    return json.dumps(args, ensure_ascii=False)


def tool_call(name: str, args: dict, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": canonical_arguments(args)}}


def episode_id(unit: str, repo_commit: str, messages: list) -> str:
    blob = json.dumps([unit, repo_commit, messages], sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def new_episode(unit: str, repo_commit: str, messages: list, tools: list, *, verified: dict | None = None,
                meta: dict | None = None) -> dict:
    episode = {"id": episode_id(unit, repo_commit, messages), "unit": unit, "repo_commit": repo_commit,
               "messages": messages, "tools": tools, "verified": verified or {}, "meta": meta or {}}
    validate_episode(episode)
    return episode


COMPLETION = "completion"  # meta.format of an episode in the completion form
COMPLETION_PREFIX_CHARS = 3000  # as the language server's inline completion window


def completion_episode(unit: str, repo_commit: str, prefix: str, target: str, *, meta: dict | None = None,
                       verified: dict | None = None) -> dict:
    """An episode in the **completion form**: code continued left to right from the text above it,
    which is how the language server's inline completion prompts the model (plain text, no chat
    template). Stored as a user turn (the prefix, cut to the last ``COMPLETION_PREFIX_CHARS`` at a line
    start) and an assistant turn (the code that follows); ``meta.format`` says to train it as plain
    text: ``prefix + target`` with the loss on the target only (trainer/data.py)."""
    if len(prefix) > COMPLETION_PREFIX_CHARS:
        cut = prefix.find("\n", len(prefix) - COMPLETION_PREFIX_CHARS)
        prefix = prefix[cut + 1:] if cut >= 0 else prefix[-COMPLETION_PREFIX_CHARS:]
    messages = [{"role": "user", "content": prefix}, {"role": "assistant", "content": target}]
    return new_episode(unit, repo_commit, messages, [], verified=verified or {"ok": True, "matches_original": True},
                       meta={**(meta or {}), "format": COMPLETION})


def _fail(where: str, what: str) -> NoReturn:
    raise SwespotError(f"invalid episode ({where}): {what}")


def validate_episode(ep: Any, where: str = "episode") -> None:
    """Check the schema; the message says exactly which field of which message is wrong."""
    if not isinstance(ep, dict):
        _fail(where, "not a JSON object")
    missing = [k for k in REQUIRED if k not in ep]
    if missing:
        _fail(where, f"missing {', '.join(missing)}")
    if not isinstance(ep["messages"], list) or not ep["messages"]:
        _fail(where, "messages must be a non-empty list")
    if not isinstance(ep["tools"], list):
        _fail(where, "tools must be a list")
    for i, tool in enumerate(ep["tools"]):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or not isinstance(fn.get("name"), str):
            _fail(f"{where}, tool {i}", 'tools are OpenAI function schemas: {"type": "function", "function": {"name", "description", "parameters"}}')
    for key in ("verified", "meta"):
        if not isinstance(ep[key], dict):
            _fail(where, f"{key} must be an object")
    open_calls: set[str] = set()
    for i, msg in enumerate(ep["messages"]):
        at = f"{where}, message {i}"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            _fail(at, f"role must be one of {ROLES}")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            _fail(at, "content must be a string or null")
        if msg["role"] == "assistant":
            calls = msg.get("tool_calls") or []
            if not isinstance(calls, list):
                _fail(at, "tool_calls must be a list")
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if (not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str)
                        or call.get("type") != "function" or not isinstance(call.get("id"), str)):
                    _fail(at, "tool_calls need {id, type: function, function: {name, arguments (JSON string)}}")
                try:
                    json.loads(fn["arguments"])
                except ValueError:
                    _fail(at, f"arguments of {fn['name']} are not JSON")
                if call["id"] in open_calls:
                    _fail(at, f"tool call id {call['id']!r} is used twice")
                open_calls.add(call["id"])
        elif msg["role"] == "tool":
            if not isinstance(content, str):
                _fail(at, "a tool message needs string content")
            if msg.get("tool_call_id") not in open_calls:
                _fail(at, f"tool_call_id {msg.get('tool_call_id')!r} answers no earlier tool call")
        elif not isinstance(content, str):
            _fail(at, f"a {msg['role']} message needs string content")


def load_episodes(path: str | os.PathLike) -> list[dict]:
    """Episodes from a JSONL file; a bad line is an error naming the file and line."""
    path = Path(path)
    episodes = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SwespotError(f"cannot read episodes from {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ep = json.loads(line)
        except ValueError as exc:
            raise SwespotError(f"{path}:{n}: not JSON: {exc}") from exc
        validate_episode(ep, f"{path}:{n}")
        episodes.append(ep)
    return episodes


SECRET_DROPPED = "secret in episode text"


def save_episodes(path: str | os.PathLike, episodes: Iterable[dict], *, dropped: Counter | None = None) -> int:
    """Write episodes as JSONL atomically (temp file + rename). Returns how many were written.

    The one door to training data: an episode in which any text looks like a secret (the task or commit
    message, an observation, the assistant's words or tool arguments, a completion prefix or target; see
    ``agent.secret_scan``) is not written, and is counted in ``dropped`` under ``SECRET_DROPPED``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_open(path, "w") as fh:
        for ep in episodes:
            validate_episode(ep)
            if episode_secret(ep):
                if dropped is not None:
                    dropped[SECRET_DROPPED] += 1
                continue
            fh.write(json.dumps(ep, ensure_ascii=False) + "\n")
            count += 1
    return count
