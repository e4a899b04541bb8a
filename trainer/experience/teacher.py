"""A teacher (the paper's method): a stronger model the user already has runs a unit's task with the agent,
and its trajectory is kept only when it verifies with the same verifier the oracle's episode has (the
observed value, the tests passing, the failing tests named). Otherwise the oracle's episode stands: oracle
sessions are the default and the fallback.

The teacher runs on the workspace exactly as the oracle would start (the same snapshot, the same
starting edits), and whatever it changes is put back afterwards, so the oracle, or the next task, sees
the same files either way. A model is ``model_from_spec``'s: a GGUF file, ``openai:URL[#model]`` (a local
OpenAI-compatible endpoint), ``default``, or ``scripted:FILE`` (tests).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from agent.loop import Agent, AgentResult, Budget
from agent.tools import Workspace, make_tools

# verify(result) -> the episode's "verified" record, or a string saying why it does not verify
Verifier = Callable[[AgentResult], "dict | str"]


@dataclass
class Teacher:
    model: object  # agent.models.Model
    spec: str
    budget: Budget = field(default_factory=lambda: Budget(max_steps=12, max_tokens=60_000))
    tried: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    def attempt(self, ws: Workspace, task: str, verify: Verifier, *, unit: str, commit: str, meta: dict,
                read_only: bool = False) -> dict | None:
        """The teacher's episode for ``task`` when it verifies, else None (the reason counted)."""
        self.tried += 1
        before = {rel: _current(ws, rel) for rel in ws.originals}  # edits made before the task (its start state)
        originals = dict(ws.originals)
        agent = Agent(self.model, ws, self.budget, tools=make_tools(ws, read_only=read_only), unit=unit)
        try:
            result = agent.run(task)
            verdict = verify(result) if result.exit == "submitted" else f"teacher did not submit ({result.exit})"
        finally:
            _put_back(ws, before, originals)
        if isinstance(verdict, str):
            self.rejected[verdict] += 1
            return None
        self.kept += 1
        episode = result.episode
        episode["repo_commit"] = commit
        episode["verified"] = {**verdict, "teacher": self.spec}
        episode["meta"] = {**meta, "teacher": self.spec, "steps": result.steps}
        return episode

    def to_dict(self) -> dict:
        return {"model": self.spec, "tried": self.tried, "kept": self.kept, "rejected": dict(self.rejected)}


def _current(ws: Workspace, rel: str) -> str | None:
    path = ws.root / rel
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _put_back(ws: Workspace, before: dict[str, str | None], originals: dict[str, str | None]) -> None:
    """Every file the teacher changed back to its text at the start of the task."""
    changed = [rel for rel in ws.originals if rel not in before or _current(ws, rel) != before[rel]]
    for rel in changed:
        text = before[rel] if rel in before else ws.originals[rel]
        path = ws.root / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    ws.originals.clear()
    ws.originals.update(originals)
    ws.invalidate(changed)


@functools.lru_cache(maxsize=4)
def teacher_for(spec: str) -> Teacher:
    """One teacher per model spec and process (a GGUF loads once)."""
    from agent.models import model_from_spec

    return Teacher(model_from_spec(spec), spec)
