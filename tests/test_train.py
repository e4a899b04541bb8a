"""LoRA training on real agent episodes with the tiny model: the label mask, a real loss decrease, an
export that llama.cpp applies exactly, resumption after a kill, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.episode import save_episodes
from agent.errors import SwespotError
from agent.loop import Agent, Budget
from agent.models import ScriptedModel
from agent.tools import Workspace, make_tools
from trainer import attention as A
from trainer import batches as B
from trainer import data as D
from trainer.config import config_for
from trainer.train import make_renderer, train

ROOT = Path(__file__).resolve().parents[1]
MODULE = '''"""Inventory of a small shop."""


def price_of(sku):
    """Unit price of ``sku`` in cents."""
    return PRICES[sku]


def restock(sku, count):
    STOCK[sku] = STOCK.get(sku, 0) + count
    return STOCK[sku]
'''


def call(name: str, **args) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


@pytest.fixture(scope="module")
def experience(tmp_path_factory) -> Path:
    """Episodes made by driving the real agent tools on a fixture repository (observations are real)."""
    root = tmp_path_factory.mktemp("shop")
    (root / "shop").mkdir()
    (root / "shop" / "inventory.py").write_text(MODULE)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    episodes = []
    for symbol, answer in [("price_of", "price_of in shop/inventory.py returns the unit price of a sku in cents."),
                           ("restock", "restock in shop/inventory.py adds count to the stock of a sku and returns it.")]:
        for question in (f"What does {symbol} do?", f"Where is {symbol} defined?", f"Explain {symbol}."):
            turns = [call("find_definition", symbol=symbol), call("read_file", path="shop/inventory.py"),
                     call("submit", summary=answer)]
            ws = Workspace(root)
            result = Agent(ScriptedModel(turns), ws, Budget(max_steps=5), tools=make_tools(ws, read_only=True), unit="design").run(question)
            episodes.append(result.episode)
    data = tmp_path_factory.mktemp("experience")
    save_episodes(data / "design" / "shard-0.jsonl", episodes)
    return data


def tiny_config(data: Path, out: Path, base: Path, **over):
    return config_for("tiny", data=str(data), out=str(out), base=str(base), **over)


def test_the_loss_mask_covers_only_what_the_assistant_wrote(experience, tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    episode = D.read_episodes(experience)[0]
    seq, = D.encode_all([episode], tokenizer, make_renderer(tokenizer), 2048)[0]
    trained = tokenizer.decode([t for t, label in zip(seq.input_ids, seq.labels) if label != D.IGNORE])
    untrained = tokenizer.decode([t for t, label in zip(seq.input_ids, seq.labels) if label == D.IGNORE])
    assert '"name": "find_definition"' in trained and "returns the unit price" in trained
    assert trained.count("<|im_end|>") == 3  # each assistant turn's end is learned
    for observation in ("shop/inventory.py:4-6 function price_of", "What does price_of do?", "You are SWE-Spot"):
        assert observation in untrained and observation not in trained
    assert "<|im_start|>assistant" not in trained


def test_the_sparse_loss_equals_the_models_own_loss_on_real_batches(experience, tiny_hf_dir):
    """trained_token_loss projects onto the vocabulary only where a trained token is predicted; it must
    give the model's own loss (and gradient) on padded, masked batches of real episodes."""
    import torch

    from trainer.model_io import load_model_and_tokenizer
    from trainer.train import trained_token_loss

    model, tokenizer = load_model_and_tokenizer(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    batch = D.collate(seqs[:3], tokenizer.pad_token_id or 0)
    full = model(**batch).loss
    full.backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    sparse = trained_token_loss(model, batch)
    sparse.backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    assert float(sparse) == pytest.approx(float(full), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, got))


