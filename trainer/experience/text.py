"""The repository itself as text: unit ``text`` (continued pre-training on the learnable files).

The loss covers what the model writes, so code that only appears in tool observations never reaches the
weights; this unit puts the files themselves into trained tokens, the densest signal per CPU second.

The one format contract (``meta.format == "text"``), written here and read by ``trainer/data.py``:

    {"unit": "text", "messages": [{"role": "user", "content": "# path: src/click/core.py\\n"},
                                  {"role": "assistant", "content": <lines start_line..end_line of the file>}],
     "tools": [], "verified": {"ok": true, "exact_file_text": true},
     "meta": {"format": "text", "path", "start_line", "end_line", "chunk", "chunks"}}

trained as plain text (no chat template): BOS, then ``header + chunk``, **every token after BOS a
target**, header included. The chunks of one file, in order, are its text exactly (split at line
boundaries). Chunks are sized at build time with a cheap estimate (``CHARS_PER_TOKEN``) to about
``chunk_tokens``; ``data.py`` counts exactly with the model's tokenizer and splits a chunk that still
does not fit ``max_len`` at line boundaries again (the header repeated), so nothing is dropped for length.

The files are the same selection as the other units (tracked, not ignored, not secret, not vendored,
generated or binary: ``files.select_files``). Shards are content-addressed per file (the blob, the chunk
size and ``TEXT_VERSION``); how many chunks a build keeps is the profile's target for the unit, taken
over the files in a seeded order, code files first.

Fill-in-the-middle: about ``FIM_SHARE`` of the chunks (chosen by a hash of path and chunk) carry a split
``meta.fim = {"prefix_end", "middle_end"}`` (character offsets into the chunk): the middle is 1 to
``FIM_MAX_MIDDLE_LINES`` lines, followed by 1 to ``FIM_MAX_SUFFIX_LINES`` lines of suffix up to the chunk's
end (as much as the server shows after the cursor), and half the time it starts inside its first line, as
when the user types. With ``TrainConfig.fim`` (off by default) ``data.py`` trains such a chunk in the FIM layout (``agent/fim.py``) when the
tokenizer has FIM tokens (its own, or reserved ones an adapter can teach), else as plain text; either
way every token of the chunk is a target.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import PurePosixPath

from agent.episode import new_episode
from agent.fim import contains_marker

TEXT = "text"  # meta.format and unit name
TEXT_VERSION = 2  # 2: meta.fim splits
CHARS_PER_TOKEN = 3.2  # Gemma's tokenizer: ~3.5 characters per token on Python and docs of three real repositories
HEADER = "# path: {path}\n"
FIM_SHARE = 0.5  # of the chunks carry a fill-in-the-middle split (Bavarian et al. 2022: 50% costs no left-to-right skill)
FIM_MAX_MIDDLE_LINES = 8
FIM_MAX_SUFFIX_LINES = 12  # lsp_server.completion.SUFFIX_LINES: what the server shows after the cursor


def header(path: str) -> str:
    return HEADER.format(path=path)


def chunk_lines(text: str, max_chars: int) -> list[tuple[int, int, str]]:
    """``text`` cut at line boundaries into pieces of at most ``max_chars`` characters (a single longer
    line is a piece of its own): ``(start_line, end_line, piece)``, 1-based and inclusive; the pieces,
    joined, are ``text`` exactly."""
    lines = text.splitlines(keepends=True)
    out: list[tuple[int, int, str]] = []
    start, size = 0, 0
    for i, line in enumerate(lines):
        if i > start and size + len(line) > max_chars:
            out.append((start + 1, i, "".join(lines[start:i])))
            start, size = i, 0
        size += len(line)
    if start < len(lines):
        out.append((start + 1, len(lines), "".join(lines[start:])))
    return out


def text_episodes(path: str, text: str, commit: str, chunk_tokens: int) -> list[dict]:
    """One file as ``text`` episodes of about ``chunk_tokens`` tokens each (see the module docstring)."""
    head = header(path)
    budget = max(64, int(chunk_tokens * CHARS_PER_TOKEN) - len(head))
    pieces = [p for p in chunk_lines(text, budget) if p[2].strip()]
    return [new_episode(TEXT, commit, [{"role": "user", "content": head}, {"role": "assistant", "content": piece}], [],
                        verified={"ok": True, "exact_file_text": True},
                        meta={"format": TEXT, "path": path, "start_line": a, "end_line": b, "chunk": k, "chunks": len(pieces),
                              **({"fim": split} if (split := fim_split(piece, f"{path}:{k}")) else {})})
            for k, (a, b, piece) in enumerate(pieces)]


def fim_split(piece: str, key: str) -> dict | None:
    """For about FIM_SHARE of the chunks (by ``key``), where the chunk splits into prefix, middle and
    suffix: ``{"prefix_end", "middle_end"}``, character offsets (see the module docstring); else None."""
    rng = random.Random(hashlib.sha256(f"fim:{key}".encode()).digest())
    if rng.random() >= FIM_SHARE or contains_marker(piece):
        return None
    lines = piece.splitlines(keepends=True)
    if len(lines) < 3:
        return None
    n_suffix = rng.randint(1, min(FIM_MAX_SUFFIX_LINES, len(lines) - 2))
    n_middle = rng.randint(1, min(FIM_MAX_MIDDLE_LINES, len(lines) - 1 - n_suffix))
    start = len(lines) - n_suffix - n_middle
    prefix_end = sum(map(len, lines[:start]))
    middle_end = prefix_end + sum(map(len, lines[start:start + n_middle]))
    first = lines[start].rstrip("\r\n")
    indent = len(first) - len(first.lstrip())
    if rng.random() < 0.5 and len(first) > indent + 1:  # the cursor inside the line, after its indentation
        prefix_end += rng.randint(indent + 1, len(first) - 1)
    if not piece[prefix_end:middle_end].strip():
        return None
    return {"prefix_end": prefix_end, "middle_end": middle_end}


def estimated_chunks(text: str, chunk_tokens: int) -> int:
    return max(1, round(len(text) / (chunk_tokens * CHARS_PER_TOKEN)))


def file_order(paths: list[str], seed: int, is_code, activity: dict[str, float] | None = None) -> list[str]:
    """The order a build takes files in until the unit's target is met: code files first; within each
    group the files the repository changed most just before the cutoff first (``activity``, see
    ``history.recent_activity``: where the next commits are likely to land), then a seeded pseudo-random
    order that does not change when other files change."""
    activity = activity or {}
    rank = lambda p: hashlib.sha256(f"{seed}:{TEXT}:{p}".encode()).hexdigest()  # noqa: E731
    return sorted(paths, key=lambda p: (not is_code(p), -round(activity.get(p, 0.0), 6), rank(p)))


def is_text_file(path: str) -> bool:
    """Files worth reading as text: everything selected except data-like formats."""
    return PurePosixPath(path).suffix.lower() not in {".json", ".csv", ".tsv", ".svg", ".lock", ".xml", ".ipynb"}
