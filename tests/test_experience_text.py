"""The repository as text, the balanced mix (targets per unit) and fitting episodes into the window:
real git repositories built in a temp dir, the real tools, the tiny model's tokenizer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.episode import load_episodes, new_episode, tool_call
from agent.errors import SwespotError
from agent.loop import SYSTEM_PROMPT
from agent.tools import Workspace, call_tool, make_tools
from trainer import data as D
from trainer import encoding as E
from trainer.experience.build import BuildOptions, build_experience, fit_report, unit_table
from trainer.experience.text import text_episodes

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
       "GIT_AUTHOR_DATE": "2026-01-01T00:00:00", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00", "PATH": "/usr/bin:/bin"}
SECRET = "AKIAIOSFODNN7EXAMPLE"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def commit(root: Path, message: str, files: dict[str, str | bytes]) -> str:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content) if isinstance(content, bytes) else (root / rel).write_text(content)
        git(root, "add", rel)
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


def module(n: int, tag: str = "") -> str:
    return '"""Geometry helpers."""\n\n\n' + "".join(
        f'def area_{i}{tag}(w, h):\n    """Area of rectangle {i}."""\n    return w * h + {i}\n\n\n' for i in range(n))


@pytest.fixture
def geo(tmp_path) -> Path:
    root = tmp_path / "geo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "Start geometry", {"geo/__init__.py": "", "geo/shapes.py": module(40), "README.md": "# Geometry\n\nAreas.\n",
                                    "deploy/keys.py": f"KEY = '{SECRET}'\n", "logo.png": b"\x89PNG\0\0data",
                                    "vendor/lib.py": "def vendored():\n    return 1\n"})
    for n in range(1, 5):
        commit(root, f"Add the area of triangle {n}", {f"geo/tri{n}.py": f'def triangle_{n}(b, h):\n    """Half of b times h."""\n    return b * h / {n + 1}\n'})
    return root


def by_path(episodes: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in sorted(episodes, key=lambda e: (e["meta"]["path"], e["meta"]["chunk"])):
        out.setdefault(e["meta"]["path"], []).append(e)
    return out


def episodes_of(out: Path, unit: str) -> list[dict]:
    return [e for shard in sorted((out / unit).glob("*.jsonl")) for e in load_episodes(shard)]


def test_text_chunks_cover_each_learnable_file_exactly(geo, tmp_path):
    result = build_experience(geo, tmp_path / "exp", BuildOptions(units=("text",), text_chunk_tokens=64, progress=False))
    files = by_path(episodes_of(tmp_path / "exp", "text"))
    assert set(files) == {"geo/shapes.py", "README.md"} | {f"geo/tri{n}.py" for n in range(1, 5)}  # no secret, binary, vendored
    for path, chunks in files.items():
        assert all(c["messages"][0]["content"] == f"# path: {path}\n" and c["meta"]["format"] == "text" for c in chunks)
        assert "".join(c["messages"][1]["content"] for c in chunks) == (geo / path).read_text()
        assert [c["meta"]["chunk"] for c in chunks] == list(range(len(chunks))) and chunks[-1]["meta"]["chunks"] == len(chunks)
        lines = (geo / path).read_text().splitlines(keepends=True)
        for c in chunks:
            assert "".join(lines[c["meta"]["start_line"] - 1 : c["meta"]["end_line"]]) == c["messages"][1]["content"]
    assert len(files["geo/shapes.py"]) > 5  # ~64 tokens each
    assert result.stats["text"]["made"] == sum(map(len, files.values()))
    again = build_experience(geo, tmp_path / "exp", BuildOptions(units=("text",), text_chunk_tokens=64, progress=False))
    assert again.shards_made == 0 and again.shards_reused == len(files) + 1  # + the empty __init__.py (no chunk)


def test_text_sequences_train_every_token_and_split_long_chunks_at_lines(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    (chunk,) = text_episodes("geo/shapes.py", module(30), "abc", chunk_tokens=100_000)
    seqs, stats = D.encode_all([chunk], tokenizer, None, 200)
    assert len(seqs) > 3 and stats.sequences["text"] == len(seqs) and stats.dropped_too_long == 0
    bos = E.bos_ids(tokenizer)
    body = ""
    for seq in seqs:
        assert len(seq.input_ids) <= 200 and seq.input_ids[: len(bos)] == bos
        assert seq.labels[len(bos):] == seq.input_ids[len(bos):]  # every token after BOS is a target
        text = tokenizer.decode(seq.input_ids[len(bos):])
        assert text.startswith("# path: geo/shapes.py\n")
        body += text.removeprefix("# path: geo/shapes.py\n")
    assert body == module(30)  # pieces at line boundaries, nothing lost or repeated


def test_targets_cap_each_unit_and_evolution_takes_the_newest_commits(geo, tmp_path):
    out = tmp_path / "exp"
    opts = BuildOptions(units=("design", "evolution", "text"), per_file=2, targets={"design": 3, "evolution": 2, "text": 1},
                        text_chunk_tokens=64, progress=False)
    result = build_experience(geo, out, opts)
    design = episodes_of(out, "design")
    assert 3 <= len(design) <= 4  # whole shards (files) until the target is met
    replays = [e for e in episodes_of(out, "evolution") if e["meta"].get("commit")]
    subjects = {e["messages"][1]["content"] for e in replays if e["meta"].get("format") != "completion"}
    assert subjects <= {"Add the area of triangle 4", "Add the area of triangle 3"} and "Add the area of triangle 4" in subjects
    assert len({e["meta"]["path"] for e in episodes_of(out, "text")}) == 1
    assert result.stats["evolution"]["rejected"]["commit skipped: over the unit's target"] >= 1
    again = build_experience(geo, out, opts)
    assert again.shards_made == 0 and again.shards_removed == 0


def long_read_episode(root: Path) -> dict:
    """A real read of a 200-line file, then an answer: the observation dwarfs everything else."""
    ws = Workspace(root)
    tools = make_tools(ws, read_only=True)
    calls = [tool_call("read_file", {"path": "geo/shapes.py"}, "call_1_0")]
    output = call_tool(tools, "read_file", calls[0]["function"]["arguments"])
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Where is area_39?"},
                {"role": "assistant", "content": "Reading the module first.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1_0", "content": output},
                {"role": "assistant", "content": "area_39 is defined at the end of geo/shapes.py."}]
    return new_episode("design", "abc", messages, [t.schema() for t in tools.values()])


def test_a_long_observation_is_cut_in_the_middle_instead_of_dropping_the_episode(geo, tiny_hf_dir):
    from transformers import AutoTokenizer

    from trainer.train import make_renderer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    render = make_renderer(tokenizer)
    episode = long_read_episode(geo)
    (full,), _ = D.encode_all([episode], tokenizer, render, 100_000)
    limit = len(full.input_ids) // 2
    (seq,), stats = D.encode_all([episode], tokenizer, render, limit)
    assert len(seq.input_ids) <= limit and stats.cut == 1 and stats.per_unit()["design"]["observations_cut"] == 1
    assert seq.trained_tokens == full.trained_tokens  # both assistant turns whole
    text = tokenizer.decode(seq.input_ids)
    assert "1: \"\"\"Geometry helpers.\"\"\"" in text and "return w * h + 39" in text  # head and tail kept
    assert "lines cut …]" in text and "area_20(" not in text  # the middle went, with a marker saying so
    assert stats.per_unit()["design"]["length"]["p50"] == len(full.input_ids)  # the length before any cut


def test_repository_text_that_spells_control_tokens_is_learned_as_those_characters(tiny_hf_dir):
    """A file that spells the chat template's control tokens (a prompt builder, a tokenizer test) is text:
    training on it must not teach the model to emit a turn start or the end of text there."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    control = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    assert {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")} <= control
    source = 'PROMPT = "<|im_start|>user\n{question}<|im_end|>\n"\nSTOP = "<|endoftext|>"\n' * 20
    (chunk,) = text_episodes("chat/prompt.py", source, "abc", chunk_tokens=100_000)
    seqs, _ = D.encode_all([chunk], tokenizer, None, 96)
    bos = E.bos_ids(tokenizer)
    assert len(seqs) > 2 and not any(control & set(seq.input_ids[len(bos):]) for seq in seqs)
    assert "".join(tokenizer.decode(seq.input_ids[len(bos):]).removeprefix("# path: chat/prompt.py\n") for seq in seqs) == source


