"""HF → GGUF conversion checked against the real llama.cpp: tokenization, logits, quantization, errors.

The reference is always transformers on the same checkpoint. Logits are compared with an f32 GGUF and an
f32 KV cache (``type_k=type_v=0``), where llama.cpp and transformers agree to ~1e-5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.errors import SwespotError
from trainer.convert import convert_hf_to_gguf, gguf_arch, gguf_tensor_name, llama_permute, transform_for_gguf
from trainer.tiny import CHAT_TEMPLATE_PATH, build_tiny, init_weights

LOGIT_TOLERANCE = 1e-4
GGML_TYPE_F32 = 0

TOKENIZER_TEXTS = {
    "python": 'def f(x: int) -> str:\n    """Doc."""\n    return f"{x!r}"  # comment\n\n\nclass A(B):\n    pass\n',
    "crlf": "line one\r\nline two\r\n\r\n  indented\r\n",
    "tabs": "\tif x:\n\t\treturn  y\t# tab\n \t mixed",
    "emoji": "ok 👍🏽 done ✅ 🐍🐍 family: 👨‍👩‍👧",
    "cjk": "函数返回值 — 日本語のテキスト、한국어 텍스트",
    "numbers": "12345678 3.14159 1e-10 0xFF 1_000_000",
    "contractions": "I'm sure you'll see it's THEY'RE and we'VE, he'd, I'LL",
    "special_tokens": '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nhm\n</think>\n'
    '<tool_call>\n{"name": "read", "arguments": {}}\n</tool_call><|endoftext|>',
    "whitespace": "a  b   c\n\n\n    \n  end   ",
    "accents": "café naïve Ångström Straße",
}


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def load_llama(path: Path, **kwargs):
    """A llama.cpp model with an f32 KV cache and every position's logits kept."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        n_threads=2,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
        **kwargs,
    )


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = load_llama(path)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def transformers_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def prompt_ids(hf_dir: Path, n: int = 40) -> list[int]:
    """About ``n`` tokens of code followed by a chat turn, so special tokens are in the prompt too."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    code = "import os\n\ndef walk(root):\n    for name in sorted(os.listdir(root)):\n        yield name\n" * 3
    ids = tokenizer(code, add_special_tokens=False)["input_ids"][: n - 4]
    return ids + tokenizer("<|im_start|>user\nhi", add_special_tokens=False)["input_ids"]


def build_variant(out_dir: Path, tokenizer_dir: Path, config) -> Path:
    """A randomly initialised model of another architecture that shares the tiny model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    init_weights(model, seed=1)
    model.save_pretrained(str(out_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out_dir / name)
    return out_dir


def read_metadata(path: Path) -> dict:
    import gguf

    from agent.gguf_meta import field_value

    reader = gguf.GGUFReader(str(path))
    return {key: field_value(field) for key, field in reader.fields.items()}


# ----------------------------------------------------------------------------------------------------
# tokenizer parity and vocabulary metadata
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_hf_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_hf_dir))


