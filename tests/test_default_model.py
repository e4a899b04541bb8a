"""The embedded Gemma 3 270M as a trainable transformers model: it must be the exact weights llama.cpp
serves, tokenised the same way, and trainable (no leftover GGUF quantizer)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from agent.default_model import ensure_default_gguf
from agent.runtime import LlamaRuntime

pytestmark = pytest.mark.slow  # first run dequantizes the model (~50 s); later runs reuse the cache

TEXTS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "line one\r\nline two\r\n\ttabbed = {'a': [1, 2, 3]}\n",
    "emoji 🚀🐍 and 中文字符 and naïve café",
]


@pytest.fixture(scope="module")
def hf_dir():
    from trainer.default_model import prepare_default

    return prepare_default()


@pytest.fixture(scope="module")
def gguf_f32(tmp_path_factory):
    """The default GGUF dequantized to f32 by llama.cpp itself, so both sides compute in f32."""
    import llama_cpp

    out = tmp_path_factory.mktemp("gemma") / "gemma-f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(str(ensure_default_gguf()).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def test_prepared_checkpoint_is_plain_fp32_and_trainable(hf_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.default_model import read_sidecar

    assert read_sidecar(hf_dir)["gguf_sha256"]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([[2, 2063, 10779, 78113]])
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_hf_tokenizer_matches_llama_cpp_on_the_default_model(hf_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    with LlamaRuntime(ensure_default_gguf(), n_ctx=256, n_threads=2) as rt:
        for text in TEXTS:
            assert rt.tokenize(text, add_bos=True) == tok(text).input_ids, text


def test_checkpoint_logits_match_what_llama_cpp_serves(hf_dir, gguf_f32):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(hf_dir)(TEXTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        hf = model(input_ids=ids).logits[0].numpy()
    with LlamaRuntime(gguf_f32, n_ctx=256, n_threads=2, f32_kv=True, logits_all=True) as rt:
        served = rt.logits(ids[0].tolist())
    # ggml evaluates GELU through an f16 table, so f32 agreement is ~1e-2, not 1e-4; the argmax must agree
    assert np.abs(hf - served).max() < 0.05
    assert (hf.argmax(-1) == served.argmax(-1)).all()


def test_the_default_model_keeps_the_chatml_fallback_and_gemma_turns_are_single_control_tokens(hf_dir):
    """The embedded Gemma 3 270M (the pretrained base) ships no chat template, so it keeps the ChatML
    fallback; for a Gemma whose template speaks its turns, the markers of the Gemma fallback are single
    control tokens (not text) in llama.cpp's tokenizer and in the one training loads, so both read the
    same ids."""
    from transformers import AutoTokenizer

    from agent.render import GEMMA_TEMPLATE, Renderer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    with LlamaRuntime(ensure_default_gguf(), n_ctx=256, n_threads=2) as rt:
        own = Renderer.for_template(rt.chat_template, bos_token=rt.bos_token, eos_token=rt.eos_token)
        assert rt.chat_template is None and getattr(tok, "chat_template", None) is None
        assert own.template_source == Renderer.fallback().template_source
        messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
        text = Renderer(GEMMA_TEMPLATE.read_text()).render(messages)
        ids = rt.tokenize(text, add_bos=True)
        assert ids == tok(text).input_ids
        for marker in ("<start_of_turn>", "<end_of_turn>"):
            (token,) = rt.tokenize(marker)
            assert ids.count(token) == 2 and len(rt.tokenize(marker, special=False)) > 1
