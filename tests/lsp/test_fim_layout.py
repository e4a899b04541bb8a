"""The server's completion layout follows the served adapter (lsp_server/completion.serving_fim): the FIM
layout while the adapter's manifest declares FIM tokens, left to right after a swap to an adapter without
them (another branch) and FIM again after a rollback. Real adapter store, tracker and llama.cpp runtime."""

from __future__ import annotations

import re

import pytest

from lsp_server.completion import CompletionContext, build_prompt, serving_fim
from lsp_support import model_calls, suggest


def test_swapping_adapters_switches_the_layout_and_a_rollback_switches_it_back(tmp_path, tiny_gguf_q8, tiny_adapter_dir):
    from agent.runtime import LlamaRuntime
    from lsp_server.adapters import AdapterTracker
    from trainer.store import AdapterStore

    # the tiny vocabulary has no reserved tokens; its added marker tokens stand in (each is one token)
    markers = {"prefix": "<think>", "suffix": "</think>", "middle": "<tool_call>", "source": "reserved"}
    store = AdapterStore(tmp_path / "state")
    store.publish(tiny_adapter_dir, extra={"fim": markers})
    tracker = AdapterTracker(store)
    with LlamaRuntime(tiny_gguf_q8, n_ctx=512, n_threads=1) as runtime:
        def layout():
            return serving_fim(runtime, tracker.active.manifest if tracker.active else None)

        assert layout() is None
        tracker.swap(runtime)
        assert tracker.active_name == "v0001" and layout() == ("<think>", "</think>", "<tool_call>")
        ctx = CompletionContext("calc/ops.py", "python", "def add(a, b):\n    ", "\n")
        assert build_prompt(ctx, [], layout()).startswith("<think># path: calc/ops.py\n")
        store.publish(tiny_adapter_dir, extra={"fim": None})  # e.g. another branch's adapter, trained without FIM
        tracker.swap(runtime)
        assert tracker.active_name == "v0002" and layout() is None
        assert "<think>" not in build_prompt(ctx, [], layout())
        store.rollback("v0001")
        tracker.swap(runtime)
        assert tracker.active_name == "v0001" and layout() == ("<think>", "</think>", "<tool_call>")


OPS = "".join(f'def op_{i}(a, b):\n    """Operation {i}."""\n    return a * {i} + b\n\n\n' for i in range(8))


def _git(root, *args) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def _calc_repo_and_fim_adapter(tmp_path, tiny_adapter_dir):
    """A repository whose commits after the cutoff each add a function between two others, and a copy of
    the tiny adapter whose manifest declares FIM markers. Returns (repo, cutoff, adapter folder)."""
    import json
    import shutil

    root = tmp_path / "calc"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "ops.py").write_text(OPS)
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "ops")
    cutoff = _git(root, "rev-parse", "HEAD")
    text = OPS
    for i in range(6):  # each later commit adds a function between two existing ones
        anchor = f"def op_{i + 1}("
        text = text.replace(anchor, f'def extra_{i}(values):\n    total = sum(values) * {i}\n    return total\n\n\n{anchor}')
        (root / "ops.py").write_text(text)
        _git(root, "commit", "-qam", f"extra {i}")
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    manifest = json.loads((adapter / "manifest.json").read_text())
    manifest["fim"] = {"prefix": "<think>", "suffix": "</think>", "middle": "<tool_call>", "source": "reserved"}
    (adapter / "manifest.json").write_text(json.dumps(manifest))
    return root, cutoff, adapter


def test_infill_tasks_score_the_adapter_in_its_declared_layout_and_the_base_left_to_right(tmp_path, tiny_gguf_q8, tiny_adapter_dir):
    from trainer.evaluation import ModelSpec, evaluate

    root, cutoff, adapter = _calc_repo_and_fim_adapter(tmp_path, tiny_adapter_dir)
    report = evaluate(root, cutoff, tiny_gguf_q8, [ModelSpec("base", None), ModelSpec("adapter", adapter / "adapter.gguf")],
                      families=("infill",), profile="tiny", progress=False)
    rows = report["rows"]
    assert report["tasks"] == {"infill": 4}
    assert all(t["family"] == "infill" and t["meta"]["suffix"].strip() for t in report["task_list"])
    base = [r for r in rows if r["model"] == "base"]
    ours = [r for r in rows if r["model"] == "adapter"]
    assert len(base) == len(ours) == 4
    assert all(r["layout"] == "ltr" and r["ltr_loss"] == r["loss"] for r in base)
    assert all(r["layout"] == "fim" and r["ltr_loss"] != r["loss"] and r["similarity"] is not None for r in ours)
    assert "infill" in report["comparisons"]["adapter"]["families"]
    assert report["layouts"]["adapter"]["tasks"] == 4 and "FIM layout vs left to right" in report["layouts"]["adapter"]["line"]
    assert "base" not in report["layouts"]


