"""Tools over one repository root, as a small model can use them.

Every tool takes JSON arguments and returns text; a failure is returned as text starting with
``error:`` that says what went wrong and what to do instead — tools never raise into the loop. The files
the tools see, the paths they refuse (outside the root, git's own metadata, writes through a symbolic
link) and the change they make are ``agent.workspace.RepoFiles``; ``Workspace`` adds the tools. Commands
run in the sandbox (``agent.sandbox``), on a throw-away copy of the files.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import logging
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SwespotError
from agent.sandbox import clean_env, run_limited
from agent.workspace import MAX_FILE_BYTES, RepoFiles, detect_test_command, is_git_metadata, symlink_on_path, walk_not_ignored

# the names other modules import from here with the tools (their home is agent.workspace)
__all__ = ["MAX_FILE_BYTES", "MAX_LIST_ENTRIES", "MAX_READ_LINES", "MAX_SEARCH_RESULTS", "SUBMIT", "CommandPolicy", "Tool",
           "Workspace", "call_tool", "detect_test_command", "is_git_metadata", "make_tools", "symlink_on_path", "walk_not_ignored"]

MAX_READ_LINES = 400
MAX_SEARCH_RESULTS = 50
MAX_LIST_ENTRIES = 200

log = logging.getLogger(__name__)


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict
    fn: Callable[..., str]

    def schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def _params(required: list[str], **props: dict) -> dict:
    return {"type": "object", "properties": props, "required": required}


class CommandPolicy:
    """Decides which commands run without asking. Default: test runners and read-only inspection.
    Anything else goes to ``approve`` (the editor asks the user); without one, it is refused."""

    ALLOWED = re.compile(
        r"^(python3? -m (pytest|unittest)|pytest|npm (test|run test)|yarn test|go test|cargo test|make test|tox|nox"
        r"|ls|cat|head|tail|wc|grep|rg|find|git (status|diff|log|show|blame))\b"
    )
    INSPECTION = re.compile(r"^(ls|cat|head|tail|wc|grep|rg|find|git)\b")

    # options that make an otherwise read-only command write files or run programs
    UNSAFE_OPTIONS = re.compile(r"(^|\s)(-delete|-exec|-execdir|-ok|-okdir|-fprint\S*|-fls|--pre(=|\s|$)|--output\b|-o\s)")

    def __init__(self, approve: Callable[[str], bool] | None = None) -> None:
        self.approve = approve

    def allows(self, command: str) -> bool:
        """Allowed without asking: a known test runner or inspection command, with no shell syntax (the
        command is not run by a shell, so ``;`` or ``|`` would only mislead) and no writing options."""
        command = command.strip()
        if (self.ALLOWED.match(command) and not re.search(r"[;&|`$<>]", command)
                and not (self.INSPECTION.match(command) and self.UNSAFE_OPTIONS.search(command))):
            return True
        return bool(self.approve and self.approve(command))


class Workspace(RepoFiles):
    """A repository root plus the change made to it so far (``RepoFiles``), with the tools the agent calls."""

    def __init__(self, root: str | os.PathLike, *, policy: CommandPolicy | None = None, test_command: str | None = None,
                 run_timeout: float = 120, output_budget: int = 8000, parse_cache=None, scratch_runs: bool = True) -> None:
        super().__init__(root, parse_cache=parse_cache)
        # commands run in a scratch copy of the files (rule: never in the user's tree); a root that is
        # itself a scratch snapshot (the experience builder's) may run in place
        self.scratch_runs = scratch_runs
        self.policy = policy or CommandPolicy()
        self.test_command = test_command
        self.run_timeout = run_timeout
        self.output_budget = output_budget
        # extra environment for commands, relative paths meaning the folder they run in (the repository's
        # test environment: its source roots on PYTHONPATH, third-party pytest plugins off; trainer.experience.testenv)
        self.run_env: dict[str, str] | None = None

    # ---- the tools ----------------------------------------------------------------------------------
    def read_file(self, path: str, start_line: int = 1, end_line: int | None = None) -> str:
        lines = self.read_text(path).splitlines()
        start = max(1, int(start_line or 1))
        if start > max(1, len(lines)):
            raise SwespotError(f"{path} has only {len(lines)} lines")
        if end_line and int(end_line) < start:
            raise SwespotError(f"end_line ({end_line}) is before start_line ({start})")
        # at most MAX_READ_LINES per call, even for a range the caller chose: the rest is one more call away
        end = min(len(lines), int(end_line) if end_line else len(lines), start + MAX_READ_LINES - 1)
        out = [f"{n}: {lines[n - 1]}" for n in range(start, end + 1)]
        wanted = min(len(lines), int(end_line)) if end_line else len(lines)
        if end < wanted:
            out.append(f"... ({wanted - end} more lines; read with start_line={end + 1})")
        return "\n".join(out) if out else f"{path} is empty"

    def list_dir(self, path: str = ".") -> str:
        target = self.resolve(path)
        if not target.is_dir():
            raise SwespotError(f"{path} is not a directory")
        prefix = "" if target == self.root else self.rel(target) + "/"
        children = {}
        for rel in self.files():
            if rel.startswith(prefix):
                head, sep, _ = rel[len(prefix):].partition("/")
                children[head + ("/" if sep else "")] = True
        names = sorted(children)
        shown = names[:MAX_LIST_ENTRIES]
        more = f"\n... and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        return ("\n".join(shown) + more) if shown else f"{path} has no files"

    def find_files(self, pattern: str) -> str:
        # fnmatch's * also crosses "/", so "src/*.py" finds nested files too; "**/" may match no folder
        patterns = {pattern, pattern.removeprefix("**/")}
        hits = [p for p in self.files() if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(Path(p).name, pat) for pat in patterns)]
        if not hits:
            return f"no files match {pattern!r}"
        return "\n".join(hits[:MAX_LIST_ENTRIES]) + (f"\n... and {len(hits) - MAX_LIST_ENTRIES} more" if len(hits) > MAX_LIST_ENTRIES else "")

    def search(self, pattern: str, regex: bool = False, path: str = ".") -> str:
        try:
            rx = re.compile(pattern if regex else re.escape(pattern))
        except re.error as exc:
            raise SwespotError(f"bad regular expression: {exc}") from exc
        base = self.resolve(path)
        prefix = "" if base == self.root else self.rel(base)
        results: list[str] = []
        files_hit = 0
        for rel in self.files():
            if prefix and not (rel == prefix or rel.startswith(prefix + "/")):
                continue
            try:
                text = self.read_text(rel)
            except SwespotError:
                continue  # binaries and unreadable files are not searched
            # most files do not match: a plain substring test (C speed) or one regex pass skips them
            if (pattern not in text) if not regex else not rx.search(text):
                continue
            hit = False
            for n, line in enumerate(text.splitlines(), 1):
                if (pattern in line) if not regex else rx.search(line):
                    hit = True
                    if len(results) < MAX_SEARCH_RESULTS:
                        results.append(f"{rel}:{n}: {line.strip()[:200]}")
            files_hit += hit
        if not results:
            return f"no matches for {pattern!r}"
        total = f"\n(first {MAX_SEARCH_RESULTS} matches shown)" if len(results) == MAX_SEARCH_RESULTS else ""
        return "\n".join(results) + total

    def repo_map(self, budget: int = 1024, path: str | None = None) -> str:
        index = self.index()
        paths = None
        if path:
            base = self.rel(self.resolve(path)) if path != "." else ""
            paths = [p for p in index.files if not base or p == base or p.startswith(base + "/")]
        text = index.repo_map(budget_tokens=int(budget), paths=paths)
        return text or "no source files with definitions found"

    def find_definition(self, symbol: str) -> str:
        defs = self.index().definitions(symbol)
        if not defs:
            return f"no definition of {symbol!r} found"
        lines = []
        for d in defs[:10]:
            lines.append(f"{d.path}:{d.start_line}-{d.end_line} {d.kind} {d.qualname}: {d.signature}")
            if d.doc:
                lines.append(f"    {d.doc.splitlines()[0][:160]}")
        return "\n".join(lines)

    def find_references(self, symbol: str) -> str:
        index = self.index()
        refs = index.references(symbol)
        if not refs:
            return f"no references to {symbol!r} found"
        out = []
        for r in refs[:MAX_SEARCH_RESULTS]:
            where = index.files[r.path].enclosing(r.line)
            out.append(f"{r.path}:{r.line}" + (f" in {where.qualname}" if where else ""))
        return "\n".join(out)

    def edit(self, path: str, old: str, new: str) -> str:
        text = self.read_text(path)
        count = text.count(old) if old else 0
        if count == 1:
            self.write_text(path, text.replace(old, new, 1))
            return f"edited {path}"
        if not old:
            raise SwespotError("old must be the exact text to replace (use create_file for a new file)")
        if count == 0:
            lines = text.splitlines()
            first = old.strip().splitlines()[0] if old.strip() else old
            close = difflib.get_close_matches(first.strip(), [line.strip() for line in lines], n=3, cutoff=0.6)
            where = [f"line {i + 1}: {lines[i].strip()}" for i, line in enumerate(lines) if line.strip() in close][:3]
            hint = ("; closest lines: " + " | ".join(where)) if where else "; read the file again and copy the text exactly"
            raise SwespotError(f"old text not found in {path}{hint}")
        starts = [m.start() for m in re.finditer(re.escape(old), text)]
        lines_at = [text.count("\n", 0, s) + 1 for s in starts]
        raise SwespotError(f"old text occurs {count} times in {path} (lines {', '.join(map(str, lines_at))}); include more surrounding lines to make it unique")

    def create_file(self, path: str, content: str) -> str:
        target = self.resolve(path, write=True)
        if target.exists():
            raise SwespotError(f"{path} already exists; use edit to change it")
        self.write_text(path, content)
        return f"created {path} ({len(content.splitlines())} lines)"

    def delete_file(self, path: str) -> str:
        target = self.resolve(path, write=True)
        if not target.is_file():
            raise SwespotError(f"{path} is not a file")
        key = self.rel(target)
        if key not in self.originals:
            self.originals[key] = self.read_text(path)
        target.unlink()
        self.invalidate([key])
        return f"deleted {path}"

    def run(self, command: str = "", timeout: float | None = None) -> str:
        """Run one command (no shell) in the repository; with no command, its test command.

        The policy decides before anything starts. The command runs in the sandbox (``agent.sandbox``:
        bubblewrap), in a throw-away copy of the files: it sees the system read-only and that copy, not the
        user's home, the real work tree or other processes; it has no network; at the time limit every
        process it started dies; memory, CPU time and file sizes are capped by the kernel; its output is
        read as it comes and cut to ``output_budget`` bytes (head and tail kept); the environment has no
        credentials. Without bubblewrap the command is refused (unless SWESPOT_UNSAFE_NO_SANDBOX=1)."""
        command = (command or "").strip() or self.test_command or detect_test_command(self.root) or ""
        if not command:
            raise SwespotError("no command given and no test command found for this repository; give one")
        if not self.policy.allows(command):
            raise SwespotError(f"running {command!r} needs the user's approval, which was not given; run tests or read-only commands")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise SwespotError(f"cannot parse the command: {exc}") from exc
        limit = min(float(timeout or self.run_timeout), self.run_timeout)
        env = clean_env(self.run_env) if self.run_env else None
        if self.scratch_runs:
            # the repository's code never runs in the user's tree: a throw-away copy of its current
            # (edited) files, so what the command writes or deletes is lost with the copy
            with self.scratch_copy() as where:
                result = run_limited(argv, where, timeout_s=limit, output_limit=self.output_budget, env=env)
        else:
            result = run_limited(argv, self.root, timeout_s=limit, output_limit=self.output_budget, env=env)
        status = f"timed out after {limit:g}s" if result.timed_out else f"exit code {result.returncode}"
        return f"$ {command}\n[{status}, {result.seconds:.1f}s]\n{result.output}".rstrip()

    def show_diff(self) -> str:
        return self.diff() or "no changes yet"


SUBMIT = "submit"


def make_tools(ws: Workspace, *, read_only: bool = False) -> dict[str, Tool]:
    """The agent's tools over ``ws`` (read-only: no edits, no commands)."""
    s, i, b = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    tools = [
        Tool("read_file", "Read a file (or a line range) with line numbers.",
             _params(["path"], path=s, start_line=i, end_line=i), ws.read_file),
        Tool("list_dir", "List a directory.", _params([], path=s), ws.list_dir),
        Tool("find_files", "Files whose path or name matches a glob, e.g. 'tests/test_*'.",
             _params(["pattern"], pattern=s), ws.find_files),
        Tool("search", "Search the files' text (a regex with regex=true).",
             _params(["pattern"], pattern=s, regex=b, path=s), ws.search),
        Tool("repo_map", "Outline: definitions and signatures per file.",
             _params([], budget=i, path=s), ws.repo_map),
        Tool("find_definition", "Where a function, class or Class.method is defined.",
             _params(["symbol"], symbol=s), ws.find_definition),
        Tool("find_references", "Where a symbol is used, with the enclosing function.",
             _params(["symbol"], symbol=s), ws.find_references),
    ]
    if not read_only:
        tools += [
            Tool("edit", "Replace an exact, unique text of a file.",
                 _params(["path", "old", "new"], path=s, old=s, new=s), ws.edit),
            Tool("create_file", "Create a new file.", _params(["path", "content"], path=s, content=s), ws.create_file),
            Tool("delete_file", "Delete a file.", _params(["path"], path=s), ws.delete_file),
            Tool("run", "Run a command (default: the tests); time-limited, no network.",
                 _params([], command=s, timeout=i), ws.run),
            Tool("diff", "The whole change so far, as a unified diff.", _params([]), ws.show_diff),
        ]
    tools.append(Tool(SUBMIT, "Finish with a short summary of what you found or changed.", _params(["summary"], summary=s),
                      lambda summary: summary))
    return {t.name: t for t in tools}


def call_tool(tools: dict[str, Tool], name: str, arguments: str | dict) -> str:
    """Run one tool call; every failure becomes an ``error:`` text the model can read."""
    tool = tools.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; available: {', '.join(sorted(tools))}"
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except ValueError as exc:
        return f"error: arguments are not JSON: {exc}"
    if not isinstance(args, dict):
        return "error: arguments must be a JSON object"
    allowed = set(tool.parameters.get("properties", {}))
    unknown = set(args) - allowed
    if unknown:
        return f"error: {name} has no parameter(s) {', '.join(sorted(unknown))}; it takes {', '.join(sorted(allowed)) or 'none'}"
    missing = [k for k in tool.parameters.get("required", []) if k not in args]
    if missing:
        return f"error: {name} needs {', '.join(missing)}"
    try:
        return tool.fn(**args)
    except SwespotError as exc:
        return f"error: {exc}"
    except (OSError, ValueError, TypeError) as exc:
        return f"error: {name} failed: {type(exc).__name__}: {exc}"
    except Exception as exc:  # the one boundary where tools never raise into the loop
        log.exception("tool %s failed on %s", name, arguments)
        return f"error: {name} failed unexpectedly ({type(exc).__name__}: {exc}); try another way"
