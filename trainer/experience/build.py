"""``swespot experience build``: a git repository → episodes in ``<out>/<unit>/<shard>.jsonl``.

Incremental and content-addressed: every shard's name is a hash of exactly what it was made from (the
generator version, the file's blob and the index facts it cites; or the replayed commit), so a rebuild
after one new commit regenerates only the shards whose inputs changed and deletes the ones no longer
wanted. Everything is made from the snapshot at the cutoff and the history up to it: nothing after the
cutoff can leak into the episodes. Deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import git
from tqdm import tqdm

from agent.episode import save_episodes
from agent.errors import SwespotError
from agent.index import ParseCache, RepoIndex, is_test_file
from agent.resolve import Resolver
from agent.tools import CommandPolicy, Workspace
from trainer.evaluation import DESIGN_SYSTEM
from trainer.experience import history as H
from trainer.experience import runtime as R
from trainer.experience import text as T
from trainer.experience import units as U
from trainer.experience.files import ignored_paths, scrub_unlearnable, select_files
from trainer.experience.report import fit_report as fit_report  # re-exported: the CLI and tests import it from here
from trainer.experience.report import format_table as format_table
from trainer.experience.report import unit_table, why_none
from trainer.experience.snapshot import Snapshot
from trainer.experience.teacher import teacher_from_options
from trainer.experience.testenv import repo_environment

UNITS = ("design", "implementation", "evolution", "runtime", "text")
STATIC_UNITS = ("design", "implementation", "evolution")
MANIFEST = "experience.json"


@dataclass
class BuildOptions:
    cutoff: str = "HEAD"
    units: tuple[str, ...] = STATIC_UNITS
    seed: int = 0
    per_file: int = 12  # design episodes per file
    implementations_per_file: int = 6
    max_commits: int | None = None
    run_tests: bool = False  # execute tests inside episodes (sandboxed; slower)
    max_mutations: int = 20  # runtime unit: functions mutated to see which tests fail (2 test runs each)
    # a teacher model (GGUF, openai:URL[#model], default, scripted:FILE) tries each unit's task first; its
    # trajectory is kept when it verifies, else the oracle's (trainer/experience/teacher.py)
    teacher: str | None = None
    teacher_steps: int = 12  # the teacher's agent steps per task
    # the balanced mix: at most this many episodes per unit (absent or 0: no cap); files are taken in a
    # seeded order and commits newest first until a unit's target is met (the paper: 2,048 each).
    # "recall": the design unit's recall episodes (a question answered without tools, in the evaluation's
    # layout: units.recall_episodes), counted apart from its agentic ones; absent or 0: none are made
    targets: dict = field(default_factory=dict)
    recall_per_file: int = 0  # recall episodes per file, a seeded sample (0: every question the file grounds)
    text_chunk_tokens: int = 1024  # unit "text": about this many tokens per chunk (the training max_len)
    progress: bool = True


@dataclass
class BuildResult:
    out: Path
    cutoff: str
    stats: dict
    shards_made: int = 0
    shards_reused: int = 0
    shards_removed: int = 0
    seconds: float = 0.0
    excluded: dict = field(default_factory=dict)
    fit: dict | None = None  # per unit, from ``fit_report``: sequences, dropped by length, trained tokens, lengths

    def to_dict(self) -> dict:
        return {"out": str(self.out), "cutoff": self.cutoff, "units": self.stats, "excluded_files": self.excluded,
                "shards": {"made": self.shards_made, "reused": self.shards_reused, "removed": self.shards_removed},
                "seconds": round(self.seconds, 2), "table": unit_table(self.stats, self.fit)}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _given(*parts) -> list:
    """The optional inputs of a shard that are set (a teacher, trace edges): absent ones leave the keys of
    shards made without them unchanged."""
    return [p for p in parts if p]


def _file_facts(index: RepoIndex, path: str) -> list:
    """The cross-file facts a file's design episodes cite: who calls its symbols, where they are tested,
    and which classes extend them. A change elsewhere that alters these regenerates the shard."""
    facts = []
    for sym in index.files[path].symbols:
        callers = sorted((c.path, c.qualname, c.start_line) for c in index.callers(sym))
        facts.append([sym.qualname, sym.start_line, sym.end_line, callers[:20], index.tests_for(sym)])
    return facts


def _episodes_in(shard: Path) -> int:
    with open(shard, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _open_repo(repo_path: Path):
    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    H.require_work_tree(repo, repo_path)
    return repo


class BuildControl(Protocol):
    """What the build calls before each file or commit it works on (``trainer/pipeline.py`` passes one that
    reports progress to the daemon, which raises ``Interrupted`` there when it has been told to stop):
    shards already written stay and are reused by the next build."""

    def between_files(self, unit: str, done: int, total: int) -> None: ...


class _Build:
    """One build's shared state: the files that may be learned from, the shards wanted and made, the
    episodes counted against each unit's target, and the snapshot's workspace once it is open."""

    def __init__(self, repo, repo_path: Path, out: Path, opts: BuildOptions, control: BuildControl | None) -> None:
        self.repo, self.repo_path, self.out, self.opts, self.control = repo, repo_path, out, opts, control
        self.cutoff = H.resolve(repo, opts.cutoff).hexsha
        self.stats = {u: U.UnitStats() for u in opts.units}
        self.wanted: dict[str, set[str]] = {u: set() for u in opts.units}
        self.result = BuildResult(out, self.cutoff, {})
        self.counts: Counter = Counter()  # episodes per unit kept so far (reused shards included), against the targets
        # the files that may be learned from, at the cutoff
        self.all_paths = [i.path for i in repo.commit(self.cutoff).tree.traverse() if i.type == "blob"]
        self.ignored = ignored_paths(repo, self.all_paths)
        self.selection = select_files(repo, self.cutoff, ignored=self.ignored)
        self.result.excluded = dict(self.selection.excluded)
        self.allowed = {f.path for f in self.selection.files}
        self.blobs = {f.path: f.blob for f in self.selection.files}
        self.resolver: Resolver | None = None
        self.edges: set[tuple[str, str, str, str]] = set()

    def between(self, unit: str, done: int, total: int) -> None:
        if self.control is not None:
            self.control.between_files(unit, done, total)

    def full(self, unit: str) -> bool:
        """Whether ``unit`` has reached its target number of episodes (the balanced mix)."""
        target = (self.opts.targets or {}).get(unit)
        return target is not None and target != 0 and self.counts[unit] >= target

    def claim(self, unit: str, key: str, target: str | None = None) -> Path | None:
        """Mark a shard of ``unit`` as wanted; a shard already on disk is reused (its episodes counted
        against the target of ``target``, default the unit's) and None is returned; else the path to write it to."""
        self.wanted[unit].add(key)
        shard = self.out / unit / f"{key}.jsonl"
        if shard.exists():
            self.result.shards_reused += 1
            self.counts[target or unit] += _episodes_in(shard)
            return None
        return shard

    def save(self, unit: str, shard: Path, episodes: list[dict], target: str | None = None) -> None:
        self.counts[target or unit] += save_episodes(shard, episodes, dropped=self.stats[unit].rejected)
        self.result.shards_made += 1

    def bar(self, items, desc: str, unit: str):
        return tqdm(items, desc=desc, unit=unit, disable=not self.opts.progress, file=sys.stderr)

    # ---- the snapshot at the cutoff, as the units' tools see it -------------------------------------------
    def open_workspace(self, snap: Snapshot) -> None:
        opts = self.opts
        snap.checkout(self.cutoff)
        ws = Workspace(snap.tree, policy=CommandPolicy(approve=lambda _cmd: True), parse_cache=ParseCache(self.out / ".cache"),
                       run_timeout=120, scratch_runs=False)  # the snapshot is already a scratch copy
        ws.run_env = repo_environment(snap.tree).run_env()  # tests run in the repository's own terms (testenv)
        # the tools see exactly the files that may be learned from: hide the excluded ones
        for f in set(self.all_paths) - self.allowed:
            (snap.tree / f).unlink(missing_ok=True)
        ws.invalidate()
        self.snap, self.ws, self.index = snap, ws, ws.index()
        self.runner = U.pytest_runner(ws) if opts.run_tests else None
        self.teacher = teacher_from_options(opts)
        if "design" in opts.units:
            # calls the runtime trace saw confirm the call sites Jedi cannot pin (run now when the runtime unit
            # is built, else only a trace already cached)
            trace = R.load_trace(ws, repo_environment(snap.tree), self.blobs, opts, self.out, self.stats.get("runtime", U.UnitStats()),
                                 run="runtime" in opts.units)
            self.edges = R.trace_edges(trace, self.index)
            self.resolver = Resolver(ws.root, self.index, trace_edges=self.edges)
        self.activity = H.recent_activity(self.repo_path, self.cutoff)  # newest activity first: the future lands there

    # ---- design and implementation: per source file ---------------------------------------------------------
    def file_work(self) -> list[tuple[str, str, str]]:
        """(unit, path, shard key) for every file of the design and implementation units, in build order."""
        opts, index, blobs, work = self.opts, self.index, self.blobs, []
        for path in T.file_order([p for p in index.files if p in self.allowed], opts.seed, H.is_code, self.activity):
            if "design" in opts.units:
                traced = sorted(e for e in self.edges if path in (e[0], e[2]))  # the runtime facts this file's answers may cite
                work.append(("design", path, _digest(U.GENERATOR_VERSION, "design", opts.seed, opts.per_file, path, blobs[path],
                                                     _file_facts(index, path), *_given(traced, opts.teacher))))
                if (opts.targets or {}).get("recall"):  # the design unit's recall episodes: shards of their own
                    work.append(("recall", path, _digest(U.GENERATOR_VERSION, U.RECALL_VERSION, "recall", DESIGN_SYSTEM, path, blobs[path],
                                                         _file_facts(index, path),
                                                         *_given(traced, opts.recall_per_file and (opts.seed, opts.recall_per_file)))))
            if "implementation" in opts.units and path.endswith(".py") and not is_test_file(path):
                tests = sorted({t for s in index.files[path].symbols for t in index.tests_for(s)})
                work.append(("implementation", path, _digest(U.GENERATOR_VERSION, "impl", opts.seed, opts.implementations_per_file,
                                                              path, blobs[path], [blobs.get(t) for t in tests], opts.run_tests,
                                                              *_given(opts.teacher))))
        return work

    def design_and_implementation(self) -> None:
        opts = self.opts
        work = self.file_work()
        for done, (unit, path, key) in enumerate(self.bar(work, "experience: design/implementation", "file")):
            self.between(unit, done, len(work))
            if self.full(unit):
                continue
            folder = "design" if unit == "recall" else unit  # recall shards are the design unit's, counted apart
            shard = self.claim(folder, key, target=unit)
            if shard is None:
                continue
            rng = random.Random(f"{opts.seed}:{unit}:{path}")
            if unit == "recall":
                episodes = U.recall_episodes(self.ws, self.index, path, self.cutoff, self.stats["design"], resolver=self.resolver,
                                             limit=opts.recall_per_file, rng=rng)
            elif unit == "design":
                episodes = U.design_episodes(self.ws, self.index, path, self.cutoff, rng, self.stats[unit], limit=opts.per_file,
                                             resolver=self.resolver, teacher=self.teacher)
            else:
                episodes = U.implementation_episodes(self.ws, self.index, path, self.cutoff, rng, self.stats[unit],
                                                     limit=opts.implementations_per_file, test_runner=self.runner, teacher=self.teacher)
            self.save(folder, shard, episodes, target=unit)

    # ---- text: the repository as plain text -----------------------------------------------------------------
    def text(self) -> None:
        opts = self.opts
        texts = {f.path: f.text for f in self.selection.files if T.is_text_file(f.path)}
        order = T.file_order(list(texts), opts.seed, H.is_code, self.activity)
        for done, path in enumerate(self.bar(order, "experience: text", "file")):
            self.between("text", done, len(order))
            if self.full("text"):
                break
            shard = self.claim("text", _digest(T.TEXT_VERSION, "text", path, self.blobs[path], opts.text_chunk_tokens))
            if shard is None:
                continue
            episodes = T.text_episodes(path, texts[path], self.cutoff, opts.text_chunk_tokens)
            for text_episode in episodes:
                self.stats["text"].add(text_episode)
            self.save("text", shard, episodes)

    # ---- evolution: bugs put back into today's code, then the history replayed newest first ---------------
    def evolution(self) -> None:
        hstats = H.HistoryStats()
        raw = H.raw_history(self.repo_path, self.cutoff)
        # newest first: the commits closest to the cutoff, trivial ones skipped (history.py)
        candidates = list(H.candidate_commits(self.repo, self.cutoff, limit=self.opts.max_commits, stats=hstats, raw=raw))
        self.bugs(candidates, raw)
        for done, (commit, parent) in enumerate(self.bar(candidates, "experience: replay", "commit")):
            self.between("evolution", done, len(candidates))
            if self.full("evolution"):
                hstats.skipped["over the unit's target"] += 1
                continue
            shard = self.claim("evolution", _digest(U.GENERATOR_VERSION, "replay", commit.hexsha, self.opts.run_tests,
                                                    *_given(self.opts.teacher)))
            if shard is not None:
                self.replay(shard, H.change_of(commit, parent, hstats, raw=raw.get(commit.hexsha, []), skip_trivial=True), hstats)
        for reason, n in hstats.skipped.items():
            self.stats["evolution"].rejected[f"commit skipped: {reason}"] += n
        if self.snap.commit != self.cutoff:
            self.ws.invalidate(self.snap.checkout(self.cutoff))

    def bugs(self, candidates: list, raw: dict) -> None:
        """Bug re-introduction: works on today's (cutoff) code, before the snapshot moves back in time."""
        touched = {sha: sorted({p for e in entries for p in (e.old_path, e.new_path) if p}) for sha, entries in raw.items()}
        for done, (commit, parent) in enumerate(candidates):
            self.between("evolution", done, len(candidates))
            if self.full("evolution"):
                break
            paths = touched.get(commit.hexsha, [])
            if not U.FIX_SUBJECT.search(commit.summary) or not paths or not all(p in self.allowed for p in paths if p in self.blobs):
                continue
            shard = self.claim("evolution", _digest(U.GENERATOR_VERSION, "bug", commit.hexsha, [self.blobs.get(p) for p in paths],
                                                    *_given(self.opts.teacher)))
            if shard is None:
                continue
            change = H.change_of(commit, parent, raw=raw.get(commit.hexsha, []), skip_trivial=True)
            episode = U.bug_episode(self.ws, change, self.stats["evolution"], self.cutoff, test_runner=self.runner,
                                    teacher=self.teacher) if change else None
            self.save("evolution", shard, [episode] if episode else [])

    def replay(self, shard: Path, change, hstats: H.HistoryStats) -> None:
        """One commit replayed: its parent's tree, the commit's task, the change made and verified; and the
        commit's hunks as completions."""
        if change is not None and any(p in self.ignored for fc in change.files for p in (fc.old_path, fc.new_path) if p):
            # a force-added file the ignore rules match (local settings...): never learned from
            hstats.skipped["touches a file the ignore rules match"] += 1
            change = None
        episode = None
        if change is not None:
            # newest first: the snapshot steps back one commit at a time (a small diff each)
            ws, snap = self.ws, self.snap
            moved = snap.checkout(change.parent)
            scrub_unlearnable(snap.tree, moved, self.ignored)
            ws.invalidate(moved)
            ws.forget_changes()
            episode = U.replay_episode(ws, change, self.stats["evolution"], test_runner=self.runner, teacher=self.teacher)
            touched_now = sorted({p for fc in change.files for p in (fc.old_path, fc.new_path) if p})
            if episode is not None and not episode["meta"].get("teacher"):  # a teacher's change was put back
                snap.advance(change.commit)  # the tree now is the child commit's (verified)
            else:
                U.undo_files(snap.tree, change)
            ws.invalidate(touched_now)
            ws.forget_changes()
        completions = U.hunk_completions(change, self.stats["evolution"], self.allowed) if change is not None else []
        self.save("evolution", shard, ([episode] if episode else []) + completions)

    # ---- runtime: traced calls, mutations and reproduction tests (trainer/experience/runtime.py) -----------
    def runtime(self) -> None:
        ws, snap, cutoff, stats, wanted = self.ws, self.snap, self.cutoff, self.stats["runtime"], self.wanted["runtime"]
        self.between("runtime", 0, 2)
        snap.checkout(cutoff)
        ws.invalidate()
        made, reused = R.runtime_shards(ws, ws.index(), cutoff, self.out, wanted, stats, self.blobs, self.opts, self.counts)
        self.result.shards_made += made
        self.result.shards_reused += reused
        self.between("runtime", 1, 2)
        made, reused = R.repro_shards(ws, snap, self.repo, cutoff, self.out, wanted, stats, self.allowed, self.opts,
                                      lambda tree, moved: scrub_unlearnable(tree, moved, self.ignored), self.counts)
        self.result.shards_made += made
        self.result.shards_reused += reused

    # ---- the end: stale shards go, the stats and the manifest are written -----------------------------------
    def finish(self, started: float) -> BuildResult:
        out, opts, result = self.out, self.opts, self.result
        for unit in opts.units:  # drop shards that no longer correspond to anything wanted
            for shard in (out / unit).glob("*.jsonl") if (out / unit).exists() else []:
                if shard.stem not in self.wanted[unit]:
                    shard.unlink()
                    result.shards_removed += 1
        result.stats = {u: s.to_dict() for u, s in self.stats.items()}
        if self.resolver is not None:
            # the runtime trace's part in the design answers: its call edges, and the call sites only it confirmed
            result.stats["design"]["trace"] = {"edges": len(self.edges), "sites_confirmed": self.resolver.trace_confirmed}
        for u in opts.units:
            result.stats[u]["episodes_on_disk"] = sum(_episodes_in(s) for s in (out / u).glob("*.jsonl")) if (out / u).exists() else 0
            if not result.stats[u]["episodes_on_disk"]:
                result.stats[u]["why_none"] = why_none(result.stats[u])
        result.seconds = time.perf_counter() - started
        (out / MANIFEST).write_text(json.dumps({"repo": str(self.repo_path), **result.to_dict(), "seed": opts.seed,
                                                "generator_version": U.GENERATOR_VERSION}, indent=2))
        return result


def build_experience(repo_path: str | Path, out: str | Path, options: BuildOptions | None = None, *,
                     control: BuildControl | None = None) -> BuildResult:
    """Build (or bring up to date) the experience of ``repo_path`` in ``out``; see the module docstring.
    ``control.between_files(unit, done, total)``, when given, runs before each file or commit and may raise
    to stop the build there (the shards made so far stay and are reused by the next build)."""
    opts = options or BuildOptions()
    unknown = set(opts.units) - set(UNITS)
    if unknown:
        raise SwespotError(f"unknown unit(s) {sorted(unknown)}; choose from {', '.join(UNITS)}")
    started = time.perf_counter()
    repo_path, out = Path(repo_path).resolve(), Path(out)
    repo = _open_repo(repo_path)
    if not repo.head.is_valid():
        raise SwespotError(f"{repo_path} has no commits yet: commit some code first")
    build = _Build(repo, repo_path, out, opts, control)
    out.mkdir(parents=True, exist_ok=True)
    with Snapshot(repo_path) as snap:
        build.open_workspace(snap)
        build.design_and_implementation()
        if "text" in opts.units:
            build.text()
        if "evolution" in opts.units:
            build.evolution()
        if "runtime" in opts.units:
            build.runtime()
    return build.finish(started)
