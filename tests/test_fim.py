"""Fill-in-the-middle taught by the adapter (agent/fim.py): the reserved tokens of the embedded Gemma base,
FIM samples from the repository-as-text unit, the manifest that declares them, and the server's layout
switch (lsp_server/completion.py). Real tokenizers and llama.cpp runtimes throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.fim import FimTokens, contains_marker, for_runtime, for_tokenizer
from lsp_server.completion import (
    CompletionContext,
    build_prompt,
    fit_to_line_rest,
    serving_fim,
    stop_point,
    stop_strings,
    trim_completion,
)
from trainer import data as D
from trainer import encoding as E
from trainer.experience.text import FIM_MAX_MIDDLE_LINES, FIM_MAX_SUFFIX_LINES, text_episodes

ROOT = Path(__file__).resolve().parents[1]
GEMMA_FIM = ("<unused0>", "<unused1>", "<unused2>")


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from trainer.default_model import prepare_default

    return AutoTokenizer.from_pretrained(prepare_default())


@pytest.fixture(scope="module")
def gemma_runtime():
    from agent.default_model import ensure_default_gguf
    from agent.runtime import LlamaRuntime

    runtime = LlamaRuntime(ensure_default_gguf(), n_ctx=1024, n_threads=1)
    yield runtime
    runtime.close()


def _own_sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "agent").glob("*.py"))]


def test_gemma_reserves_three_single_tokens_that_its_text_never_uses(gemma_tokenizer, gemma_runtime):
    tokens = for_tokenizer(gemma_tokenizer)
    assert tokens is not None and tokens.markers == GEMMA_FIM and tokens.source == "reserved"
    ids = [gemma_tokenizer.convert_tokens_to_ids(t) for t in tokens.markers]
    for text in tokens.markers:  # one token each, in transformers and in llama.cpp
        assert len(gemma_tokenizer(text, add_special_tokens=False)["input_ids"]) == 1
        assert len(gemma_runtime.tokenize(text, special=True)) == 1
    seen = set()
    # real code (this project's own files, but for those that spell a marker) never tokenizes to them
    for _path, text in [(path, text) for path, text in _own_sources() if not contains_marker(text)]:
        seen.update(gemma_tokenizer(text, add_special_tokens=False)["input_ids"])
        seen.update(gemma_runtime.tokenize(text, special=False))
    assert not seen & set(ids)


def test_the_tiny_model_has_no_fim_tokens_and_trains_text_as_plain_text(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    assert for_tokenizer(tokenizer) is None
    episodes = [e for path, text in _own_sources() for e in text_episodes(path, text, "c0", 256)]
    assert any(e["meta"].get("fim") for e in episodes)
    seqs, stats = D.encode_all(episodes, tokenizer, None, 512, fim=True)
    assert stats.fim is None and stats.fim_sequences == 0 and stats.declared_fim() is None
    assert stats.to_dict()["fim"] is None
    assert all(s.labels[1:] == s.input_ids[1:] for s in seqs)  # plain text: every token after BOS a target


def test_text_unit_splits_a_share_of_chunks_into_prefix_middle_and_suffix():
    episodes = [e for path, text in _own_sources() for e in text_episodes(path, text, "c0", 256)]
    split = [e for e in episodes if e["meta"].get("fim")]
    assert 0.3 < len(split) / len(episodes) < 0.7
    mid_line = 0
    for e in split:
        body = e["messages"][1]["content"]
        p, m = e["meta"]["fim"]["prefix_end"], e["meta"]["fim"]["middle_end"]
        assert 0 < p < m <= len(body) and body[p:m].strip()
        mid_line += body[p - 1] != "\n"
        middle_lines = body[p:m].count("\n")
        assert 1 <= middle_lines <= FIM_MAX_MIDDLE_LINES and body[m - 1] == "\n"
        assert 1 <= len(body[m:].splitlines()) <= FIM_MAX_SUFFIX_LINES
    assert 0 < mid_line < len(split)  # some middles start inside a line, as when the user types
    # the text contract holds: the chunks of a file, joined, are the file
    path, text = _own_sources()[0]
    assert "".join(e["messages"][1]["content"] for e in text_episodes(path, text, "c0", 256)) == text


def test_fim_samples_are_encoded_with_the_reserved_tokens_and_end_with_eos(gemma_tokenizer):
    episodes = [e for path, text in _own_sources() for e in text_episodes(path, text, "c0", 256)]
    seqs, stats = D.encode_all(episodes, gemma_tokenizer, None, 2048, fim=True)
    marker_ids = [gemma_tokenizer.convert_tokens_to_ids(t) for t in GEMMA_FIM]
    split = {e["id"] for e in episodes if e["meta"].get("fim")}
    fim_seqs = [s for s in seqs if s.episode_id in split]
    assert stats.fim_sequences == len(fim_seqs) == len(split) > 0
    # the other chunks are plain text without markers, agent/fim.py too, which spells them (as text)
    by_id = {e["id"]: e for e in episodes}
    assert any("<unused0>" in e["messages"][1]["content"] for e in episodes if e["id"] not in split)
    assert not any(set(marker_ids) & set(s.input_ids) for s in seqs if s.episode_id not in split)
    assert stats.declared_fim() == {"prefix": "<unused0>", "suffix": "<unused1>", "middle": "<unused2>", "source": "reserved",
                                    "sequences": len(fim_seqs)}
    for seq in fim_seqs:
        ids = seq.input_ids
        positions = [ids.index(t) for t in marker_ids]
        assert positions == sorted(positions) and all(ids.count(t) == 1 for t in marker_ids)
        assert all(seq.labels[i] == D.IGNORE for i in positions)  # the server writes the markers, the model never does
        assert ids[-1] == gemma_tokenizer.eos_token_id and seq.labels[-1] == ids[-1]  # it learns to stop after the middle
        episode = by_id[seq.episode_id]
        body, split = episode["messages"][1]["content"], episode["meta"]["fim"]
        middle = gemma_tokenizer.decode(ids[positions[2] + 1:-1])
        assert middle == body[split["prefix_end"]:split["middle_end"]]
        assert gemma_tokenizer.decode(ids[positions[1] + 1:positions[2]]) == body[split["middle_end"]:]
    # by default (TrainConfig.fim off: it did not help on click), the same chunks are plain text
    _, plain = D.encode_all(episodes, gemma_tokenizer, None, 2048)
    assert plain.declared_fim() is None


def test_code_that_spells_control_tokens_stays_text_in_the_fim_layout(gemma_tokenizer):
    body = 'TURN = "<start_of_turn>model\\n"\n\n\ndef stop(text):\n    return text + "<eos>"\n'
    (chunk,) = text_episodes("chat/turns.py", body, "c0", 256)
    p = body.index("    return")
    chunk["meta"]["fim"] = {"prefix_end": p, "middle_end": len(body) - 1}
    fim = for_tokenizer(gemma_tokenizer)
    ids, labels = E.encode_fim(chunk, gemma_tokenizer, 2048, fim)
    markers = [gemma_tokenizer.convert_tokens_to_ids(t) for t in GEMMA_FIM]
    control = {i for i, tok in gemma_tokenizer.added_tokens_decoder.items() if tok.special}
    # the three markers, BOS and the final EOS are the only control tokens; the code's own "<eos>" is text
    assert [i for i in ids if i in control] == [gemma_tokenizer.bos_token_id, *markers, gemma_tokenizer.eos_token_id]
    middle = gemma_tokenizer.decode(ids[ids.index(markers[2]) + 1:-1])
    assert middle == '    return text + "<eos>"' and labels[-1] == gemma_tokenizer.eos_token_id


def test_the_server_uses_the_fim_layout_only_while_the_adapter_declares_it(gemma_runtime):
    ctx = CompletionContext("pkg/ops.py", "python", "def add(a, b):\n    ", "\n\ndef mul(a, b):\n    return a * b\n")
    declared = {"fim": {"prefix": "<unused0>", "suffix": "<unused1>", "middle": "<unused2>", "source": "reserved"}}
    assert serving_fim(gemma_runtime, None) is None  # the bare base: left to right
    assert serving_fim(gemma_runtime, {"commit": "abc"}) is None  # an adapter that taught no FIM
    assert serving_fim(gemma_runtime, {"fim": None}) is None
    assert serving_fim(gemma_runtime, {"fim": {"prefix": "<nope>", "suffix": "<unused1>", "middle": "<unused2>"}}) is None
    fim = serving_fim(gemma_runtime, declared)
    assert fim == GEMMA_FIM
    prompt = build_prompt(ctx, [], fim)
    assert prompt == "<unused0># path: pkg/ops.py\ndef add(a, b):\n    <unused1>\n\ndef mul(a, b):\n    return a * b\n<unused2>"
    plain = build_prompt(ctx, [], serving_fim(gemma_runtime, None))
    assert "<unused" not in plain and plain.endswith("# File: pkg/ops.py\ndef add(a, b):\n    ")
    assert for_runtime(gemma_runtime, FimTokens.from_manifest(declared["fim"])).source == "reserved"


# (code before the cursor, code after it, what the model wrote): the model repeats the code after the cursor
REPEATS = [
    ("def add(a, b):\n    ", "\n\ndef mul(a, b):\n    return a * b\n", "return a + b\n\n\ndef mul(a, b):\n    return a * b\n"),
    ("    total = add(", ")\n    return total\n", "out, x)\n    return total\n"),
    ("    for x in xs:\n", "    return out\n", "        out = add(out, x)\n    return out\n"),
    ("x = [1, 2", "]\nprint(x)\n", ", 3]\nprint(x)\n"),
]


def server_suggestion(raw: str, ctx: CompletionContext) -> str:
    """What the server makes of the model's text (lsp_server/inline_completion.complete): cut at the stop
    rule, fitted to the rest of the cursor's line, trimmed."""
    cut = stop_point(raw, ctx)
    return trim_completion(fit_to_line_rest(raw[:cut] if cut is not None else raw, ctx), ctx)