def test_completion_form_episodes_train_plain_text_with_the_loss_on_the_target(tiny_hf_dir):
    """Inline completion prompts the model with plain text: such episodes are encoded as prefix + target
    (no chat template), the loss on the target, the prefix cut from its start to fit."""
    from transformers import AutoTokenizer

    from agent.episode import completion_episode

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    prefix = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n\n" for i in range(40)) + "def price_of(sku):\n"
    episode = completion_episode("implementation", "abc", prefix, "    return PRICES[sku]")
    seq, = D.encode_all([episode], tokenizer, make_renderer(tokenizer), 2048)[0]
    trained = tokenizer.decode([t for t, label in zip(seq.input_ids, seq.labels) if label != D.IGNORE])
    assert trained == "    return PRICES[sku]"
    assert "<|im_start|>" not in tokenizer.decode(seq.input_ids)  # no chat template
    assert tokenizer.decode(seq.input_ids).endswith("def price_of(sku):\n    return PRICES[sku]")
    short, = D.encode_all([episode], tokenizer, make_renderer(tokenizer), 64)[0]
    assert len(short.input_ids) == 64
    assert tokenizer.decode([t for t, label in zip(short.input_ids, short.labels) if label != D.IGNORE]) == "    return PRICES[sku]"
    assert len(episode["messages"][0]["content"]) <= 3000 and episode["messages"][0]["content"].startswith("def helper_")


