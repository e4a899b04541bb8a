"""Experience benchmark: full and incremental builds on the project's own repository and on a synthetic
repository of ~100k lines with ~2,000 commits that this script generates (git fast-import).

Reports seconds for a full static build (units design, implementation, evolution), episodes per second
per unit, peak memory, and seconds for the incremental rebuild after one more commit. Goals on 2 cores:
full static build of 100k lines under 60 s; incremental rebuild after one commit under 2 s.

    .venv/bin/python benchmarks/experience.py [--lines 100000] [--commits 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import agent  # noqa: F401 - every git command of this script runs no repository-configured program (agent/gitsafe.py)
from benchmarks.table import print_rows
from trainer.experience.build import BuildOptions, build_experience

WORDS = ("account balance cache client config engine event filter handler index ledger market order parser queue record report route "
         "schema session store stream task token user vault widget").split()


def make_module(rng: random.Random, n_funcs: int, module: str) -> str:
    lines = [f'"""The {module} module: {rng.choice(WORDS)} and {rng.choice(WORDS)} handling."""', "", ""]
    names = []
    for i in range(n_funcs):
        name = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i}"
        names.append(name)
        callee = rng.choice(names[:-1]) if len(names) > 1 else None
        lines += [f"def {name}(value, factor={i % 7 + 1}):",
                  f'    """Compute the {rng.choice(WORDS)} {rng.choice(WORDS)} for value."""',
                  "    result = value * factor",
                  f"    result = {callee}(result)" if callee else "    result = result + 1",
                  "    if result > 1000:",
                  "        result = result % 1000",
                  "    return result", "", ""]
    return "\n".join(lines)


def fast_import_stream(rng: random.Random, files: dict[str, str], commits: int) -> bytes:
    """One big initial commit, then small edits: a function's constant changes, a line is added."""
    out = []
    mark = 0

    def blob(text: str) -> int:
        nonlocal mark
        mark += 1
        data = text.encode()
        out.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return mark

    def commit(message: str, changed: dict[str, int], ts: int) -> None:
        data = message.encode()
        out.append(b"commit refs/heads/main\ncommitter Bench <b@e> %d +0000\ndata %d\n%s\n" % (ts, len(data), data))
        for path, m in changed.items():
            out.append(b"M 100644 :%d %s\n" % (m, path.encode()))
        out.append(b"\n")

    commit("Initial import", {p: blob(t) for p, t in files.items()}, 1_700_000_000)
    paths = sorted(files)
    for n in range(1, commits):
        path = rng.choice(paths)
        text = files[path].splitlines(keepends=True)
        i = rng.randrange(len(text))
        if "factor=" in text[i]:
            text[i] = text[i].replace("factor=", "factor=1 + ", 1)
            message = f"Tune the default factor in {path}"
        else:
            text.insert(i, f"# note {n}: {rng.choice(WORDS)} {rng.choice(WORDS)}\n")
            message = f"Document {rng.choice(WORDS)} handling in {path}"
        files[path] = "".join(text)
        commit(message, {path: blob(files[path])}, 1_700_000_000 + n * 60)
    return b"".join(out)


def make_repo(where: Path, lines: int, commits: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    repo = where / "synthetic"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    files, total = {}, 0
    k = 0
    while total < lines:
        module = f"pkg{k // 20}/mod_{k}"
        text = make_module(rng, 40, module)
        files[f"{module}.py"] = text
        total += text.count("\n")
        k += 1
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=fast_import_stream(rng, files, commits), check=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    return repo


def add_commit(repo: Path) -> None:
    target = sorted(repo.glob("pkg0/*.py"))[0]
    target.write_text(target.read_text() + "\n\ndef freshly_added(value):\n    \"\"\"A function from the newest commit.\"\"\"\n    return value\n")
    subprocess.run(["git", "commit", "-qam", "Add freshly_added"], cwd=repo, check=True,
                   env={"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@e", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@e", "PATH": "/usr/bin:/bin"})


def measure(name: str, repo: Path, out: Path) -> dict:
    full = build_experience(repo, out, BuildOptions(progress=False))
    add_commit(repo) if name == "synthetic" else None
    incremental = build_experience(repo, out, BuildOptions(progress=False))
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=repo, capture_output=True, text=True).stdout.split()
    lines = sum(len((repo / p).read_text(errors="replace").splitlines()) for p in tracked)
    commits = int(subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=repo, capture_output=True, text=True).stdout)
    row = {"repo": name, "python_lines": lines, "commits": commits, "full_s": round(full.seconds, 1),
           "incremental_s": round(incremental.seconds, 2), "incremental_shards_made": incremental.shards_made}
    for unit, s in full.stats.items():
        row[f"{unit}_episodes"] = s["made"]
        row[f"{unit}_eps_per_s"] = round(s["made"] / max(full.seconds, 1e-9), 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--skip-self", action="store_true", help="only the synthetic repository")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="swespot-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_self:
            rows.append(measure("swespot (this repo)", ROOT, tmp / "self-exp"))
        started = time.perf_counter()
        repo = make_repo(tmp, args.lines, args.commits)
        print(f"synthetic repository made in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        rows.append(measure("synthetic", repo, tmp / "syn-exp"))
    print_rows("Experience build (static units: design, implementation, evolution)", rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
