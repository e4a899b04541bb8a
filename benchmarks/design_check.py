"""Design-answer check: are the design unit's answers right on real repositories?

For each repository path (a git work tree; the README says how to bring public ones onto the machine),
the design unit runs over every learnable non-test file at HEAD exactly as ``experience build`` runs it
(``units.design_episodes`` with the Jedi resolver), then a seeded sample of answers is checked, each
independently of the code that wrote it (Python's ``ast`` and a fresh Jedi project):

- **callers**: each named caller is, by ``ast``, the definition around the cited line, and that line holds
  a call that Jedi ``goto`` resolves to the symbol's definition (every target, nothing else);
- **layers**: every link of the chain is such a call, each to the next definition down;
- **where**: the cited line defines that qualified name, whose docstring says the asked behaviour;
- **module**: the summary's definitions are exactly the public top-level ones ``ast`` finds, in order,
  with their lines, and the docstring sentence is the module's;
- **extend**: each named subclass is a class at that line whose first base Jedi resolves to the class.

For callers answers a second opinion by another Jedi path is reported next to the verdict: whether
``get_references`` of the symbol's definition lists every cited call line.

Prints a table (repo, sampled, right, wrong, %), the build figures (seconds, of which Jedi), wrong
examples, and writes JSON. Goal: >= 95% right. Run heavy work under the shared lock:

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/design_check.py /tmp/click /tmp/requests /tmp/attrs --json out.json
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import git
import jedi

import agent  # noqa: F401 - every git command of this script runs no repository-configured program (agent/gitsafe.py)
from agent.index import is_test_file
from agent.tools import Workspace
from benchmarks.table import print_rows
from trainer.experience import units as U
from trainer.experience.files import ignored_paths, select_files

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def build_design(repo: Path, seed: int, per_file: int) -> tuple[list[dict], dict]:
    """The design unit over the repository's learnable non-test files at HEAD, as the build runs it."""

    started = time.perf_counter()
    r = git.Repo(repo)
    head = r.head.commit.hexsha
    paths = [str(i.path) for i in r.commit(head).tree.traverse() if isinstance(i, git.Blob)]
    allowed = {f.path for f in select_files(r, head, ignored=ignored_paths(r, paths)).files}
    ws = Workspace(repo)
    index = ws.index()
    indexed = time.perf_counter()
    resolver = U.resolver_for(ws, index)
    stats = U.UnitStats()
    episodes = []
    for path in sorted(index.files):
        if path in allowed and not is_test_file(path) and path.endswith(".py"):
            rng = random.Random(f"{seed}:design:{path}")
            episodes += U.design_episodes(ws, index, path, head, rng, stats, limit=per_file, resolver=resolver)
    done = time.perf_counter()
    figures = {"files": sum(1 for p in index.files if p in allowed and p.endswith(".py") and not is_test_file(p)),
               "episodes": len(episodes), "index_s": round(indexed - started, 1), "design_s": round(done - indexed, 1),
               "jedi_s": round(resolver.seconds, 1), "files_resolved": resolver.files_resolved,
               "kinds": dict(Counter(e["meta"]["question"] for e in episodes)), "rejected": dict(stats.rejected)}
    return episodes, figures


# ---- independent checks ---------------------------------------------------------------------------
class Checker:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        src = self.root / "src"
        paths = ([str(src)] if src.is_dir() else []) + [str(self.root)]
        stdlib = sysconfig.get_paths()
        self.project = jedi.Project(self.root, sys_path=paths + sorted({stdlib["stdlib"], stdlib["platstdlib"]}),
                                    smart_sys_path=False)
        self._trees: dict[str, ast.Module] = {}
        self._scripts: dict = {}

    def text(self, path: str) -> str:
        return (self.root / path).read_text(encoding="utf-8")

    def tree(self, path: str) -> ast.Module:
        if path not in self._trees:
            self._trees[path] = ast.parse(self.text(path))
        return self._trees[path]

    def definitions(self, path: str) -> dict[str, list[Definition]]:
        """qualified name (Class.method, nested functions by their own name chain) -> definitions."""
        out: dict[str, list[Definition]] = {}

        def walk(node, prefix: str, in_class: bool):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}.{child.name}" if prefix and in_class else child.name
                    out.setdefault(qual, []).append(child)
                    walk(child, child.name if isinstance(child, ast.ClassDef) else "", isinstance(child, ast.ClassDef))
                else:
                    walk(child, prefix, in_class)

        walk(self.tree(path), "", False)
        return out

    def def_line(self, path: str, qualname: str) -> int | None:
        defs = self.definitions(path).get(qualname, [])
        return defs[0].lineno if len(defs) == 1 else None

    def innermost(self, path: str, line: int) -> str | None:
        best = None
        for qual, nodes in self.definitions(path).items():
            for n in nodes:
                if n.lineno <= line <= (n.end_lineno or n.lineno) and (best is None or n.lineno >= best[1].lineno):
                    best = (qual, n)
        return best[0] if best else None

    def call_resolves(self, path: str, line: int, name: str, target_path: str, target_line: int) -> bool:
        if path not in self._scripts:
            self._scripts[path] = jedi.Script(self.text(path), path=self.root / path, project=self.project)
        source = self.text(path).splitlines()[line - 1]
        for m in re.finditer(rf"(?<![\w]){re.escape(name)}\s*\(", source):
            targets = self._scripts[path].goto(line, m.start(), follow_imports=True)
            if targets and all(t.module_path and Path(t.module_path).resolve() == (self.root / target_path).resolve()
                               and t.line == target_line for t in targets):
                return True
        return False


