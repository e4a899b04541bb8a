"""Training sequences → one epoch's batches, deterministic given (seed, epoch).

Batches are packed (``packed_batches``/``collate_packed``: rows of up to ``max_len`` positions, each row's
common prefix computed once, per-sequence positions and a block mask so no sequence sees another) or length-grouped
(sequences of similar length padded together, up to a token budget). Either way a sequence ends at its
last trained token: what follows it gets no loss and changes nothing before it.
"""

from __future__ import annotations

import math
import random

from trainer.data import IGNORE, Sequence, trained_end


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


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def pack_rows(sequences: list[Sequence], row_tokens: int) -> list[list[Sequence]]:
    """Consecutive sequences into rows of at most ``row_tokens`` positions: a row holds its sequences'
    common prefix once, then each one's rest up to its last trained token (``collate_packed``)."""
    rows: list[list[Sequence]] = []
    row: list[Sequence] = []
    ends: list[int] = []
    shared = 0
    for seq in sequences:
        end = trained_end(seq)
        if row:
            narrower = min(shared, common_prefix(row[0].input_ids, seq.input_ids), end - 1)
            if narrower + sum(e - narrower for e in ends) + end - narrower <= row_tokens:
                row.append(seq)
                ends.append(end)
                shared = narrower
                continue
            rows.append(row)
        row, ends, shared = [seq], [end], end - 1
    if row:
        rows.append(row)
    return rows


def packed_batches(sequences: list[Sequence], batch_tokens: int, max_len: int, rng: random.Random) -> list[list[Sequence]]:
    """Shuffle, sort windows of 64 by their tokens (neighbours then share the longest prefixes: the system
    prompt and tool schemas of agent episodes, a file's head for completions), pack them into rows of at
    most ``max_len`` positions (``pack_rows``; rows, not one long row, because attention over a row costs
    its length squared whatever the mask hides) and take ``batch_tokens // max_len`` rows per batch. The
    batches are shuffled."""
    order = sequences[:]
    rng.shuffle(order)
    per_batch = max(1, batch_tokens // max_len)
    batches: list[list[Sequence]] = []
    for w in range(0, len(order), 64):
        rows = pack_rows(sorted(order[w : w + 64], key=lambda s: s.input_ids), max_len)
        for r in range(0, len(rows), per_batch):
            batches.append([seq for row in rows[r : r + per_batch] for seq in row])
    rng.shuffle(batches)
    return batches


def collate_packed(batch: list[Sequence], max_len: int):
    """Rows holding the batch's sequences (``pack_rows``), padded to the longest row: per row the common
    prefix once, then each sequence's rest up to its last trained token. ``position_ids`` restart at 0 for
    each sequence (the prefix is each one's start); ``segment_ids`` are 0 on the shared prefix, 1, 2, ...
    on the sequences' rests and negative on padding: a token sees the earlier tokens of its own segment
    and of the prefix (``train.packed_attention_masks``). ``predict_row``/``predict_at`` and ``targets``
    pair each trained token with the position that predicts it (the prefix's last position may predict
    one token per sequence)."""
    import torch

    rows = pack_rows(batch, max_len)
    columns: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "position_ids", "segment_ids")}
    predict_row: list[int] = []
    predict_at: list[int] = []
    targets: list[int] = []
    for r, row in enumerate(rows):
        ends = [trained_end(s) for s in row]
        shared = min([e - 1 for e in ends] + [common_prefix(row[0].input_ids, s.input_ids) for s in row[1:]])
        ids, pos, seg = list(row[0].input_ids[:shared]), list(range(shared)), [0] * shared
        for i, (s, end) in enumerate(zip(row, ends)):
            start = len(ids)
            ids.extend(s.input_ids[shared:end])
            pos.extend(range(shared, end))
            seg.extend([i + 1] * (end - shared))
            for j in range(1, end):
                if s.labels[j] != IGNORE:
                    predict_row.append(r)
                    predict_at.append(j - 1 if j - 1 < shared else start + j - 1 - shared)
                    targets.append(s.labels[j])
        for k, v in (("input_ids", ids), ("position_ids", pos), ("segment_ids", seg)):
            columns[k].append(v)
    width = max(len(v) for v in columns["input_ids"])
    for r in range(len(rows)):  # padding: each pad position its own segment, seeing only itself
        n = width - len(columns["input_ids"][r])
        columns["input_ids"][r] += [0] * n
        columns["position_ids"][r] += [0] * n
        columns["segment_ids"][r] += list(range(-1, -n - 1, -1))
    out = {k: torch.tensor(v, dtype=torch.long) for k, v in columns.items()}
    for k, v in (("predict_row", predict_row), ("predict_at", predict_at), ("targets", targets)):
        out[k] = torch.tensor(v, dtype=torch.long)
    return out


def epoch_batches(sequences, replay, cfg, epoch: int) -> list[list[Sequence]]:
    """Deterministic given (seed, epoch): a resumed run sees exactly the batches it would have seen."""
    rng = random.Random(f"{cfg.seed}:{epoch}")
    epoch_seqs = mix(sequences, cfg.unit_weights, replay, cfg.replay_share, rng)
    if getattr(cfg, "packing", False):
        return packed_batches(epoch_seqs, cfg.batch_tokens, cfg.max_len, rng)
    return length_grouped_batches(epoch_seqs, cfg.batch_tokens, rng)


def steps_for(cfg, batches_per_epoch: int) -> int:
    """``cfg.steps`` when given, else the epochs' steps, within ``cfg.min_steps`` … ``cfg.max_steps``."""
    if cfg.steps:
        return cfg.steps
    steps = max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    return max(steps, cfg.min_steps)
