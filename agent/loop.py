"""The agent loop: query the model, execute its tool calls, repeat until it submits or a budget ends.

Stopping is an exception carrying its reason (``Submitted``, ``LimitsExceeded``, ``Cancelled``), not a flag. Malformed
output (bad JSON, unknown tool, a call cut off) raises ``FormatError``, whose feedback message is shown to
the model, and the loop goes on. The whole run is recorded as an episode in the format the trainer reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import gitsafe
from agent.episode import new_episode
from agent.models import ContextFull, Model, OutOfTurns
from agent.render import parse
from agent.tools import SUBMIT, Tool, Workspace, call_tool, make_tools

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are SWE-Spot, a coding agent working inside one software repository. Use the tools to explore "
    "the code, make changes with small exact edits, and run the tests. Paths are relative to the "
    "repository root. When you are done, call submit with a short summary."
)


class Submitted(Exception):
    """Ends the run: the model called submit."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


class LimitsExceeded(Exception):
    """Ends the run: a step or token budget is spent, or the conversation outgrew the model's context."""


class Cancelled(Exception):
    """Ends the run: the user cancelled it (the model backend stopped generating)."""


class FormatError(Exception):
    """Does not end the run: the model's reply could not be used. Carries the feedback message that is
    shown to the model, so it can write its next reply correctly."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))

    def feedback(self) -> dict:
        return {"role": "user", "content": "Your last reply could not be used: " + "; ".join(self.errors)
                + '. Write each tool call as <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>.'}


@dataclass
class Budget:
    max_steps: int = 30
    max_tokens: int = 100_000  # prompt + completion tokens over the whole run


@dataclass
class AgentResult:
    exit: str  # "submitted", "limits" or "cancelled"
    summary: str
    diff: str
    episode: dict
    steps: int
    prompt_tokens: int
    completion_tokens: int
    format_errors: int = 0

    def to_dict(self) -> dict:
        return {"exit": self.exit, "summary": self.summary, "diff": self.diff, "steps": self.steps,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "format_errors": self.format_errors}


@dataclass
class Agent:
    model: Model
    workspace: Workspace
    budget: Budget = field(default_factory=Budget)
    tools: dict[str, Tool] | None = None
    system_prompt: str = SYSTEM_PROMPT
    unit: str = "agent"
    on_message: Callable[[dict], None] | None = None  # sees each message as it is added (progress in an editor)

    def __post_init__(self) -> None:
        self.tools = self.tools or make_tools(self.workspace)
        self.schemas = [t.schema() for t in self.tools.values()]
        self.messages: list[dict] = []
        self.steps = self.prompt_tokens = self.completion_tokens = self.format_errors = 0

    def run(self, task: str) -> AgentResult:
        self.messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task}]
        try:
            while True:
                try:
                    self.step()
                except FormatError as bad:
                    self.format_errors += 1
                    self._add(bad.feedback())
        except Submitted as done:
            return self._result("submitted", done.summary, task)
        except LimitsExceeded as limit:
            return self._result("limits", str(limit), task)
        except Cancelled as cancelled:
            return self._result("cancelled", str(cancelled), task)

    def step(self) -> None:
        """Query the model once and execute its tool calls."""
        assert self.tools is not None  # filled in by __post_init__
        if self.steps >= self.budget.max_steps:
            raise LimitsExceeded(f"step limit of {self.budget.max_steps} reached")
        if self.prompt_tokens + self.completion_tokens >= self.budget.max_tokens:
            raise LimitsExceeded(f"token budget of {self.budget.max_tokens} spent")
        self.steps += 1
        try:
            reply = self.model.query(self.messages, self.schemas)
        except (ContextFull, OutOfTurns) as exc:
            raise LimitsExceeded(str(exc)) from exc
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        if reply.finish_reason == "cancelled":
            raise Cancelled("cancelled while the model was writing")
        if reply.message is not None:  # structured (OpenAI): call_tool answers unknown tools with an error
            message, errors = reply.message, reply.errors
        else:
            parsed = parse(reply.text, id_prefix=f"call_{self.steps}_", known_tools=set(self.tools))
            message, errors = parsed.message, parsed.errors
        self._add(message)
        if errors:
            # well-formed calls of a partly malformed reply are answered, not run: every call gets its
            # result (OpenAI endpoints require that), and the model resends the calls it meant
            for call in message.get("tool_calls") or []:
                self._add({"role": "tool", "tool_call_id": call["id"],
                           "content": "error: not run, because the same reply held a malformed call"})
            raise FormatError(errors)
        calls = message.get("tool_calls") or []
        if not calls:
            self._add({"role": "user", "content": "Use a tool to continue, or call submit with a summary when you are done."})
            return
        for call in calls:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            output = call_tool(self.tools, name, arguments)
            self._add({"role": "tool", "tool_call_id": call["id"], "content": output})
            if name == SUBMIT and not output.startswith("error:"):
                raise Submitted(output)

    def _add(self, message: dict) -> None:
        self.messages.append(message)
        if log.isEnabledFor(logging.DEBUG):  # `swespot -v agent ...` traces the run on stderr
            calls = ", ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or [])
            log.debug("step %d %s: %s", self.steps, message["role"], (calls or message.get("content") or "")[:500])
        if self.on_message is not None:
            self.on_message(message)

    def _result(self, exit: str, summary: str, task: str) -> AgentResult:
        diff = self.workspace.diff()
        usage = {"turns": self.steps, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        meta = {"task": task, "model": getattr(self.model, "name", "?"), "exit": exit, "summary": summary,
                "steps": self.steps, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "usage": usage, "format_errors": self.format_errors, "diff": diff}
        episode = new_episode(self.unit, repo_commit(self.workspace.root), self.messages, self.schemas, meta=meta)
        return AgentResult(exit, summary, diff, episode, self.steps, self.prompt_tokens, self.completion_tokens, self.format_errors)


def repo_commit(root) -> str:
    done = gitsafe.run(["rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def summarize(result: AgentResult) -> str:
    return json.dumps(result.to_dict(), indent=2)
