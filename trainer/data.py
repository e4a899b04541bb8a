"""Experience → training sequences.

Episodes are rendered with the agent's renderer, the same code inference parses with, and the loss
covers only what the assistant wrote (reasoning, tool calls, answers, end-of-turn), never the system or
user turns or tool observations. Lengths are counted with the model's own tokenizer after rendering.
An episode longer than ``max_len`` first has its longest tool observations cut in the middle (head and
tail kept, ``[… N lines cut …]`` between), which keeps every trained token; if that is not enough it is
cut at a turn boundary (the longest prefix that ends after an assistant turn) so a tool call is never
cut in half; if not even the first assistant turn fits, the episode is dropped. All three are counted
per unit, and a unit that loses most of its episodes to the length limit is an error (``check_lengths``),
never a silent loss.

Two plain-text forms skip the chat template: the completion form (``agent.episode.completion_episode``:
loss on the target only, the prefix shortened from its start) and the repository as text
(``trainer.experience.text``: every token a target, split at line boundaries to fit). A text chunk that
carries a fill-in-the-middle split is trained in the FIM layout (``encode_fim``) with ``TrainConfig.fim`` (off by
default: it did not help in a short run on click) when the tokenizer has FIM
tokens (``agent.fim.for_tokenizer``: its own, or three reserved ones); ``DataStats.fim`` records which,
and the adapter's manifest declares them (``manifest["fim"]``) so the server knows the layout.

Batches are packed (``packed_batches``/``collate_packed``: rows of up to ``max_len`` positions, each row's
common prefix computed once, per-sequence positions and a block mask so no sequence sees another) or length-grouped
(sequences of similar length padded together, up to a token budget). Either way a sequence ends at its
last trained token: what follows it gets no loss and changes nothing before it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.episode import load_episodes
from agent.errors import SwespotError
from agent.fim import for_tokenizer
from trainer.experience.text import TEXT

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
    cut: int = 0  # episodes whose long observations were cut in the middle to fit max_len
    dropped_too_long: int = 0
    dropped_no_assistant: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    too_long: Counter = field(default_factory=Counter)  # per unit, dropped for length
    cut_units: Counter = field(default_factory=Counter)  # per unit, observations cut to fit
    split_units: Counter = field(default_factory=Counter)  # per unit, cut at a turn boundary to fit
    trained: Counter = field(default_factory=Counter)  # per unit, trained tokens
    lengths: dict = field(default_factory=dict)  # per unit: rendered length of each episode before any cut
    form_lengths: dict = field(default_factory=dict)  # per unit, per form (agentic, completion, text, fim): the same
    fim: dict | None = None  # the FIM tokens the sequences were encoded with (agent.fim.FimTokens.to_manifest)
    fim_sequences: int = 0  # text chunks trained in the FIM layout

    def to_dict(self) -> dict:
        return {
            "episodes": dict(self.episodes), "sequences": dict(self.sequences), "split": self.split, "cut": self.cut,
            "dropped_too_long": self.dropped_too_long, "dropped_no_assistant": self.dropped_no_assistant,
            "tokens": self.tokens, "trained_tokens": self.trained_tokens, "units": self.per_unit(),
            "fim": self.declared_fim(),
        }

    def declared_fim(self) -> dict | None:
        """What an adapter trained on these sequences declares: the FIM tokens and how many sequences
        taught them, or None when no sequence was in the FIM layout (the server then completes left to right)."""
        return {**self.fim, "sequences": self.fim_sequences} if self.fim and self.fim_sequences else None

    def per_unit(self) -> dict:
        """Per unit: episodes read, sequences kept, dropped by length, trained tokens, length distribution."""
        out = {}
        for unit in sorted(self.episodes):
            out[unit] = {"episodes": self.episodes[unit], "sequences": self.sequences[unit], "dropped_too_long": self.too_long[unit],
                         "observations_cut": self.cut_units[unit], "split_at_turn": self.split_units[unit],
                         "trained_tokens": self.trained[unit],
                         "length": _quantiles(self.lengths.get(unit, [])),
                         "length_by_form": {form: {"episodes": len(ls), **_quantiles(ls)}
                                            for form, ls in sorted(self.form_lengths.get(unit, {}).items())}}
        return out

    def _length(self, unit: str, form: str, n: int) -> None:
        self.lengths.setdefault(unit, []).append(n)
        self.form_lengths.setdefault(unit, {}).setdefault(form, []).append(n)

    def _keep(self, seq: Sequence) -> None:
        self.sequences[seq.unit] += 1
        self.tokens += len(seq.input_ids)
        self.trained_tokens += seq.trained_tokens
        self.trained[seq.unit] += seq.trained_tokens

    def _too_long(self, unit: str) -> None:
        self.dropped_too_long += 1
        self.too_long[unit] += 1


def _quantiles(values: list[int]) -> dict:
    ls = sorted(values)
    q = lambda f: ls[min(len(ls) - 1, int(f * len(ls)))] if ls else 0  # noqa: E731
    return {"p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "max": ls[-1] if ls else 0}


MAX_LENGTH_LOSS = 0.5  # a unit that loses more than this share of its episodes to max_len is an error


def check_lengths(stats: DataStats, max_len: int) -> None:
    """Raise when a unit loses most of its episodes to the length limit (``check_lengths_table``)."""
    check_lengths_table(stats.per_unit(), max_len)


def check_lengths_table(units: dict, max_len: int) -> None:
    """Raise when a unit (a row of ``DataStats.per_unit``) loses more than ``MAX_LENGTH_LOSS`` of its
    episodes to the length limit, naming the unit, the limit and the unit's typical (median) rendered
    length: raise max_len, or make that unit's episodes shorter."""
    for unit, row in sorted(units.items()):
        n, lost = row["episodes"], row["dropped_too_long"]
        if n and lost > MAX_LENGTH_LOSS * n:
            raise SwespotError(f"unit {unit!r} loses {lost} of its {n} episodes to the length limit: max_len is {max_len} "
                               f"tokens and its typical episode renders to {row['length']['p50']} tokens (even with long "
                               f"observations cut); raise max_len or shorten the unit's episodes")


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
    head = _bos(tokenizer)
    body = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    goal = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    room = max_len - len(head) - len(goal)
    if room < 1 or not goal:
        return None
    body = body[-room:]
    return head + body + goal, [IGNORE] * (len(head) + len(body)) + goal


