"""LoRA adapters trained with peft, exported to GGUF, applied and hot-swapped by llama.cpp: the logits
must be those of transformers+peft (f32 base, f32 KV cache: max abs diff < 1e-4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AdapterMismatch, SwespotError
from agent.runtime import LlamaRuntime, file_sha256
from trainer.lora_export import export_lora_to_gguf

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRAIN_TEXT = (
    "def parse_config(path):\n    with open(path) as fh:\n        return json.load(fh)\n\n"
    "class Cache:\n    def __init__(self):\n        self.items = {}\n"
)
PROBE_TEXT = "import os\n\ndef main(argv):\n    for name in argv:\n        print(os.path.basename(name))\n"
TOL = 1e-4

VARIANTS = {
    "plain": dict(r=8, lora_alpha=16),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True),
    "pattern": dict(r=8, lora_alpha=16, rank_pattern={"q_proj": 4, "down_proj": 2}, alpha_pattern={"o_proj": 3, "up_proj": 40}),
}


def _tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


def train_lora(hf_dir: Path, out_dir: Path, seed: int, steps: int = 4, **lora_kwargs) -> Path:
    """A few real optimisation steps (B starts at zero, so the adapter only differs after training)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(target_modules=TARGETS, lora_dropout=0.0, **lora_kwargs))
    ids = _tokenizer(hf_dir)(TRAIN_TEXT, return_tensors="pt").input_ids
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    peft_model.save_pretrained(out_dir)
    return out_dir