@pytest.mark.parametrize("before,after,raw", REPEATS)
def test_no_suggestion_duplicates_the_code_after_the_cursor(before, after, raw):
    ctx = CompletionContext("pkg/ops.py", "python", before, after)
    suggestion = server_suggestion(raw, ctx)
    assert suggestion.strip()
    _assert_no_duplicate(suggestion, ctx)


def _assert_no_duplicate(suggestion: str, ctx: CompletionContext) -> None:
    """The document after accepting ``suggestion`` has the code after the cursor once, not twice: the
    suggestion neither ends with the rest of the cursor's line nor contains the next non-blank line."""
    rest = ctx.line_after_cursor.strip()
    assert not (rest and suggestion.split("\n", 1)[0].rstrip().endswith(rest)), (suggestion, ctx.suffix[:80])
    following = next((line.strip() for line in ctx.suffix.split("\n")[1:] if line.strip()), None)
    assert following is None or following not in [line.strip() for line in suggestion.split("\n")[1:]], (suggestion, ctx.suffix[:80])


def test_fim_suggestions_of_the_real_model_never_duplicate_the_code_after_the_cursor(gemma_runtime):
    """The embedded base in both layouts (FIM with the reserved tokens it was never taught: the worst case
    for run-on text), at new lines opened inside real code and at line ends."""
    source = (ROOT / "agent" / "fim.py").read_text()
    ends = [i for i, ch in enumerate(source) if ch == "\n" and i and source[i - 1] != "\n"][12::20][:4]
    cases = []
    for end in ends:
        rest = source[end + 1:]
        indent = rest[:len(rest) - len(rest.lstrip(" "))]
        cases.append((source[:end + 1] + indent, "\n" + rest))  # a new line opened before the next one
        cases.append((source[:end], source[end:]))  # the end of a line
    for before, after in cases:
        ctx = CompletionContext("agent/fim.py", "python", before, after)
        for fim in (GEMMA_FIM, None):
            out = gemma_runtime.complete(gemma_runtime.tokenize(build_prompt(ctx, [], fim), add_bos=True), max_tokens=40,
                                         stop=stop_strings(fim))
            _assert_no_duplicate(server_suggestion(out.text, ctx), ctx)
