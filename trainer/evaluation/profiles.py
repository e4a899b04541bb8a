"""What an evaluation is made of: the task families, the sizes per profile, a task and a model to score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("line", "body", "infill", "design", "facts", "replay")
CHAT_FAMILIES = ("design", "facts")  # questions, as the chat panel asks them: a model's chat adapter answers them

# Sizes per profile. "quick" gives intervals worth reading (on the order of 100 line and 20 body tasks)
# and fits the embedded model on a 2-core CPU in a few minutes per model; replay is left out there: an
# agent task costs a minute, and one task measures nothing. generate_*: how many of the line/body tasks
# are also completed greedily (exact match, edit similarity); the loss covers all of them. quick generates
# 20 line and 4 infill completions (from 30 and 12): a greedy completion costs 1.5-2.7 s per model on 2 cores,
# and on click the 28-step quick run came to 15 min 5 s with 30 / 12 (README). "full" scores three times the
# line and body tasks with quick's context and completions (~15 min for base and adapter on 2 cores), so that
# the whole run fits 60 min; replay is left out of both: at 2 cores an agent task costs about a minute per
# model, and the tiny profile (the tests) is what runs it.
EVAL_PROFILES = {
    "tiny": dict(line=8, body=3, infill=4, design=6, facts=6, replay=1, generate_line=8, generate_body=3, generate_infill=4,
                 context_tokens=192, max_steps=3, replay_tokens=6000, n_ctx=2048),
    "quick": dict(line=100, body=20, infill=40, design=12, facts=48, replay=0, generate_line=20, generate_body=6, generate_infill=4,
                  context_tokens=320, max_steps=4, replay_tokens=10000, n_ctx=4096),
    "full": dict(line=300, body=60, infill=80, design=24, facts=96, replay=0, generate_line=20, generate_body=6, generate_infill=4,
                 context_tokens=320, max_steps=4, replay_tokens=10000, n_ctx=4096),
}


@dataclass
class Task:
    id: str
    family: str
    commit: str
    path: str | None
    prompt: str  # file prefix (line, body), question (design), request (replay)
    target: str  # the real line/body, the grounded answer, or the commit's subject
    meta: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    name: str
    adapter: Path | None  # an adapter.gguf; None: the base model
    chat_adapter: Path | None = None  # the chat adapter that answers the CHAT_FAMILIES tasks in its place, if any
