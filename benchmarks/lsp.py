"""Language-server benchmark: the latency the user feels in the editor.

For each model (the tiny test model, the embedded Gemma 3 270M), through a real ``swespot serve``
process on stdio driven by a pygls client:

- inline completion round trip p50/p95 while "typing" a line (one character per request), against the
  same prompts completed by the runtime in-process (the ratio is the server's overhead). The in-process
  runtime lives in a second, fresh interpreter, and the two are asked in turn, step by step, so that
  whatever else runs on the machine slows both alike;
- time to the first streamed chat token, cold (the KV cache holds another prompt) and warm (a follow-up
  question that reuses the cached conversation prefix);
- hot-swap time as seen by the client: from publishing an adapter in the store to the ``swespot/status``
  that announces it (bounded below by the idle poll interval, ``adapterPollS``), and the swap itself as
  the server timed it (``swapMs``).

    .venv/bin/python benchmarks/lsp.py [--models tiny,gemma] [--steps 40] [--repeats 3] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import concurrent.futures
import multiprocessing

from rich.console import Console
from rich.table import Table

import agent  # noqa: F401 - every git command of this script runs no repository-configured program (agent/gitsafe.py)
from agent.runtime import LlamaRuntime, default_threads, file_sha256
from lsp_server.agents import EditorWorkspace
from lsp_server.completion import CompletionContext, SnippetIndex, build_prompt, stop_strings, trim_completion
from lsp_server.protocol import make_converter
from trainer.store import AdapterStore, state_dir

TYPED = "        matches = [p for p in self.files() if p.endswith(suffix)]"
TARGET_FILE = "agent/tools.py"
ANCHOR = "    def find_files(self, pattern: str) -> str:\n"
POLL_S = 0.05
MAX_TOKENS = 16  # per inline completion


def runtime_bench():
    """benchmarks/runtime.py as a module: its model preparation and adapter maker are reused here."""
    spec = importlib.util.spec_from_file_location("runtime_bench", ROOT / "benchmarks" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_repo(root: Path) -> Path:
    """A copy of this project's ``agent`` package in a fresh git repository: real code for snippets."""
    shutil.copytree(ROOT / "agent", root / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=b", "-c", "user.email=b@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def typing_steps(text: str, steps: int) -> list[tuple[str, int, int]]:
    """(document text, cursor line, cursor character) after each typed character of TYPED, inserted as a
    new line at the start of ``find_files``' body."""
    at = text.index(ANCHOR) + len(ANCHOR)
    line = text[:at].count("\n")
    out = []
    for n in range(1, min(steps, len(TYPED)) + 1):
        out.append((text[:at] + TYPED[:n] + "\n" + text[at:], line, n))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- through the server -------------------------------------------------------------------------------
class Client:
    def __init__(self, settings: dict) -> None:
        from lsprotocol import types as lsp
        from pygls.lsp.client import LanguageClient

        self.lsp = lsp
        self.client = LanguageClient("swespot-bench", "1", converter_factory=make_converter)
        self.events: list[tuple[float, str, dict]] = []
        self.arrived = asyncio.Event()
        for method in ("swespot/status", "swespot/chatDelta"):
            self.client.feature(method)(lambda params, m=method: self._record(m, params))
        self.client.feature(lsp.WORKSPACE_CONFIGURATION)(lambda params: [settings for _ in params.items])

    def _record(self, method: str, params: dict) -> None:
        self.events.append((time.perf_counter(), method, params))
        self.arrived.set()

    async def wait(self, method: str, match, since: int = 0) -> float:
        """Time at which the first ``method`` notification after event ``since`` that matches arrived."""
        while True:
            for at, m, params in self.events[since:]:
                if m == method and match(params):
                    return at
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 120)
            except TimeoutError:
                raise SystemExit(f"no {method} notification came; the last ones: {self.events[-3:]}") from None

    async def start(self, gguf: Path, repo: Path, env: dict) -> None:
        lsp = self.lsp
        await self.client.start_io(sys.executable, "-m", "swespot", "serve", "--model", str(gguf), "--repo", str(repo), env=env)
        caps = lsp.ClientCapabilities(workspace=lsp.WorkspaceClientCapabilities(configuration=True))
        await self.client.initialize_async(lsp.InitializeParams(capabilities=caps, root_uri=repo.as_uri()))
        self.client.initialized(lsp.InitializedParams())
        await self.wait("swespot/status", lambda s: s["state"] == "ready" and s.get("model"))

    async def request(self, method: str, params: dict):
        return await self.client.protocol.send_request_async(method, params)

    async def stop(self) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()


