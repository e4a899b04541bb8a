"""The agent (``agent.loop``) as the editor uses it: chat with read-only tools, and tasks whose change
comes back as an edit instead of being written into the user's files.

A task runs on a scratch snapshot of the repository (the files git does not ignore, minus the user's
excluded paths, with the open documents' unsaved text in place of the disk's), so the agent can edit and
run tests freely; what it changed is read back from the snapshot and handed to ``documents``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SwespotError
from agent.loop import Agent, AgentResult, Budget, Cancelled, Submitted
from agent.models import Model, Reply
from agent.tools import MAX_FILE_BYTES, Workspace, is_git_metadata, make_tools, symlink_on_path
from agent.workspace import scratch_dir
from lsp_server.documents import DocumentSnapshot, FileChange, is_excluded

log = logging.getLogger(__name__)

CHAT_SYSTEM_PROMPT = (
    "You are SWE-Spot, an assistant that knows this software repository. Answer the user's question about "
    "the code. Use the read-only tools to look things up when you are not sure; paths are relative to the "
    "repository root. When you know the answer, reply in plain text without a tool call."
)


class EditorWorkspace(Workspace):
    """The repository as the editor shows it: open documents' unsaved text instead of the disk's, and
    the user's excluded paths invisible to every tool."""

    def __init__(self, root: str | Path, *, overlay: dict[str, str] | None = None, excluded: tuple[str, ...] = (),
                 **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.overlay = dict(overlay or {})
        self.excluded = tuple(excluded)

    def _list_files(self) -> list[str]:
        return [rel for rel in super()._list_files() if not is_excluded(rel, self.excluded)]

    def _read_text(self, rel: str) -> str:
        key = self.rel(self.resolve(rel))
        if is_excluded(key, self.excluded):
            raise SwespotError(f"{rel} is excluded from SWE-Spot by the user's settings")
        if key in self.overlay and key not in self.originals:
            return self.overlay[key]
        return super()._read_text(rel)


class ChatAgent(Agent):
    """The loop for conversation: a plain reply (no tool call) is the answer and ends the run, and the
    earlier turns of the conversation sit between the system prompt and the new question."""

    def __init__(self, *args, history: list[dict] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history = list(history or [])

    def step(self) -> None:
        if self.steps == 0 and self.history:
            self.messages[1:1] = self.history
        start = len(self.messages)
        super().step()
        reply = self.messages[start] if len(self.messages) > start else None
        if reply is not None and reply["role"] == "assistant" and not reply.get("tool_calls"):
            del self.messages[start + 1:]  # the loop's reminder to use a tool: in a chat, a plain reply is the answer
            raise Submitted(reply.get("content") or "")


class CancellableModel:
    """Any agent model, stopped by a cancelled request before it is asked for another turn.

    ``LlamaModel`` checks ``cancel`` between tokens, but only once its prompt is evaluated; a scripted
    or OpenAI-compatible model never checks it. Asking first means a cancelled chat or task spends no
    more time in the model, whatever the backend (the loop ends the run as ``cancelled``)."""

    def __init__(self, model: Model, cancel: threading.Event) -> None:
        self.model = model
        self.cancel = cancel
        self.name = getattr(model, "name", "?")

    def query(self, messages: list[dict], tools: list[dict]) -> Reply:
        if self.cancel.is_set():
            return Reply("", finish_reason="cancelled")
        return self.model.query(messages, tools)


def stop_when_cancelled(cancel: threading.Event, on_message: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """An ``on_message`` hook that ends the run (``Cancelled``) at the next message once ``cancel`` is
    set: the tool calls left in the model's last reply are not run."""

    def hook(message: dict) -> None:
        if on_message is not None:
            on_message(message)
        if cancel.is_set():
            raise Cancelled("cancelled by the editor")

    return hook


def tool_note(messages: list[dict], message: dict) -> str | None:
    """A one-line note for a tool result ("read_file: 12: def add(a, b):"), for the chat stream."""
    if message.get("role") != "tool":
        return None
    name = "tool"
    for earlier in reversed(messages):
        for call in earlier.get("tool_calls") or []:
            if call.get("id") == message.get("tool_call_id"):
                name = call["function"]["name"]
                break
    first = (message.get("content") or "").strip().split("\n", 1)[0][:160]
    return f"{name}: {first}"


def run_chat(model, workspace: Workspace, question: str, *, history: list[dict], max_steps: int, cancel: threading.Event,
             on_message: Callable[[dict], None] | None = None) -> AgentResult:
    agent = ChatAgent(CancellableModel(model, cancel), workspace, Budget(max_steps=max_steps),
                      tools=make_tools(workspace, read_only=True), system_prompt=CHAT_SYSTEM_PROMPT, unit="chat",
                      history=history, on_message=stop_when_cancelled(cancel, on_message))
    return agent.run(question)


def final_answer(result: AgentResult) -> str:
    """What a chat says in the end: the answer, or (when a budget ran out) the last thing it wrote."""
    if result.exit == "submitted":
        return result.summary
    for message in reversed(result.episode["messages"]):
        if message["role"] == "assistant" and (message.get("content") or "").strip():
            return message["content"]
    return result.summary


# ---- tasks -------------------------------------------------------------------------------------------
@dataclass
class TaskRun:
    result: AgentResult
    changes: list[FileChange]


@contextlib.contextmanager
def scratch_snapshot(source: EditorWorkspace, open_docs: dict[str, DocumentSnapshot]) -> Iterator[Path]:
    """A temporary copy of the repository as the editor shows it; removed afterwards.

    Symbolic links are copied as links (never what they point to), so a path through a link that leaves
    the repository leaves the snapshot too and the tools refuse it, as they would in the repository: it
    does not look free. Git's metadata is not copied; nor are files over MAX_FILE_BYTES (not code to edit)."""
    with scratch_dir("swespot-task-") as tmp:
        source.copy_into(tmp, max_bytes=MAX_FILE_BYTES,
                         on_error=lambda rel, exc: log.debug("not in the snapshot: %s (%s)", rel, exc))
        for rel, doc in open_docs.items():
            if is_git_metadata(rel) or symlink_on_path(tmp, rel) is not None:
                log.debug("open document not in the snapshot: %s (git metadata, or through a link)", rel)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(doc.text, encoding="utf-8")
        yield tmp


def changes_of(workspace: Workspace) -> list[FileChange]:
    """What the agent changed in its workspace, file by file (created: before None; deleted: after None)."""
    out = []
    for rel in sorted(workspace.originals):
        before = workspace.originals[rel]
        path = workspace.root / rel
        after = path.read_text(encoding="utf-8") if path.is_file() else None
        if before != after:
            out.append(FileChange(rel, before, after))
    return out


def run_task(model, scratch: Path, request: str, *, max_steps: int, cancel: threading.Event,
             on_message: Callable[[dict], None] | None = None) -> TaskRun:
    workspace = Workspace(scratch)
    agent = Agent(CancellableModel(model, cancel), workspace, Budget(max_steps=max_steps), tools=make_tools(workspace),
                  unit="editor-task", on_message=stop_when_cancelled(cancel, on_message))
    result = agent.run(request)
    return TaskRun(result, changes_of(workspace))
