"""Evaluation on the user's own repository under a knowledge cutoff.

Everything up to the cutoff may be learned; every task comes from the commits after it:

- **line** (completion): the first substantial line of each hunk a later commit added, completed left to
  right from the file above it; exact match and edit similarity of the greedy completion, and the
  per-token loss of the real line.
- **body** (completion): Python functions a later commit added or changed, written from their
  signature; edit similarity and per-token loss of the real body.
- **infill** (completion with the code after the cursor): the first lines (up to ``INFILL_MAX_LINES``) of
  each hunk a later commit added inside a file, written between the code before and the code after, in
  the prompt the language server builds (``lsp_server.completion.build_prompt``) and with the layout it
  serves: fill-in-the-middle when the model has FIM tokens or the adapter's manifest declares ones it was
  trained with (``serving_fim``), else left to right with the code after the cursor as a comment. Loss of
  the real middle; exact match and edit similarity of the greedy suggestion trimmed as the server trims
  it. A model scored in the FIM layout also gets ``ltr_loss``, the same tasks left to right, so the
  layout's own effect can be read off (``layout_comparison``).
- **design** (QA): questions about symbols defined after the cutoff, answered from the index of the
  newest commit (where is it defined, who calls it); accuracy of the generated answer and loss of the
  grounded answer. Asked without tools: it measures what the weights know.
- **facts** (QA): the held-out facts (``trainer/experience/heldout.py``): the design questions, in the
  exact words the training episodes use, about the pre-cutoff symbols whose design episodes the
  experience withholds. The model saw their code in the other units, never the question. Asked at the
  cutoff, without tools; accuracy (the answer names the right file, caller, ...) and loss of the
  grounded answer.
- **replay** (agent tasks): a later commit's message is the task, its parent the starting state, in a
  scratch copy. Scored by the commit's own tests where it added or changed tests (written in after the
  agent stops, run sandboxed), else by how closely the agent's change matches the real one. Turns and
  tokens per task are recorded.

All models run through llama.cpp exactly as they are served (the base GGUF plus an adapter), so the
numbers are what the user would get. Torch-free.

Every comparison is paired over the same tasks (``paired_comparison``): per family and metric, the
difference candidate − reference with a paired bootstrap 95% interval (tasks resampled; for the
token-weighted loss the ratio is recomputed on each resample), and a verdict read from the interval,
never from the point estimate: "better", "worse" or "no measurable change". The headline is the
token-weighted per-token loss over the line and body tasks.

Tasks are spread over all the commits after the cutoff (``_spread``: one task per commit in turn, so a
big commit cannot crowd out the rest). Loss is computed for every task (one decode pass); the greedy
generation behind exact match and edit similarity costs several times more, so it runs on an evenly
spread subset of the line and body tasks (``generate_line``, ``generate_body``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import git
import numpy as np
from tqdm import tqdm

from agent.errors import SwespotError
from agent.index import RepoIndex, is_test_file
from agent.loop import Agent, Budget
from agent.models import LlamaModel
from agent.render import Renderer
from agent.resolve import Resolver
from agent.runtime import LlamaRuntime
from agent.tools import CommandPolicy, Workspace, call_tool, make_tools
from trainer.eval_report import metric_label, write_report
from trainer.experience import design as D
from trainer.experience import history as H
from trainer.experience.files import ignored_paths, secret_reason, select_files, vendored_or_generated
from trainer.experience.heldout import is_heldout_fact
from trainer.experience.snapshot import Snapshot

log = logging.getLogger(__name__)

FAMILIES = ("line", "body", "infill", "design", "facts", "replay")
CODE_SUFFIXES = {".py", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".c", ".h", ".cc", ".cpp", ".rb", ".sh"}
MIN_LINE_CHARS = 8
MAX_BODY_LINES = 40
INFILL_MAX_LINES = 8  # the middle of an infill task: at most this many lines (trainer/experience/text.py: FIM_MAX_MIDDLE_LINES)
INFILL_SUFFIX_LINES = 12  # the code after the middle kept with a task (the server shows 12: completion.SUFFIX_LINES)
DESIGN_SYSTEM = "You answer questions about this software repository briefly and exactly."

# Sizes per profile. "quick" gives intervals worth reading (on the order of 100 line and 20 body tasks)
# and fits the embedded model on a 2-core CPU in a few minutes per model; replay is left out there: an
# agent task costs a minute, and one task measures nothing. generate_*: how many of the line/body tasks
# are also completed greedily (exact match, edit similarity); the loss covers all of them.
EVAL_PROFILES = {
    "tiny": dict(line=8, body=3, infill=4, design=6, facts=6, replay=1, generate_line=8, generate_body=3, generate_infill=4,
                 context_tokens=192, max_steps=3, replay_tokens=6000, n_ctx=2048),
    "quick": dict(line=100, body=20, infill=40, design=12, facts=24, replay=0, generate_line=30, generate_body=6, generate_infill=12,
                  context_tokens=320, max_steps=4, replay_tokens=10000, n_ctx=4096),
    "full": dict(line=400, body=100, infill=150, design=60, facts=80, replay=20, generate_line=150, generate_body=40, generate_infill=50,
                 context_tokens=1024, max_steps=15, replay_tokens=60000, n_ctx=8192),
}
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_PAIRED_TASKS = 5  # fewer paired tasks give no interval (and no verdict but "no measurable change")
HEADLINE_FAMILIES = ("line", "body")  # the headline: token-weighted per-token loss of held-out code
BETTER, WORSE, NO_CHANGE = "better", "worse", "no measurable change"


@dataclass
class Task:
    id: str
    family: str
    commit: str
    path: str | None
    prompt: str  # file prefix (line, body), question (design), request (replay)
    target: str  # the real line/body, the grounded answer, or the commit's subject
    meta: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    name: str
    adapter: Path | None  # an adapter.gguf; None: the base model


# ---- tasks --------------------------------------------------------------------------------------
def post_cutoff_changes(repo, cutoff: str, until: str = "HEAD"):
    """The replayable changes of commits after ``cutoff`` up to ``until``, oldest first."""
    start, end = H.resolve(repo, cutoff), H.resolve(repo, until)
    if start.hexsha == end.hexsha:
        return []
    if not repo.is_ancestor(start.hexsha, end.hexsha):
        raise SwespotError(f"the cutoff {cutoff} is not an ancestor of {until}: nothing is 'after' it")
    out = []
    for commit in repo.iter_commits(f"{start.hexsha}..{end.hexsha}", reverse=True):
        if len(commit.parents) != 1:
            continue  # merges and roots are not single changes
        change = H.change_of(commit, commit.parents[0])
        if change is not None:
            out.append(change)
    return out


def _usable(path: str, text: str | None) -> bool:
    return (text is not None and PurePosixPath(path).suffix in CODE_SUFFIXES
            and not secret_reason(path, text) and not vendored_or_generated(path, text))


def _task_id(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _code_files(changes):
    """(change, file change, the file's lines after it) for the usable non-test code files a change touched."""
    for change in changes:
        for fc in change.files:
            if fc.after is not None and _usable(fc.path, fc.after) and not is_test_file(fc.path):
                yield change, fc, fc.after.splitlines(keepends=True)


def line_tasks(changes, limit: int, per_file: int = 3) -> list[Task]:
    tasks = []
    for change, fc, lines in _code_files(changes):
        taken = 0
        for j1, j2 in fc.added:
            if taken >= per_file:
                break
            for j in range(j1, min(j2, len(lines))):
                if len(lines[j].strip()) >= MIN_LINE_CHARS and j > 0:
                    tasks.append(Task(_task_id("line", change.commit, fc.path, j), "line", change.commit, fc.path,
                                      "".join(lines[:j]), lines[j].rstrip("\n"), {"line": j + 1}))
                    taken += 1
                    break
    return _spread(tasks, limit)


def body_tasks(changes, limit: int) -> list[Task]:
    tasks = []
    for change in changes:
        for fc in change.files:
            if fc.after is None or not fc.path.endswith(".py") or not _usable(fc.path, fc.after) or is_test_file(fc.path):
                continue
            changed = {j + 1 for j1, j2 in fc.added for j in range(j1, j2)}
            index = RepoIndex.build([(fc.path, fc.after)])
            lines = fc.after.splitlines(keepends=True)
            for sym in index.files[fc.path].symbols if fc.path in index.files else []:
                start = sym.body_start_line
                if sym.kind not in ("function", "method") or start is None or start > sym.end_line:
                    continue
                if not changed & set(range(start, sym.end_line + 1)) or sym.end_line - start + 1 > MAX_BODY_LINES:
                    continue
                body = "".join(lines[start - 1: sym.end_line])
                if len(body.strip()) < 2 * MIN_LINE_CHARS:
                    continue
                tasks.append(Task(_task_id("body", change.commit, fc.path, sym.qualname), "body", change.commit, fc.path,
                                  "".join(lines[: start - 1]), body.rstrip("\n"), {"symbol": sym.qualname, "line": start}))
    return _spread(tasks, limit)


def infill_tasks(changes, limit: int, per_file: int = 2) -> list[Task]:
    """Hunks added inside a file (code before and after them): the prompt is the code before, the target
    the hunk's first lines (whole lines), ``meta["suffix"]`` the code after (INFILL_SUFFIX_LINES lines)."""
    tasks = []
    for change, fc, lines in _code_files(changes):
        taken = 0
        for j1, j2 in fc.added:
            end = min(j2, j1 + INFILL_MAX_LINES, len(lines))
            middle, after = "".join(lines[j1:end]), lines[end:end + INFILL_SUFFIX_LINES]
            if taken >= per_file or j1 == 0 or len(middle.strip()) < MIN_LINE_CHARS or not "".join(after).strip():
                continue
            tasks.append(Task(_task_id("infill", change.commit, fc.path, j1), "infill", change.commit, fc.path,
                              "".join(lines[:j1]), middle, {"line": j1 + 1, "lines": end - j1, "suffix": "".join(after)}))
            taken += 1
    return _spread(tasks, limit)


def design_tasks(repo, changes, until: str, limit: int) -> list[Task]:
    """Questions about symbols that commits after the cutoff defined or changed, answered from the
    index of ``until`` (only the repository's learnable files: ignored, secret and vendored ones are not)."""
    touched = {fc.path for change in changes for fc in change.files if fc.after is not None}
    selection = select_files(repo, until)
    files = [(f.path, f.text) for f in selection.files if f.path in touched and not is_test_file(f.path)]
    if not files:
        return []
    index = RepoIndex.build([(f.path, f.text) for f in selection.files if PurePosixPath(f.path).suffix in CODE_SUFFIXES])
    known = _symbols_before(changes, files)
    fresh = []  # symbols defined or changed after the cutoff
    for path, text in files:
        lines = text.splitlines()
        for sym in index.files[path].symbols if path in index.files else []:
            if (path, sym.qualname, "\n".join(lines[sym.start_line - 1: sym.end_line])) not in known:
                fresh.append(sym)
    unique = lambda sym: len(index.definitions(sym.name)) == 1 and not sym.name.startswith("_")  # noqa: E731
    tasks, asked = [], set()
    for sym in fresh:
        if not unique(sym):
            continue  # an ambiguous or private name has no single grounded answer
        kind = "class" if sym.kind == "class" else "function"
        tasks.append(Task(_task_id("where", sym.path, sym.qualname), "design", "", sym.path,
                          f"In which file of this repository is the {kind} `{sym.qualname}` defined?",
                          f"`{sym.qualname}` is defined in `{sym.path}`.", {"question": "where", "answer": sym.path}))
    # who calls what, where the call is new: a fresh caller of any (possibly older) symbol
    for sym in fresh:
        for callee in index.callees(sym):
            if not unique(callee) or callee.qualname in asked or callee.name == sym.name:
                continue
            asked.add(callee.qualname)
            callers = sorted({c.name for c in index.callers(callee) if c in fresh and c.name != callee.name})
            if callers:
                tasks.append(Task(_task_id("caller", callee.path, callee.qualname), "design", "", callee.path,
                                  f"Name a function of this repository that calls `{callee.qualname}`.",
                                  f"`{sym.qualname}` in `{sym.path}` calls `{callee.qualname}`.",
                                  {"question": "caller", "answer": sym.name, "accept": callers}))
    return _spread(tasks, limit)


def _symbols_before(changes, files) -> set[tuple[str, str, str]]:
    """(path, qualname, source) of every symbol the touched files held at the cutoff (the state before
    the first post-cutoff change of each file)."""
    before: dict[str, str] = {}
    for change in changes:
        for fc in change.files:
            if fc.path not in before and fc.new_path:
                before[fc.new_path] = fc.before or ""
    out = set()
    for path, _ in files:
        text = before.get(path)
        if not text:
            continue
        index, lines = RepoIndex.build([(path, text)]), text.splitlines()
        for sym in index.files[path].symbols if path in index.files else []:
            out.add((path, sym.qualname, "\n".join(lines[sym.start_line - 1: sym.end_line])))
    return out


def facts_tasks(repo_path: Path, cutoff: str, limit: int) -> list[Task]:
    """The held-out facts: the design questions about the pre-cutoff symbols ``is_heldout_fact`` picks
    (names defined once in the repository), in the training episodes' words (``design_questions``),
    grounded in the index and resolver of the cutoff's learnable files, as the experience sees them."""

    repo = git.Repo(repo_path)
    commit = H.resolve(repo, cutoff).hexsha
    all_paths = [str(i.path) for i in repo.commit(commit).tree.traverse() if isinstance(i, git.Blob)]
    allowed = {f.path for f in select_files(repo, commit, ignored=ignored_paths(repo, all_paths)).files}
    tasks = []
    with Snapshot(repo_path, prefix="swespot-eval-") as snap:
        snap.checkout(commit)
        for path in set(all_paths) - allowed:  # what the experience may not learn from is not there
            (snap.tree / path).unlink(missing_ok=True)
        index = Workspace(snap.tree, policy=CommandPolicy(approve=lambda _cmd: False)).index()
        resolver = Resolver(snap.tree, index)
        for sym in index.symbols():
            if sym.path not in allowed or not is_heldout_fact(sym.path, sym.qualname) or len(index.definitions(sym.name)) != 1:
                continue
            for qa in D.design_questions(index, sym, resolver):
                accept = [qa.path] if qa.kind == "where" else list(qa.accept)  # "where": the right file
                tasks.append(Task(_task_id("facts", qa.kind, sym.path, sym.qualname), "facts", commit, sym.path, qa.question,
                                  qa.answer, {"question": qa.kind, "symbol": sym.qualname, "accept": accept}))
    return _spread(tasks, limit)


def replay_tasks(changes, limit: int) -> list[Task]:
    tasks = []
    for change in changes:
        if not change.subject or not any(_usable(fc.path, fc.after or fc.before) for fc in change.files):
            continue
        tests = sorted(fc.path for fc in change.files if fc.after is not None and is_test_file(fc.path) and fc.path.endswith(".py"))
        tasks.append(Task(_task_id("replay", change.commit), "replay", change.commit, None, change.message.strip(),
                          change.subject, {"parent": change.parent, "tests": tests,
                                           "files": {fc.path: {"before": fc.before, "after": fc.after} for fc in change.files}}))
    return _spread(tasks, limit)


def _spread(tasks: list[Task], limit: int) -> list[Task]:
    """At most ``limit`` tasks spread over the commits (design questions: over their files): in rounds of
    one task per commit, the commits of the last, partial round evenly spaced over the history; a
    commit's tasks in a fixed shuffled order. Deterministic, and the input order is kept."""
    if len(tasks) <= limit:
        return tasks
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault((task.path if task.family in ("design", "facts") else task.commit) or "", []).append(i)
    rng = random.Random(len(tasks))
    queues = list(groups.values())
    for queue in queues:
        rng.shuffle(queue)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        live = [q for q in queues if len(q) > depth]
        need = limit - len(chosen)
        if len(live) > need:
            live = [live[(2 * k + 1) * len(live) // (2 * need)] for k in range(need)]
        chosen += [q[depth] for q in live]
        depth += 1
    return [tasks[i] for i in sorted(chosen)]


def _mark_generated(tasks: list[Task], count: int) -> list[Task]:
    """Mark an evenly spaced ``count`` of the tasks for greedy generation (the rest are scored by loss)."""
    picks = {(2 * k + 1) * len(tasks) // (2 * count) for k in range(count)} if count < len(tasks) else set(range(len(tasks)))
    for i, task in enumerate(tasks):
        task.meta["generate"] = i in picks
    return tasks


def make_tasks(repo_path: Path, cutoff: str, until: str = "HEAD", families=FAMILIES, profile: str = "quick") -> list[Task]:
    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    sizes = EVAL_PROFILES[profile]
    changes = post_cutoff_changes(repo, cutoff, until)
    tasks: list[Task] = []
    if "line" in families:
        tasks += _mark_generated(line_tasks(changes, sizes["line"]), sizes["generate_line"])
    if "body" in families:
        tasks += _mark_generated(body_tasks(changes, sizes["body"]), sizes["generate_body"])
    if "infill" in families and sizes.get("infill"):
        tasks += _mark_generated(infill_tasks(changes, sizes["infill"]), sizes.get("generate_infill", 0))
    if "design" in families:
        tasks += design_tasks(repo, changes, until, sizes["design"])
    if "facts" in families:
        tasks += facts_tasks(repo_path, cutoff, sizes["facts"])
    if "replay" in families and sizes["replay"]:
        tasks += replay_tasks(changes, sizes["replay"])
    return tasks


# ---- scoring helpers ----------------------------------------------------------------------------
def edit_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def names_any(text: str, accept: list[str]) -> bool:
    """Whether ``text`` names one of ``accept`` (a path or a qualified name) as a whole: `get` is not
    named by `together` or by `cache.get_all`."""
    return any(re.search(rf"(?<![\w./]){re.escape(a)}(?![\w/]|\.\w)", text) for a in accept if a)


def target_loss(runtime, prefix_ids: list[int], target_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats per token) of ``target_ids`` following ``prefix_ids``."""
    return float(-runtime.target_logprobs(prefix_ids + target_ids, len(prefix_ids)).mean())


def _left_truncate(runtime, text: str, max_tokens: int) -> list[int]:
    ids = runtime.tokenize(text, add_bos=False, special=False)[-max_tokens:]
    bos = runtime.tokenize("", add_bos=True)
    return bos + ids


# ---- running the models -------------------------------------------------------------------------
class Evaluator:
    def __init__(self, base_gguf: Path, models: list[ModelSpec], profile: str = "quick", progress: bool = True,
                 threads: int | None = None) -> None:
        if profile not in EVAL_PROFILES:
            raise SwespotError(f"unknown evaluation profile {profile!r} (choose {', '.join(EVAL_PROFILES)})")
        self.base_gguf, self.models, self.sizes = Path(base_gguf), models, EVAL_PROFILES[profile]
        self.progress, self.threads = progress, threads
        self._fim: tuple[str, str, str] | None = None  # the FIM markers of the selected model (None: left to right)

    def _runtime(self, **kwargs):
        rt = LlamaRuntime(self.base_gguf, n_threads=self.threads, **kwargs)
        names = {}
        for spec in self.models:
            if spec.adapter is not None:
                names[spec.name] = rt.load_adapter(spec.adapter, name=spec.name)
        return rt, names

    def _select(self, rt, names: dict, spec: ModelSpec) -> None:
        rt.set_adapters({names[spec.name]: 1.0} if spec.adapter is not None else None)
        # lazy: trainer sits below lsp_server; the evaluation borrows the server's own prompt code on purpose
        from lsp_server.completion import serving_fim

        self._fim = serving_fim(rt, adapter_manifest(spec))  # the layout the server would use with this model

    def run(self, tasks: list[Task], repo_path: Path | None = None) -> list[dict]:
        results: list[dict] = []
        text_tasks = [t for t in tasks if t.family != "replay"]
        agent_tasks = [t for t in tasks if t.family == "replay"]
        total = len(text_tasks) * len(self.models)
        if text_tasks:
            rt, names = self._runtime(n_ctx=max(1024, self.sizes["context_tokens"] + 512))
            renderer = Renderer.for_template(rt.chat_template, bos_token=rt.bos_token, eos_token=rt.eos_token)
            with rt, tqdm(total=total, desc="eval: completion/design", unit="task", disable=not self.progress, file=sys.stderr) as bar:
                for spec in self.models:
                    self._select(rt, names, spec)
                    for task in text_tasks:
                        started = time.perf_counter()
                        row = self._text_task(rt, task, renderer)
                        results.append({"model": spec.name, "task": task.id, "family": task.family, "commit": task.commit,
                                        "path": task.path, "seconds": round(time.perf_counter() - started, 3), **row})
                        bar.update(1)
        if agent_tasks:
            if repo_path is None:
                raise SwespotError("replay tasks need the repository")
            rt, names = self._runtime(n_ctx=self.sizes["n_ctx"])
            with rt, tqdm(total=len(agent_tasks) * len(self.models), desc="eval: replay (agent)", unit="task",
                          disable=not self.progress, file=sys.stderr) as bar:
                for spec in self.models:
                    self._select(rt, names, spec)
                    for task in agent_tasks:
                        started = time.perf_counter()
                        row = self._replay_task(rt, task, repo_path)
                        results.append({"model": spec.name, "task": task.id, "family": "replay", "commit": task.commit,
                                        "path": None, "seconds": round(time.perf_counter() - started, 3), **row})
                        bar.update(1)
        return results

    def _text_task(self, rt, task: Task, renderer) -> dict:
        ctx = self.sizes["context_tokens"]
        generate = task.meta.get("generate", True)
        if task.family == "infill":
            return self._infill_task(rt, task, self._fim)
        if task.family in ("line", "body"):
            prefix = _left_truncate(rt, task.prompt, ctx)
            target = rt.tokenize(task.target, add_bos=False, special=False)[:128]
            row = {"loss": target_loss(rt, prefix, target) if target else float("nan"), "tokens": len(target),
                   "exact": None, "similarity": None, "completion": None, "completion_tokens": 0}
            if not generate:
                return row
            if task.family == "line":
                out = rt.complete(prefix, max_tokens=32, stop=["\n"])
                got, real = out.text.strip(), task.target.strip()
            else:
                out = rt.complete(prefix, max_tokens=min(96, 2 * len(target) + 8), stop=["\ndef ", "\nclass ", "\n\n\n"])
                got, real = out.text.rstrip(), task.target
            return row | {"exact": got.strip() == real.strip(), "similarity": edit_similarity(got, real), "completion": out.text,
                          "completion_tokens": out.completion_tokens}
        # design QA through the chat renderer (the format the experience trained), without tools
        messages = [{"role": "system", "content": DESIGN_SYSTEM}, {"role": "user", "content": task.prompt}]
        prompt_ids = rt.tokenize(renderer.prompt(messages), add_bos=True)
        target = rt.tokenize(task.target, add_bos=False, special=False)
        loss = target_loss(rt, prompt_ids, target)
        out = rt.complete(prompt_ids, max_tokens=48, stop=list(renderer.stop) + ["\n\n"])
        accept = task.meta.get("accept") or [task.meta["answer"]]
        return {"loss": loss, "tokens": len(target), "exact": names_any(out.text, accept),
                "similarity": edit_similarity(out.text.strip(), task.target), "completion": out.text,
                "completion_tokens": out.completion_tokens}

    def _infill_task(self, rt, task: Task, fim: tuple[str, str, str] | None) -> dict:
        """An infill task in the server's own prompt (no snippets) and layout; see the module docstring."""
        from lsp_server.completion import CompletionContext, build_prompt, fit_to_line_rest, stop_strings, trim_completion

        keep = self.sizes["context_tokens"] * 3  # characters of the code before (about 3 per token of code)
        prefix = task.prompt[-keep:]
        prefix = prefix[prefix.find("\n") + 1:] if len(task.prompt) > keep and "\n" in prefix else prefix
        ctx = CompletionContext(task.path or "", "", prefix, task.meta["suffix"])
        target = rt.tokenize(task.target, add_bos=False, special=False)[:128]

        def loss_in(layout: tuple[str, str, str] | None) -> tuple[float, list[int]]:
            prompt = rt.tokenize(build_prompt(ctx, [], layout), add_bos=True, special=layout is not None)
            return (target_loss(rt, prompt, target) if target else float("nan")), prompt

        loss, prompt = loss_in(fim)
        row = {"loss": loss, "tokens": len(target), "layout": "fim" if fim else "ltr",
               "ltr_loss": loss_in(None)[0] if fim else loss,
               "exact": None, "similarity": None, "completion": None, "completion_tokens": 0}
        if not task.meta.get("generate", True):
            return row
        out = rt.complete(prompt, max_tokens=min(96, 2 * len(target) + 8), stop=stop_strings(fim))
        got = trim_completion(fit_to_line_rest(out.text, ctx), ctx)
        return row | {"exact": got.strip() == task.target.strip(), "similarity": edit_similarity(got.rstrip(), task.target.rstrip()),
                      "completion": got, "completion_tokens": out.completion_tokens}

    def _replay_task(self, rt, task: Task, repo_path: Path) -> dict:
        files = task.meta["files"]
        with Snapshot(repo_path, prefix="swespot-eval-") as snap:
            snap.checkout(task.meta["parent"])
            ws = Workspace(snap.tree, policy=CommandPolicy(approve=lambda _cmd: True), run_timeout=60, scratch_runs=False)
            agent = Agent(LlamaModel(rt, max_tokens=256), ws, Budget(max_steps=self.sizes["max_steps"],
                                                                      max_tokens=self.sizes["replay_tokens"]), unit="eval")
            result = agent.run(task.prompt)
            # the agent's change vs the real one, over the files the commit touched
            reached, ours, theirs = True, [], []
            for path, sides in files.items():
                if task.meta["tests"] and path in task.meta["tests"]:
                    continue  # the commit's tests are the grader, not part of what the agent must write
                now = snap.tree / path
                mine = now.read_text(errors="replace") if now.is_file() else None
                reached &= mine == sides["after"]
                ours += _changed_lines(sides["before"], mine)
                theirs += _changed_lines(sides["before"], sides["after"])
            similarity = difflib.SequenceMatcher(None, ours, theirs, autojunk=False).ratio() if (ours or theirs) else 1.0
            tests_passed = None
            if task.meta["tests"]:
                for path in task.meta["tests"]:
                    target = snap.tree / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(files[path]["after"])
                ws.invalidate()
                tests_passed = _run_tests(ws, task.meta["tests"])
        resolved = reached or bool(tests_passed)
        return {"resolved": resolved, "exact": reached, "similarity": similarity, "tests_passed": tests_passed,
                "scored_by": "tests" if task.meta["tests"] else "diff", "exit": result.exit, "turns": result.steps,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "format_errors": result.format_errors}


def adapter_manifest(spec: ModelSpec) -> dict | None:
    """The manifest.json next to a model's adapter.gguf (the store's and the trainer's layout), if any."""
    path = spec.adapter.parent / "manifest.json" if spec.adapter is not None else None
    if path is None or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _changed_lines(before: str | None, after: str | None) -> list[str]:
    a, b = (before or "").splitlines(), (after or "").splitlines()
    return [line for line in difflib.unified_diff(a, b, lineterm="", n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def _run_tests(ws, tests: list[str]) -> bool:
    out = call_tool(make_tools(ws), "run", json.dumps({"command": "python -m pytest -q -x -p no:cacheprovider " + " ".join(tests),
                                                        "timeout": 120}))
    return "[exit code 0" in out


# ---- summarising ---------------------------------------------------------------------------------
# (family, metric, lower is better); the first metric of a family is the one its verdict is read from
PAIRED_METRICS = (
    ("line", "loss", True), ("line", "exact", False), ("line", "similarity", False),
    ("body", "loss", True), ("body", "similarity", False), ("body", "exact", False),
    ("infill", "loss", True), ("infill", "exact", False), ("infill", "similarity", False),
    ("design", "loss", True), ("design", "exact", False),
    ("facts", "loss", True), ("facts", "exact", False),
    ("replay", "resolved", False), ("replay", "similarity", False),
)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(values) / len(values), 4) if values else None


def _value(row: dict, metric: str) -> float | None:
    value = row.get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _weighted(values, weights, idx=None):
    """Weighted mean, or with ``idx`` ([resamples, n]) the weighted mean of every resample."""
    if idx is None:
        return float((values * weights).sum() / weights.sum())
    w = weights[idx]
    return (values[idx] * w).sum(1) / np.maximum(w.sum(1), 1e-12)


def _resamples(n: int, seed: int, resamples: int):
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(values, weights=None, *, seed: int = BOOTSTRAP_SEED,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of one model's (weighted) mean over tasks; None under
    MIN_PAIRED_TASKS tasks."""
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_PAIRED_TASKS:
        return None
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    lo, hi = np.percentile(_weighted(values, weights, _resamples(len(values), seed, resamples)), [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def verdict_of(lo: float | None, hi: float | None, lower_is_better: bool) -> str:
    """"better" when the interval of candidate − reference lies entirely on the improving side, "worse"
    when entirely on the other, else (or without an interval) "no measurable change"."""
    if lo is None or hi is None:
        return NO_CHANGE
    if (hi < 0) if lower_is_better else (lo > 0):
        return BETTER
    if (lo > 0) if lower_is_better else (hi < 0):
        return WORSE
    return NO_CHANGE


def paired_interval(candidate: list[dict], reference: list[dict], metric: str, *, lower_is_better: bool,
                    weighted: bool | None = None, seed: int = BOOTSTRAP_SEED,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> dict | None:
    """Candidate − reference on ``metric`` over the tasks both rows lists scored, with a paired bootstrap
    95% interval: the same resampled tasks for both models; the loss is token-weighted (``weighted``,
    default for "loss"), i.e. each resample recomputes sum(loss·tokens)/sum(tokens) for each model.
    Absolute difference (lo, hi) and relative to the reference (rel_lo, rel_hi; None where the
    reference's value is 0), each model's own interval, and the verdict. None without paired tasks."""
    weighted = metric == "loss" if weighted is None else weighted
    ref = {r["task"]: r for r in reference}
    triples: list[tuple[float, float, float]] = []
    for row in candidate:
        other = ref.get(row["task"])
        a, b = _value(row, metric), (None if other is None else _value(other, metric))
        weight = float(other.get("tokens") or 0) if weighted and other is not None else 1.0
        if a is not None and b is not None and weight > 0:
            triples.append((a, b, weight))
    if not triples:
        return None
    c, r, w = (np.array(x, dtype=float) for x in zip(*triples))
    point_c, point_b = _weighted(c, w), _weighted(r, w)
    out = {"metric": metric, "tasks": len(triples), "lower_is_better": lower_is_better,
           "candidate": round(point_c, 4), "reference": round(point_b, 4), "delta": round(point_c - point_b, 4),
           "rel": round((point_c - point_b) / point_b, 4) if point_b else None,
           "lo": None, "hi": None, "rel_lo": None, "rel_hi": None, "candidate_ci": None, "reference_ci": None}
    if len(triples) >= MIN_PAIRED_TASKS:
        idx = _resamples(len(triples), seed, resamples)
        mc, mb = _weighted(c, w, idx), _weighted(r, w, idx)
        lo, hi = np.percentile(mc - mb, [2.5, 97.5])
        out.update(lo=round(float(lo), 4), hi=round(float(hi), 4),
                   candidate_ci=[round(float(v), 4) for v in np.percentile(mc, [2.5, 97.5])],
                   reference_ci=[round(float(v), 4) for v in np.percentile(mb, [2.5, 97.5])])
        if point_b and (mb > 0).all():
            rlo, rhi = np.percentile(mc / mb - 1, [2.5, 97.5])
            out.update(rel_lo=round(float(rlo), 4), rel_hi=round(float(rhi), 4))
        out["verdict"] = verdict_of(float(lo), float(hi), lower_is_better)
    else:
        out["verdict"], out["note"] = NO_CHANGE, f"{len(triples)} tasks: too few for an interval"
    return out


def _signed(value: float, unit: str, digits: int = 1) -> str:
    text = f"{value:+.{digits}f}{unit}"
    return text.replace("-", "\u2212")  # a real minus sign


def describe(stats: dict | None, label: str) -> str:
    """One line: "line+body loss 2.452 → 2.301 (−6.2%, 95% CI −8.1% … −4.3%): better". Losses change in
    percent of the reference; rates (exact match, similarity, accuracy) in points."""
    if stats is None:
        return f"{label}: no paired tasks"
    head = f"{label} {stats['reference']:.3f} \u2192 {stats['candidate']:.3f}"
    if stats["metric"] == "loss" and stats["rel"] is not None:
        change = _signed(100 * stats["rel"], "%")
        interval = (f"95% CI {_signed(100 * stats['rel_lo'], '%')} \u2026 {_signed(100 * stats['rel_hi'], '%')}"
                    if stats["rel_lo"] is not None else None)
    else:
        change = _signed(100 * stats["delta"], " points")
        interval = (f"95% CI {_signed(100 * stats['lo'], '')} \u2026 {_signed(100 * stats['hi'], ' points')}"
                    if stats["lo"] is not None else None)
    interval = interval or stats.get("note") or "no interval"
    return f"{head} ({change}, {interval}; {stats['tasks']} tasks): {stats['verdict']}"


def paired_comparison(rows: list[dict], candidate: str, reference: str, *, seed: int = BOOTSTRAP_SEED,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """``candidate`` against ``reference`` over the tasks both answered: every metric of every family
    (``PAIRED_METRICS``) with its interval and verdict, a verdict per family (its first metric), and the
    headline: the token-weighted loss over the line and body tasks (over design and facts where there
    are no code tasks), whose verdict is the overall one."""
    cand = [r for r in rows if r["model"] == candidate]
    ref = [r for r in rows if r["model"] == reference]
    families: dict = {}
    for fam, metric, lower in PAIRED_METRICS:
        stats = paired_interval([r for r in cand if r["family"] == fam], [r for r in ref if r["family"] == fam], metric,
                                lower_is_better=lower, seed=seed, resamples=resamples)
        if stats is not None:
            stats["line"] = describe(stats, metric_label(fam, metric))
            entry = families.setdefault(fam, {"metrics": {}})
            entry["metrics"][metric] = stats
            entry.setdefault("verdict", stats["verdict"])
    present = {r["family"] for r in cand}
    headline_families = [f for f in HEADLINE_FAMILIES if f in present] or [f for f in ("design", "facts") if f in present]
    headline = paired_interval([r for r in cand if r["family"] in headline_families],
                               [r for r in ref if r["family"] in headline_families], "loss", lower_is_better=True,
                               seed=seed, resamples=resamples) if headline_families else None
    label = "+".join(headline_families) + " loss"
    if headline is not None:
        headline.update(families=headline_families, label=label, line=describe(headline, label))
    return {"candidate": candidate, "reference": reference, "headline": headline,
            "verdict": headline["verdict"] if headline else NO_CHANGE,
            "line": headline["line"] if headline else "no loss-scored tasks to compare", "families": families,
            "resamples": resamples, "seed": seed}


def layout_comparison(rows: list[dict], model: str, *, seed: int = BOOTSTRAP_SEED) -> dict | None:
    """For a model scored in the FIM layout: its infill loss in that layout against the same tasks left
    to right (``ltr_loss``), paired (``paired_interval``); None when it has no FIM-scored infill rows."""
    mine = [r for r in rows if r["model"] == model and r["family"] == "infill" and r.get("layout") == "fim"]
    if not mine:
        return None
    ltr = [{**r, "loss": r["ltr_loss"]} for r in mine]
    stats = paired_interval(mine, ltr, "loss", lower_is_better=True, seed=seed)
    return None if stats is None else stats | {"line": describe(stats, "infill loss, FIM layout vs left to right")}


def summarize(rows: list[dict], models: list[ModelSpec]) -> dict:
    """Per model and family: tasks, seconds, and the means (loss token-weighted, scores over the tasks
    that have them), each with its own bootstrap 95% interval (``<metric>_ci``, for error bars)."""
    out: dict = {}
    for spec in models:
        mine = [r for r in rows if r["model"] == spec.name]
        fams: dict = {}
        for fam in FAMILIES:
            rs = [r for r in mine if r["family"] == fam]
            if not rs:
                continue
            entry: dict = {"tasks": len(rs), "seconds": round(sum(r["seconds"] for r in rs), 2)}
            metrics: tuple[str, ...]
            if fam == "replay":
                entry.update(turns=_mean([r["turns"] for r in rs]), tokens=_mean([r["prompt_tokens"] + r["completion_tokens"] for r in rs]))
                metrics = ("resolved", "similarity")
            else:
                metrics = ("loss", "exact", "similarity")
            for metric in metrics:
                scored = [(v, float(r["tokens"]) if metric == "loss" else 1.0) for r in rs
                          if (v := _value(r, metric)) is not None and (metric != "loss" or r["tokens"] > 0)]
                if not scored:
                    entry[metric] = None
                    continue
                values, weights = zip(*scored)
                entry[metric] = round(sum(v * w for v, w in scored) / sum(weights), 4)
                entry[f"{metric}_ci"] = bootstrap_interval(values, weights)
                if metric != "loss":
                    entry[f"{metric}_tasks"] = len(scored)
            fams[fam] = entry
        out[spec.name] = {"adapter": str(spec.adapter) if spec.adapter else None, "families": fams,
                          "seconds": round(sum(r["seconds"] for r in mine), 2)}
    return out


def evaluate(repo_path: Path, cutoff: str, base_gguf: Path, models: list[ModelSpec], *, until: str = "HEAD",
             families=FAMILIES, profile: str = "quick", progress: bool = True, out: Path | None = None,
             reference: str | None = None) -> dict:
    """Build the tasks, run every model on them, compare every other model with ``reference`` (default:
    the first model) in ``report["comparisons"][name]`` (``paired_comparison``), and (with ``out``) write
    report.json and report.html."""

    started = time.perf_counter()
    repo_path = Path(repo_path).resolve()
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SwespotError(f"unknown task families {sorted(unknown)} (choose from {', '.join(FAMILIES)})")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SwespotError(f"two models share a name: {names}")
    reference = reference or (names[0] if names else None)
    if reference is not None and reference not in names:
        raise SwespotError(f"the reference {reference!r} is not one of the models {names}")
    tasks = make_tasks(repo_path, cutoff, until, families, profile)
    task_seconds = round(time.perf_counter() - started, 2)
    repo = git.Repo(repo_path)
    report = {
        "repo": str(repo_path), "cutoff": H.resolve(repo, cutoff).hexsha, "until": H.resolve(repo, until).hexsha,
        "profile": profile, "base_gguf": str(base_gguf), "created_at": time.time(),
        "tasks": {fam: sum(t.family == fam for t in tasks) for fam in families},
        "generated": {fam: sum(t.family == fam and t.meta.get("generate", True) for t in tasks) for fam in ("line", "body", "infill")
                      if fam in families},
        "models": {}, "comparisons": {}, "rows": [], "reference": reference, "task_seconds": task_seconds,
    }
    if tasks:
        rows = Evaluator(base_gguf, models, profile, progress).run(tasks, repo_path)
        report["rows"] = rows
        report["models"] = summarize(rows, models)
        report["comparisons"] = {name: paired_comparison(rows, name, reference) for name in names
                                 if reference is not None and name != reference}
        report["task_list"] = [_listed(t) for t in tasks]
        report["layouts"] = {name: found for name in names if (found := layout_comparison(rows, name)) is not None}
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        write_report(report, Path(out))
    return report


PROMPT_CHARS = 1500  # the end of a line/body task's file prefix kept in report.json (to read the task by; it is huge otherwise)


def _listed(task: Task) -> dict:
    """A task as report.json lists it: the end of a code task's prefix, no replay file contents."""
    out = asdict(task)
    if task.family in ("line", "body", "infill"):
        out["prompt"] = task.prompt[-PROMPT_CHARS:]
    out["meta"] = {k: v for k, v in task.meta.items() if k != "files"}
    return out


def compare(report: dict, candidate: str, reference: str) -> dict:
    """The gate's decision: ``candidate`` may be published unless the paired interval of the headline
    loss (line and body tasks, token-weighted) shows it worse than ``reference``. The result carries the
    verdict, the interval and every family's verdict (what the manifest records)."""
    models = report.get("models") or {}
    if candidate not in models or reference not in models:
        return {"ok": True, "why": "no held-out tasks after the cutoff; nothing to compare", "kind": "eval", "verdict": NO_CHANGE}
    comparison = (report.get("comparisons") or {}).get(candidate)
    if comparison is None or comparison["reference"] != reference:
        comparison = paired_comparison(report["rows"], candidate, reference)
    head = comparison["headline"]
    if head is None:
        return {"ok": True, "why": "no loss-scored tasks; published ungated", "kind": "eval", "verdict": NO_CHANGE}
    keep = ("tasks", "reference", "candidate", "delta", "lo", "hi", "rel", "rel_lo", "rel_hi", "verdict")
    ok = comparison["verdict"] != WORSE
    return {"ok": ok, "why": comparison["line"] + ("" if ok else f" (the {candidate} is worse than the {reference})"),
            "kind": "eval", "verdict": comparison["verdict"], "line": comparison["line"],
            "interval": {k: head[k] for k in keep} | {"families": head["families"], "confidence": 0.95,
                                                      "resamples": comparison["resamples"]},
            "families": {fam: {"verdict": entry["verdict"], **{m: {k: st[k] for k in keep} for m, st in entry["metrics"].items()}}
                         for fam, entry in comparison["families"].items()},
            "losses": {candidate: head["candidate"], reference: head["reference"]}}
