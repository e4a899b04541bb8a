"""End-to-end fixtures for the language server: a real git repository, a real ``swespot serve`` process on
stdio with the tiny llama.cpp model, and a pytest-lsp client that records the server's notifications so
tests can wait for them instead of sleeping.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), so tests/lsp/ and tests/security/ share the
fixtures without importing them; test modules import only the helpers (``WAIT_S``, ``call``, ...)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types as lsp
from pytest_lsp import LanguageClient
from pytest_lsp.client import register_lsp_features

from lsp_server.protocol import make_converter

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60  # an upper bound for a notification that must come; tests never sleep

OPS = '''"""Arithmetic helpers."""


def add(a, b):
    """Return a + b."""
    return a - b


def mul(a, b):
    return a * b
'''

# Runs the real CLI, and when the process ends writes whether torch was ever imported into it.
PROBE = (
    "import atexit, sys\n"
    "probe = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(probe, 'w').write(repr(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))))\n"
    "from swespot.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "calc").mkdir(parents=True)
    (root / "calc" / "__init__.py").write_text("from calc.ops import add, mul\n")
    (root / "calc" / "ops.py").write_text(OPS)
    (root / "calc" / "report.py").write_text("from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        out = add(out, x)\n    return out\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_ops.py").write_text("from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (root / "secrets").mkdir()
    (root / "secrets" / "keys.py").write_text("KEY = 'do not show the model'\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def state(repo: Path, state_root: Path, monkeypatch) -> Path:
    """The repository's state dir as the server computes it (same SWESPOT_STATE_DIR)."""
    from trainer.store import state_dir

    monkeypatch.setenv("SWESPOT_STATE_DIR", str(state_root))
    return state_dir(repo)


class Session:
    """A pytest-lsp client plus what the server told it: every notification, by method."""

    def __init__(self, client: LanguageClient, repo: Path, probe: Path) -> None:
        self.client = client
        self.repo = repo
        self.probe = probe
        self.notes: dict[str, list[Any]] = {}
        self._arrived = asyncio.Event()

    def record(self, method: str, params: Any) -> None:
        self.notes.setdefault(method, []).append(params)
        self._arrived.set()

    def mark(self, method: str = "swespot/status") -> int:
        """How many ``method`` notifications came so far (for ``since``)."""
        return len(self.notes.get(method, []))

    async def wait_for(self, method: str, match: Callable[[Any], bool] = lambda _p: True, since: int = 0) -> Any:
        """The first notification of ``method`` (ever received, or after the first ``since``) that
        ``match``es; waits for it."""

        async def seek():
            while True:
                for params in self.notes.get(method, [])[since:]:
                    if match(params):
                        return params
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(seek(), WAIT_S)

    async def request(self, method: str, params: Any, msg_id: str | None = None) -> Any:
        return await self.client.protocol.send_request_async(method, params, msg_id=msg_id)

    def start(self, method: str, params: Any, msg_id: str) -> asyncio.Future:
        """Send a request now (before this returns, so a cancel sent next comes after it) and return the
        future that will hold its answer."""
        return asyncio.wrap_future(self.client.protocol.send_request(method, params, msg_id=msg_id))

    def send_raw(self, body: bytes, msg_id: str | None = None) -> asyncio.Future | None:
        """Write a message body exactly as given (bytes the client library would never produce); with
        ``msg_id``, return the future of the answer to that id."""
        future = None
        if msg_id is not None:
            future = concurrent.futures.Future()
            self.client.protocol._request_futures[msg_id] = future
        self.client._server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return asyncio.wrap_future(future) if future is not None else None

    def cancel(self, msg_id: str) -> None:
        self.client.protocol.notify(lsp.CANCEL_REQUEST, lsp.CancelParams(id=msg_id))

    def uri(self, rel: str) -> str:
        return (self.repo / rel).as_uri()

    def open(self, rel: str, text: str | None = None, version: int = 1) -> str:
        uri = self.uri(rel)
        text = (self.repo / rel).read_text() if text is None else text
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)))
        return uri

    def change(self, uri: str, text: str, version: int) -> None:
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [lsp.TextDocumentContentChangeWholeDocument(text=text)]))

    async def status(self, match: Callable[[dict], bool], since: int = 0) -> dict:
        return await self.wait_for("swespot/status", match, since)

    def torch_modules_seen(self) -> list[str]:
        return eval(self.probe.read_text())  # written by PROBE at exit: a list literal


CAPABILITIES = lsp.ClientCapabilities(
    workspace=lsp.WorkspaceClientCapabilities(configuration=True, workspace_edit=lsp.WorkspaceEditClientCapabilities(
        document_changes=True, resource_operations=[lsp.ResourceOperationKind.Create, lsp.ResourceOperationKind.Delete])),
    text_document=lsp.TextDocumentClientCapabilities(
        inline_completion=lsp.InlineCompletionClientCapabilities(),
        code_action=lsp.CodeActionClientCapabilities(resolve_support=lsp.ClientCodeActionResolveOptions(properties=["edit"]))),
)