def test_specialize_leaves_the_infill_family_out_only_when_no_model_serves_a_fim_layout(tmp_path, tiny_gguf_q8, tiny_adapter_dir):
    """infill_only_with_fim (specialize's gate): with an adapter that declares FIM the infill tasks are
    scored; with models that all complete left to right they are left out, and the report says why."""
    from trainer.eval_report import render_html
    from trainer.evaluation import INFILL_LEFT_OUT, ModelSpec, evaluate, serving_layouts

    root, cutoff, fim_adapter = _calc_repo_and_fim_adapter(tmp_path, tiny_adapter_dir)
    both = [ModelSpec("base", None), ModelSpec("adapter", fim_adapter / "adapter.gguf")]
    ltr = [ModelSpec("base", None), ModelSpec("adapter", tiny_adapter_dir / "adapter.gguf")]  # its manifest declares none
    assert serving_layouts(tiny_gguf_q8, both) == {"base": "ltr", "adapter": "fim"}
    assert serving_layouts(tiny_gguf_q8, ltr) == {"base": "ltr", "adapter": "ltr"}
    kept = evaluate(root, cutoff, tiny_gguf_q8, both, families=("line", "infill"), profile="tiny", progress=False,
                    infill_only_with_fim=True)
    assert kept["tasks"]["infill"] == 4 and kept["left_out"] == {}
    dropped = evaluate(root, cutoff, tiny_gguf_q8, ltr, families=("line", "infill"), profile="tiny", progress=False,
                       infill_only_with_fim=True, out=tmp_path / "report")
    assert set(dropped["tasks"]) == {"line"} and dropped["tasks"]["line"] > 0
    assert {r["family"] for r in dropped["rows"]} == {"line"}
    assert dropped["left_out"] == {"infill": INFILL_LEFT_OUT}
    assert "The infill family is left out: no model serves a fill-in-the-middle layout" in render_html(dropped)
    # without the flag (swespot eval) the family is scored in either case
    assert evaluate(root, cutoff, tiny_gguf_q8, ltr, families=("infill",), profile="tiny", progress=False)["tasks"] == {"infill": 4}


@pytest.mark.asyncio
async def test_the_server_completes_in_the_layout_of_the_adapter_it_serves(start_server, state, tiny_adapter_dir):
    """Through the real server: FIM while the served adapter declares it, left to right after a swap to
    one that does not, FIM again after the rollback; each model call's layout is in the server's log."""
    from trainer.store import AdapterStore

    markers = {"prefix": "<think>", "suffix": "</think>", "middle": "<tool_call>", "source": "reserved"}
    store = AdapterStore(state)
    session = await start_server({"completionMaxTokens": 16, "completionMaxMs": 0})
    before, after = "from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        ", "\n    return out\n"
    uri = session.open("calc/report.py", before + after)
    version = 1
    for publish, layout in ((lambda: store.publish(tiny_adapter_dir, extra={"fim": markers}), "fill-in-the-middle"),
                            (lambda: store.publish(tiny_adapter_dir, extra={"fim": None}), "left to right"),
                            (lambda: store.rollback("v0001"), "fill-in-the-middle")):
        mark = session.mark()  # the swap's own announcement, not an earlier one
        name = publish().name
        await session.status(lambda s, name=name: (s.get("adapter") or {}).get("version") == name, since=mark)
        version += 1
        shown = await suggest(session, uri, before, after, version)
        assert model_calls(state)[-1].endswith(layout)
        assert "return out" not in shown and not re.search(r"<think>|</think>|<tool_call>", shown)


def test_a_version_with_a_chat_adapter_serves_it_to_chat_and_its_code_adapter_to_the_rest(tmp_path, tiny_gguf_q8, tiny_adapter_dir):
    """trainer/pipeline.py publishes the chat adapter beside the code adapter; the tracker loads both and
    activates the one for the kind of request; a version without one serves its code adapter to chat too."""
    import shutil

    from agent.runtime import LlamaRuntime
    from lsp_server.adapters import AdapterTracker
    from trainer.store import CHAT_GGUF, AdapterStore

    both = tmp_path / "both"
    shutil.copytree(tiny_adapter_dir, both)
    shutil.copy2(tiny_adapter_dir / "adapter.gguf", both / CHAT_GGUF)
    store = AdapterStore(tmp_path / "state")
    store.publish(both, extra={"chat": {"gguf": CHAT_GGUF}})
    tracker = AdapterTracker(store)
    with LlamaRuntime(tiny_gguf_q8, n_ctx=512, n_threads=1) as runtime:
        tracker.swap(runtime)
        assert tracker.chat_name == "v0001:chat"
        tracker.use(runtime, "chat")
        assert runtime.active_adapters == [("v0001:chat", 1.0)]
        tracker.use(runtime, "code")
        assert runtime.active_adapters == [("v0001", 1.0)]
        store.publish(tiny_adapter_dir)  # the next version has no chat adapter
        tracker.swap(runtime)
        tracker.use(runtime, "chat")
        assert tracker.chat_name is None and runtime.active_adapters == [("v0002", 1.0)]
        assert "v0001:chat" not in runtime._adapters  # the old version's chat adapter was freed with it


def test_a_version_whose_chat_adapter_is_not_a_gguf_is_not_served(tmp_path, tiny_adapter_dir):
    import shutil

    from agent.errors import SwespotError
    from trainer.store import CHAT_GGUF, AdapterStore

    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapter_dir, bad)
    (bad / CHAT_GGUF).write_text("not a model")
    store = AdapterStore(tmp_path / "state")
    with pytest.raises(SwespotError, match="chat.gguf is not a GGUF file"):
        store.publish(bad, extra={"chat": {"gguf": CHAT_GGUF}})
    (bad / CHAT_GGUF).unlink()
    with pytest.raises(SwespotError, match="chat.gguf is missing"):  # named by the manifest but absent
        store.publish(bad, extra={"chat": {"gguf": CHAT_GGUF}})
    assert store.current() is None  # neither was ever served
