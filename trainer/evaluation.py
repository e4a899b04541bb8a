"""Evaluation on the user's own repository under a knowledge cutoff.

Everything up to the cutoff may be learned; every task comes from the commits after it:

- **line** (completion): the first substantial line of each hunk a later commit added, completed left to
  right from the file above it; exact match and edit similarity of the greedy completion, and the
  per-token loss of the real line.
- **body** (completion): Python functions a later commit added or changed, written from their
  signature; edit similarity and per-token loss of the real body.
- **design** (QA): questions about symbols defined after the cutoff, answered from the index of the
  newest commit (where is it defined, who calls it); accuracy of the generated answer and loss of the
  grounded answer. Asked without tools: it measures what the weights know.
- **replay** (agent tasks): a later commit's message is the task, its parent the starting state, in a
  scratch copy. Scored by the commit's own tests where it added or changed tests (written in after the
  agent stops, run sandboxed), else by how closely the agent's change matches the real one. Turns and
  tokens per task are recorded.

All models run through llama.cpp exactly as they are served (the base GGUF plus an adapter), so the
numbers are what the user would get. Torch-free.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from agent.errors import SwespotError

log = logging.getLogger(__name__)

FAMILIES = ("line", "body", "design", "replay")
CODE_SUFFIXES = {".py", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".c", ".h", ".cc", ".cpp", ".rb", ".sh"}
MIN_LINE_CHARS = 8
MAX_BODY_LINES = 40
DESIGN_SYSTEM = "You answer questions about this software repository briefly and exactly."

# Sizes per profile: "quick" fits the embedded model on a 2-core CPU in a few minutes.
EVAL_PROFILES = {
    "tiny": dict(line=8, body=3, design=6, replay=1, context_tokens=192, max_steps=3, replay_tokens=6000, n_ctx=2048),
    "quick": dict(line=24, body=4, design=8, replay=1, context_tokens=320, max_steps=4, replay_tokens=10000, n_ctx=4096),
    "full": dict(line=200, body=40, design=60, replay=20, context_tokens=1024, max_steps=15, replay_tokens=60000, n_ctx=8192),
}


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
    from trainer.experience import history as H

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
    from trainer.experience.files import secret_reason, vendored_or_generated

    return (text is not None and PurePosixPath(path).suffix in CODE_SUFFIXES
            and not secret_reason(path, text) and not vendored_or_generated(path, text))


def _task_id(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def line_tasks(changes, limit: int, per_file: int = 3) -> list[Task]:
    from agent.index import is_test_file

    tasks = []
    for change in changes:
        for fc in change.files:
            if fc.after is None or not _usable(fc.path, fc.after) or is_test_file(fc.path):
                continue
            lines = fc.after.splitlines(keepends=True)
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
    from agent.index import RepoIndex, is_test_file

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


def design_tasks(repo, changes, until: str, limit: int) -> list[Task]:
    """Questions about symbols that commits after the cutoff defined or changed, answered from the
    index of ``until`` (only the repository's learnable files: ignored, secret and vendored ones are not)."""
    from agent.index import RepoIndex, is_test_file
    from trainer.experience.files import select_files

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
    from agent.index import RepoIndex

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


def replay_tasks(changes, limit: int) -> list[Task]:
    from agent.index import is_test_file

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
    """At most ``limit`` tasks, drawn evenly over the list (and so over the commits), deterministically."""
    if len(tasks) <= limit:
        return tasks
    rng = random.Random(len(tasks))
    return sorted(rng.sample(tasks, limit), key=tasks.index)


def make_tasks(repo_path: Path, cutoff: str, until: str = "HEAD", families=FAMILIES, profile: str = "quick") -> list[Task]:
    import git

    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    sizes = EVAL_PROFILES[profile]
    changes = post_cutoff_changes(repo, cutoff, until)
    tasks: list[Task] = []
    if "line" in families:
        tasks += line_tasks(changes, sizes["line"])
    if "body" in families:
        tasks += body_tasks(changes, sizes["body"])
    if "design" in families:
        tasks += design_tasks(repo, changes, until, sizes["design"])
    if "replay" in families:
        tasks += replay_tasks(changes, sizes["replay"])
    return tasks


# ---- scoring helpers ----------------------------------------------------------------------------
def edit_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


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

    def _runtime(self, **kwargs):
        from agent.runtime import LlamaRuntime

        rt = LlamaRuntime(self.base_gguf, n_threads=self.threads, **kwargs)
        names = {}
        for spec in self.models:
            if spec.adapter is not None:
                names[spec.name] = rt.load_adapter(spec.adapter, name=spec.name)
        return rt, names

    def _select(self, rt, names: dict, spec: ModelSpec) -> None:
        rt.set_adapters({names[spec.name]: 1.0} if spec.adapter is not None else None)

    def run(self, tasks: list[Task], repo_path: Path | None = None) -> list[dict]:
        from tqdm import tqdm

        results: list[dict] = []
        text_tasks = [t for t in tasks if t.family != "replay"]
        agent_tasks = [t for t in tasks if t.family == "replay"]
        total = len(text_tasks) * len(self.models)
        if text_tasks:
            rt, names = self._runtime(n_ctx=max(1024, self.sizes["context_tokens"] + 512))
            from agent.render import Renderer

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
        if task.family in ("line", "body"):
            prefix = _left_truncate(rt, task.prompt, ctx)
            target = rt.tokenize(task.target, add_bos=False, special=False)[:128]
            loss = target_loss(rt, prefix, target) if target else float("nan")
            if task.family == "line":
                out = rt.complete(prefix, max_tokens=32, stop=["\n"])
                got = out.text
                return {"loss": loss, "tokens": len(target), "exact": got.strip() == task.target.strip(),
                        "similarity": edit_similarity(got.strip(), task.target.strip()), "completion": got,
                        "completion_tokens": out.completion_tokens}
            out = rt.complete(prefix, max_tokens=min(96, 2 * len(target) + 8), stop=["\ndef ", "\nclass ", "\n\n\n"])
            got = out.text.rstrip()
            return {"loss": loss, "tokens": len(target), "exact": got.strip() == task.target.strip(),
                    "similarity": edit_similarity(got, task.target), "completion": got,
                    "completion_tokens": out.completion_tokens}
        # design QA through the chat renderer (the format the experience trained)
        messages = [{"role": "system", "content": DESIGN_SYSTEM}, {"role": "user", "content": task.prompt}]
        prompt_ids = rt.tokenize(renderer.prompt(messages), add_bos=True)
        target = rt.tokenize(task.target, add_bos=False, special=False)
        loss = target_loss(rt, prompt_ids, target)
        out = rt.complete(prompt_ids, max_tokens=32, stop=list(renderer.stop) + ["\n\n"])
        accept = task.meta.get("accept") or [task.meta["answer"]]
        correct = any(a in out.text for a in accept)
        return {"loss": loss, "tokens": len(target), "exact": correct, "similarity": edit_similarity(out.text.strip(), task.target),
                "completion": out.text, "completion_tokens": out.completion_tokens}

    def _replay_task(self, rt, task: Task, repo_path: Path) -> dict:
        from agent.loop import Agent, Budget
        from agent.models import LlamaModel
        from agent.tools import CommandPolicy, Workspace
        from trainer.experience.snapshot import Snapshot

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


def _changed_lines(before: str | None, after: str | None) -> list[str]:
    a, b = (before or "").splitlines(), (after or "").splitlines()
    return [line for line in difflib.unified_diff(a, b, lineterm="", n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def _run_tests(ws, tests: list[str]) -> bool:
    from agent.tools import call_tool, make_tools

    out = call_tool(make_tools(ws), "run", json.dumps({"command": "python -m pytest -q -x -p no:cacheprovider " + " ".join(tests),
                                                        "timeout": 120}))
    return "[exit code 0" in out


# ---- summarising ---------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(sum(values) / len(values), 4) if values else None


def summarize(rows: list[dict], models: list[ModelSpec]) -> dict:
    out: dict = {}
    for spec in models:
        mine = [r for r in rows if r["model"] == spec.name]
        fams: dict = {}
        for fam in FAMILIES:
            rs = [r for r in mine if r["family"] == fam]
            if not rs:
                continue
            entry = {"tasks": len(rs), "seconds": round(sum(r["seconds"] for r in rs), 2)}
            if fam == "replay":
                entry.update(resolved=_mean([float(r["resolved"]) for r in rs]), similarity=_mean([r["similarity"] for r in rs]),
                             turns=_mean([r["turns"] for r in rs]),
                             tokens=_mean([r["prompt_tokens"] + r["completion_tokens"] for r in rs]))
            else:
                # the loss is averaged over tokens (long targets weigh more), the scores over tasks
                tok = sum(r["tokens"] for r in rs if not math.isnan(r["loss"]))
                entry.update(loss=round(sum(r["loss"] * r["tokens"] for r in rs if not math.isnan(r["loss"])) / max(tok, 1), 4),
                             exact=_mean([float(r["exact"]) for r in rs]), similarity=_mean([r["similarity"] for r in rs]))
            fams[fam] = entry
        out[spec.name] = {"adapter": str(spec.adapter) if spec.adapter else None, "families": fams,
                          "seconds": round(sum(r["seconds"] for r in mine), 2)}
    return out


def evaluate(repo_path: Path, cutoff: str, base_gguf: Path, models: list[ModelSpec], *, until: str = "HEAD",
             families=FAMILIES, profile: str = "quick", progress: bool = True, out: Path | None = None) -> dict:
    """Build the tasks, run every model on them, and (with ``out``) write report.json and report.html."""
    import git

    from trainer.experience import history as H

    started = time.perf_counter()
    repo_path = Path(repo_path).resolve()
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SwespotError(f"unknown task families {sorted(unknown)} (choose from {', '.join(FAMILIES)})")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SwespotError(f"two models share a name: {names}")
    tasks = make_tasks(repo_path, cutoff, until, families, profile)
    repo = git.Repo(repo_path)
    report = {
        "repo": str(repo_path), "cutoff": H.resolve(repo, cutoff).hexsha, "until": H.resolve(repo, until).hexsha,
        "profile": profile, "base_gguf": str(base_gguf), "created_at": time.time(),
        "tasks": {fam: sum(t.family == fam for t in tasks) for fam in families},
        "models": {}, "rows": [],
    }
    if tasks:
        rows = Evaluator(base_gguf, models, profile, progress).run(tasks, repo_path)
        report["rows"] = rows
        report["models"] = summarize(rows, models)
        report["task_list"] = [{k: v for k, v in asdict(t).items() if k != "meta"} | {"meta": {k: v for k, v in t.meta.items() if k != "files"}}
                               for t in tasks]
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        from trainer.eval_report import write_report

        write_report(report, Path(out))
    return report


def compare(report: dict, candidate: str, reference: str) -> dict:
    """Whether ``candidate`` is not worse than ``reference``: the per-token loss of the held-out code
    (line and body tasks, the most stable signal a small model gives) decides; the rest is reported."""
    models = report.get("models") or {}
    if candidate not in models or reference not in models:
        return {"ok": True, "why": "no held-out tasks after the cutoff; nothing to compare"}
    cand, ref = models[candidate]["families"], models[reference]["families"]
    losses = {}
    for name, fams in ((candidate, cand), (reference, ref)):
        parts = [(fams[f]["loss"], fams[f]["tasks"]) for f in ("line", "body", "design") if f in fams and fams[f].get("loss") is not None]
        losses[name] = sum(loss * n for loss, n in parts) / max(1, sum(n for _, n in parts)) if parts else None
    if losses[candidate] is None or losses[reference] is None:
        return {"ok": True, "why": "no loss-scored tasks; published ungated", "losses": losses}
    ok = losses[candidate] <= losses[reference] * 1.002
    return {"ok": ok, "why": f"held-out loss {losses[candidate]:.4f} vs {reference} {losses[reference]:.4f}" + ("" if ok else " (worse)"),
            "kind": "eval", "losses": {k: round(v, 5) for k, v in losses.items()}}
