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

Each form's encoding is in ``trainer/encoding.py`` (the repository's own text is tokenized as ordinary
text there: a file that spells ``<eos>`` teaches those characters, not the end of text); batches are made
in ``trainer/batches.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.episode import load_episodes
from agent.errors import SwespotError
from agent.fim import for_tokenizer
from trainer import encoding as E
from trainer.encoding import IGNORE as IGNORE  # re-exported: the label of an untrained position
from trainer.encoding import Render
from trainer.experience.text import TEXT


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


def encode_episode(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats) -> Sequence | None:
    seqs = encode_episode_all(episode, tokenizer, render, max_len, stats)
    return seqs[0] if seqs else None


def encode_episode_all(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats, fim=None) -> list[Sequence]:
    """The sequences of one episode (several only for a long ``text`` chunk), counted in ``stats``.
    ``fim`` (``agent.fim.FimTokens``): a text chunk with a split is encoded in the FIM layout with them."""
    unit = episode.get("unit", "unknown")
    form = (episode.get("meta") or {}).get("format")
    if form == TEXT and fim is not None and episode["meta"].get("fim"):
        encoded = E.encode_fim(episode, tokenizer, max_len, fim)
        if encoded is not None:
            stats.fim, stats.fim_sequences = fim.to_manifest(), stats.fim_sequences + 1
            return _kept(stats, unit, "fim", [Sequence(*encoded, unit, str(episode.get("id", "")))])
    if form == TEXT:
        seqs = [Sequence(ids, labels, unit, str(episode.get("id", ""))) for ids, labels in E.encode_text(episode, tokenizer, max_len)]
        return _kept(stats, unit, TEXT, seqs)
    if form == "completion":
        encoded = E.encode_completion(episode, tokenizer, max_len)
        if encoded is None:
            stats._length(unit, "completion", E.count_tokens(tokenizer, "".join(m["content"] for m in episode["messages"])))
            stats._too_long(unit)
            return []
        return _kept(stats, unit, "completion", [Sequence(*encoded, unit, str(episode.get("id", "")))])  # the prefix is cut to fit
    return _encode_agentic(episode, tokenizer, render, max_len, stats)


def _kept(stats: DataStats, unit: str, form: str, seqs: list[Sequence]) -> list[Sequence]:
    """Count ``seqs`` (one episode's, of ``form``) as kept: their total length and their tokens."""
    stats._length(unit, form, sum(len(s.input_ids) for s in seqs))
    for seq in seqs:
        stats._keep(seq)
    return seqs


def _encode_agentic(episode: dict, tokenizer, render: Render, max_len: int, stats: DataStats) -> list[Sequence]:
    """An agentic episode through the chat template; when too long, its observations cut in the middle,
    else cut after the last assistant turn that fits (``encoding``), else dropped."""
    messages, tools = episode["messages"], episode.get("tools") or []
    unit = episode.get("unit", "unknown")
    ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not ends:
        stats.dropped_no_assistant += 1
        return []
    ids, labels = E.encode_messages(messages, tools, tokenizer, render)
    stats._length(unit, "agentic", len(ids))
    if len(ids) > max_len:
        fitted = E.fit_observations(messages, tools, tokenizer, render, max_len)
        if fitted is not None:
            ids, labels, messages = fitted
            stats.cut += 1
            stats.cut_units[unit] += 1
        else:
            best = E.fit_at_turn(messages, tools, tokenizer, render, max_len, ends)
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
