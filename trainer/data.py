"""Experience → training sequences.

Episodes are rendered with the agent's renderer, the same code inference parses with, and the loss
covers only what the assistant wrote (reasoning, tool calls, answers, end-of-turn), never the system or
user turns or tool observations. An episode longer than ``max_len`` is cut at a turn boundary (the
longest prefix that ends after an assistant turn) so a tool call is never cut in half; if not even the
first assistant turn fits, the episode is dropped. Both are counted.

Batches are length-grouped (sequences of similar length padded together, up to a token budget) rather
than packed: packing on CPU attention kernels would let documents attend to each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from agent.errors import SwespotError

IGNORE = -100
Render = Callable[[list, list], "tuple[str, list[tuple[int, int]]]"]


@dataclass
class Sequence:
    input_ids: list[int]
    labels: list[int]
    unit: str
    episode_id: str

    @property
    def trained_tokens(self) -> int:
        """Target tokens that get a loss: labelled ones after the first (the first is never predicted)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass
class DataStats:
    episodes: Counter = field(default_factory=Counter)  # per unit, read
    sequences: Counter = field(default_factory=Counter)  # per unit, kept
    split: int = 0  # cut at a turn boundary to fit max_len
    dropped_too_long: int = 0
    dropped_no_assistant: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def to_dict(self) -> dict:
        return {
            "episodes": dict(self.episodes), "sequences": dict(self.sequences), "split": self.split,
            "dropped_too_long": self.dropped_too_long, "dropped_no_assistant": self.dropped_no_assistant,
            "tokens": self.tokens, "trained_tokens": self.trained_tokens,
        }


