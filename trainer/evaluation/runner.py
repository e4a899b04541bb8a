"""Running the models: every model through llama.cpp exactly as it is served (the base GGUF plus an
adapter) on the tasks, one row per model and task; ``evaluate`` is the whole evaluation.

Infill tasks borrow the language server's own prompt code (``lsp_server.completion``: ``serving_fim``,
``build_prompt``, the trimming) on purpose, so that they are scored in exactly the prompt and layout the
server serves. That import points up the layers (agent ← trainer ← lsp_server), so it is made inside the
two methods that use it (``Evaluator._select``, ``Evaluator._infill_task``), never at module level: still a
plain ``from`` import, so the type checker sees those calls. It is the evaluation's only such import."""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import git
from tqdm import tqdm

from agent.errors import SwespotError
from agent.loop import Agent, Budget
from agent.models import LlamaModel
from agent.render import Renderer
from agent.runtime import LlamaRuntime
from agent.threads import choose_threads
from agent.tools import CommandPolicy, Workspace, call_tool, make_tools
from trainer.eval_report import write_report
from trainer.evaluation.profiles import CHAT_FAMILIES, EVAL_PROFILES, FAMILIES, ModelSpec, Task
from trainer.evaluation.statistics import layout_comparison, paired_comparison, summarize
from trainer.evaluation.tasks import make_tasks
from trainer.experience import history as H
from trainer.experience.snapshot import Snapshot

MAX_WORKERS = 4  # runtimes side by side at most (each holds the base and every adapter)
DESIGN_SYSTEM = "You answer questions about this software repository briefly and exactly."


# ---- scoring helpers ----------------------------------------------------------------------------
def edit_similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def names_any(text: str, accept: list[str]) -> bool:
    """Whether ``text`` names one of ``accept`` (a path or a qualified name) as a whole: `get` is not
    named by `together` or by `cache.get_all`."""
    return any(re.search(rf"(?<![\w./]){re.escape(a)}(?![\w/]|\.\w)", text) for a in accept if a)


WORD = re.compile(r"[A-Za-z][a-z]*")  # a name that reads as an English word: `create`, `Flask`, `send`


def answer_names(text: str, accept: list[str]) -> bool:
    """Whether a model's answer names one of ``accept``. A name that reads as a plain word counts only
    written as code: in backticks, called (``create(``), or followed by where it is (``create (src/...``);
    else "I'm trying to create a database" would name the function ``create``. Other names (paths,
    qualified, snake_case or CamelCase names) count wherever they stand whole (``names_any``)."""
    for a in accept:
        if a and WORD.fullmatch(a):
            if re.search(rf"`{a}`|(?<![\w./]){a}\(|(?<![\w./]){a} \([\w.-]*[/.]", text):
                return True
        elif names_any(text, [a]):
            return True
    return False