def _bos(tokenizer) -> list[int]:
    return list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS, as llama.cpp adds it


def encode_text(episode: dict, tokenizer, max_len: int) -> list[tuple[list[int], list[int]]]:
    """The repository as text (trainer.experience.text): BOS, then ``header + chunk`` with every token a
    target. A chunk that does not fit ``max_len`` is split again at line boundaries, the header repeated
    on each piece (a single line longer than the window is split between tokens)."""
    head_text, body = episode["messages"][0]["content"], episode["messages"][1]["content"]
    bos = _bos(tokenizer)
    room = max_len - len(bos) - len(tokenizer(head_text, add_special_tokens=False)["input_ids"])
    out = []
    lines = body.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        # the most lines from ``start`` whose tokens fit: grow by halving steps, then check exactly
        end, step = start + 1, max(1, len(lines) - start)
        while step:
            if end + step <= len(lines) and _count(tokenizer, "".join(lines[start:end + step])) <= room:
                end += step
            else:
                step //= 2
        ids = list(tokenizer(head_text + "".join(lines[start:end]), add_special_tokens=False)["input_ids"])
        while len(ids) > max_len - len(bos) and end - start > 1:  # header and lines tokenized together: exact
            end -= 1
            ids = list(tokenizer(head_text + "".join(lines[start:end]), add_special_tokens=False)["input_ids"])
        for k in range(0, len(ids), max_len - len(bos)):  # only a single over-long line needs more than one
            piece = bos + ids[k:k + max_len - len(bos)]
            out.append((piece, [IGNORE] * len(bos) + piece[len(bos):]))
        start = end
    return out