async def bench_server(gguf: Path, repo: Path, state: Path, adapters: list[Path], steps: int, repeats: int,
                       threads: int, direct) -> tuple[dict, list[tuple[float, str]], list[tuple[float, str]]]:
    """``direct``: the in-process pool (one fresh interpreter holding its own runtime), asked in turn."""
    settings = {"threads": threads, "completionMaxTokens": MAX_TOKENS, "chatMaxTokens": 16, "chatMaxSteps": 1,
                "adapterPollS": POLL_S}
    os.environ["SWESPOT_STATE_DIR"] = str(state)  # the server and this process must agree on the store
    env = {**os.environ, "SWESPOT_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    client = Client(settings)
    await client.start(gguf, repo, env)
    lsp = client.lsp
    row: dict = {}
    uri = (repo / TARGET_FILE).as_uri()
    text = (repo / TARGET_FILE).read_text()
    client.client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "python", 1, text)))

    async def complete(version: int, new_text: str, line: int, character: int) -> tuple[float, str]:
        client.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(version=version, uri=uri), [lsp.TextDocumentContentChangeWholeDocument(new_text)]))
        started = time.perf_counter()
        result = await client.request("swespot/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})
        return time.perf_counter() - started, (result["items"][0]["insertText"] if result["items"] else "")

    sequence = typing_steps(text, steps)
    await complete(2, *sequence[0])  # warm-up: the repository index and the first prompt
    await asyncio.wrap_future(direct.submit(direct_complete, *sequence[0]))
    served, in_process = [], []
    for version, (new_text, line, character) in enumerate(sequence, start=3):
        # alternate who goes first, so that neither always finds the CPU just used by the other
        if version % 2:
            served.append(await complete(version, new_text, line, character))
        in_process.append(await asyncio.wrap_future(direct.submit(direct_complete, new_text, line, character)))
        if not version % 2:
            served.append(await complete(version, new_text, line, character))

    cold, warm = [], []
    for n in range(repeats):
        await complete(100 + n, *sequence[-1])  # the cache now holds a completion prompt, not the chat's
        question = {"chatId": f"q{n}", "prompt": "What does Workspace.find_files return?"}
        mark, started = len(client.events), time.perf_counter()
        first = await client.request("swespot/chat", question)
        cold.append(await client.wait("swespot/chatDelta", lambda d, c=f"q{n}": d["chatId"] == c, mark) - started)
        follow_up = {"chatId": f"f{n}", "prompt": "And which files does it skip?",
                     "history": [{"role": "user", "content": question["prompt"]}, {"role": "assistant", "content": first["text"]}]}
        mark, started = len(client.events), time.perf_counter()
        await client.request("swespot/chat", follow_up)
        warm.append(await client.wait("swespot/chatDelta", lambda d, c=f"f{n}": d["chatId"] == c, mark) - started)
    row["chat_ttft_cold_ms"] = round(statistics.median(cold) * 1e3, 1)
    row["chat_ttft_warm_ms"] = round(statistics.median(warm) * 1e3, 1)

    store = AdapterStore(state_dir(repo))
    swaps, server_swaps = [], []
    for n in range(repeats):
        mark, started = len(client.events), time.perf_counter()
        published = store.publish(adapters[n % len(adapters)]).name
        at = await client.wait("swespot/status", lambda s, v=published: (s.get("adapter") or {}).get("version") == v, mark)
        swaps.append(at - started)
        server_swaps.append(next(p["swapMs"] for t, m, p in client.events[mark:] if t == at and m == "swespot/status"))
    row["hot_swap_ms"] = round(statistics.median(swaps) * 1e3, 1)
    row["swap_ms"] = round(statistics.median(server_swaps), 1)
    await client.stop()
    return row, served, in_process


# ---- in-process ------------------------------------------------------------------------------------------
_DIRECT: dict = {}


def direct_start(gguf: Path, repo: Path, threads: int, max_tokens: int) -> None:
    """Pool initializer: the runtime and snippet index the server would build, in this interpreter."""
    index = SnippetIndex(EditorWorkspace(repo))
    index.build_in_background().join()
    _DIRECT.update(runtime=LlamaRuntime(gguf, n_ctx=8192, n_threads=threads), index=index, repo=repo, max_tokens=max_tokens)


def direct_complete(new_text: str, line: int, character: int) -> tuple[float, str]:
    """The same prompt the server builds (same code), completed by the runtime directly."""
    runtime, index, repo = _DIRECT["runtime"], _DIRECT["index"], _DIRECT["repo"]
    started = time.perf_counter()
    offset = sum(len(text) + 1 for text in new_text.split("\n")[:line]) + character
    ctx = CompletionContext(TARGET_FILE, "python", new_text[:offset], new_text[offset:])
    snippets = index.snippets(ctx, lambda rel: (repo / rel).read_text(), lambda _rel: False)
    text = "".join(runtime.generate(build_prompt(ctx, snippets, None), max_tokens=_DIRECT["max_tokens"], stop=stop_strings(None)))
    return time.perf_counter() - started, trim_completion(text, ctx)


def bench_model(name: str, steps: int, repeats: int, threads: int, work: Path) -> dict:

    bench = runtime_bench()
    gguf, hf_dir = bench.prepare(name)
    adapters = []
    for seed in range(2):  # two adapters, published alternately
        folder = work / f"{name}-adapter-{seed}"
        folder.mkdir()
        bench.make_adapter(hf_dir, folder / "adapter.gguf", file_sha256(gguf), seed=seed)
        (folder / "manifest.json").write_text(json.dumps({"commit": f"bench{seed}"}))
        adapters.append(folder)
    repo = make_repo(work / f"{name}-repo")
    # in a fresh interpreter: this one imported torch (for the adapters), whose idle threads skew timings
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=direct_start,
                                                initargs=(gguf, repo, threads, MAX_TOKENS)) as direct:
        row, served, in_process = asyncio.run(bench_server(gguf, repo, work / f"{name}-state", adapters, steps, repeats,
                                                           threads, direct))
    server_times, server_texts = [t for t, _ in served], [x for _, x in served]
    direct_times, direct_texts = [t for t, _ in in_process], [x for _, x in in_process]
    row = {"model": name, "completion_p50_ms": round(percentile(server_times, 0.5) * 1e3, 1),
           "completion_p95_ms": round(percentile(server_times, 0.95) * 1e3, 1),
           "direct_p50_ms": round(percentile(direct_times, 0.5) * 1e3, 1),
           "direct_p95_ms": round(percentile(direct_times, 0.95) * 1e3, 1), **row}
    row["overhead_ratio_p50"] = round(row["completion_p50_ms"] / row["direct_p50_ms"], 2)
    row["overhead_ratio_p95"] = round(row["completion_p95_ms"] / row["direct_p95_ms"], 2)
    row["overhead_p50_ms"] = round(statistics.median(s - d for s, d in zip(server_times, direct_times)) * 1e3, 1)
    # the same keystroke, served both ways one right after the other: the least noisy view of the overhead
    row["paired_ratio_p50"] = round(statistics.median(s / d for s, d in zip(server_times, direct_times)), 2)
    row["same_completions"] = sum(a == b for a, b in zip(server_texts, direct_texts)) / len(server_texts)
    return row


