"""Typing benchmark: how much typing inline completion saves a user, and how long each keystroke waits.

Held-out code of a real repository (function bodies and added lines of commits after a knowledge
cutoff, taken with trainer/evaluation's ``body_tasks`` and ``line_tasks``) is typed again, character
by character, into a real ``swespot serve`` process through a real LSP client (pygls). The document is
the file as the commit left it with the held-out code removed, so the code after the cursor is there
as the user would have it. After every keystroke the client asks for an inline completion and waits for
the answer (a typist who waits: a faster one sees fewer suggestions). When the suggestion starts with
what comes next, the user accepts its longest matching prefix (``--granularity char``; ``word`` cuts
that back to a word boundary, as accepting word by word would) with one keystroke (Tab), if it covers
at least 2 characters; otherwise the user types the next character. Indentation is typed like any other
character (no editor auto-indent). Before the first keystroke at the task's place the cursor comes to
rest there: the client asks for code actions at it, as VS Code does wherever the cursor stops (the
server reads the completion prompt there meanwhile), and the user takes ``--think-ms`` (1,350 ms, the
keystroke-level model's mental preparation M of Card, Moran & Newell, 1980; the pointing and the move
of the hands to the keyboard that come before it in a mouse-placed cursor are not counted) before
asking for the first suggestion; 0 asks at once, as a user who had never stopped would.

Reported per model (the base, and an adapter side by side in the same run, in servers asked in turn
task by task, so machine load hits all alike; with ``--context both`` the base also runs without the
definitions of the names near the cursor, lsp_server/context.py, to show whether they pay for their
prompt tokens):
- chars saved per char typed: (characters of the held-out code - keystrokes) / characters, and beside it
  the ceiling, what a perfect model would save (its first suggestion the whole task, one Tab): a ratio of
  two models' savings cannot exceed the ceiling over the base's;
- the share of shown suggestions that were (partly) accepted;
- per-keystroke latency as the user sees it (the change sent to the answer received), p50/p95;
- model calls per keystroke (from the server's own log: the rest came from its cache or its rules),
  the median prompt tokens of a call and the model's time per call (prompt evaluation included);
- paired over tasks (adapter vs base; base with vs without definitions), the difference of the mean
  chars-saved ratio, the ratio of the total characters saved, and the difference of the per-task
  median keystroke latency, each with a 95% bootstrap interval (numpy, resampling tasks).

The server serves the repository checked out at the cutoff (its snippets see no held-out code); the
adapter is published into a private store for that checkout. Nothing is downloaded.

    .venv/bin/python benchmarks/keystrokes.py --repo /tmp/click [--cutoff REV | --back 300] [--adapter current|PATH]
        [--tasks 10] [--family all|body|line] [--max-chars 200] [--max-minutes 8] [--granularity char] [--think-ms 1350]
        [--context on|off|both] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import git as gitpython
import numpy as np

import agent  # noqa: F401 - every git command of this script runs no repository-configured program (agent/gitsafe.py)
from agent.errors import SwespotError
from benchmarks.table import print_rows
from lsp_server.protocol import make_converter
from trainer.evaluation import MIN_PAIRED_TASKS, body_tasks, line_tasks, post_cutoff_changes, resample_indices
from trainer.store import AdapterStore, check_version_dir, state_dir

NO_CONTEXT = "base, no definitions"
CALL_LINE = re.compile(r"completion: (?P<prompt>\d+) prompt tokens, (?P<generated>\d+) generated, (?P<ended>.+?) in (?P<call_ms>\d+) ms"
                       r"(?:, (?P<cached>\d+) cached, first text after (?P<first_ms>\d+) ms, waited (?P<waited_ms>\d+) ms)?, (?P<layout>[a-z -]+)$")
WARM_LINE = re.compile(r"warm-up at the cursor: (?P<prompt>\d+) prompt tokens, (?P<cached_before>\d+) were cached, "
                       r"(?P<cached_after>\d+) are now, in (?P<ms>\d+) ms")
MIN_ACCEPT = 2  # accepting costs a keystroke: a 1-character acceptance saves nothing
_WORD_CHAR = re.compile(r"\w")


@dataclass
class TypingTask:
    id: str
    family: str
    path: str
    before: str  # the file up to the held-out code
    target: str  # the held-out code, typed by the user
    after: str  # the file after it


@dataclass
class Replay:
    chars: int = 0
    keystrokes: int = 0
    shown: int = 0
    accepted: int = 0
    accepted_chars: int = 0
    model_calls: int = 0  # completions the server generated for this replay (its log)
    prompt_tokens: list[int] = field(default_factory=list)  # per model call (its log)
    call_ms: list[float] = field(default_factory=list)  # model work per call, prompt evaluation included
    latencies_ms: list[float] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # per keystroke: latency, suggestion, the server's model call

    @property
    def saved(self) -> int:
        return self.chars - self.keystrokes

    @property
    def ratio(self) -> float:
        return self.saved / self.chars if self.chars else 0.0

    @property
    def most_saved(self) -> int:
        """What a perfect model could save here: its first suggestion is the whole held-out code, taken with one
        keystroke (the user's rule: a suggestion needs at least ``MIN_ACCEPT`` characters to be worth a Tab)."""
        return self.chars - 1 if self.chars >= MIN_ACCEPT else 0


# ---- tasks --------------------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def resolve_cutoff(repo: Path, cutoff: str | None, back: int) -> str:
    """The cutoff commit: ``cutoff`` as given, else the commit ``back`` first-parent steps before HEAD."""
    if cutoff:
        return git(repo, "rev-parse", "--verify", f"{cutoff}^{{commit}}").strip()
    commits = git(repo, "rev-list", "--first-parent", "HEAD").split()
    if len(commits) <= back:
        raise SwespotError(f"{repo} has only {len(commits)} first-parent commits; --back {back} is too far")
    return commits[back]


def cap(target: str, max_chars: int) -> str:
    """About ``max_chars`` of ``target``, always ending at a line end (the first line whole when it is
    longer): the rest of a line left after the cursor would change what the user is doing."""
    if len(target) <= max_chars:
        return target
    cut = target.rfind("\n", 0, max_chars)
    if cut <= 0:
        cut = target.find("\n")
    return target[:cut] if cut > 0 else target


def make_typing_tasks(repo: Path, cutoff: str, count: int, max_chars: int, families: str = "all") -> list[TypingTask]:
    """Function bodies first, then added lines (``families``: body, line or all), of Python files
    changed after the cutoff; each with the file around it as the commit left it."""

    changes = post_cutoff_changes(gitpython.Repo(repo), cutoff)
    out: list[TypingTask] = []
    chosen = (body_tasks(changes, count) if families in ("body", "all") else []) + (line_tasks(changes, count) if families in ("line", "all") else [])
    for task in chosen:
        if len(out) >= count:
            break
        if task.path is None or not task.path.endswith(".py"):
            continue
        whole = git(repo, "show", f"{task.commit}:{task.path}")
        if not whole.startswith(task.prompt + task.target):
            continue  # line endings or an encoding the evaluation normalised: skip rather than guess
        after = whole[len(task.prompt) + len(task.target):]
        target = cap(task.target, max_chars)
        rest = task.target[len(target):]
        out.append(TypingTask(task.id, task.family, task.path, task.prompt, target, rest + after))
    return out


# ---- the user -----------------------------------------------------------------------------------
def accepted_length(suggestion: str, wanted: str, granularity: str) -> int:
    """How much of ``suggestion`` the user takes: its longest prefix that is also the start of what
    they are about to type; with ``word``, cut back to the last word boundary (unless all of it fits)."""
    n = 0
    for a, b in zip(suggestion, wanted):
        if a != b:
            break
        n += 1
    if granularity == "word" and n < len(suggestion):
        while n > 0 and _WORD_CHAR.match(suggestion[n - 1]) and _WORD_CHAR.match(suggestion[n]):
            n -= 1
    return n


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


# ---- the server ---------------------------------------------------------------------------------
class Server:
    """One ``swespot serve`` over the checkout, with its own state root (its own adapter store)."""

    def __init__(self, name: str, gguf: Path, repo: Path, state_root: Path, settings: dict, adapter: str | None = None) -> None:
        self.name, self.gguf, self.repo, self.state_root, self.settings = name, gguf, repo, state_root, settings
        self.adapter = adapter  # the version the server must be serving before the replay starts
        self.version = 0
        self._log_offset = 0  # how far new_log_lines has read the server's log

    async def start(self) -> None:
        from lsprotocol import types as lsp
        from pygls.lsp.client import LanguageClient

        self.lsp = lsp
        self.client = LanguageClient("swespot-typing", "1", converter_factory=make_converter)
        ready = asyncio.Event()
        self.status: dict = {}

        def on_status(params) -> None:
            self.status = params
            served = (params.get("adapter") or {}).get("version")
            if params.get("state") == "ready" and params.get("model") and served == self.adapter:
                ready.set()

        self.client.feature("swespot/status")(on_status)
        self.client.feature(lsp.WORKSPACE_CONFIGURATION)(lambda params: [self.settings for _ in params.items])
        env = {**os.environ, "SWESPOT_STATE_DIR": str(self.state_root), "SWESPOT_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
        await self.client.start_io(sys.executable, "-m", "swespot", "serve", "--model", str(self.gguf),
                                   "--repo", str(self.repo), env=env)
        caps = lsp.ClientCapabilities(workspace=lsp.WorkspaceClientCapabilities(configuration=True))
        await self.client.initialize_async(lsp.InitializeParams(capabilities=caps, root_uri=self.repo.as_uri(),
                                                                initialization_options=self.settings))
        self.client.initialized(lsp.InitializedParams())
        try:
            await asyncio.wait_for(ready.wait(), 120)
        except TimeoutError:
            raise SwespotError(f"the {self.name} server did not get ready (adapter {self.adapter}): {self.status}") from None

    def log_path(self) -> Path:
        old = os.environ.get("SWESPOT_STATE_DIR")
        os.environ["SWESPOT_STATE_DIR"] = str(self.state_root)
        try:
            return state_dir(self.repo) / "serve.log"
        finally:
            if old is None:
                del os.environ["SWESPOT_STATE_DIR"]
            else:
                os.environ["SWESPOT_STATE_DIR"] = old

    def new_log_lines(self) -> list[str]:
        """The server's log lines written since the last call (from the start after a rotation)."""
        path, offset = self.log_path(), self._log_offset
        if not path.exists():
            return []
        with path.open("rb") as f:
            if f.seek(0, 2) < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
        self._log_offset = offset + len(data)
        return data.decode(errors="replace").splitlines()

    def model_calls(self) -> list[tuple[int, float]]:
        """(prompt tokens, ms) of every completion the server generated so far (its log)."""
        path = self.log_path()
        text = path.read_text(errors="replace") if path.exists() else ""
        return [(int(n), float(ms)) for n, ms in re.findall(r"completion: (\d+) prompt tokens, .*? in (\d+(?:\.\d+)?) ms", text)]

    async def replay(self, task: TypingTask, granularity: str, deadline: float = float("inf"), think_ms: float = 0) -> Replay | None:
        """Type ``task.target`` into the document, accepting what matches (see the module's text); None
        when ``deadline`` (time.monotonic) passes first."""
        lsp = self.lsp
        uri = (self.repo / task.path).as_uri()
        out = Replay(chars=len(task.target))
        calls_before = len(self.model_calls())
        self.new_log_lines()
        self.version += 1
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri, "python", self.version, task.before + task.after)))
        if think_ms > 0:  # the cursor comes to rest at the place; the user gets ready to type
            at = lsp.Position(task.before.count("\n"), len(task.before.rsplit("\n", 1)[-1].encode("utf-16-le")) // 2)
            await self.client.text_document_code_action_async(lsp.CodeActionParams(
                lsp.TextDocumentIdentifier(uri), lsp.Range(at, at), lsp.CodeActionContext(diagnostics=[])))
            await asyncio.sleep(think_ms / 1e3)
        typed = 0
        while True:
            before = task.before + task.target[:typed]
            line = before.count("\n")
            character = len(before.rsplit("\n", 1)[-1].encode("utf-16-le")) // 2
            started = time.perf_counter()
            result = await self.client.protocol.send_request_async(
                "swespot/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})
            out.latencies_ms.append((time.perf_counter() - started) * 1e3)
            request: dict[str, Any] = {"at": typed, "ms": round(out.latencies_ms[-1], 1)}
            for entry in self.new_log_lines():
                if m := CALL_LINE.search(entry):
                    request["call"] = {k: (v if k in ("ended", "layout") else float(v)) for k, v in m.groupdict().items() if v is not None}
                elif "completion from the cache" in entry:
                    request["cached"] = True
                elif m := WARM_LINE.search(entry):
                    request["warm"] = {k: float(v) for k, v in m.groupdict().items()}
            out.requests.append(request)
            if typed >= len(task.target) or time.monotonic() > deadline:
                break
            suggestion = result["items"][0]["insertText"] if result["items"] else ""
            take = 0
            if suggestion:
                out.shown += 1
                take = accepted_length(suggestion, task.target[typed:], granularity)
            request.update(shown=len(suggestion), took=take)
            if take >= MIN_ACCEPT:
                out.accepted += 1
                out.accepted_chars += take
                typed += take
            else:
                typed += 1
            out.keystrokes += 1
            self.version += 1
            self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(version=self.version, uri=uri),
                [lsp.TextDocumentContentChangeWholeDocument(text=task.before + task.target[:typed] + task.after)]))
        self.client.text_document_did_close(lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier(uri)))
        await self.client.protocol.send_request_async("swespot/getStatus", None)  # the log holds all of this replay
        calls = self.model_calls()[calls_before:]
        out.model_calls = len(calls)
        out.prompt_tokens = [n for n, _ in calls]
        out.call_ms = [ms for _, ms in calls]
        return out if typed >= len(task.target) else None

    async def stop(self) -> None:
        await self.client.shutdown_async(None)
        self.client.exit(None)
        await self.client.stop()