def encode_fim(episode: dict, tokenizer, max_len: int, fim) -> tuple[list[int], list[int]] | None:
    """A text chunk with a split (``meta.fim``) in the FIM layout (``agent.fim``): BOS, prefix marker,
    header and the code before, suffix marker, the code after, middle marker, the middle, EOS. Every token
    is a target except BOS and the three markers (the server writes those); None when it does not fit
    ``max_len`` (the chunk is then trained as plain text)."""
    head, body = episode["messages"][0]["content"], episode["messages"][1]["content"]
    split = episode["meta"]["fim"]
    p, m = split["prefix_end"], split["middle_end"]
    ids = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    pre, suf, mid = (ids(t)[0] for t in fim.markers)
    parts = [(_bos(tokenizer), False), ([pre], False), (ids(head + body[:p]), True), ([suf], False), (ids(body[m:]), True),
             ([mid], False), (ids(body[p:m]), True), ([tokenizer.eos_token_id], True)]
    input_ids = [t for part, _ in parts for t in part]
    if len(input_ids) > max_len:
        return None
    return input_ids, [t if trained else IGNORE for part, trained in parts for t in part]


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


CUT_MARK = "[… {n} lines cut …]"
MIN_KEPT_LINES = 8  # an observation keeps at least this many lines (half head, half tail)
MAX_CUT_ROUNDS = 4


def cut_middle(text: str, keep: int) -> str:
    """``text`` with its middle lines replaced by one marker line, keeping ``keep`` lines (head and tail)."""
    lines = text.split("\n")
    if keep >= len(lines) - 1:
        return text
    head = (keep + 1) // 2
    tail = keep - head
    return "\n".join(lines[:head] + [CUT_MARK.format(n=len(lines) - keep)] + (lines[-tail:] if tail else []))


def fit_observations(messages: list, tools: list, tokenizer, render: Render, max_len: int):
    """Cut the longest tool observations in the middle until the rendered episode fits ``max_len``:
    (ids, labels, cut messages) or None when the observations cannot be cut enough."""
    messages = [dict(m) for m in messages]
    for _ in range(MAX_CUT_ROUNDS):
        ids, labels = encode_messages(messages, tools, tokenizer, render)
        excess = len(ids) - max_len
        if excess <= 0:
            return ids, labels, messages
        obs = [(i, m["content"]) for i, m in enumerate(messages) if m.get("role") == "tool" and m.get("content")]
        sizes = {i: _count(tokenizer, text) for i, text in obs}
        lines = {i: text.count("\n") + 1 for i, text in obs}
        cuttable = {i: sizes[i] * max(0, lines[i] - MIN_KEPT_LINES - 1) / lines[i] for i in sizes}
        if sum(cuttable.values()) < excess:
            return None
        # water-filling: the largest observations shrink first, to a common size ``cap``
        need = excess + 8 * len(obs)  # room for the markers
        cap = max(sizes.values())
        while cap > 0 and sum(max(0, s - cap) for s in sizes.values()) < need:
            cap = int(cap * 0.9)
        changed = False
        for i, text in obs:
            if sizes[i] > cap and lines[i] > MIN_KEPT_LINES + 1:
                keep = max(MIN_KEPT_LINES, int(lines[i] * cap / sizes[i]))
                messages[i]["content"] = cut_middle(text, keep)
                changed = changed or messages[i]["content"] != text
        if not changed:
            return None
    ids, labels = encode_messages(messages, tools, tokenizer, render)
    return (ids, labels, messages) if len(ids) <= max_len else None


def encode_episode(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats) -> Sequence | None:
    seqs = encode_episode_all(episode, tokenizer, render, max_len, stats)
    return seqs[0] if seqs else None


