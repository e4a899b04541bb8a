"""One episode → token ids and labels, form by form: an agentic episode through the chat template (the loss
on the assistant's spans), the completion form, the repository as text and its fill-in-the-middle layout;
and fitting a long agentic episode into the window (observations cut in the middle, else a prefix that
ends after an assistant turn). ``trainer/data.py`` picks the form and counts what happened.

The repository's own text (the text unit and its FIM layout) is tokenized as ordinary text
(``text_ids``): a file that spells a control token (``<start_of_turn>``, ``<eos>``, a FIM marker) is
learned as the characters it holds, never as that token.
"""

from __future__ import annotations

from collections.abc import Callable

IGNORE = -100
Render = Callable[[list, list], "tuple[str, list[tuple[int, int]]]"]


def text_ids(tokenizer, text: str) -> list[int]:
    """``text`` as ordinary text: special-token strings in it are split into plain tokens."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


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
    head = bos_ids(tokenizer)
    body = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    goal = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    room = max_len - len(head) - len(goal)
    if room < 1 or not goal:
        return None
    body = body[-room:]
    return head + body + goal, [IGNORE] * (len(head) + len(body)) + goal


def bos_ids(tokenizer) -> list[int]:
    return list(tokenizer("", add_special_tokens=True)["input_ids"])  # BOS, as llama.cpp adds it


def encode_text(episode: dict, tokenizer, max_len: int) -> list[tuple[list[int], list[int]]]:
    """The repository as text (trainer.experience.text): BOS, then ``header + chunk`` with every token a
    target. A chunk that does not fit ``max_len`` is split again at line boundaries, the header repeated
    on each piece (a single line longer than the window is split between tokens)."""
    head_text, body = episode["messages"][0]["content"], episode["messages"][1]["content"]
    bos = bos_ids(tokenizer)
    room = max_len - len(bos) - len(text_ids(tokenizer, head_text))
    out = []
    lines = body.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        # the most lines from ``start`` whose tokens fit: grow by halving steps, then check exactly
        end, step = start + 1, max(1, len(lines) - start)
        while step:
            if end + step <= len(lines) and len(text_ids(tokenizer, "".join(lines[start:end + step]))) <= room:
                end += step
            else:
                step //= 2
        ids = text_ids(tokenizer, head_text + "".join(lines[start:end]))
        while len(ids) > max_len - len(bos) and end - start > 1:  # header and lines tokenized together: exact
            end -= 1
            ids = text_ids(tokenizer, head_text + "".join(lines[start:end]))
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
    pre, suf, mid = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in fim.markers)  # the markers: special
    code = [text_ids(tokenizer, t) for t in (head + body[:p], body[m:], body[p:m])]  # ordinary text
    parts = [(bos_ids(tokenizer), False), ([pre], False), (code[0], True), ([suf], False), (code[1], True),
             ([mid], False), (code[2], True), ([tokenizer.eos_token_id], True)]
    input_ids = [t for part, _ in parts for t in part]
    if len(input_ids) > max_len:
        return None
    return input_ids, [t if trained else IGNORE for part, trained in parts for t in part]


def count_tokens(tokenizer, text: str) -> int:
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
        sizes = {i: count_tokens(tokenizer, text) for i, text in obs}
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


def fit_at_turn(messages: list, tools: list, tokenizer, render: Render, max_len: int, ends: list[int]):
    """The longest prefix of ``messages`` that ends right after an assistant turn (``ends``: the message
    counts that do, all but the last) and fits ``max_len``: (ids, labels), or None. Lengths grow with the
    prefix: a binary search over the turn ends."""
    lo, hi, best = 0, len(ends) - 2, None
    while lo <= hi:
        mid = (lo + hi) // 2
        encoded = encode_messages(messages[:ends[mid]], tools, tokenizer, render)
        if len(encoded[0]) <= max_len:
            best, lo = encoded, mid + 1
        else:
            hi = mid - 1
    return best
