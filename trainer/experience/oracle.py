"""Oracle sessions: episodes written by a policy that knows the answer, with every observation produced
by the agent's real tools on a snapshot of the repository. The policy chooses the calls; the tools
answer; the session records both in the episode format, with the same call ids the agent loop uses."""

from __future__ import annotations

from agent.episode import new_episode, tool_call
from agent.loop import SYSTEM_PROMPT
from agent.tools import SUBMIT, Tool, Workspace, call_tool, make_tools


class OracleSession:
    def __init__(self, ws: Workspace, task: str, *, read_only: bool = False, tools: dict[str, Tool] | None = None) -> None:
        self.ws = ws
        self.tools = tools or make_tools(ws, read_only=read_only)
        self.schemas = [t.schema() for t in self.tools.values()]
        self.messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]
        self.steps = 0
        self.errors: list[str] = []

    def act(self, calls: list[tuple[str, dict]], *, content: str | None = None, reasoning: str | None = None) -> list[str]:
        """One assistant turn with these tool calls; returns the real observations."""
        self.steps += 1
        message: dict = {"role": "assistant", "content": content or None,
                         "tool_calls": [tool_call(name, args, f"call_{self.steps}_{k}") for k, (name, args) in enumerate(calls)]}
        if reasoning:
            message["reasoning_content"] = reasoning
        self.messages.append(message)
        outputs = []
        for call in message["tool_calls"]:
            output = call_tool(self.tools, call["function"]["name"], call["function"]["arguments"])
            if output.startswith("error:"):
                self.errors.append(output)
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
            outputs.append(output)
        return outputs

    def submit(self, summary: str, *, content: str | None = None) -> None:
        self.act([(SUBMIT, {"summary": summary})], content=content)

    def episode(self, unit: str, commit: str, *, verified: dict | None = None, meta: dict | None = None) -> dict:
        return new_episode(unit, commit, self.messages, self.schemas, verified=verified or {}, meta=meta or {})
