"""A teacher (the paper's method): a stronger model the user already has runs a unit's task with the agent,
and its trajectory is kept only when it verifies with the same verifier the oracle's episode has (the
observed value, the tests passing, the failing tests named). Otherwise the oracle's episode stands: oracle
sessions are the default and the fallback.

What verifies, per unit (the checks live here, the tasks in ``units/`` and ``runtime/``):

- design: the submitted answer names every fact the resolver-grounded answer names (``accept``);
- implementation, evolution: the task's files were changed and still parse, and either the code is the
  oracle's (the same syntax tree), or the relevant tests decide it (``tests_decide``): tests that pass on
  the oracle's code and fail on the task's starting code pass on the teacher's, and nothing the oracle's
  code passes fails on it;
- runtime: the observed value, the new test passing, the failing tests named (``runtime/``).

The teacher runs on the workspace exactly as the oracle would start (the same snapshot, the same
starting edits), and whatever it changes is put back afterwards, so the oracle, or the next task, sees
the same files either way. A model is ``model_from_spec``'s: a GGUF file, ``openai:URL[#model]`` (a local
OpenAI-compatible endpoint), ``default``, or ``scripted:FILE`` (tests).
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import SwespotError
from agent.loop import Agent, AgentResult, Budget
from agent.models import Model, model_from_spec
from agent.tools import Workspace, make_tools
from trainer.experience.testenv import PASSED, repo_environment, run_pytest

# verify(result) -> the episode's "verified" record, or a string saying why it does not verify
Verifier = Callable[[AgentResult], "dict | str"]


@dataclass
class Teacher:
    model: Model
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
        # during the run the workspace records the teacher's changes only (its diff, ``changed_files``)
        ws.originals.clear()
        ws.originals.update(before)
        agent = Agent(self.model, ws, self.budget, tools=make_tools(ws, read_only=read_only), unit=unit)
        try:
            result = agent.run(task)
            verdict = verify(result) if result.exit == "submitted" else f"teacher did not submit ({result.exit})"
        except SwespotError as exc:  # the model failed (an endpoint gone, a context overflow): the oracle's episode stands
            result, verdict = None, f"teacher failed: {str(exc)[:80]}"
        finally:
            _put_back(ws, before, originals)
        if isinstance(verdict, str) or result is None:
            self.rejected[str(verdict)] += 1
            return None
        self.kept += 1
        episode = result.episode
        episode["repo_commit"] = commit
        episode["verified"] = {**verdict, "teacher": self.spec}
        episode["meta"] = {**meta, "teacher": self.spec, "steps": result.steps}
        return episode

    def to_dict(self) -> dict:
        return {"model": self.spec, "tried": self.tried, "kept": self.kept, "rejected": dict(self.rejected)}


def taught(teacher: Teacher | None, stats, ws: Workspace, task: str, verify: Verifier, *, unit: str, commit: str, meta: dict,
           read_only: bool = False) -> dict | None:
    """The teacher's verified episode for ``task`` (counted in ``stats``, a ``units.UnitStats``), or None:
    no teacher, or its attempt did not verify (the reason counted); then the caller makes the oracle's."""
    if teacher is None:
        return None
    rejected = Counter(teacher.rejected)
    stats.teacher_tried += 1
    episode = teacher.attempt(ws, task, verify, unit=unit, commit=commit, meta=meta, read_only=read_only)
    for reason, n in (teacher.rejected - rejected).items():
        stats.teacher_rejected[reason] += n
    if episode is not None:
        stats.add(episode)
    return episode


# ---- verifiers shared by the units -------------------------------------------------------------------
def same_code(a: str | None, b: str | None, path: str) -> bool:
    """The same program: equal syntax trees for Python (comments and layout aside), else equal text
    up to whitespace."""
    if a is None or b is None:
        return a is b
    if path.endswith(".py"):
        try:
            return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
        except (SyntaxError, ValueError):
            return False
    return a.split() == b.split()


def parses(text: str | None, path: str) -> bool:
    if text is None or not path.endswith(".py"):
        return True
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def changed_files(ws: Workspace) -> dict[str, str | None]:
    """The files the teacher changed (during ``Teacher.attempt``), with their text now (None: deleted)."""
    return {rel: now for rel, was in ws.originals.items() if (now := _current(ws, rel)) != was}


def tests_decide(ws: Workspace, tests: list[str], oracle: dict[str, str | None], start: dict[str, str | None],
                 fixed: dict[str, str] | None = None, timeout_s: float = 120) -> dict | str:
    """Run ``tests`` on the teacher's code (as the workspace holds it now), on the oracle's (``oracle``:
    path -> text) and on the task's starting code (``start``); ``fixed`` files (the commit's tests) are in
    place for all three. The teacher's code verifies when the tests that tell the oracle's code from the
    start pass on it, and nothing the oracle's code passes fails on it. Every file is put back after."""
    paths = sorted(set(oracle) | set(start) | set(fixed or {}))
    teacher_state = {rel: _current(ws, rel) for rel in paths}
    tenv = repo_environment(ws.root)

    def run(state: dict[str, str | None]) -> set[str]:
        _write(ws, {**state, **(fixed or {})})
        return run_pytest(tenv, tests, timeout_s=timeout_s).with_outcome(PASSED)

    try:
        on_teacher = run({})
        on_oracle = run(oracle)
        on_start = run(start)
    finally:
        _write(ws, teacher_state)
        ws.invalidate(paths)
    deciding = on_oracle - on_start
    if not deciding:
        return "its tests do not tell the change apart"
    missing = on_oracle - on_teacher
    if missing:
        return f"tests fail on its code ({len(missing & deciding)} of {len(deciding)} deciding)"
    return {"ok": True, "tests": "passed", "fail_to_pass": sorted(deciding)}


def _current(ws: Workspace, rel: str) -> str | None:
    path = ws.root / rel
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _write(ws: Workspace, texts: dict[str, str | None]) -> None:
    """Files to the given texts (None: absent), straight to disk (no change recorded)."""
    for rel, text in texts.items():
        path = ws.root / rel
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def _put_back(ws: Workspace, before: dict[str, str | None], originals: dict[str, str | None]) -> None:
    """Every file the teacher changed back to its text at the start of the task."""
    changed = [rel for rel in ws.originals if rel not in before or _current(ws, rel) != before[rel]]
    _write(ws, {rel: before[rel] if rel in before else ws.originals[rel] for rel in changed})
    ws.originals.clear()
    ws.originals.update(originals)
    ws.invalidate(changed)


@functools.lru_cache(maxsize=4)
def teacher_for(spec: str) -> Teacher:
    """One teacher per model spec and process (a GGUF loads once)."""
    return Teacher(model_from_spec(spec), spec)


def teacher_from_options(opts) -> Teacher | None:
    """The teacher a build's options name (``teacher``: a model spec, ``teacher_steps``: its step budget),
    or None."""
    spec = getattr(opts, "teacher", None)
    if not spec:
        return None
    teacher = teacher_for(spec)
    teacher.budget = Budget(max_steps=getattr(opts, "teacher_steps", 12), max_tokens=60_000)
    return teacher