def hf_logits(hf_dir: Path, adapters: dict[str, Path] | None = None) -> np.ndarray:
    """transformers(+peft) logits on the probe; several adapters are active together when given."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    if adapters:
        names = list(adapters)
        model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
        model.base_model.set_adapter(names)
    ids = _tokenizer(hf_dir)(PROBE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0].numpy()


@pytest.fixture(scope="module")
def adapters(tiny_hf_dir, tiny_gguf_f32, tmp_path_factory) -> dict[str, Path]:
    """Each variant trained and exported once: {variant: adapter.gguf}; the peft folder sits beside it."""
    root = tmp_path_factory.mktemp("loras")
    sha = file_sha256(tiny_gguf_f32)
    out = {}
    for seed, (name, kwargs) in enumerate(VARIANTS.items()):
        peft_dir = train_lora(tiny_hf_dir, root / name, seed=seed, **kwargs)
        out[name] = export_lora_to_gguf(peft_dir, tiny_hf_dir, root / f"{name}.gguf", base_gguf_sha256=sha).out_path
    return out


@pytest.fixture(scope="module")
def runtime(tiny_gguf_f32):
    rt = LlamaRuntime(tiny_gguf_f32, n_ctx=256, n_threads=2, f32_kv=True, logits_all=True)
    yield rt
    rt.close()


def llama_logits(rt: LlamaRuntime) -> np.ndarray:
    return rt.logits(rt.tokenize(PROBE_TEXT))


def test_tokenization_of_the_probe_matches_so_logits_are_comparable(runtime, tiny_hf_dir):
    assert runtime.tokenize(PROBE_TEXT) == _tokenizer(tiny_hf_dir)(PROBE_TEXT).input_ids


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_adapter_gives_the_logits_of_transformers_and_peft(variant, adapters, runtime, tiny_hf_dir):
    expected = hf_logits(tiny_hf_dir, {variant: adapters[variant].with_suffix("")})
    base = hf_logits(tiny_hf_dir)
    # the adapter must matter, or the comparison proves nothing
    assert np.abs(expected - base).max() > 100 * TOL
    runtime.set_adapters({runtime.load_adapter(adapters[variant], name=variant): 1.0})
    try:
        got = llama_logits(runtime)
    finally:
        runtime.set_adapters(None)
    assert np.abs(got - expected).max() < TOL


def test_two_active_adapters_add_up_like_peft(adapters, runtime, tiny_hf_dir):
    expected = hf_logits(tiny_hf_dir, {"plain": adapters["plain"].with_suffix(""), "rslora": adapters["rslora"].with_suffix("")})
    runtime.set_adapters({runtime.load_adapter(adapters["plain"], name="plain"): 1.0, runtime.load_adapter(adapters["rslora"], name="rslora"): 1.0})
    try:
        got = llama_logits(runtime)
    finally:
        runtime.set_adapters(None)
    assert np.abs(got - expected).max() < TOL


def test_swapping_a_b_none_a_matches_fresh_loads(adapters, tiny_gguf_f32):
    def fresh(adapter: Path | None) -> np.ndarray:
        with LlamaRuntime(tiny_gguf_f32, n_ctx=256, n_threads=2, f32_kv=True, logits_all=True) as rt:
            if adapter is not None:
                rt.set_adapters({rt.load_adapter(adapter): 1.0})
            return llama_logits(rt)

    want = {"a": fresh(adapters["plain"]), "b": fresh(adapters["pattern"]), None: fresh(None)}
    assert np.abs(want["a"] - want["b"]).max() > 100 * TOL
    with LlamaRuntime(tiny_gguf_f32, n_ctx=256, n_threads=2, f32_kv=True, logits_all=True) as rt:
        rt.load_adapter(adapters["plain"], name="a")
        rt.load_adapter(adapters["pattern"], name="b")
        for step in ["a", "b", None, "a"]:
            rt.set_adapters({step: 1.0} if step else None)
            assert rt.active_adapters == ([(step, 1.0)] if step else [])
            assert np.abs(llama_logits(rt) - want[step]).max() < 1e-5, f"after swapping to {step}"


def test_generation_changes_after_a_swap_without_stale_cache(adapters, tiny_gguf_f32):
    """The KV/prefix cache must be reset on a swap: the same prompt after a swap gives the fresh result."""
    prompt = "def main():\n"
    with LlamaRuntime(tiny_gguf_f32, n_ctx=256, n_threads=2) as rt:
        base_text = rt.complete(prompt, max_tokens=8).text
        rt.set_adapters({rt.load_adapter(adapters["plain"]): 1.0})
        adapted_text = rt.complete(prompt, max_tokens=8).text
    with LlamaRuntime(tiny_gguf_f32, n_ctx=256, n_threads=2) as rt:
        rt.set_adapters({rt.load_adapter(adapters["plain"]): 1.0})
        assert rt.complete(prompt, max_tokens=8).text == adapted_text
        rt.set_adapters(None)
        assert rt.complete(prompt, max_tokens=8).text == base_text


def test_dora_is_refused_with_a_clear_message(tiny_hf_dir, tmp_path):
    peft_dir = train_lora(tiny_hf_dir, tmp_path / "dora", seed=0, steps=1, r=4, lora_alpha=8, use_dora=True)
    with pytest.raises(SwespotError, match="DoRA"):
        export_lora_to_gguf(peft_dir, tiny_hf_dir, tmp_path / "dora.gguf")
    assert not (tmp_path / "dora.gguf").exists()


def test_modules_to_save_are_refused(tiny_hf_dir, tmp_path):
    import json

    peft_dir = train_lora(tiny_hf_dir, tmp_path / "mts", seed=0, steps=1, r=4, lora_alpha=8)
    cfg_path = peft_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["modules_to_save"] = ["lm_head"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SwespotError, match="modules_to_save"):
        export_lora_to_gguf(peft_dir, tiny_hf_dir, tmp_path / "mts.gguf")


def test_adapter_for_another_base_is_refused_on_load(adapters, tiny_hf_dir, tiny_gguf_f32, tmp_path):
    peft_dir = adapters["plain"].with_suffix("")
    other = export_lora_to_gguf(peft_dir, tiny_hf_dir, tmp_path / "other.gguf", base_gguf_sha256="0" * 64).out_path
    with LlamaRuntime(tiny_gguf_f32, n_ctx=128, n_threads=2) as rt:
        with pytest.raises(AdapterMismatch, match="another base model"):
            rt.load_adapter(other)


def test_adapter_of_another_architecture_is_refused_on_load(adapters):
    from agent.default_model import ensure_default_gguf

    with LlamaRuntime(ensure_default_gguf(), n_ctx=128, n_threads=2) as gemma:
        with pytest.raises(AdapterMismatch, match="made for a 'qwen3' model"):
            gemma.load_adapter(adapters["plain"])


def test_cli_exports_and_checks_an_adapter(adapters, tiny_hf_dir, tiny_gguf_f32, tmp_path):
    out = tmp_path / "cli.gguf"
    cmd = [sys.executable, "-m", "swespot", "adapters", "export", str(adapters["plain"].with_suffix("")),
           "--base", str(tiny_hf_dir), "--out", str(out), "--base-gguf", str(tiny_gguf_f32)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LoRA pairs for qwen3" in done.stdout and out.exists()
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "missing")] + cmd[6:], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert bad.returncode == 1
    assert "swespot: error:" in bad.stderr and "not a peft adapter folder" in bad.stderr


def test_adapter_whose_shapes_do_not_fit_is_refused_with_llama_cpps_reason(tiny_gguf_f32, tmp_path):
    import gguf

    path = tmp_path / "misfit.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 100), dtype=np.float32))  # base has 256 inputs
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((256, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with LlamaRuntime(tiny_gguf_f32, n_ctx=128, n_threads=2) as rt:
        with pytest.raises(SwespotError, match="incorrect shape"):
            rt.load_adapter(path)
