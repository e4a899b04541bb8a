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

import git
from tqdm import tqdm

from agent.episode import load_episodes, save_episodes
from agent.errors import SwespotError
from agent.index import ParseCache, RepoIndex, is_test_file
from agent.render import Renderer
from agent.resolve import Resolver
from agent.tools import CommandPolicy, Workspace
from trainer import data as D
from trainer.experience import history as H
from trainer.experience import runtime as R
from trainer.experience import text as T
from trainer.experience import units as U
from trainer.experience.files import decode_text, ignored_paths, secret_reason, select_files, vendored_or_generated
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
    # seeded order and commits newest first until a unit's target is met (the paper: 2,048 each)
    targets: dict = field(default_factory=dict)
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


def unit_table(build_stats: dict, fit: dict | None = None) -> dict:
    """What each unit made, verified and dropped (and why), and, with the tokenizer's counts (``fit``),
    how many episodes the length limit dropped, the trained tokens and the rendered length distribution."""
    rows = {}
    for unit in sorted(set(build_stats) | set(fit or {})):
        b, f = build_stats.get(unit, {}), (fit or {}).get(unit, {})
        teacher = b.get("teacher") or {}
        rows[unit] = {"episodes": b.get("episodes_on_disk", f.get("episodes", 0)), "made": b.get("made", 0),
                      "verified": b.get("verified", 0), "dropped": dict(b.get("rejected", {})),
                      "teacher_made": teacher.get("kept", 0), "oracle_made": b.get("made", 0) - teacher.get("kept", 0),
                      "teacher_tried": teacher.get("tried", 0), "teacher_rejected": dict(teacher.get("rejected", {})),
                      "dropped_by_length": f.get("dropped_too_long"), "observations_cut": f.get("observations_cut"),
                      "split_at_turn": f.get("split_at_turn"), "trained_tokens": f.get("trained_tokens"), "length": f.get("length"),
                      "length_by_form": f.get("length_by_form")}
    return rows


def format_table(rows: dict) -> list[str]:
    """The unit table as text lines (``swespot experience build`` prints it)."""
    lines = [f"  {'unit':15s} {'episodes':>8s} {'new':>6s} {'verified':>8s} {'by length':>9s} {'cut/split':>9s} {'trained tok':>11s}  "
             f"{'length p10/p50/p90/max':22s}  dropped while building"]
    for unit, r in rows.items():
        length = "/".join(str(r["length"][k]) for k in ("p10", "p50", "p90", "max")) if r["length"] else "-"
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1])) or "none"
        by_length = "-" if r["dropped_by_length"] is None else str(r["dropped_by_length"])
        cut = "-" if r["observations_cut"] is None else f"{r['observations_cut']}/{r['split_at_turn']}"
        trained = "-" if r["trained_tokens"] is None else str(r["trained_tokens"])
        lines.append(f"  {unit:15s} {r['episodes']:8d} {r['made']:6d} {r['verified']:8d} {by_length:>9s} {cut:>9s} {trained:>11s}  "
                     f"{length:22s}  {dropped}")
        if r.get("teacher_tried"):
            why = ", ".join(f"{k} {v}" for k, v in sorted(r["teacher_rejected"].items(), key=lambda kv: -kv[1])) or "none"
            lines.append(f"  {'  teacher':15s} tried {r['teacher_tried']}, made (verified) {r['teacher_made']}, rejected "
                         f"{r['teacher_tried'] - r['teacher_made']} ({why}); oracle made {r['oracle_made']}")
        for form, f in (r.get("length_by_form") or {}).items() if len(r.get("length_by_form") or {}) > 1 else ():
            lines.append(f"  {'  ' + form:15s} {f['episodes']:8d} {'':6s} {'':8s} {'':9s} {'':9s} {'':11s}  "
                         + "/".join(str(f[k]) for k in ("p10", "p50", "p90", "max")))
    return lines


def fit_report(out: Path, units, tokenizer, max_len: int, *, check: bool = True) -> dict:
    """Render every episode of ``units`` on disk with the model's own tokenizer and renderer, as training
    will (observations cut in the middle to fit, ``trainer/data.py``), and return the per-unit counts;
    with ``check``, a unit that loses most of its episodes to ``max_len`` raises SwespotError."""
    render = Renderer.for_template(getattr(tokenizer, "chat_template", None)).render_with_spans
    episodes = [ep for unit in units for shard in sorted((Path(out) / unit).glob("*.jsonl")) for ep in load_episodes(shard)]
    _, stats = D.encode_all(episodes, tokenizer, render, max_len, check=False)
    table = stats.per_unit()
    for unit in table:
        table[unit]["max_len"] = max_len
    if check:
        D.check_lengths(stats, max_len)
    return table


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


