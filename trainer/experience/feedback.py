"""Feedback episodes: what the user did with the model's output becomes experience of its own.

The language server appends one JSON object per user decision to ``<state>/feedback.jsonl``
(lsp_server/state_files.py): ``{"time", "id", "kind", "action", "uri", "final_text", "served", "model",
"adapter"}``, where ``served`` is what the server produced (an inline completion's ``text`` and the
``prefix_tail`` it continued, or a task's ``request`` and ``diff``). Here:

- **accepted** completions and tasks become positive episodes in ``<out>/feedback/<key>.jsonl``, the
  folder training reads; an ``editedAfterAccept`` completion teaches the text as the user left it;
- **rejected** ones are never trained on: they go to ``<out>/.feedback-contrast/`` (a hidden folder,
  which training skips) so that a gate or a contrastive objective can use them later, and are counted.

Only the last decision per id counts (an accept later edited is one positive). The episodes ask in a
wording of their own ("Continue the code...", "Write the diff...") and answer in plain text, so they
never teach the agent to answer a tool-using task without its tools. Nothing here invents an
observation: an episode holds only text the user saw and kept. A completion whose text looks like a
secret, or whose file lies outside the repository, is skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.episode import new_episode, save_episodes
from agent.state import FEEDBACK_FILE as FEEDBACK_FILE  # written by lsp_server/state_files.py
from trainer.experience.files import secret_reason

log = logging.getLogger(__name__)

UNIT = "feedback"
CONTRAST = ".feedback-contrast"
GENERATOR_VERSION = 1
MAX_ENTRIES = 5000  # the newest decisions considered; older ones have been trained on already


@dataclass
class FeedbackResult:
    positives: int = 0
    contrast: int = 0
    skipped: Counter = field(default_factory=Counter)
    shard: Path | None = None

    def to_dict(self) -> dict:
        return {"positives": self.positives, "rejected_as_contrast": self.contrast, "skipped": dict(self.skipped)}


def read_journal(path: Path, limit: int = MAX_ENTRIES) -> tuple[list[dict], int]:
    """The journal's entries (the newest ``limit``) and how many lines were unreadable. A line cut short
    by a crash of the server, or garbage, is skipped, never fatal."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], 0
    entries: list[dict] = []
    bad = 0
    for line in lines[-limit:]:
        if not line.strip():
            continue
        entry, whole = _parse_line(line)
        usable = isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("action"), str)
        if usable and isinstance(entry, dict):
            entries.append(entry)
        if not (usable and whole):
            bad += 1  # garbage, or a record cut short by a crash (with the next one appended to it)
    return entries, bad


def _parse_line(line: str) -> tuple[object, bool]:
    """(the JSON value on a line, whether the whole line was that value). A record a crash cut short has
    no newline, so the server's next record is appended to it: then the value is what parses from the
    first ``{`` after the damage."""
    try:
        return json.loads(line), True
    except ValueError:
        pass
    for start in (i for i, ch in enumerate(line) if ch == "{" and i > 0):
        try:
            return json.loads(line[start:]), False
        except ValueError:
            continue
    return None, False


def last_decisions(entries: list[dict]) -> list[dict]:
    """One entry per (kind, id): the last decision, in the order the ids first appeared."""
    latest: dict[tuple, dict] = {}
    for entry in entries:
        latest[(entry.get("kind"), entry["id"])] = entry
    return list(latest.values())


def repo_relative(uri: str | None, repo: Path) -> str | None:
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        return None
    path = Path(unquote(parsed.path))
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def completion_messages(rel: str, prefix: str, text: str) -> list[dict]:
    return [{"role": "user", "content": f"Continue the code in {rel} from where it stops:\n```\n{prefix}\n```"},
            {"role": "assistant", "content": text}]


def task_messages(request: str, diff: str) -> list[dict]:
    return [{"role": "user", "content": f"Write the diff (unified format) that does this in the repository:\n{request}"},
            {"role": "assistant", "content": f"```diff\n{diff.rstrip()}\n```"}]


def episode_for(entry: dict, repo: Path, commit: str, skipped: Counter) -> dict | None:
    """The episode a decision teaches, or None (counted in ``skipped`` with the reason)."""
    served: dict = entry["served"] if isinstance(entry.get("served"), dict) else {}
    kind, action = entry.get("kind"), entry.get("action")
    meta = {"feedback_id": entry["id"], "kind": kind, "action": action, "time": entry.get("time"),
            "adapter": entry.get("adapter"), "model": entry.get("model")}
    if kind == "inlineCompletion":
        rel = repo_relative(entry.get("uri") or served.get("uri"), repo)
        text = served.get("text")
        if action == "editedAfterAccept" and isinstance(entry.get("final_text"), str):
            text = entry["final_text"]
        if rel is None:
            skipped["file outside the repository"] += 1
            return None
        if not isinstance(text, str) or not text.strip() or not isinstance(served.get("prefix_tail"), str):
            skipped["served text no longer known"] += 1
            return None
        if secret_reason(rel, served["prefix_tail"] + text):
            skipped["looks like a secret"] += 1
            return None
        messages = completion_messages(rel, served["prefix_tail"], text)
        meta["path"] = rel
    elif kind == "task":
        request, diff = served.get("request"), served.get("diff")
        if not isinstance(request, str) or not isinstance(diff, str) or not diff.strip():
            skipped["served task no longer known"] += 1
            return None
        if secret_reason("task.diff", diff):
            skipped["looks like a secret"] += 1
            return None
        messages = task_messages(request, diff)
    else:
        skipped[f"{kind} feedback carries no text to learn"] += 1
        return None
    return new_episode(UNIT, commit, messages, [], verified={"by": "user", "action": action}, meta=meta)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def build_feedback(journal: Path, repo: Path, out: Path, commit: str) -> FeedbackResult:
    """Turn the journal into ``<out>/feedback/<key>.jsonl`` (positives) and
    ``<out>/.feedback-contrast/<key>.jsonl`` (rejected). Content-addressed: the same decisions at the
    same commit make the same shard; shards no longer wanted are removed."""
    result = FeedbackResult()
    entries, bad = read_journal(journal)
    if bad:
        result.skipped["unreadable journal line"] += bad
    positives: list[dict] = []
    contrast: list[dict] = []
    for entry in last_decisions(entries):
        episode = episode_for(entry, repo, commit, result.skipped)
        if episode is None:
            continue
        (contrast if entry["action"] == "rejected" else positives).append(episode)
    result.positives, result.contrast = len(positives), len(contrast)
    for folder, episodes in ((out / UNIT, positives), (out / CONTRAST, contrast)):
        key = _key(GENERATOR_VERSION, commit, [e["id"] for e in episodes])
        for old in folder.glob("*.jsonl") if folder.is_dir() else []:
            if old.stem != key:
                old.unlink()
        if episodes:
            shard = folder / f"{key}.jsonl"
            if not shard.exists():
                save_episodes(shard, episodes, dropped=result.skipped)
            if folder.name == UNIT:
                result.shard = shard
    if entries:
        log.info("feedback: %d positive, %d rejected (contrast), skipped %s", result.positives, result.contrast, dict(result.skipped))
    return result
