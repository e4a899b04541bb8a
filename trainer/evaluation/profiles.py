"""What an evaluation is made of: the task families, the sizes per profile, a task and a model to score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("line", "body", "infill", "design", "facts", "replay")

# Sizes per profile. "quick" gives intervals worth reading (on the order of 100 line and 20 body tasks)
# and fits the embedded model on a 2-core CPU in a few minutes per model; replay is left out there: an
# agent task costs a minute, and one task measures nothing. generate_*: how many of the line/body tasks
# are also completed greedily (exact match, edit similarity); the loss covers all of them. quick generates
# 20 line and 4 infill completions (from 30 and 12): a greedy completion costs 1.5-2.7 s per model on 2 cores,
# and on click the 28-step quick run came to 15 min 5 s with 30 / 12 (README).
EVAL_PROFILES = {
    "tiny": dict(line=8, body=3, infill=4, design=6, facts=6, replay=1, generate_line=8, generate_body=3, generate_infill=4,
                 context_tokens=192, max_steps=3, replay_tokens=6000, n_ctx=2048),
    "quick": dict(line=100, body=20, infill=40, design=12, facts=24, replay=0, generate_line=20, generate_body=6, generate_infill=4,
                  context_tokens=320, max_steps=4, replay_tokens=10000, n_ctx=4096),
    "full": dict(line=400, body=100, infill=150, design=60, facts=80, replay=20, generate_line=150, generate_body=40, generate_infill=50,
                 context_tokens=1024, max_steps=15, replay_tokens=60000, n_ctx=8192),
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