# ---- the adapter --------------------------------------------------------------------------------
def adapter_version_dir(spec: str, repo: Path) -> Path:
    """``current``: the published version of ``repo``'s store; else a version folder or its adapter.gguf."""
    if spec == "current":
        version = AdapterStore.for_repo(repo).current()
        if version is None:
            raise SwespotError(f"no adapter is published for {repo} (swespot adapters list --repo {repo})")
        return version.path
    path = Path(spec).expanduser().resolve()
    folder = path.parent if path.is_file() else path
    manifest, why = check_version_dir(folder)
    if manifest is None:
        raise SwespotError(f"--adapter {spec}: not a published adapter version folder ({why})")
    return folder


def publish_into(state_root: Path, repo: Path, version_dir: Path) -> str:
    old = os.environ.get("SWESPOT_STATE_DIR")
    os.environ["SWESPOT_STATE_DIR"] = str(state_root)
    try:
        return AdapterStore(state_dir(repo)).publish(version_dir).name
    finally:
        if old is None:
            del os.environ["SWESPOT_STATE_DIR"]
        else:
            os.environ["SWESPOT_STATE_DIR"] = old


# ---- statistics ---------------------------------------------------------------------------------
def paired(base: list[Replay], cand: list[Replay], seed: int = 0, resamples: int = 2000) -> dict:
    """``cand``'s minus ``base``'s mean per-task chars-saved ratio, the ratio of their total characters
    saved, and the difference of their per-task median keystroke latency (ms), each with a 95%
    percentile-bootstrap interval over tasks (paired resampling). ``saved_ratio_ceiling``: the same ratio
    for a perfect model (``Replay.most_saved``), the most any model can reach against this base on these
    tasks: where the base already saves much, a goal stated as a ratio can lie beyond it."""

    b = np.array([r.ratio for r in base])
    c = np.array([r.ratio for r in cand])
    bs = np.array([r.saved for r in base], dtype=float)
    cs = np.array([r.saved for r in cand], dtype=float)
    bl = np.array([np.median(r.latencies_ms) if r.latencies_ms else np.nan for r in base])
    cl = np.array([np.median(r.latencies_ms) if r.latencies_ms else np.nan for r in cand])
    ms = np.array([r.most_saved for r in base], dtype=float)
    out: dict = {"tasks": len(b), "ratio_difference": round(float((c - b).mean()), 4) if len(b) else None,
                 "saved_ratio": round(float(cs.sum() / bs.sum()), 3) if bs.sum() > 0 else None,
                 "saved_ratio_ceiling": round(float(ms.sum() / bs.sum()), 3) if bs.sum() > 0 else None,
                 "p50_ms_difference": round(float(np.nanmean(cl - bl)), 1) if len(b) and not np.isnan(cl - bl).all() else None}
    if len(b) < MIN_PAIRED_TASKS:
        out["note"] = f"fewer than {MIN_PAIRED_TASKS} paired tasks: no interval"
        return out
    idx = resample_indices(len(b), seed, resamples)
    lo, hi = np.percentile((c[idx] - b[idx]).mean(1), [2.5, 97.5])
    out["ratio_difference_ci95"] = [round(float(lo), 4), round(float(hi), 4)]
    if out["p50_ms_difference"] is not None:
        lo, hi = np.nanpercentile(np.nanmean((cl - bl)[idx], 1), [2.5, 97.5])
        out["p50_ms_difference_ci95"] = [round(float(lo), 1), round(float(hi), 1)]
    base_sums = bs[idx].sum(1)
    ok = base_sums > 0
    if ok.any():
        lo, hi = np.percentile(cs[idx].sum(1)[ok] / base_sums[ok], [2.5, 97.5])
        out["saved_ratio_ci95"] = [round(float(lo), 3), round(float(hi), 3)]
        out["saved_ratio_resamples_without_base_savings"] = int((~ok).sum())
        lo, hi = np.percentile(ms[idx].sum(1)[ok] / base_sums[ok], [2.5, 97.5])
        out["saved_ratio_ceiling_ci95"] = [round(float(lo), 3), round(float(hi), 3)]
    return out