def test_long_episodes_have_observations_cut_or_are_dropped(experience, tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    episodes = D.read_episodes(experience)
    full = D.encode_all(episodes[:1], tokenizer, make_renderer(tokenizer), 4096)[0][0]
    limit = len(full.input_ids) - 5
    seqs, stats = D.encode_all(episodes[:1], tokenizer, make_renderer(tokenizer), limit)
    assert stats.cut == 1 and stats.split == 0 and len(seqs[0].input_ids) <= limit
    assert seqs[0].trained_tokens == full.trained_tokens  # the middle of an observation went, no trained token
    assert "lines cut" in tokenizer.decode(seqs[0].input_ids)
    calls = lambda seq: tokenizer.decode(seq.input_ids).count("</tool_call><|im_end|>")  # noqa: E731
    assert calls(seqs[0]) == calls(full)  # every call whole
    _, stats = D.encode_all(episodes[:1], tokenizer, make_renderer(tokenizer), 64, check=False)
    assert stats.dropped_too_long == 1


def mean_loss(hf_dir: Path, adapter: Path | None, sequences) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    losses = []
    with torch.no_grad():
        for seq in sequences:
            batch = D.collate([seq], 0)
            losses.append(float(model(**batch).loss))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def trained(experience, tiny_hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    result = train(tiny_config(experience, out, tiny_hf_dir, steps=20), commit="c0ffee", progress=False)
    return out, result


def test_a_few_dozen_steps_lower_the_loss_on_the_episodes(trained, experience, tiny_hf_dir):
    from transformers import AutoTokenizer

    out, result = trained
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    before, after = mean_loss(tiny_hf_dir, None, seqs), mean_loss(tiny_hf_dir, out, seqs)
    assert after < 0.5 * before, (before, after)
    curve = [loss for _, loss in result.report["loss_curve"]]
    assert len(curve) == 20 and curve[-1] < curve[0]


def test_output_holds_adapter_gguf_manifest_and_report(trained):
    out, result = trained
    for name in ("adapter_model.safetensors", "adapter_config.json", "adapter.gguf", "manifest.json", "train_report.json"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["commit"] == "c0ffee"
    assert manifest["data"]["sequences"] == {"design": 6}
    assert manifest["export"]["verified"] == "exact" and manifest["export"]["max_logit_diff"] < 1e-3
    assert len(manifest["base"]["sha256"]) == 64
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 20 and report["tokens_per_s"] > 0 and report["peak_memory_mb"] > 0
    assert not (out / "checkpoints").exists()


def test_exported_adapter_logits_in_llama_cpp_match_peft(trained, experience, tiny_hf_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.runtime import LlamaRuntime

    out, result = trained
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    ids = D.encode_all(D.read_episodes(experience)[:1], tokenizer, make_renderer(tokenizer), 2048)[0][0].input_ids[:120]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32), out).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    with LlamaRuntime(result.manifest["export"]["base_gguf"], n_ctx=256, f32_kv=True, logits_all=True, n_threads=2) as rt:
        rt.set_adapters({rt.load_adapter(out / "adapter.gguf"): 1.0})
        got = rt.logits(ids)
    assert np.abs(got - expected).max() < 1e-4


# ``swespot train`` with train's checkpoint writer wrapped so that the process kills itself (SIGKILL)
# right after its second checkpoint: a kill -9 at a fixed point of the training loop, not a race between
# a watching test and a fast machine
KILL_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
import trainer.train as T
saved = []
write = T.save_checkpoint

def write_then_die(*args, **kwargs):
    path = write(*args, **kwargs)
    saved.append(path)
    if len(saved) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

T.save_checkpoint = write_then_die
from swespot.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_a_kill_continues_from_the_checkpoint(experience, tiny_hf_dir, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"checkpoint_every": 2}))
    out = tmp_path / "run"
    args = ["train", "--profile", "tiny", "--data", str(experience), "--base", str(tiny_hf_dir), "--out", str(out), "--steps", "10",
            "--config", str(settings), "--no-export", "--json"]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoints" / "step-0000004" / "state.json").exists() and not (out / "adapter_model.safetensors").exists()
    resumed = subprocess.run([sys.executable, "-m", "swespot", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-0000004" in resumed.stderr
    report = json.loads(resumed.stdout)["report"]
    assert report["steps"] == 10
    straight = train(tiny_config(experience, tmp_path / "straight", tiny_hf_dir, steps=10, export_gguf=False), progress=False)
    assert report["loss_curve"] == straight.report["loss_curve"]  # the same run, as if never killed


def test_bad_inputs_fail_with_clear_messages(experience, tiny_hf_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SwespotError, match="no episodes in"):
        train(tiny_config(empty, tmp_path / "o1", tiny_hf_dir, steps=1), progress=False)
    with pytest.raises(SwespotError, match="base model not found"):
        train(tiny_config(experience, tmp_path / "o2", tmp_path / "no-such-model", steps=1), progress=False)
    with pytest.raises(SwespotError, match="unknown unit"):
        tiny_config(experience, tmp_path / "o3", tiny_hf_dir, steps=1, unit_weights={"gossip": 1.0})
    with pytest.raises(SwespotError, match="loss_vocab must be"):
        tiny_config(experience, tmp_path / "o3", tiny_hf_dir, steps=1, loss_vocab=-1)
    # a checkpoint made with one tokenizer must not be resumed with another
    out = tmp_path / "o4"
    train(tiny_config(experience, out, tiny_hf_dir, steps=4, export_gguf=False), progress=False, stop_after=2)
    other = tmp_path / "other-base"
    shutil.copytree(tiny_hf_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|brand_new|>"])
    tok.save_pretrained(other)
    with pytest.raises(SwespotError, match="another tokenizer"):
        train(tiny_config(experience, out, other, steps=4, export_gguf=False), progress=False)


def test_continuing_from_an_adapter_mixes_in_replay_data(trained, experience, tiny_hf_dir, tmp_path):
    import random

    out, _ = trained
    cfg = tiny_config(experience, tmp_path / "continued", tiny_hf_dir, steps=3, export_gguf=False,
                      init_adapter=str(out), replay_data=str(experience), replay_share=0.5, loss_vocab=200)
    result = train(cfg, progress=False)
    assert result.report["steps"] == 3
    # the softmax ran over the data's and replay's tokens and the 200 lowest ids, not the whole vocabulary
    from transformers import AutoConfig

    assert 200 < result.report["loss_vocab_size"] < AutoConfig.from_pretrained(tiny_hf_dir).vocab_size
    # the continued run starts from the trained adapter: its first loss is already low
    assert result.report["loss_curve"][0][1] < trained[1].report["loss_curve"][0][1] / 2
    # an epoch holds the unit's sequences plus as many replayed ones (share 0.5)
    seqs = [D.Sequence([1, 2], [1, 2], "design", str(i)) for i in range(6)]
    epoch = B.mix(seqs, {"design": 1.0}, seqs[:2], 0.5, random.Random(0))
    assert len(epoch) == 12
    assert len(B.mix(seqs, {"design": 0.5}, [], 0.0, random.Random(0))) == 3


def test_max_trained_tokens_stops_at_the_budget_and_resumes_to_the_same_stop(experience, tiny_hf_dir, tmp_path):
    """A budget in trained (target) tokens: training stops at the first step that reaches it, the
    learning-rate schedule ends there, and a run stopped half-way resumes to the same stop and curve."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    one_pass = sum(s.trained_tokens for s in seqs)
    budget = int(one_pass * 1.5)  # more than one epoch: the budget, not epochs, decides
    over = dict(max_trained_tokens=budget, export_gguf=False, batch_tokens=2048)
    straight = train(tiny_config(experience, tmp_path / "straight", tiny_hf_dir, **over), progress=False).report
    assert straight["trained_tokens"] >= budget and straight["steps"] == straight["total_steps"] > 2
    assert straight["max_trained_tokens"] == budget and straight["trained_tokens_per_min"] > 0
    assert straight["tokens"] > straight["trained_tokens"]  # tokens seen include the untrained prompt
    # one step fewer would not have reached the budget
    short = train(tiny_config(experience, tmp_path / "short", tiny_hf_dir, steps=straight["steps"] - 1, **over), progress=False)
    assert short.report["trained_tokens"] < budget
    # stopped after two steps, then resumed: the same stop and the same losses
    out = tmp_path / "resumed"
    stopped = train(tiny_config(experience, out, tiny_hf_dir, **over), progress=False, stop_after=2)
    assert stopped.report["interrupted"]
    resumed = train(tiny_config(experience, out, tiny_hf_dir, **over), progress=False).report
    assert (resumed["steps"], resumed["trained_tokens"]) == (straight["steps"], straight["trained_tokens"])
    assert resumed["loss_curve"] == straight["loss_curve"]
    with pytest.raises(SwespotError, match="max_trained_tokens must be positive"):
        tiny_config(experience, tmp_path / "bad", tiny_hf_dir, max_trained_tokens=0)


def test_one_pass_within_a_floor_and_a_cap_of_steps(experience, tiny_hf_dir, tmp_path):
    """full on a CPU trains one pass over its experience, but at least min_steps (a small experience is
    repeated) and at most max_steps (a large one is cut for time); a given --steps wins over both."""
    from transformers import AutoTokenizer

    from trainer import schedule

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    cfg = tiny_config(experience, tmp_path / "o", tiny_hf_dir, epochs=1.0, batch_tokens=2048)
    one_pass = len(B.epoch_batches(seqs, [], cfg, 0))
    assert one_pass >= 2 and schedule.total_steps(cfg, seqs, [], 1) == one_pass
    floor = tiny_config(experience, tmp_path / "o", tiny_hf_dir, epochs=1.0, batch_tokens=2048, min_steps=one_pass + 2)
    cap = tiny_config(experience, tmp_path / "o", tiny_hf_dir, epochs=1.0, batch_tokens=2048, min_steps=1, max_steps=one_pass - 1)
    assert (schedule.total_steps(floor, seqs, [], 1), schedule.total_steps(cap, seqs, [], 1)) == (one_pass + 2, one_pass - 1)
    given = tiny_config(experience, tmp_path / "o", tiny_hf_dir, steps=5, min_steps=one_pass + 2, max_steps=one_pass + 2)
    assert schedule.total_steps(given, seqs, [], 1) == 5
    # the floor trains into a second pass, and the schedule decays to its last step
    report = train(tiny_config(experience, tmp_path / "floor", tiny_hf_dir, epochs=1.0, batch_tokens=2048,
                               min_steps=one_pass + 1, export_gguf=False), progress=False).report
    assert report["steps"] == report["total_steps"] == one_pass + 1
    with pytest.raises(SwespotError, match="the floor not above the cap"):
        tiny_config(experience, tmp_path / "bad", tiny_hf_dir, min_steps=9, max_steps=3)


def separate_and_packed(model, seqs):
    """The token-weighted loss of the sequences run one by one, the loss of their packed row, and the
    gradients of both."""
    from trainer.train import trained_token_loss

    model.zero_grad()
    weights = [s.trained_tokens for s in seqs]
    separate = sum(trained_token_loss(model, D.collate([s], 0)) * w for s, w in zip(seqs, weights)) / sum(weights)
    separate.backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    packed = trained_token_loss(model, B.collate_packed(seqs, 2048))
    packed.backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    return float(separate), float(packed), expected, got


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_gives_the_loss_and_gradient_of_its_sequences_run_separately(experience, tiny_hf_dir, attention):
    """Packing puts a batch's common prefix once and each sequence's rest after it in one row, positions
    restarting per sequence and a block mask: the loss and gradient must be those of the sequences run
    one by one, on the tiny model and on a small Gemma 3 whose sliding window is shorter than the
    sequences (so the sliding-window layers are exercised)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    batch = B.packed_batches(seqs, 4096, 2048, __import__("random").Random(0))[0]
    rows = B.collate_packed(batch, 2048)
    assert len(batch) > 2 and rows["input_ids"].shape[0] == 2 and (rows["segment_ids"] < 0).any()  # two rows, one padded
    assert int((rows["segment_ids"][0] == 0).sum()) > 100  # the system prompt is shared
    assert rows["input_ids"].numel() < sum(len(s.input_ids) for s in batch)
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32, attn_implementation=attention)
    window = 48
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=window, layer_types=["sliding_attention", "full_attention"],
        attn_implementation=attention)).float()
    assert max(len(s.input_ids) for s in batch) > 4 * window
    for model in (tiny, gemma):
        separate, packed, expected, got = separate_and_packed(model, batch)
        assert packed == pytest.approx(separate, abs=1e-4), model.config.model_type
        assert len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, got))
    # the window matters here: without it the same row gives another loss
    gemma.config.sliding_window = 100_000
    assert abs(separate_and_packed(gemma, batch)[1] - packed) > 1e-4


