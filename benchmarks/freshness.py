"""Freshness benchmark: seconds from ``git commit`` to a published adapter that knows the commit.

Starts a real ``swespot daemon`` (tiny test model, CPU, profile "tiny", no quiet period, default nice and
gate) on a small generated repository, waits for its first adapter, then makes commits one at a time
and measures, for each, the time from just before ``git commit`` until ``current`` names a version
trained on it, split into: detection (commit → the daemon starts the run: watchdog event, debounce,
branch-aware serving, policy) and the refresh's phases as the daemon measured them (experience, train,
export, gate, publish). "other" is what is left (process start, model loading inside phases is counted
in them).

    .venv/bin/python benchmarks/freshness.py [--commits 3] [--steps N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.table import print_rows
from daemon_support import NEXT_COMMITS, commit, make_repo, read_json, start_daemon, stop_daemon, wait_for
from trainer.tiny import default_cache_dir, tiny_model_dir

PHASES = ("experience", "train", "export", "gate", "publish")


def wait_result(status_path: Path, commit: str, proc, timeout: float) -> dict:
    def done():
        status = read_json(status_path)
        last = status.get("last_result") or {}
        return status if last.get("commit") == commit else None

    return wait_for(done, f"the daemon's result for {commit[:10]}", timeout, proc)


def row_for(label: str, committed_at: float, status: dict) -> dict:
    last = status["last_result"]
    finished = last["finished_at"]
    started = finished - last.get("seconds", 0.0)
    phases = last.get("phase_seconds") or {}
    row = {"event": label, "published": last.get("version") if last.get("published") else f"no: {last.get('reason')}",
           "total_s": round(finished - committed_at, 2), "detect_s": round(started - committed_at, 2)}
    for phase in PHASES:
        row[f"{phase}_s"] = round(float(phases.get(phase, 0.0)), 2)
    row["other_s"] = round(row["total_s"] - row["detect_s"] - sum(row[f"{p}_s"] for p in PHASES), 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=3, help="commits measured after the first adapter")
    parser.add_argument("--steps", type=int, default=None, help="training steps per refresh (default: the tiny profile's)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on one refresh after this long")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()


    tiny = tiny_model_dir(default_cache_dir())
    rows = []
    with tempfile.TemporaryDirectory(prefix="swespot-freshness-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["SWESPOT_STATE_DIR"] = str(tmp / "data")
        from agent.state import STATUS_FILE, state_dir

        repo = tmp / "repo"
        log = tmp / "daemon.log"
        started = time.time()
        first = make_repo(repo)
        status_path = state_dir(repo) / STATUS_FILE
        extra = ["--steps", str(args.steps)] if args.steps else []
        proc = start_daemon(repo, tmp / "data", log, "--profile", "tiny", "--base", str(tiny), "--quiet", "0",
                            "--when", "always", *extra)
        try:
            rows.append(row_for("first adapter (daemon start)", started, wait_result(status_path, first, proc, args.timeout)))
            for i in range(args.commits):
                message, files = NEXT_COMMITS[i % len(NEXT_COMMITS)]
                if i >= len(NEXT_COMMITS):
                    files = {f"ledger/more_{i}.py": f'"""More {i}."""\n\n\ndef more_{i}():\n    """The number {i}."""\n    return {i}\n'}
                committed_at = time.time()
                sha = commit(repo, message, files)
                rows.append(row_for(f"commit {i + 1}", committed_at, wait_result(status_path, sha, proc, args.timeout)))
                print(json.dumps(rows[-1]), file=sys.stderr)
        except AssertionError:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            stop_daemon(proc, signal.SIGTERM)

    load = os.getloadavg()
    print_rows(f"Freshness: git commit → published adapter (tiny model, CPU, {os.cpu_count()} cores, "
               f"load {load[0]:.1f} at the end)", rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count(), "load_avg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