def episode_files(data_dir: Path) -> list[Path]:
    """``<data>/<unit>/<shard>.jsonl`` in a stable order."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SwespotError(f"experience folder not found: {data_dir}")
    files = sorted(p for p in data_dir.glob("*/*.jsonl") if not p.parent.name.startswith("."))
    if not files:
        raise SwespotError(f"no episodes in {data_dir} (expected <unit>/<shard>.jsonl files)")
    return files


def read_episodes(data_dir: Path) -> list[dict]:
    from agent.episode import load_episodes

    episodes: list[dict] = []
    for path in episode_files(data_dir):
        episodes.extend(load_episodes(path))
    if not episodes:
        raise SwespotError(f"the episode files in {data_dir} hold no episodes")
    return episodes


def label_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """True for each token whose characters lie inside an assistant span (spans sorted, disjoint)."""
    out, j = [], 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        out.append(j < len(spans) and spans[j][0] <= start and end <= spans[j][1] and end > start)
    return out


def encode_messages(messages: list, tools: list, tokenizer, render: Render) -> tuple[list[int], list[int]]:
    text, spans = render(messages, tools)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    trained = label_tokens([tuple(o) for o in enc["offset_mapping"]], sorted(spans))
    return ids, [tok if keep else IGNORE for tok, keep in zip(ids, trained)]


def encode_completion(episode: dict, tokenizer, max_len: int) -> tuple[list[int], list[int]] | None:
    """The completion form (agent.episode.completion_episode): plain ``prefix + target`` as inline
    completion prompts the model, the loss on the target; the prefix loses tokens from its start (after
    the special tokens) to fit ``max_len``. None when the target alone does not fit."""
    prefix, target = episode["messages"][0]["content"], episode["messages"][1]["content"]
    head = list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS, as llama.cpp adds it
    body = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    goal = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    room = max_len - len(head) - len(goal)
    if room < 1 or not goal:
        return None
    body = body[-room:]
    return head + body + goal, [IGNORE] * (len(head) + len(body)) + goal


def encode_episode(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats) -> Sequence | None:
    messages, tools = episode["messages"], episode.get("tools") or []
    unit = episode.get("unit", "unknown")
    if (episode.get("meta") or {}).get("format") == "completion":
        encoded = encode_completion(episode, tokenizer, max_len)
        if encoded is None:
            stats.dropped_too_long += 1
            return None
        seq = Sequence(*encoded, unit, str(episode.get("id", "")))
        stats.sequences[unit] += 1
        stats.tokens += len(seq.input_ids)
        stats.trained_tokens += seq.trained_tokens
        return seq
    ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not ends:
        stats.dropped_no_assistant += 1
        return None
    ids, labels = encode_messages(messages, tools, tokenizer, render)
    if len(ids) > max_len:
        # longest prefix that ends right after an assistant turn and fits
        for end in reversed(ends[:-1]):
            ids, labels = encode_messages(messages[:end], tools, tokenizer, render)
            if len(ids) <= max_len:
                stats.split += 1
                break
        else:
            stats.dropped_too_long += 1
            return None
    seq = Sequence(ids, labels, unit, str(episode.get("id", "")))
    if seq.trained_tokens == 0:
        stats.dropped_no_assistant += 1
        return None
    stats.sequences[unit] += 1
    stats.tokens += len(ids)
    stats.trained_tokens += seq.trained_tokens
    return seq


def encode_all(episodes: Iterable[dict], tokenizer, render: Render, max_len: int, stats: DataStats | None = None):
    stats = stats or DataStats()
    out = []
    for episode in episodes:
        stats.episodes[episode.get("unit", "unknown")] += 1
        seq = encode_episode(episode, tokenizer, render, max_len, stats)
        if seq is not None:
            out.append(seq)
    return out, stats


def mix(sequences: list[Sequence], weights: dict[str, float], replay: list[Sequence], replay_share: float, rng: random.Random) -> list[Sequence]:
    """One epoch's sequences: each unit repeated/subsampled by its weight (1.0 = each once), plus replay
    sequences making up ``replay_share`` of the result."""
    by_unit: dict[str, list[Sequence]] = {}
    for seq in sequences:
        by_unit.setdefault(seq.unit, []).append(seq)
    epoch: list[Sequence] = []
    for unit in sorted(by_unit):
        items = by_unit[unit]
        weight = weights.get(unit, 1.0)
        whole, frac = int(weight), weight - int(weight)
        epoch.extend(items * whole)
        epoch.extend(rng.sample(items, round(frac * len(items))))
    if replay and replay_share > 0 and epoch:
        n = round(len(epoch) * replay_share / (1 - replay_share))
        epoch.extend(rng.choices(replay, k=n))
    return epoch


def length_grouped_batches(sequences: list[Sequence], batch_tokens: int, rng: random.Random) -> list[list[Sequence]]:
    """Shuffle, sort within windows of 64 by length, cut into batches whose padded size fits the budget,
    then shuffle the batches (so one step does not always see the longest sequences)."""
    order = sequences[:]
    rng.shuffle(order)
    batches: list[list[Sequence]] = []
    for w in range(0, len(order), 64):
        window = sorted(order[w : w + 64], key=lambda s: len(s.input_ids))
        batch: list[Sequence] = []
        for seq in window:
            longest = max([len(seq.input_ids)] + [len(s.input_ids) for s in batch])
            if batch and longest * (len(batch) + 1) > batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(seq)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(batch: list[Sequence], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels (padding never trained)."""
    import torch

    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids)
        labels[row, :n] = torch.tensor(seq.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(sequences, replay, cfg, epoch: int) -> list[list[Sequence]]:
    """Deterministic given (seed, epoch): a resumed run sees exactly the batches it would have seen."""
    rng = random.Random(f"{cfg.seed}:{epoch}")
    return length_grouped_batches(mix(sequences, cfg.unit_weights, replay, cfg.replay_share, rng), cfg.batch_tokens, rng)


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer's behaviour: vocabulary, special tokens and chat template."""
    digest = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer.all_special_tokens).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return digest.hexdigest()


def data_fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def steps_for(cfg, batches_per_epoch: int) -> int:
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))