def test_the_chunked_loss_equals_the_plain_loss_and_its_gradient():
    """losses.linear_cross_entropy projects and reduces a few rows at a time and makes the gradient in the
    forward pass; it must equal cross_entropy over the full logits, ignored targets included, for the
    hidden states and for the weight, whether the rows fill the last chunk or not."""
    import torch

    from trainer.losses import linear_cross_entropy

    torch.manual_seed(0)
    hidden, weight = torch.randn(50, 16, requires_grad=True), torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    targets[::7] = D.IGNORE
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=D.IGNORE)
    expected = torch.autograd.grad(plain * 3, (hidden, weight))
    for rows in (1, 7, 50, 64):
        chunked = linear_cross_entropy(hidden, weight, targets, chunk_elements=rows * 300)
        got = torch.autograd.grad(chunked * 3, (hidden, weight))
        assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, got))
    with torch.no_grad():
        assert float(linear_cross_entropy(hidden, weight, targets)) == pytest.approx(float(plain), rel=1e-6)


def test_packed_text_rows_give_the_models_own_loss_in_chunks(tiny_hf_dir, monkeypatch):
    """The repository as text trains every token, so its vocabulary projection covers every position:
    the packed loss, projected in chunks of 64 rows, must be the model's own loss (full logits, shifted
    labels) of the chunks run one by one, with the same gradient."""
    import torch

    import trainer.losses
    from trainer.model_io import load_model_and_tokenizer
    from trainer.train import trained_token_loss

    model, tokenizer = load_model_and_tokenizer(tiny_hf_dir)
    source = (Path(D.__file__)).read_text()
    episode = {"id": "t", "unit": "text", "messages": [{"role": "user", "content": "# path: trainer/data.py\n"},
                                                      {"role": "assistant", "content": source[:6000]}],
               "meta": {"format": "text"}}
    seqs, _ = D.encode_all([episode], tokenizer, make_renderer(tokenizer), 512, check=False)
    assert len(seqs) >= 3 and all(s.trained_tokens == len(s.input_ids) - 1 for s in seqs)  # all but BOS
    model.zero_grad()
    weights = [s.trained_tokens for s in seqs]
    own = sum(model(**D.collate([s], 0)).loss * w for s, w in zip(seqs, weights)) / sum(weights)
    own.backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    monkeypatch.setattr(trainer.losses, "CHUNK_ELEMENTS", 64 * model.config.vocab_size)
    rows = B.collate_packed(seqs, 1024)
    assert len(rows["targets"]) > 3 * 64  # several chunks
    packed = trained_token_loss(model, rows)
    packed.backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    assert packed.item() == pytest.approx(own.item(), rel=1e-5)
    assert len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, got))