@pytest.fixture(scope="module")
def vocab_only(tiny_gguf_f32: Path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(tiny_gguf_f32), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.mark.parametrize("kind", sorted(TOKENIZER_TEXTS))
def test_llama_cpp_token_ids_equal_hf_token_ids(kind: str, hf_tokenizer, vocab_only):
    text = TOKENIZER_TEXTS[kind]
    expected = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocab_only.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected


def test_llama_cpp_tokenizes_a_whole_source_file_like_hf(hf_tokenizer, vocab_only):
    text = Path(__file__).read_text(encoding="utf-8") + Path(CHAT_TEMPLATE_PATH).read_text(encoding="utf-8")
    expected = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocab_only.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected


def test_chat_delimiters_are_hidden_but_tool_markers_are_text_when_llama_cpp_detokenizes(hf_tokenizer, vocab_only):
    """The agent parses generated text: <tool_call> must survive detokenization, <|im_end|> must not."""
    ids = hf_tokenizer("<tool_call>x</tool_call><think>y</think><|im_end|>", add_special_tokens=False)["input_ids"]
    assert vocab_only.detokenize(ids) == b"<tool_call>x</tool_call><think>y</think>"
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>x</tool_call><think>y</think>"


def test_gguf_carries_vocab_special_ids_and_the_chat_template(tiny_gguf_f32: Path, hf_tokenizer):
    import gguf

    meta = read_metadata(tiny_gguf_f32)
    types = meta["tokenizer.ggml.token_type"]
    eot = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert meta["general.architecture"] == "qwen3"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.tokens"]) == len(hf_tokenizer) == meta["qwen3.vocab_size"]
    assert types[hf_tokenizer.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[hf_tokenizer.convert_tokens_to_ids("<tool_call>")] == gguf.TokenType.USER_DEFINED
    assert types[hf_tokenizer.convert_tokens_to_ids("def")] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.eos_token_id"] == eot
    assert meta["tokenizer.ggml.padding_token_id"] == eot
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == Path(CHAT_TEMPLATE_PATH).read_text(encoding="utf-8")
    assert meta["qwen3.attention.key_length"] == 64
    assert meta["qwen3.rope.freq_base"] == 1e6


# ----------------------------------------------------------------------------------------------------
# logits
# ----------------------------------------------------------------------------------------------------


def test_f32_gguf_logits_match_transformers_at_every_position(tiny_hf_dir: Path, tiny_gguf_f32: Path):
    ids = prompt_ids(tiny_hf_dir)
    expected = transformers_logits(tiny_hf_dir, ids)
    got = llama_cpp_logits(tiny_gguf_f32, ids)
    assert len(ids) >= 38
    assert expected.std() > 0.5, "the tiny model's logits should be far from uniform"
    assert np.abs(got - expected).max() < LOGIT_TOLERANCE


def _llama_config(**overrides):
    from transformers import LlamaConfig

    base = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                intermediate_size=768, max_position_embeddings=4096, rms_norm_eps=1e-5)
    return LlamaConfig(**{**base, **overrides})


def _qwen2_config(**overrides):
    from transformers import Qwen2Config

    base = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=768, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    return Qwen2Config(**{**base, **overrides})


VARIANTS = {
    # q/k permutation with grouped-query attention, untied output
    "llama": lambda vocab: _llama_config(vocab_size=vocab, tie_word_embeddings=False),
    # Llama 3.1 rope scaling (rope_freqs tensor) and permuted q/k biases
    "llama-rope-llama3-bias": lambda vocab: _llama_config(
        vocab_size=vocab, attention_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # q/k/v biases, no q/k norms, and a vocab padded past the tokenizer (as real Qwen checkpoints are)
    "qwen2-padded-vocab": lambda vocab: _qwen2_config(vocab_size=vocab + 64),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_architectures_convert_to_matching_logits(variant: str, tiny_hf_dir: Path, tmp_path: Path):
    config = VARIANTS[variant](json.loads((tiny_hf_dir / "config.json").read_text())["vocab_size"])
    hf_dir = build_variant(tmp_path / variant, tiny_hf_dir, config)
    gguf_path = convert_hf_to_gguf(hf_dir, tmp_path / f"{variant}.gguf", outtype="f32")
    ids = prompt_ids(tiny_hf_dir)
    expected = transformers_logits(hf_dir, ids)
    assert np.abs(llama_cpp_logits(gguf_path, ids) - expected).max() < LOGIT_TOLERANCE


def build_llama3_style_tokenizer(out_dir: Path) -> int:
    """A small Llama-3-style tokenizer: Llama 3's split regex, ignore_merges, no normalizer, and a
    post-processor that prepends <|begin_of_text|>. Returns its vocabulary size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.gguf_vocab import LLAMA3_PATTERN
    from trainer.tiny import corpus_files

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1021, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([p.read_text(encoding="utf-8") for p in corpus_files()[:15]], trainer=trainer)
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>").save_pretrained(
        str(out_dir))
    return tokenizer.get_vocab_size()


def test_llama3_style_tokenizer_converts_to_llama_bpe_and_adds_bos_like_hf(tmp_path: Path):
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    vocab = build_llama3_style_tokenizer(tokenizer_dir)
    hf_dir = build_variant(tmp_path / "llama3", tokenizer_dir, _llama_config(vocab_size=vocab, num_hidden_layers=1))
    gguf_path = convert_hf_to_gguf(hf_dir, tmp_path / "llama3.gguf", outtype="f32")
    meta = read_metadata(gguf_path)
    assert (meta["tokenizer.ggml.pre"], meta["tokenizer.ggml.add_bos_token"]) == ("llama-bpe", True)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        for text in TOKENIZER_TEXTS.values():
            text = text.replace("<|im_start|>", "<|eot_id|>")
            assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == hf_tokenizer(text)["input_ids"]
    finally:
        llm.close()


# ----------------------------------------------------------------------------------------------------
# quantized outputs
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("outtype", "file_type"), [("q8_0", 7), ("q4_k_m", 15), ("f16", 1), ("bf16", 32)])
def test_quantized_models_load_and_generate(outtype: str, file_type: int, tiny_hf_dir, tiny_gguf_f32, tmp_path):
    path = convert_hf_to_gguf(tiny_hf_dir, tmp_path / f"tiny-{outtype}.gguf", outtype=outtype)
    assert read_metadata(path)["general.file_type"] == file_type
    assert path.stat().st_size < tiny_gguf_f32.stat().st_size * 0.6
    llm = load_llama(path)
    try:
        out = llm.create_completion("def main():\n", max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] > 0


def test_q8_0_logits_stay_close_to_f32(tiny_hf_dir: Path, tiny_gguf_f32: Path, tiny_gguf_q8: Path):
    ids = prompt_ids(tiny_hf_dir)
    f32, q8 = llama_cpp_logits(tiny_gguf_f32, ids), llama_cpp_logits(tiny_gguf_q8, ids)
    assert np.corrcoef(f32.ravel(), q8.ravel())[0, 1] > 0.99


# ----------------------------------------------------------------------------------------------------
# names and transforms shared with the LoRA exporter
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "hf_name", "gguf_name"),
    [
        ("qwen3", "model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
        ("qwen3", "model.layers.1.self_attn.k_norm.weight", "blk.1.attn_k_norm.weight"),
        ("qwen2", "model.layers.0.self_attn.v_proj.bias", "blk.0.attn_v.bias"),
        ("llama", "model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"),
        ("llama", "base_model.model.model.layers.2.mlp.up_proj.weight", "blk.2.ffn_up.weight"),
        ("gemma3", "model.layers.0.post_attention_layernorm.weight", "blk.0.post_attention_norm.weight"),
        ("gemma3", "model.layers.0.pre_feedforward_layernorm.weight", "blk.0.ffn_norm.weight"),
        ("gemma3", "model.language_model.layers.5.self_attn.o_proj.weight", "blk.5.attn_output.weight"),
        ("qwen3", "lm_head.weight", "output.weight"),
    ],
)
def test_hf_names_map_to_gguf_names(arch: str, hf_name: str, gguf_name: str):
    assert gguf_tensor_name(arch, 6, hf_name) == gguf_name


def test_unknown_tensor_names_are_refused():
    with pytest.raises(SwespotError, match="no GGUF tensor name"):
        gguf_tensor_name("qwen3", 4, "model.layers.0.self_attn.rotary_magic.weight")


def test_gguf_arch_names_the_families():
    assert [gguf_arch({"model_type": t}) for t in ("qwen3", "qwen2", "llama", "gemma3_text")] == [
        "qwen3", "qwen2", "llama", "gemma3"]
    with pytest.raises(SwespotError, match="'gpt2'.*supported: .*qwen3"):
        gguf_arch({"model_type": "gpt2"})


def test_llama_permutation_of_lora_b_equals_permutation_of_the_merged_delta():
    """Permuting rows commutes with B @ A, so the exporter may transform lora_b alone."""
    import torch

    config = {"num_attention_heads": 4, "num_key_value_heads": 2}
    a, b = torch.randn(8, 256), torch.randn(128, 8)
    name = "blk.0.attn_k.weight"
    assert torch.equal(transform_for_gguf("llama", name, b, config) @ a, transform_for_gguf("llama", name, b @ a, config))
    assert torch.equal(transform_for_gguf("qwen3", name, b, config), b)


def test_llama_permutation_interleaves_the_two_halves_of_each_head():
    rows = np.arange(8)  # one head of dim 8: [0 1 2 3 | 4 5 6 7] → pairs (0,4) (1,5) ...
    assert llama_permute(rows, n_head=1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# ----------------------------------------------------------------------------------------------------
# the tiny model itself and bad inputs
# ----------------------------------------------------------------------------------------------------


def test_build_tiny_is_deterministic_given_the_seed(tiny_hf_dir: Path, tmp_path: Path):
    rebuilt = build_tiny(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / name).read_bytes() == (tiny_hf_dir / name).read_bytes(), name


def test_missing_model_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SwespotError, match="model directory not found"):
        convert_hf_to_gguf(tmp_path / "nope", tmp_path / "out.gguf")


def test_directory_without_config_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SwespotError, match="no config.json"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf")


def test_unsupported_architecture_is_named_with_the_supported_ones(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(SwespotError, match=r"unsupported model architecture 'gpt2'; supported: .*llama.*qwen2.*qwen3"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_gemma3_checkpoints_are_refused_for_full_conversion(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(SwespotError, match="conversion of 'gemma3' checkpoints is not supported"):
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf")


def _copy_config_only(tiny_hf_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    shutil.copy(tiny_hf_dir / "config.json", dest / "config.json")
    return dest


def test_sentencepiece_tokenizers_are_refused(tiny_hf_dir: Path, tmp_path: Path):
    hf_dir = _copy_config_only(tiny_hf_dir, tmp_path / "spm")
    (hf_dir / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(SwespotError, match="sentencepiece"):
        convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf")


def test_unrecognised_pre_tokenizer_regex_is_refused(tiny_hf_dir: Path, tmp_path: Path):
    hf_dir = _copy_config_only(tiny_hf_dir, tmp_path / "odd")
    shutil.copy(tiny_hf_dir / "model.safetensors", hf_dir / "model.safetensors")
    tokenizer = json.loads((tiny_hf_dir / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (hf_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(SwespotError, match="unrecognised pre-tokenizer"):
        convert_hf_to_gguf(hf_dir, tmp_path / "out.gguf")
    assert [p.name for p in tmp_path.glob("*.gguf*")] == []


def test_unknown_outtype_is_refused(tiny_hf_dir: Path, tmp_path: Path):
    with pytest.raises(SwespotError, match="unknown output type 'q3'"):
        convert_hf_to_gguf(tiny_hf_dir, tmp_path / "out.gguf", outtype="q3")