@pytest_asyncio.fixture
async def start_server(repo: Path, state: Path, state_root: Path, tiny_gguf_q8: Path, tmp_path: Path):
    """``await start_server(settings)``: a running, initialized server over ``repo``; shut down afterwards."""
    sessions: list[Session] = []

    async def start(settings: dict | None = None, *, init_options: dict | None = None,
                    capabilities: lsp.ClientCapabilities = CAPABILITIES) -> Session:
        client = LanguageClient(converter_factory=make_converter)  # custom results stay JSON objects
        register_lsp_features(client)
        probe = tmp_path / f"torch-probe-{len(sessions)}.txt"
        session = Session(client, repo, probe)
        for method in ("swespot/status", "swespot/chatDelta"):
            client.feature(method)(lambda params, m=method: session.record(m, params))
        client.set_configuration({"swespot": {"adapterPollS": 0.05, "threads": 1, "contextSize": 4096, **(settings or {})}})
        env = {**os.environ, "SWESPOT_STATE_DIR": str(state_root), "SWESPOT_LOG_LEVEL": "DEBUG",
               "PYTHONPATH": str(ROOT)}
        await client.start_io(sys.executable, "-c", PROBE, str(probe), "serve", "--model", str(tiny_gguf_q8),
                              "--repo", str(repo), env=env)
        session.initialized = await client.initialize_session(lsp.InitializeParams(
            capabilities=capabilities, root_uri=repo.as_uri(), initialization_options=init_options))
        session.statuses_before_initialized = session.mark()  # LSP: nothing but log/progress before that
        sessions.append(session)
        await session.status(lambda s: s["state"] == "ready" and s.get("model"))
        return session

    yield start
    for session in sessions:
        if session.client._server and session.client._server.returncode is None:
            await session.client.shutdown_session()
        await session.client.stop()


def write_script(path: Path, turns: list) -> str:
    """A scripted agent model (``scripted:FILE``, shipped in ``agent.models``)."""
    path.write_text(json.dumps(turns))
    return f"scripted:{path}"


def apply_text_edits(text: str, edits: list[dict]) -> str:
    """Apply LSP TextEdits (UTF-16 positions) the way an editor does: all ranges refer to the original."""
    lines = text.splitlines(keepends=True)

    def offset(pos: dict) -> int:
        if pos["line"] >= len(lines):
            return len(text)
        line = lines[pos["line"]]
        units = line.encode("utf-16-le")[: 2 * pos["character"]].decode("utf-16-le")
        return sum(len(prev) for prev in lines[: pos["line"]]) + len(units)

    spans = sorted(((offset(e["range"]["start"]), offset(e["range"]["end"]), e["newText"]) for e in edits), reverse=True)
    for start, end, new in spans:
        text = text[:start] + new + text[end:]
    return text


class Gate:
    """A test in the fixture repository that blocks on a FIFO until ``open()`` is called: an agent task
    that runs it keeps the server's model thread busy for exactly as long as a test needs (no sleeps)."""

    def __init__(self, repo: Path, fifo: Path, name: str = "gate") -> None:
        fifo.parent.mkdir(exist_ok=True)
        os.mkfifo(fifo)
        self.fifo = fifo
        self._writer = None
        (repo / "tests" / f"test_{name}.py").write_text(f"def test_{name}():\n    with open({str(fifo)!r}) as fh:\n        fh.read()\n")
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        self.command = f"python -m pytest -q tests/test_{name}.py"

    async def reached(self) -> None:
        """Wait until the agent's test is blocked at the gate (the FIFO has its reader)."""

        def open_writer():
            return open(self.fifo, "w")  # blocks until the test opened its end

        try:
            self._writer = await asyncio.wait_for(asyncio.to_thread(open_writer), WAIT_S)
        except TimeoutError:
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))  # free our own blocked writer thread
            raise

    async def open(self) -> None:
        """Let the blocked test finish (waits until it is blocked, i.e. until the FIFO has its reader)."""
        if self._writer is None:
            await self.reached()
        with self._writer as fh:
            fh.write("go")
        self._writer = None


@pytest.fixture
def gate(repo: Path, tmp_path: Path, monkeypatch) -> Gate:
    # the sandboxed test sees nothing outside its copy but the folder the server is told to show it
    monkeypatch.setenv("SWESPOT_SANDBOX_READABLE", str(tmp_path / "gates"))
    return Gate(repo, tmp_path / "gates" / "gate.fifo")


@pytest.fixture
def second_gate(repo: Path, tmp_path: Path, monkeypatch) -> Gate:
    monkeypatch.setenv("SWESPOT_SANDBOX_READABLE", str(tmp_path / "gates"))
    return Gate(repo, tmp_path / "gates" / "gate2.fifo", name="gate2")


def inline_params(uri: str, line: int, character: int) -> lsp.InlineCompletionParams:
    """An automatic inline-completion request at ``line``:``character`` (0-based), as an editor sends it."""
    return lsp.InlineCompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri), position=lsp.Position(line, character),
        context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Automatic))


def model_calls(state: Path, tag: str = "") -> list[str]:
    """The server's model calls so far, from its own log (one ``completion: N prompt tokens`` line each)."""
    return [line for line in (state / "serve.log").read_text().splitlines()
            if tag in line and re.search(r"completion: \d+ prompt tokens", line)]


async def suggest(session: Session, uri: str, before: str, after: str, version: int, msg_id: str | None = None) -> str:
    """Put the document at ``before + after`` and ask for a suggestion at the cursor between them."""
    session.change(uri, before + after, version)
    line = before.count("\n")
    character = len(before.rsplit("\n", 1)[-1])
    result = await session.request("swespot/inlineCompletion", {"textDocument": {"uri": uri},
                                   "position": {"line": line, "character": character}}, msg_id=msg_id)
    items = result["items"]
    if items:
        assert items[0]["range"]["start"] == items[0]["range"]["end"] == {"line": line, "character": character}
    return items[0]["insertText"] if items else ""


def call(name: str, **arguments) -> dict:
    """A scripted assistant turn that makes one tool call."""
    return {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}