def test_cut_middle_keeps_head_and_tail_and_says_how_many_lines_went():
    text = "\n".join(f"line {i}" for i in range(100))
    cut = E.cut_middle(text, 10)
    assert cut.splitlines() == [f"line {i}" for i in range(5)] + ["[… 90 lines cut …]"] + [f"line {i}" for i in range(95, 100)]
    assert E.cut_middle("a\nb", 10) == "a\nb"


def test_a_unit_that_loses_most_episodes_to_the_length_limit_is_an_error(geo, tiny_hf_dir):
    from transformers import AutoTokenizer

    from trainer.train import make_renderer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    episode = long_read_episode(geo)
    with pytest.raises(SwespotError, match=r"unit 'design' loses 2 of its 2 episodes .* max_len is 120 tokens and its "
                                           r"typical episode renders to \d+ tokens"):
        D.encode_all([episode, episode], tokenizer, make_renderer(tokenizer), 120)
    _, stats = D.encode_all([episode], tokenizer, make_renderer(tokenizer), 120, check=False)
    assert stats.too_long["design"] == 1  # counted, and the caller decides


def test_the_build_table_counts_lengths_with_the_model_tokenizer(geo, tmp_path, tiny_hf_dir, capsys):
    from swespot.cli import main

    out = tmp_path / "exp"
    assert main(["experience", "build", "--repo", str(geo), "--out", str(out), "--units", "design,text", "--targets",
                 "design=4", "--fit", str(tiny_hf_dir), "--max-len", "2048", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["table"]
    assert set(table) == {"design", "text"}
    for row in table.values():
        assert row["episodes"] > 0 and row["dropped_by_length"] == 0 and row["trained_tokens"] > 0
        assert row["length"]["p10"] <= row["length"]["p50"] <= row["length"]["p90"] <= row["length"]["max"]
    from transformers import AutoTokenizer

    fit = fit_report(out, ["design"], AutoTokenizer.from_pretrained(tiny_hf_dir), 2048)
    assert unit_table({}, fit)["design"]["trained_tokens"] == table["design"]["trained_tokens"]
    with pytest.raises(SwespotError, match="unit 'design' loses"):
        fit_report(out, ["design"], AutoTokenizer.from_pretrained(tiny_hf_dir), 64)
