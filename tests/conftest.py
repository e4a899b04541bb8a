"""Shared, session-scoped test artefacts: the tiny Qwen3 model and its GGUF conversions.

Everything is built locally and cached under ``$SWESPOT_TEST_CACHE`` (default
``~/.cache/swespot-tests``), keyed by a version and a hash of the builder's inputs, so the first run
builds in seconds and later runs (and other test modules) reuse the same files. The cache is
write-once: builds go to a temporary name and are renamed into place.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from daemon_support import start_daemon, stop_daemon

# the language server's end-to-end fixtures (repo, state, start_server, gate, ...), shared by tests/lsp/
# and tests/security/
pytest_plugins = ["lsp_support"]


@pytest.fixture(scope="session")
def test_cache_dir() -> Path:
    """The directory that holds cached test models (``$SWESPOT_TEST_CACHE`` or ~/.cache/swespot-tests)."""
    from trainer.tiny import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def tiny_hf_dir(test_cache_dir: Path) -> Path:
    """The tiny Qwen3-architecture HF checkpoint (fp32 safetensors + fast tokenizer + chat template).
    Treat it as read-only: it is shared across tests and test runs."""
    from trainer.tiny import tiny_model_dir

    return tiny_model_dir(test_cache_dir)


@pytest.fixture(scope="session")
def tiny_gguf_f32(tiny_hf_dir: Path, test_cache_dir: Path) -> Path:
    """The tiny model converted to an all-f32 GGUF: logits comparable with transformers to 1e-4."""
    from trainer.tiny import tiny_gguf

    return tiny_gguf("f32", test_cache_dir)


@pytest.fixture(scope="session")
def tiny_gguf_q8(tiny_hf_dir: Path, test_cache_dir: Path) -> Path:
    """The tiny model quantized to q8_0 by llama.cpp."""
    from trainer.tiny import tiny_gguf

    return tiny_gguf("q8_0", test_cache_dir)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_hf_dir, tiny_gguf_q8, tmp_path_factory):
    """A real LoRA adapter for the tiny model: one training step with peft, exported to GGUF, in the
    folder layout the adapter store publishes (adapter.gguf + manifest.json). Read-only: tests publish
    copies of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.runtime import file_sha256
    from trainer.lora_export import export_lora_to_gguf

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ids = AutoTokenizer.from_pretrained(tiny_hf_dir)("def total(xs):\n    return sum(xs)\n", return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.save_pretrained(out / "peft")
    export_lora_to_gguf(out / "peft", tiny_hf_dir, out / "adapter.gguf", base_gguf_sha256=file_sha256(tiny_gguf_q8))
    (out / "manifest.json").write_text(json.dumps({"commit": "0123456789abcdef", "base": "tiny"}))
    return out


@pytest.fixture
def daemons():
    """Starts real ``swespot daemon`` processes (``daemon_support.start_daemon``) and kills whichever is
    still running when the test ends, however it ends: a failing test leaks no process."""
    started = []

    def start(repo: Path, state_root: Path, log: Path, *extra: str):
        started.append(start_daemon(repo, state_root, log, *extra))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            stop_daemon(proc, signal.SIGKILL)