def encode_episode_all(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats, fim=None) -> list[Sequence]:
    """The sequences of one episode (several only for a long ``text`` chunk), counted in ``stats``.
    ``fim`` (``agent.fim.FimTokens``): a text chunk with a split is encoded in the FIM layout with them."""
    messages, tools = episode["messages"], episode.get("tools") or []
    unit = episode.get("unit", "unknown")
    form = (episode.get("meta") or {}).get("format")
    if form == TEXT and fim is not None and episode["meta"].get("fim"):
        encoded = encode_fim(episode, tokenizer, max_len, fim)
        if encoded is not None:
            seq = Sequence(*encoded, unit, str(episode.get("id", "")))
            stats._length(unit, "fim", len(seq.input_ids))
            stats._keep(seq)
            stats.fim, stats.fim_sequences = fim.to_manifest(), stats.fim_sequences + 1
            return [seq]
    if form == TEXT:
        seqs = [Sequence(ids, labels, unit, str(episode.get("id", ""))) for ids, labels in encode_text(episode, tokenizer, max_len)]
        stats._length(unit, TEXT, sum(len(s.input_ids) for s in seqs))
        for seq in seqs:
            stats._keep(seq)
        return seqs
    if form == "completion":
        encoded = encode_completion(episode, tokenizer, max_len)
        if encoded is None:
            stats._length(unit, "completion", _count(tokenizer, "".join(m["content"] for m in messages)))
            stats._too_long(unit)
            return []
        stats._length(unit, "completion", len(encoded[0]))  # the prefix is cut to fit by design
        seqs = [Sequence(*encoded, unit, str(episode.get("id", "")))]
        for seq in seqs:
            stats._keep(seq)
        return seqs
    ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not ends:
        stats.dropped_no_assistant += 1
        return []
    ids, labels = encode_messages(messages, tools, tokenizer, render)
    stats._length(unit, "agentic", len(ids))
    if len(ids) > max_len:
        fitted = fit_observations(messages, tools, tokenizer, render, max_len)
        if fitted is not None:
            ids, labels, messages = fitted
            stats.cut += 1
            stats.cut_units[unit] += 1
        else:
            # the longest prefix that ends right after an assistant turn and fits (lengths grow with the
            # prefix: a binary search over the turn ends)
            lo, hi, best = 0, len(ends) - 2, None
            while lo <= hi:
                mid = (lo + hi) // 2
                encoded = encode_messages(messages[:ends[mid]], tools, tokenizer, render)
                if len(encoded[0]) <= max_len:
                    best, lo = encoded, mid + 1
                else:
                    hi = mid - 1
            if best is None:
                stats._too_long(unit)
                return []
            ids, labels = best
            stats.split += 1
            stats.split_units[unit] += 1
    seq = Sequence(ids, labels, unit, str(episode.get("id", "")))
    if seq.trained_tokens == 0:
        stats.dropped_no_assistant += 1
        return []
    stats._keep(seq)
    return [seq]


def encode_all(episodes: Iterable[dict], tokenizer, render: Render, max_len: int, stats: DataStats | None = None, *,
               check: bool = True, fim: bool = False):
    """Every episode's sequences and the statistics; with ``check``, a unit that loses most of its
    episodes to ``max_len`` raises (``check_lengths``). With ``fim`` (``TrainConfig.fim``, off by default),
    text chunks that carry a split are trained in the FIM layout when the tokenizer has FIM tokens
    (``agent.fim.for_tokenizer``)."""
    stats = stats or DataStats()
    tokens = for_tokenizer(tokenizer) if fim else None
    out = []
    for episode in episodes:
        stats.episodes[episode.get("unit", "unknown")] += 1
        out.extend(encode_episode_all(episode, tokenizer, render, max_len, stats, tokens))
    if check:
        check_lengths(stats, max_len)
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
    """Right-padded tensors: input_ids, attention_mask, labels (padding never trained); each sequence
    ends at its last trained token (``trained_end``)."""
    import torch

    width = max(trained_end(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        n = trained_end(seq)
        ids[row, :n] = torch.tensor(seq.input_ids[:n])
        labels[row, :n] = torch.tensor(seq.labels[:n])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def trained_end(seq: Sequence) -> int:
    """Length of ``seq`` up to its last trained token: the tokens after it get no loss and, the attention
    being causal, change nothing before them, so they are never computed."""
    return max(i for i, label in enumerate(seq.labels) if label != IGNORE) + 1


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