def _scrub(tree: Path, paths: list[str] | None, ignored: set[str]) -> None:
    """Remove, from a snapshot just moved to another commit, any changed file that may not be learned
    from (secrets, binaries, vendored...): tools must not show it, even in a search result."""
    for rel in paths or []:
        path = tree / rel
        if not path.is_file():
            continue
        text, _why = decode_text(path.read_bytes())
        if rel in ignored or text is None or vendored_or_generated(rel, text) or secret_reason(rel, text):
            path.unlink()


def _full(opts: BuildOptions, counts: Counter, unit: str) -> bool:
    """Whether ``unit`` has reached its target number of episodes (the balanced mix)."""
    target = (opts.targets or {}).get(unit)
    return target is not None and target != 0 and counts[unit] >= target


def _claim(out: Path, unit: str, key: str, wanted: dict, counts: Counter, result: BuildResult) -> Path | None:
    """Mark a shard as wanted; a shard already on disk is reused (its episodes counted against the
    unit's target) and None is returned; else the path to write it to."""
    wanted[unit].add(key)
    shard = out / unit / f"{key}.jsonl"
    if shard.exists():
        result.shards_reused += 1
        counts[unit] += _episodes_in(shard)
        return None
    return shard


def _episodes_in(shard: Path) -> int:
    with open(shard, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def why_none(unit_stats: dict) -> str:
    """One line on why a unit made no episode: its most frequent reasons for rejecting or skipping."""
    reasons = sorted(unit_stats.get("rejected", {}).items(), key=lambda kv: -kv[1])[:3]
    return "; ".join(f"{k} ({v})" for k, v in reasons) or "nothing to make from this repository"


def _open_repo(repo_path: Path):
    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SwespotError(f"{repo_path} is not a git repository") from exc
    H.require_work_tree(repo, repo_path)
    return repo


def build_experience(repo_path: str | Path, out: str | Path, options: BuildOptions | None = None) -> BuildResult:
    opts = options or BuildOptions()
    unknown = set(opts.units) - set(UNITS)
    if unknown:
        raise SwespotError(f"unknown unit(s) {sorted(unknown)}; choose from {', '.join(UNITS)}")
    started = time.perf_counter()
    repo_path, out = Path(repo_path).resolve(), Path(out)
    repo = _open_repo(repo_path)
    if not repo.head.is_valid():
        raise SwespotError(f"{repo_path} has no commits yet: commit some code first")
    cutoff = H.resolve(repo, opts.cutoff).hexsha
    out.mkdir(parents=True, exist_ok=True)
    stats = {u: U.UnitStats() for u in opts.units}
    wanted: dict[str, set[str]] = {u: set() for u in opts.units}
    result = BuildResult(out, cutoff, {})

    # the files that may be learned from, at the cutoff
    all_paths = [i.path for i in repo.commit(cutoff).tree.traverse() if i.type == "blob"]
    ignored = ignored_paths(repo, all_paths)
    selection = select_files(repo, cutoff, ignored=ignored)
    result.excluded = dict(selection.excluded)
    allowed = {f.path for f in selection.files}
    blobs = {f.path: f.blob for f in selection.files}

    cache = ParseCache(out / ".cache")
    with Snapshot(repo_path) as snap:
        snap.checkout(cutoff)
        ws = Workspace(snap.tree, policy=CommandPolicy(approve=lambda _cmd: True), parse_cache=cache, run_timeout=120,
                       scratch_runs=False)  # the snapshot is already a scratch copy
        ws.run_env = repo_environment(snap.tree).run_env()  # tests run in the repository's own terms (testenv)
        # the tools see exactly the files that may be learned from: hide the excluded ones
        for f in set(all_paths) - allowed:
            (snap.tree / f).unlink(missing_ok=True)
        ws.invalidate()
        index = ws.index()
        runner = U.pytest_runner(ws) if opts.run_tests else None
        teacher = teacher_from_options(opts)
        resolver: Resolver | None = None
        edges: set[tuple[str, str, str, str]] = set()
        if "design" in opts.units:
            # calls the runtime trace saw confirm the call sites Jedi cannot pin (run now when the runtime unit
            # is built, else only a trace already cached)
            trace = R.load_trace(ws, repo_environment(snap.tree), blobs, opts, out, stats.get("runtime", U.UnitStats()),
                                 run="runtime" in opts.units)
            edges = R.trace_edges(trace, index)
            resolver = Resolver(ws.root, index, trace_edges=edges)
        work = []
        counts: Counter = Counter()  # episodes per unit kept so far (reused shards included), against the targets
        activity = H.recent_activity(repo_path, cutoff)  # newest activity first: the future lands there
        for path in T.file_order([p for p in index.files if p in allowed], opts.seed, H.is_code, activity):
            if "design" in opts.units:
                traced = sorted(e for e in edges if path in (e[0], e[2]))  # the runtime facts this file's answers may cite
                work.append(("design", path, _digest(U.GENERATOR_VERSION, "design", opts.seed, opts.per_file, path, blobs[path],
                                                     _file_facts(index, path), *_given(traced, opts.teacher))))
            if "implementation" in opts.units and path.endswith(".py") and not is_test_file(path):
                tests = sorted({t for s in index.files[path].symbols for t in index.tests_for(s)})
                work.append(("implementation", path, _digest(U.GENERATOR_VERSION, "impl", opts.seed, opts.implementations_per_file,
                                                              path, blobs[path], [blobs.get(t) for t in tests], opts.run_tests,
                                                              *_given(opts.teacher))))
        bar = tqdm(work, desc="experience: design/implementation", unit="file", disable=not opts.progress, file=sys.stderr)
        for unit, path, key in bar:
            if _full(opts, counts, unit):
                continue
            shard = _claim(out, unit, key, wanted, counts, result)
            if shard is None:
                continue
            rng = random.Random(f"{opts.seed}:{unit}:{path}")
            if unit == "design":
                episodes = U.design_episodes(ws, index, path, cutoff, rng, stats[unit], limit=opts.per_file, resolver=resolver,
                                             teacher=teacher)
            else:
                episodes = U.implementation_episodes(ws, index, path, cutoff, rng, stats[unit], limit=opts.implementations_per_file,
                                                     test_runner=runner, teacher=teacher)
            counts[unit] += save_episodes(shard, episodes, dropped=stats[unit].rejected)
            result.shards_made += 1

        if "text" in opts.units:
            texts = {f.path: f.text for f in selection.files if T.is_text_file(f.path)}
            for path in tqdm(T.file_order(list(texts), opts.seed, H.is_code, activity), desc="experience: text", unit="file",
                             disable=not opts.progress, file=sys.stderr):
                if _full(opts, counts, "text"):
                    break
                shard = _claim(out, "text", _digest(T.TEXT_VERSION, "text", path, blobs[path], opts.text_chunk_tokens),
                               wanted, counts, result)
                if shard is None:
                    continue
                episodes = T.text_episodes(path, texts[path], cutoff, opts.text_chunk_tokens)
                for text_episode in episodes:
                    stats["text"].add(text_episode)
                counts["text"] += save_episodes(shard, episodes, dropped=stats["text"].rejected)
                result.shards_made += 1

        if "evolution" in opts.units:
            hstats = H.HistoryStats()
            raw = H.raw_history(repo_path, cutoff)
            # newest first: the commits closest to the cutoff, trivial ones skipped (history.py)
            candidates = list(H.candidate_commits(repo, cutoff, limit=opts.max_commits, stats=hstats, raw=raw))
            touched = {sha: sorted({p for e in entries for p in (e.old_path, e.new_path) if p}) for sha, entries in raw.items()}
            # bug re-introduction works on today's (cutoff) code, before the snapshot moves back in time
            for commit, parent in candidates:
                if _full(opts, counts, "evolution"):
                    break
                paths = touched.get(commit.hexsha, [])
                if not U._FIX.search(commit.summary) or not paths or not all(p in allowed for p in paths if p in blobs):
                    continue
                shard = _claim(out, "evolution", _digest(U.GENERATOR_VERSION, "bug", commit.hexsha, [blobs.get(p) for p in paths],
                                                         *_given(opts.teacher)), wanted, counts, result)
                if shard is None:
                    continue
                change = H.change_of(commit, parent, raw=raw.get(commit.hexsha, []), skip_trivial=True)
                episode = U.bug_episode(ws, change, stats["evolution"], cutoff, test_runner=runner, teacher=teacher) if change else None
                counts["evolution"] += save_episodes(shard, [episode] if episode else [], dropped=stats["evolution"].rejected)
                result.shards_made += 1
            bar = tqdm(candidates, desc="experience: replay", unit="commit", disable=not opts.progress, file=sys.stderr)
            for commit, parent in bar:
                if _full(opts, counts, "evolution"):
                    hstats.skipped["over the unit's target"] += 1
                    continue
                shard = _claim(out, "evolution", _digest(U.GENERATOR_VERSION, "replay", commit.hexsha, opts.run_tests, *_given(opts.teacher)),
                               wanted, counts, result)
                if shard is None:
                    continue
                change = H.change_of(commit, parent, hstats, raw=raw.get(commit.hexsha, []), skip_trivial=True)
                if change is not None and any(p in ignored for fc in change.files for p in (fc.old_path, fc.new_path) if p):
                    # a force-added file the ignore rules match (local settings...): never learned from
                    hstats.skipped["touches a file the ignore rules match"] += 1
                    change = None
                episode = None
                if change is not None:
                    # newest first: the snapshot steps back one commit at a time (a small diff each)
                    moved = snap.checkout(change.parent)
                    _scrub(snap.tree, moved, ignored)
                    ws.invalidate(moved)
                    ws.forget_changes()
                    episode = U.replay_episode(ws, change, stats["evolution"], test_runner=runner, teacher=teacher)
                    touched_now = sorted({p for fc in change.files for p in (fc.old_path, fc.new_path) if p})
                    if episode is not None and not episode["meta"].get("teacher"):  # a teacher's change was put back
                        snap.advance(change.commit)  # the tree now is the child commit's (verified)
                    else:
                        U._undo_files(snap.tree, change)
                    ws.invalidate(touched_now)
                    ws.forget_changes()
                completions = U.hunk_completions(change, stats["evolution"], allowed) if change is not None else []
                counts["evolution"] += save_episodes(shard, ([episode] if episode else []) + completions,
                                                     dropped=stats["evolution"].rejected)
                result.shards_made += 1
            for reason, n in hstats.skipped.items():
                stats["evolution"].rejected[f"commit skipped: {reason}"] += n
            if snap.commit != cutoff:
                ws.invalidate(snap.checkout(cutoff))

        if "runtime" in opts.units:
            snap.checkout(cutoff)
            ws.invalidate()
            made, reused = R.runtime_shards(ws, ws.index(), cutoff, out, wanted["runtime"], stats["runtime"], blobs, opts, counts)
            result.shards_made += made
            result.shards_reused += reused
            made, reused = R.repro_shards(ws, snap, repo, cutoff, out, wanted["runtime"], stats["runtime"], allowed, opts,
                                          lambda tree, moved: _scrub(tree, moved, ignored), counts)
            result.shards_made += made
            result.shards_reused += reused

    # drop shards that no longer correspond to anything wanted
    for unit in opts.units:
        for shard in (out / unit).glob("*.jsonl") if (out / unit).exists() else []:
            if shard.stem not in wanted[unit]:
                shard.unlink()
                result.shards_removed += 1
    result.stats = {u: s.to_dict() for u, s in stats.items()}
    if resolver is not None:
        # the runtime trace's part in the design answers: its call edges, and the call sites only it confirmed
        result.stats["design"]["trace"] = {"edges": len(edges), "sites_confirmed": resolver.trace_confirmed}
    for u in opts.units:
        result.stats[u]["episodes_on_disk"] = sum(1 for shard in (out / u).glob("*.jsonl") for _ in open(shard)) if (out / u).exists() else 0
        if not result.stats[u]["episodes_on_disk"]:
            result.stats[u]["why_none"] = why_none(result.stats[u])
    result.seconds = time.perf_counter() - started
    (out / MANIFEST).write_text(json.dumps({"repo": str(repo_path), **result.to_dict(), "seed": opts.seed,
                                            "generator_version": U.GENERATOR_VERSION}, indent=2))
    return result