def summary(name: str, replays: list[Replay]) -> dict:
    chars = sum(r.chars for r in replays)
    keys = sum(r.keystrokes for r in replays)
    shown = sum(r.shown for r in replays)
    lat = [x for r in replays for x in r.latencies_ms]
    calls = sum(r.model_calls for r in replays)
    prompt_tokens = [n for r in replays for n in r.prompt_tokens]
    call_ms = [ms for r in replays for ms in r.call_ms]
    return {"model": name, "tasks": len(replays), "chars": chars, "keystrokes": keys,
            "chars_saved_per_char": round((chars - keys) / chars, 4) if chars else None,
            "ceiling_per_char": round(sum(r.most_saved for r in replays) / chars, 4) if chars else None,
            "shown": shown, "accepted_share": round(sum(r.accepted for r in replays) / shown, 4) if shown else None,
            "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "requests": len(lat),
            "model_calls_per_request": round(calls / len(lat), 3) if lat else None,
            "prompt_tokens_p50": percentile(prompt_tokens, 50), "model_call_p50_ms": percentile(call_ms, 50),
            "model_call_p95_ms": percentile(call_ms, 95)}


# ---- main ---------------------------------------------------------------------------------------
async def run(args, tasks: list[TypingTask], checkout: Path, gguf: Path, work: Path, adapter_dir: Path | None) -> dict:
    settings = {"threads": args.threads, "completionMaxTokens": args.max_tokens, "completionMaxMs": args.max_ms,
                "adapterPollS": 0.5}
    if args.context in ("on", "off"):
        settings["completionContextTokens"] = args.context_tokens if args.context == "on" else 0
    else:  # both: every model with the definitions; the base also without them
        settings["completionContextTokens"] = args.context_tokens
    servers = [Server("base", gguf, checkout, work / "state-base", settings)]
    if args.context == "both":
        servers.append(Server(NO_CONTEXT, gguf, checkout, work / "state-base-nocontext", {**settings, "completionContextTokens": 0}))
    if adapter_dir is not None:
        root = work / "state-adapter"
        name = publish_into(root, checkout, adapter_dir)
        servers.append(Server(f"adapter {adapter_dir.name}", gguf, checkout, root, settings, adapter=name))
    for server in servers:
        await server.start()
    results: dict[str, list[Replay]] = {s.name: [] for s in servers}
    rows = []
    deadline = time.monotonic() + args.max_minutes * 60
    hard_deadline = deadline + args.max_minutes * 15  # a task still running then is dropped, for every model
    try:
        for n, task in enumerate(tasks):
            if time.monotonic() > deadline:
                print(f"time cap reached after {n} tasks", file=sys.stderr)
                break
            order = servers if n % 2 == 0 else servers[::-1]  # alternate who goes first
            row: dict[str, Any] = {"task": task.id, "family": task.family, "path": task.path, "chars": len(task.target)}
            done = {}
            for server in order:
                replay = await server.replay(task, args.granularity, hard_deadline, args.think_ms)
                if replay is None:
                    break
                done[server.name] = replay
            if len(done) < len(servers):
                print(f"time cap reached during task {n + 1}: dropped", file=sys.stderr)
                break
            for server in order:
                replay = done[server.name]
                results[server.name].append(replay)
                row[server.name] = {"saved_per_char": round(replay.ratio, 4), "keystrokes": replay.keystrokes,
                                    "shown": replay.shown, "accepted": replay.accepted,
                                    "p50_ms": percentile(replay.latencies_ms, 50), "requests": replay.requests}
            rows.append(row)
            print(f"task {n + 1}/{len(tasks)} {task.path} ({task.family}, {len(task.target)} chars): "
                  + ", ".join(f"{s.name} {row[s.name]['saved_per_char']:.3f}" for s in servers), file=sys.stderr)
    finally:
        for server in servers:
            await server.stop()
    report: dict[str, Any] = {"models": [summary(s.name, results[s.name]) for s in servers], "tasks": rows, "paired": {}}
    if adapter_dir is not None:
        report["paired"]["adapter vs base"] = paired(results["base"], results[servers[-1].name])
    if args.context == "both":
        report["paired"]["base: definitions vs none"] = paired(results[NO_CONTEXT], results["base"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a git repository this project did not write")
    parser.add_argument("--cutoff", help="the knowledge cutoff commit (default: the commit the adapter was trained up to, "
                                         "else --back first-parent commits before HEAD)")
    parser.add_argument("--back", type=int, default=300)
    parser.add_argument("--model", type=Path, help="base GGUF (default: the embedded Gemma 3 270M)")
    parser.add_argument("--adapter", help="'current' (the published version of --repo's store) or a version folder / adapter.gguf")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--family", choices=("all", "body", "line"), default="all",
                        help="held-out function bodies, added lines, or bodies first then lines")
    parser.add_argument("--max-chars", type=int, default=200, help="characters typed per task at most")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="start no task after this much time; a task still running a quarter later is dropped")
    parser.add_argument("--granularity", choices=("char", "word"), default="char")
    parser.add_argument("--think-ms", type=float, default=1350.0,
                        help="the user's pause between the cursor coming to rest at a task's place and the first suggestion asked "
                             "(the keystroke-level model's M); 0: none")
    parser.add_argument("--threads", type=int, default=0,
                        help="llama.cpp threads of every server (0: chosen once at the start from the cores and the load, as a "
                             "lone server would choose them; the servers take turns, and each choosing from the load would "
                             "count the other's typing as a foreign job and take one thread fewer)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-ms", type=int, default=700, help="the server's completionMaxMs")
    parser.add_argument("--context", choices=("on", "off", "both"), default="off",
                        help="the definitions of the names near the cursor in the prompt (completionContextTokens); "
                             "both: the base once with and once without them, paired")
    parser.add_argument("--context-tokens", type=int, default=256, help="completionContextTokens when the context is on")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="keep the checkout and the servers' logs here (an empty folder)")
    args = parser.parse_args()
    try:
        repo = args.repo.resolve()
        adapter_dir = adapter_version_dir(args.adapter, repo) if args.adapter else None
        trained_to = json.loads((adapter_dir / "manifest.json").read_text()).get("commit") if adapter_dir else None
        if not args.cutoff and trained_to and subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{trained_to}^{{commit}}"],
                                                            capture_output=True).returncode == 0:
            args.cutoff = trained_to  # the adapter's own knowledge cutoff: everything after it is held out for it
        cutoff = resolve_cutoff(repo, args.cutoff, args.back)
        if args.model:
            gguf = args.model.resolve()
        else:
            from agent.default_model import ensure_default_gguf

            gguf = Path(ensure_default_gguf())
        tasks = make_typing_tasks(repo, cutoff, args.tasks, args.max_chars, args.family)
        if not args.threads:
            from agent.threads import choose_threads

            args.threads = choose_threads()  # before any server runs: the machine as one server would find it
        if not tasks:
            raise SwespotError(f"no Python function or added line after the cutoff {cutoff[:10]} to type")
        with tempfile.TemporaryDirectory(prefix="swespot-typing-") as tmp:
            work = args.work.resolve() if args.work else Path(tmp)
            if work.exists() and any(work.iterdir()):
                raise SwespotError(f"--work {work} is not empty")
            checkout = work / repo.name
            subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(checkout)], check=True)
            subprocess.run(["git", "-C", str(checkout), "checkout", "-q", "--detach", cutoff], check=True)
            started = time.perf_counter()
            report = asyncio.run(run(args, tasks, checkout, gguf, work, adapter_dir))
    except SwespotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.update(repo=str(repo), cutoff=cutoff, family=args.family, model=str(gguf), granularity=args.granularity,
                  max_chars=args.max_chars, wall_s=round(time.perf_counter() - started, 1),
                  think_ms=args.think_ms, settings={"threads": args.threads, "completionMaxTokens": args.max_tokens, "completionMaxMs": args.max_ms,
                            "context": args.context, "completionContextTokens": args.context_tokens},
                  cores=len(os.sched_getaffinity(0)), load_1min=round(os.getloadavg()[0], 2))
    print_rows(f"typing replay of {len(report['tasks'])} held-out tasks ({repo.name}, cutoff {cutoff[:10]}, {args.granularity}-granular acceptance)",
               report["models"])
    if report["paired"]:
        print(json.dumps({"paired over tasks (X vs Y: X's minus Y's; saved_ratio: X's characters saved / Y's)": report["paired"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
