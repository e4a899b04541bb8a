"""What the units share: the per-unit counts (``UnitStats``), the rule that finishes an oracle session
into an episode (``finish_episode``), the verifier of a teacher's code change and the oracle's test runner."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from agent.index import is_test_file
from agent.tools import Workspace
from trainer.experience.oracle import OracleSession, ungrounded_actions
from trainer.experience.teacher import changed_files, parses, same_code, tests_decide

GENERATOR_VERSION = 3  # 2: completion-form episodes next to the agentic ones; 3: resolver-grounded answers, honest actions, thoughts
HONEST_UNITS = ("design", "implementation", "evolution")  # episodes rejected when an action is ungrounded
WRONG_LOOK_RATE = 0.15  # share of episodes that first look in a plausible wrong place, which an observation corrects
FIX_SUBJECT = re.compile(r"\b(fix|fixes|fixed|bug|crash|error|wrong|broken|regression)\b", re.I)


@dataclass
class UnitStats:
    made: int = 0
    verified: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens: int = 0
    taught: int = 0  # of ``made``, episodes a teacher made (and verified); the rest are the oracle's
    teacher_tried: int = 0
    teacher_rejected: Counter = field(default_factory=Counter)  # why a teacher's attempt fell back to the oracle
    recall: int = 0  # of ``made``, recall episodes (a question answered without tools)

    def add(self, episode: dict) -> None:
        self.made += 1
        self.verified += bool(episode["verified"].get("ok"))
        self.taught += bool(episode.get("meta", {}).get("teacher"))
        self.recall += bool(episode.get("meta", {}).get("recall"))  # units/software_design.py: recall_episodes
        self.tokens += sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or "")) for m in episode["messages"]) // 4

    def to_dict(self) -> dict:
        out = {"made": self.made, "verified": self.verified, "rejected": dict(self.rejected), "tokens": self.tokens}
        if self.recall:
            out["recall"] = self.recall
        if self.teacher_tried:
            out["teacher"] = {"tried": self.teacher_tried, "kept": self.taught, "rejected": dict(self.teacher_rejected)}
        return out


def finish_episode(session: OracleSession, answer: str, unit: str, commit: str, stats: UnitStats, meta: dict, verified: dict | None = None):
    if session.errors:
        stats.rejected["tool error"] += 1
        return None
    session.submit(answer, content=session.thought_before_submit or "Done.")
    # the runtime unit (trainer/experience/runtime/) is not yet written to this rule: checked where it is
    if unit in HONEST_UNITS and ungrounded_actions({"messages": session.messages}):
        stats.rejected["ungrounded action"] += 1
        return None
    episode = session.episode(unit, commit, verified=verified or {"ok": True, "grounded_in": "index"}, meta=meta)
    stats.add(episode)
    return episode


def code_verifier(ws: Workspace, oracle: dict[str, str | None], start: dict[str, str | None], tests: list[str], same: dict,
                   fixed: dict[str, str] | None = None):
    """A teacher's code change verifies when it changed the files the oracle changes (and no other code
    file), everything parses, and it is the oracle's code (``same``: the record then) or the tests decide
    for it (``teacher.tests_decide``: the deciding tests pass, nothing the oracle passes fails)."""

    def verify(result):
        changes = changed_files(ws)
        missing = [p for p in oracle if p not in changes]
        if missing:
            return "did not change the task's files"
        if any(p not in oracle and p not in (fixed or {}) and not is_test_file(p) for p in changes):
            return "changed other code files"
        if not all(parses(text, p) for p, text in changes.items()):
            return "its code does not parse"
        if all(same_code(changes[p], text, p) for p, text in oracle.items()):
            return {"ok": True, **same}
        if not tests:
            return "differs from the oracle's code and no test decides"
        return tests_decide(ws, tests, oracle, start, fixed)

    return verify



def pytest_runner(ws: Workspace, timeout: float = 120):
    """A test runner for the oracle: runs the given test files with the real ``run`` tool (sandboxed)."""

    def run(session: OracleSession, tests: list[str]) -> str:
        output = session.act([("run", {"command": "python -m pytest -q -x -p no:cacheprovider " + " ".join(tests),
                                        "timeout": int(timeout)})],
                             content=session.thought_before_run or f"Let me run {', '.join(tests)}.")[0]
        if "[exit code 0" in output:
            return "passed"
        if "[exit code 5" in output:  # pytest: no tests collected
            return "not run"
        return "failed"

    return run