COLUMNS = [
    ("model", "model"), ("completion_p50_ms", "server p50 ms"), ("completion_p95_ms", "server p95 ms"),
    ("direct_p50_ms", "in-process p50 ms"), ("direct_p95_ms", "in-process p95 ms"), ("overhead_ratio_p50", "ratio p50"),
    ("overhead_ratio_p95", "ratio p95"), ("paired_ratio_p50", "paired ratio p50"), ("overhead_p50_ms", "paired overhead p50 ms"),
    ("same_completions", "same text"),
    ("chat_ttft_cold_ms", "chat TTFT cold ms"), ("chat_ttft_warm_ms", "chat TTFT warm ms"),
    ("hot_swap_ms", f"hot swap seen ms (poll {POLL_S * 1e3:.0f})"), ("swap_ms", "swap ms (server)"),
]


def print_table(rows: list[dict]) -> None:
    table = Table(title="SWE-Spot Local language server (stdio, llama.cpp on CPU)")
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[str(row.get(key, "")) for key, _ in COLUMNS])
    Console(width=200).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument("--steps", type=int, default=40, help="typed characters, one completion each")
    parser.add_argument("--repeats", type=int, default=3, help="chat and hot-swap measurements")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(bench_model(name, args.steps, args.repeats, threads, Path(tmp)))
    print_table(rows)
    if args.json:
        meta = {"machine": platform.machine(), "python": platform.python_version(), "threads": threads,
                "steps": args.steps, "repeats": args.repeats, "adapter_poll_s": POLL_S}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