def test_blocked_attention_is_the_same_attention(experience, tiny_hf_dir, monkeypatch):
    """attention.blocked_attention runs sdpa per block of queries over the keys the mask lets them see; on
    packed rows (a shared prefix, a sliding window shorter than the row) the loss and gradient must not
    change, and it must really skip work: fewer query×key scores than the full square. Eager attention
    is left as it is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    import trainer.train as T

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    rows = B.collate_packed(B.packed_batches(seqs, 4096, 2048, __import__("random").Random(0))[0], 2048)
    width = rows["input_ids"].shape[1]
    torch.manual_seed(0)
    tiny = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=48, layer_types=["sliding_attention", "full_attention"],
        attn_implementation="sdpa")).float()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for model, most in ((tiny, 0.75), (gemma, 0.5)):
        model.zero_grad()
        plain = T.trained_token_loss(model, rows)
        plain.backward()
        expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        scores = []

        def counting(query, key, *args, scores=scores, **kwargs):  # this iteration's list, bound now
            scores.append(query.shape[2] * key.shape[2])
            return sdpa(query, key, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
        assert A.blocked_attention(model, 32) and A.attention_kind(model.config) == "sdpa" and A.packable(model)
        blocked = T.trained_token_loss(model, rows)
        blocked.backward()
        monkeypatch.undo()
        got = [p.grad for p in model.parameters() if p.grad is not None]
        assert blocked.item() == pytest.approx(plain.item(), abs=1e-6), model.config.model_type
        assert len(got) == len(expected) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, got))
        layers = model.config.num_hidden_layers
        assert len(scores) > layers and sum(scores) < most * layers * width * width, (model.config.model_type, sum(scores))
    eager = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32, attn_implementation="eager")
    assert not A.blocked_attention(eager) and eager.config._attn_implementation == "eager"


def test_loss_vocabulary_is_the_softmax_over_its_part_of_the_vocabulary(experience, tiny_hf_dir):
    """loss_vocab: the packed loss over the data's tokens and the lowest ids is the cross-entropy of the
    logits at those ids only (targets renumbered); with every id kept it is the whole loss, with fewer it
    is lower (less mass to share). Evaluation (no vocab) is untouched."""
    import torch

    import trainer.train as T
    from trainer.losses import LossVocabulary
    from trainer.model_io import load_model_and_tokenizer
    from trainer.train import trained_token_loss

    model, tokenizer = load_model_and_tokenizer(tiny_hf_dir)
    assert not getattr(model.config, "final_logit_softcapping", None)
    seqs, _ = D.encode_all(D.read_episodes(experience), tokenizer, make_renderer(tokenizer), 2048)
    rows = B.collate_packed(B.packed_batches(seqs, 4096, 2048, __import__("random").Random(0))[0], 2048)
    size = model.config.vocab_size
    used = {int(i) for s in seqs for i in s.input_ids}
    assert len(used) < size // 2
    full = trained_token_loss(model, rows)
    assert trained_token_loss(model, rows, LossVocabulary(used, size, size)).item() == pytest.approx(full.item(), rel=1e-6)
    vocab = LossVocabulary(used, 100, size)
    assert set(range(100)) | used == set(vocab.ids.tolist())
    part = trained_token_loss(model, rows, vocab)
    with torch.no_grad():
        config = model.config
        masks = T.packed_attention_masks(config, rows["position_ids"], rows["segment_ids"], torch.float32)
        out = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"], attention_mask=masks,
                    output_hidden_states=True)
        hidden = out.hidden_states[-1][rows["predict_row"], rows["predict_at"]]
        logits = model.get_output_embeddings()(hidden)[:, vocab.ids]
        targets = torch.tensor([vocab.ids.tolist().index(int(t)) if t != D.IGNORE else D.IGNORE for t in rows["targets"]])
        expected = torch.nn.functional.cross_entropy(logits, targets)
    assert part.item() == pytest.approx(expected.item(), rel=1e-5) and part.item() < full.item()
    part.backward()  # the LoRA-free tiny model: the gradient reaches the body through the narrowed head
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    with pytest.raises(ValueError, match="outside the loss vocabulary"):
        LossVocabulary(set(), 100, size).targets(torch.tensor([D.IGNORE, size - 1]))


def test_bf16_base_trains_fp32_lora_on_a_bf16_base_and_exports_against_the_base_as_loaded(experience, tiny_hf_dir, tmp_path):
    """precision "bf16-base": the frozen base's weights in bf16 while training (the LoRA weights, the
    optimizer and the softmax stay fp32), the base's own fp32 weights back before the export, whose
    llama.cpp check then compares the same model as with fp32 training."""
    import torch

    from trainer.model_io import load_model_and_tokenizer
    from trainer.train import _with_lora, frozen_in_bf16, restore_fp32

    cfg = tiny_config(experience, tmp_path / "unused", tiny_hf_dir, steps=1)
    model = _with_lora(cfg, load_model_and_tokenizer(tiny_hf_dir)[0])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    kept = frozen_in_bf16(model)
    params = dict(model.named_parameters())
    assert kept and all(params[n].dtype == (torch.float32 if params[n].requires_grad else torch.bfloat16) for n in params)
    restore_fp32(kept)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())

    runs = {}
    for precision in ("fp32", "bf16-base"):
        out = tmp_path / precision
        runs[precision] = train(tiny_config(experience, out, tiny_hf_dir, steps=4, precision=precision), progress=False)
    half, full = runs["bf16-base"], runs["fp32"]
    assert (half.report["precision"], full.report["precision"]) == ("bf16-base", "fp32")
    first = [run.report["loss_curve"][0][1] for run in (half, full)]
    assert first[0] == pytest.approx(first[1], rel=2e-2)  # the same model, its weights rounded to bf16
    assert half.report["loss_curve"][-1][1] < first[0]
    export = half.manifest["export"]
    assert export["verified"] == "exact" and export["max_logit_diff"] < 1e-3


def test_the_loss_vocabularys_head_rows_are_kept_while_the_frozen_head_is_unchanged():
    """LossVocabulary.head slices (and casts) a frozen head once and reuses the rows until the weight
    changes in place or is replaced; a trained head is sliced afresh every time."""
    import torch

    from trainer.losses import LossVocabulary

    weight = torch.nn.Parameter(torch.randn(50, 8), requires_grad=False)
    vocab = LossVocabulary({40, 45}, 10, 50)
    rows, _ = vocab.head(weight, None, torch.float64)
    assert rows.dtype == torch.float64 and torch.equal(rows, weight[vocab.ids].double())
    assert vocab.head(weight, None, torch.float64)[0] is rows
    with torch.no_grad():
        weight.add_(1.0)  # an in-place change
    changed, _ = vocab.head(weight, None, torch.float64)
    assert changed is not rows and torch.equal(changed, weight[vocab.ids].double())
    weight.data = torch.zeros(50, 8)  # replaced, as restore_fp32 does
    assert bool((vocab.head(weight, None, torch.float64)[0] == 0).all())
    trained = torch.nn.Parameter(torch.randn(50, 8))
    assert vocab.head(trained, None)[0] is not vocab.head(trained, None)[0]


def test_auto_precision_uses_a_bf16_base_only_on_a_cpu_with_bf16_matrix_instructions(monkeypatch):
    import torch

    from trainer.model_io import pick_precision

    for avx512_bf16, amx, expected in ((False, False, "fp32"), (True, False, "bf16-base"), (False, True, "bf16-base")):
        # the hardware boundary: what the CPU offers
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert pick_precision("auto", "cpu") == expected
        assert (pick_precision("fp32", "cpu"), pick_precision("bf16-base", "cpu")) == ("fp32", "bf16-base")
    assert config_for("tiny", data="d", out="o").precision == "fp32"  # the test model: exact comparisons
