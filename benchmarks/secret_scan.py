"""How often the secret scanner (``agent.secret_scan``) flags real code that holds no secret, and how fast.

For each git repository given, every tracked text file at HEAD is scanned as the experience builder does
(``trainer.experience.files.secret_reason``: name rules, then contents); for each experience folder given,
every episode is scanned as ``save_episodes`` does (``episode_secret``: every text of the episode). Each
flagged file or episode is listed with its reason, so a person can judge whether it is a real secret or a
false positive. Prints a table and, with ``--json``, writes the figures.

    python benchmarks/secret_scan.py --repo /tmp/click --repo /tmp/attrs --episodes /tmp/exp-click --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import secret_scan
from agent.secret_scan import episode_secret
from benchmarks.table import print_rows
from trainer.experience.files import decode_text, secret_reason


def scan_repository(repo: Path) -> dict:
    paths = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True).stdout.split("\0")
    flagged, files, chars = [], 0, 0
    secret_scan._cache.clear()
    started = time.perf_counter()
    for rel in filter(None, paths):
        path = repo / rel
        if path.is_symlink() or not path.is_file():
            continue
        text, _why = decode_text(path.read_bytes())
        if text is None:
            continue
        files += 1
        chars += len(text)
        reason = secret_reason(rel, text)
        if reason:
            flagged.append({"path": rel, "reason": reason})
    seconds = time.perf_counter() - started
    return {"what": f"files of {repo.name}", "items": files, "flagged": len(flagged), "rate": round(len(flagged) / max(files, 1), 4),
            "MB": round(chars / 1e6, 2), "MB/s": round(chars / 1e6 / max(seconds, 1e-9), 2), "examples": flagged}


def scan_episodes(folder: Path) -> dict:
    flagged, episodes, chars = [], 0, 0
    secret_scan._cache.clear()
    started = time.perf_counter()
    for shard in sorted(folder.rglob("*.jsonl")):
        if ".cache" in shard.parts:
            continue
        for line in shard.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            episode = json.loads(line)
            episodes += 1
            chars += len(line)
            reason = episode_secret(episode)
            if reason:
                flagged.append({"shard": str(shard.relative_to(folder)), "unit": episode.get("unit"), "reason": reason})
    seconds = time.perf_counter() - started
    return {"what": f"episodes in {folder}", "items": episodes, "flagged": len(flagged), "rate": round(len(flagged) / max(episodes, 1), 4),
            "MB": round(chars / 1e6, 2), "MB/s": round(chars / 1e6 / max(seconds, 1e-9), 2), "examples": flagged}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, action="append", default=[], help="a git work tree (its tracked files at HEAD)")
    parser.add_argument("--episodes", type=Path, action="append", default=[], help="an experience folder (its *.jsonl episodes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [scan_repository(r) for r in args.repo] + [scan_episodes(e) for e in args.episodes]
    print_rows("secret scanner on real code: what it flags", [{k: v for k, v in r.items() if k != "examples"} for r in rows])
    for r in rows:
        for ex in r["examples"][:20]:
            print(f"  {r['what']}: {ex}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