def references_agree(c: Checker, episode: dict) -> bool | None:
    """A second opinion for callers answers, by another Jedi path: every cited call line is among
    ``get_references`` of the symbol's definition (None for other questions)."""
    meta = episode["meta"]
    if meta["question"] != "callers":
        return None
    path, symbol = meta["path"], meta["symbol"]
    node = c.definitions(path)[symbol][0]
    line = c.text(path).splitlines()[node.lineno - 1]
    column = line.index(node.name, line.index("def " if not isinstance(node, ast.ClassDef) else "class ") + 3)
    script = jedi.Script(c.text(path), path=c.root / path, project=c.project)
    refs = {(Path(r.module_path).resolve(), r.line) for r in script.get_references(node.lineno, column, scope="project") if r.module_path}
    cited = _CITED.findall(episode["messages"][-1]["content"].split(" is called by ", 1)[-1])
    return all(((c.root / p).resolve(), int(ln)) in refs for _q, p, ln in cited)


def first_sentence(doc: str | None) -> str | None:
    if not doc:
        return None
    text = " ".join(doc.strip().split())
    return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")


_CITED = re.compile(r"([\w.]+) \(([^():\s]+):(\d+)\)")


def check(c: Checker, episode: dict) -> str | None:
    """None when the answer is right, else why not."""
    meta, answer = episode["meta"], episode["messages"][-1]["content"]
    kind, path = meta["question"], meta.get("path", "")
    if kind == "module":
        m = re.match(r"(\S+?):? (?:(.*?)\. )?defines \d+ public names?: (.*)\.$", answer)
        if not m:
            return "unparsable module answer"
        listed = [(k, n, int(ln)) for k, n, ln in re.findall(r"(class|def) (\w+) \((\d+)\)", m.group(3))]
        tree = c.tree(path)
        found = []

        def top(body):
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    if not node.name.startswith("_"):
                        found.append(("class" if isinstance(node, ast.ClassDef) else "def", node.name, node.lineno))
                elif isinstance(node, (ast.If, ast.Try, ast.With)) or type(node).__name__ == "TryStar":
                    for field in ("body", "orelse", "finalbody", "handlers"):
                        for sub in getattr(node, field, []) or []:
                            top(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])

        top(tree.body)
        found.sort(key=lambda x: x[2])
        if listed != found:
            return f"definitions differ from ast: missing {sorted(set(found) - set(listed))[:3]}, extra {sorted(set(listed) - set(found))[:3]}"
        doc = first_sentence(ast.get_docstring(tree))
        if (m.group(2) or None) != (doc if doc and len(doc) >= 8 else None):
            return f"docstring {m.group(2)!r} is not {doc!r}"
        return None
    symbol = meta["symbol"]
    target_line = c.def_line(path, symbol)
    if target_line is None:
        return f"{symbol} is not one definition in {path}"
    if kind == "where":
        m = re.match(r"In (\S+):(\d+), \w+ ([\w.]+)", answer)
        if not m or m.group(1) != path or m.group(3) != symbol or int(m.group(2)) != target_line:
            return f"answer {answer[:80]!r} is not {symbol} at {path}:{target_line}"
        question = re.search(r'"(.*)"\?$', episode["messages"][1]["content"])
        asked = question.group(1) if question else None
        node = c.definitions(path)[symbol][0]
        return None if first_sentence(ast.get_docstring(node)) == asked else "the docstring does not say the asked behaviour"
    name = symbol.rsplit(".", 1)[-1]
    if kind == "callers":
        body = answer.split(" is called by ", 1)[-1]
        cited = _CITED.findall(body)
        if not cited:
            return "no caller cited"
        for caller, cpath, cline in cited:
            if c.innermost(cpath, int(cline)) != caller:
                return f"{cpath}:{cline} is not inside {caller} (ast: {c.innermost(cpath, int(cline))})"
            if not c.call_resolves(cpath, int(cline), name, path, target_line):
                return f"{caller} ({cpath}:{cline}) has no call that Jedi resolves to {symbol}"
        return None
    if kind == "layers":
        links = _CITED.findall(answer)
        chain: list[tuple[str, str, int | None]] = [(q, p, int(ln)) for q, p, ln in links] + [(symbol, path, None)]
        for (caller, cpath, cline), (callee, dpath, _dline) in zip(chain, chain[1:]):
            assert cline is not None  # only the last link (the symbol itself) has no line, and it is never a caller
            if c.innermost(cpath, cline) != caller:
                return f"{cpath}:{cline} is not inside {caller}"
            callee_path = dpath
            callee_def = c.def_line(callee_path, callee)
            if callee_def is None or not c.call_resolves(cpath, cline, callee.rsplit(".", 1)[-1], callee_path, callee_def):
                return f"{caller} ({cpath}:{cline}) does not call {callee}"
        return None
    if kind == "extend":
        subs = re.findall(r"(\w+) \(([^():\s]+):(\d+)\)", answer.split(" as ", 1)[-1])
        for cls, cpath, cline in subs:
            klass = next((n for n in c.definitions(cpath).get(cls, []) if isinstance(n, ast.ClassDef) and n.lineno == int(cline)), None)
            if klass is None or not klass.bases:
                return f"no class {cls} at {cpath}:{cline}"
            base = klass.bases[0]
            col = (base.end_col_offset or 0) - len(name) if isinstance(base, (ast.Name, ast.Attribute)) else None
            import jedi

            script = c._scripts.get(cpath) or jedi.Script(c.text(cpath), path=c.root / cpath, project=c.project)
            c._scripts[cpath] = script
            targets = script.goto(base.end_lineno, col, follow_imports=True) if col is not None else []
            if not targets or not all(t.module_path and Path(t.module_path).resolve() == (c.root / path).resolve()
                                      and t.line == target_line for t in targets):
                return f"{cls}'s first base is not {symbol}"
        return None
    return f"unknown question {kind}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repos", nargs="+", type=Path, help="git work trees (e.g. clones of click, requests, attrs)")
    parser.add_argument("--sample", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-file", type=int, default=12, help="design episodes per file, as the build's default")
    parser.add_argument("--all", action="store_true", help="also check every episode, not only the sample")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows, report = [], {}
    for repo in args.repos:
        episodes, figures = build_design(repo, args.seed, args.per_file)
        picked = set(random.Random(args.seed).sample(range(len(episodes)), min(args.sample, len(episodes))))
        checker = Checker(repo)
        every = []
        for k, e in enumerate(episodes if args.all else [episodes[k] for k in sorted(picked)]):
            try:
                why = check(checker, e)
            except Exception as exc:
                why = f"check failed: {type(exc).__name__}: {exc}"
            sampled = (k in picked) if args.all else True
            try:
                agree = references_agree(checker, e) if sampled else None
            except Exception:
                agree = False
            every.append({"kind": e["meta"]["question"], "question": e["messages"][1]["content"],
                          "answer": e["messages"][-1]["content"], "wrong": why, "sampled": sampled, "refs_agree": agree})
        verdicts = [v for v in every if v["sampled"]]
        right = sum(v["wrong"] is None for v in verdicts)
        second = [v["refs_agree"] for v in verdicts if v["refs_agree"] is not None]
        rows.append({"repo": repo.name, "sampled": len(verdicts), "right": right, "wrong": len(verdicts) - right,
                     "%": round(100 * right / max(1, len(verdicts)), 1), "episodes": figures["episodes"],
                     "callers also in get_references": f"{sum(second)}/{len(second)}",
                     "design s": figures["design_s"], "jedi s": figures["jedi_s"]})
        if args.all:
            all_right = sum(v["wrong"] is None for v in every)
            rows[-1].update({"all checked": len(every), "all right %": round(100 * all_right / max(1, len(every)), 1)})
        report[repo.name] = {**figures, "sampled": len(verdicts), "right": right,
                             "sampled_kinds": dict(Counter(v["kind"] for v in verdicts)),
                             "wrong_examples": [v for v in every if v["wrong"]],
                             "references_disagree": [v for v in verdicts if v["refs_agree"] is False]}
    print_rows("design answers checked against ast and a fresh Jedi project (goal >= 95% right)", rows)
    for name, r in report.items():
        print(f"{name}: {r['files']} files, {r['episodes']} episodes {r['kinds']}; index {r['index_s']} s, design unit {r['design_s']} s "
              f"(Jedi {r['jedi_s']} s over {r['files_resolved']} files); sampled {r['sampled_kinds']}; rejected {r['rejected']}")
        for v in r["wrong_examples"]:
            print(f"  WRONG{'' if v['sampled'] else ' (not sampled)'} [{v['kind']}] {v['question'][:100]}\n"
                  f"    answer: {v['answer'][:200]}\n    why: {v['wrong']}")
        for v in r["references_disagree"]:
            print(f"  get_references does not list every cited call: {v['question'][:100]}\n    answer: {v['answer'][:200]}")
    out = {"rows": rows, "repos": report, "sample": args.sample, "seed": args.seed}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