def target_loss(runtime, prefix_ids: list[int], target_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats per token) of ``target_ids`` following ``prefix_ids``."""
    return float(-runtime.target_logprobs(prefix_ids + target_ids, len(prefix_ids)).mean())


TAIL_CHARS_PER_TOKEN = 16  # characters of a long prefix tokenized per token kept (code runs 3-4 to a token)


def _left_truncate(runtime, text: str, max_tokens: int) -> list[int]:
    """BOS and the last ``max_tokens`` tokens of ``text``, as if the whole text were tokenized. Only its
    tail is: from the first line start ``TAIL_CHARS_PER_TOKEN`` characters per kept token back, and only when
    that tail holds at least twice the tokens kept, so the cut lies hundreds of tokens before the first one
    kept, beyond the reach of the tokenizer's merges (tests/test_evaluation.py checks it against the whole
    text). A line task's prefix is the whole file above the line, and its tokenization grows with the file
    (0.56 s for click's core.py, 37k tokens) while the model reads only ``max_tokens``; over quick's 120 line and
    body tasks on click it was 5.5-6.1 s per model, the tail 0.7-0.9 s once for all models (a one-off timing)."""
    ids = None
    cut = text.rfind("\n", 0, max(0, len(text) - TAIL_CHARS_PER_TOKEN * max_tokens))
    if cut >= 0:
        ids = runtime.tokenize(text[cut + 1:], add_bos=False, special=False)
        ids = ids if len(ids) >= 2 * max_tokens else None
    if ids is None:
        ids = runtime.tokenize(text, add_bos=False, special=False)
    bos = runtime.tokenize("", add_bos=True)
    return bos + ids[-max_tokens:]


# ---- running the models -------------------------------------------------------------------------
class Evaluator:
    def __init__(self, base_gguf: Path, models: list[ModelSpec], profile: str = "quick", progress: bool = True,
                 threads: int | None = None, workers: int | None = None) -> None:
        if profile not in EVAL_PROFILES:
            raise SwespotError(f"unknown evaluation profile {profile!r} (choose {', '.join(EVAL_PROFILES)})")
        self.base_gguf, self.models, self.sizes = Path(base_gguf), models, EVAL_PROFILES[profile]
        self.progress, self.threads, self.workers = progress, threads, workers  # None: chosen from the cores free
        self._code_ids: dict[str, tuple[list[int], list[int]]] = {}  # a line/body task's prompt and target tokens

    def _runtime(self, n_threads: int | None = None, **kwargs):
        rt = LlamaRuntime(self.base_gguf, n_threads=n_threads or self.threads, **kwargs)
        names = {}
        for spec in self.models:
            if spec.adapter is not None:
                names[spec.name] = rt.load_adapter(spec.adapter, name=spec.name)
            if spec.chat_adapter is not None:
                names[spec.name + ":chat"] = rt.load_adapter(spec.chat_adapter, name=spec.name + ":chat")
        return rt, names

    def _select(self, rt, names: dict, spec: ModelSpec, chat: bool = False) -> tuple[str, str, str] | None:
        """Serve ``spec`` as the server would: its chat adapter for questions (``chat``) when it has one, else
        its adapter, else the base. Returns the FIM markers of the layout the server would use with this model
        (None: left to right)."""
        name = spec.name + ":chat" if chat and spec.chat_adapter is not None else spec.name
        rt.set_adapters({names[name]: 1.0} if name in names else None)
        from lsp_server.completion import serving_fim  # upward, hence here (module docstring)

        return serving_fim(rt, adapter_manifest(spec))

    def _workers(self, items: int) -> tuple[int, int]:
        """How many runtimes score the text tasks side by side, and llama.cpp threads for each. A small model
        uses a second core poorly within one runtime (most likely: llama.cpp's threads meet after every operation): on 2
        cores, 335 tokens of click took 1.0 s with 2 threads and 1.57 s with 1, and two 1-thread runtimes side by
        side 1.55 s each, 1.3 times the tasks per second (README). Every thread count gives the same logits."""
        total = choose_threads(self.threads or 0)
        workers = max(1, min(self.workers or min(total, MAX_WORKERS), items))
        return workers, max(1, total // workers)

    def _run_parallel(self, items: list[tuple[ModelSpec, bool, Task]]) -> list[dict]:
        """Score every (model, chat, task) of ``items`` and return their rows in that order. Each worker has its
        own runtime (the base plus every adapter) and takes the next item from the shared list, so the models
        and families stay in order and a runtime switches adapters only where the list does."""
        workers, threads = self._workers(len(items))
        rows: list[dict | None] = [None] * len(items)
        taken = iter(range(len(items)))
        lock, stop = threading.Lock(), threading.Event()
        with contextlib.ExitStack() as stack:
            runtimes = []
            for _ in range(workers):
                # one runtime follows the load as before (its thread count re-chosen between generations)
                rt, names = self._runtime(n_ctx=max(1024, self.sizes["context_tokens"] + 512),
                                          n_threads=threads if workers > 1 else None)
                stack.enter_context(rt)
                runtimes.append((rt, names))
            bar = stack.enter_context(tqdm(total=len(items), desc="eval: completion/design", unit="task",
                                           disable=not self.progress, file=sys.stderr))

            def work(rt, names) -> None:
                renderer = Renderer.for_template(rt.chat_template, bos_token=rt.bos_token, eos_token=rt.eos_token)
                serving, fim = None, None
                while not stop.is_set():
                    with lock:
                        i = next(taken, None)
                    if i is None:
                        return
                    spec, chat, task = items[i]
                    if serving != (spec.name, chat):
                        fim, serving = self._select(rt, names, spec, chat), (spec.name, chat)
                    started = time.perf_counter()
                    row = self._text_task(rt, task, renderer, fim)
                    rows[i] = {"model": spec.name, "task": task.id, "family": task.family, "commit": task.commit,
                               "path": task.path, "seconds": round(time.perf_counter() - started, 3),
                               "threads": rt.n_threads, **row}
                    bar.update(1)

            if workers == 1:
                work(*runtimes[0])
            else:
                pool = stack.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="swespot-eval"))
                futures = [pool.submit(work, rt, names) for rt, names in runtimes]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:  # an error in one, or Ctrl-C: the others stop after their current task
                    stop.set()
                for future in futures:
                    future.result()
        return [row for row in rows if row is not None]

    def run(self, tasks: list[Task], repo_path: Path | None = None) -> list[dict]:
        results: list[dict] = []
        self._code_ids = {}
        text_tasks = [t for t in tasks if t.family != "replay"]
        agent_tasks = [t for t in tasks if t.family == "replay"]
        if text_tasks:
            # code tasks with each model's adapter, then the questions with its chat adapter (if it has one)
            items = [(spec, chat, task) for spec in self.models for chat in (False, True)
                     for task in text_tasks if (task.family in CHAT_FAMILIES) == chat]
            results += self._run_parallel(items)
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
                                        "path": None, "seconds": round(time.perf_counter() - started, 3),
                                        "threads": rt.n_threads, **row})
                        bar.update(1)
        return results

    def _text_task(self, rt, task: Task, renderer, fim: tuple[str, str, str] | None) -> dict:
        ctx = self.sizes["context_tokens"]
        generate = task.meta.get("generate", True)
        if task.family == "infill":
            return self._infill_task(rt, task, fim)
        if task.family in ("line", "body"):
            if task.id not in self._code_ids:  # the same tokens for every model: one tokenizer, the base's
                self._code_ids[task.id] = (_left_truncate(rt, task.prompt, ctx), rt.tokenize(task.target, add_bos=False, special=False)[:128])
            prefix, target = self._code_ids[task.id]
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
        return {"loss": loss, "tokens": len(target), "exact": answer_names(out.text, accept),
                "similarity": edit_similarity(out.text.strip(), task.target), "completion": out.text,
                "completion_tokens": out.completion_tokens}

    def _infill_task(self, rt, task: Task, fim: tuple[str, str, str] | None) -> dict:
        """An infill task in the server's own prompt (no snippets) and layout; see the package docstring."""
        from lsp_server import completion  # upward, hence here (module docstring)

        keep = self.sizes["context_tokens"] * 3  # characters of the code before (about 3 per token of code)
        prefix = task.prompt[-keep:]
        prefix = prefix[prefix.find("\n") + 1:] if len(task.prompt) > keep and "\n" in prefix else prefix
        ctx = completion.CompletionContext(task.path or "", "", prefix, task.meta["suffix"])
        target = rt.tokenize(task.target, add_bos=False, special=False)[:128]

        def loss_in(layout: tuple[str, str, str] | None) -> tuple[float, list[int]]:
            prompt = rt.tokenize(completion.build_prompt(ctx, [], layout), add_bos=True, special=layout is not None)
            return (target_loss(rt, prompt, target) if target else float("nan")), prompt

        loss, prompt = loss_in(fim)
        row = {"loss": loss, "tokens": len(target), "layout": "fim" if fim else "ltr",
               "ltr_loss": loss_in(None)[0] if fim else loss,
               "exact": None, "similarity": None, "completion": None, "completion_tokens": 0}
        if not task.meta.get("generate", True):
            return row
        out = rt.complete(prompt, max_tokens=min(96, 2 * len(target) + 8), stop=completion.stop_strings(fim))
        got = completion.trim_completion(completion.fit_to_line_rest(out.text, ctx), ctx)
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


def serving_layouts(base_gguf: Path, models: list[ModelSpec]) -> dict[str, str]:
    """The completion layout the language server would use with each model, by name: "fim" or "ltr"
    (left to right), read from one runtime holding the base and every adapter (``Evaluator._select``)."""
    evaluator = Evaluator(base_gguf, models, progress=False, threads=1)
    rt, names = evaluator._runtime(n_ctx=256)
    with rt:
        return {spec.name: "fim" if evaluator._select(rt, names, spec) else "ltr" for spec in models}


# Why ``evaluate(infill_only_with_fim=True)`` (specialize's gate) leaves the infill family out when every model
# completes left to right: what the family adds to the line and body tasks is the layout, FIM against left
# to right. On click its 40 tasks were 27% of quick's evaluation (293 of 1,081 seconds of rows; README).
INFILL_LEFT_OUT = ("no model serves a fill-in-the-middle layout, so the infill family would measure no layout "
                   "(`swespot eval --tasks infill` scores it)")


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



def evaluate(repo_path: Path, cutoff: str, base_gguf: Path, models: list[ModelSpec], *, until: str = "HEAD",
             families=FAMILIES, profile: str = "quick", progress: bool = True, out: Path | None = None,
             reference: str | None = None, infill_only_with_fim: bool = False) -> dict:
    """Build the tasks, run every model on them, compare every other model with ``reference`` (default:
    the first model) in ``report["comparisons"][name]`` (``paired_comparison``), and (with ``out``) write
    report.json and report.html. With ``infill_only_with_fim`` the infill family is left out unless some
    model serves a FIM layout (``serving_layouts``); ``report["left_out"]`` says so."""

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
    left_out = {}
    if infill_only_with_fim and "infill" in families and "fim" not in serving_layouts(base_gguf, models).values():
        families = tuple(f for f in families if f != "infill")
        left_out["infill"] = INFILL_LEFT_OUT
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
        "left_out": left_out,
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

