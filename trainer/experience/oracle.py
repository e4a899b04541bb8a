"""Oracle sessions: episodes written by a policy that knows the answer, with every observation produced
by the agent's real tools on a snapshot of the repository. The policy chooses the calls; the tools
answer; the session records both in the episode format, with the same call ids the agent loop uses."""

from __future__ import annotations

import json
import re

from agent.episode import new_episode, tool_call
from agent.loop import SYSTEM_PROMPT
from agent.tools import SUBMIT, Tool, Workspace, call_tool, make_tools


class OracleSession:
    def __init__(self, ws: Workspace, task: str, *, read_only: bool = False, tools: dict[str, Tool] | None = None) -> None:
        self.ws = ws
        self.tools = tools or make_tools(ws, read_only=read_only)
        self.schemas = [t.schema() for t in self.tools.values()]
        self.messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]
        self.steps = 0
        self.errors: list[str] = []
        self.seen = task  # the task and every observation so far: what the next action may be chosen from
        self.anchors: set[tuple[str, int]] = _anchors(task, None)  # (path, line) the agent has seen
        # what the agent says with its submit / its test run: set by the unit that writes the episode
        self.thought_before_submit: str | None = None
        self.thought_before_run: str | None = None

    def act(self, calls: list[tuple[str, dict]], *, content: str | None = None, reasoning: str | None = None) -> list[str]:
        """One assistant turn with these tool calls; returns the real observations."""
        self.steps += 1
        message: dict = {"role": "assistant", "content": content or None,
                         "tool_calls": [tool_call(name, args, f"call_{self.steps}_{k}") for k, (name, args) in enumerate(calls)]}
        if reasoning:
            message["reasoning_content"] = reasoning
        self.messages.append(message)
        outputs = []
        for call in message["tool_calls"]:
            output = call_tool(self.tools, call["function"]["name"], call["function"]["arguments"])
            if output.startswith("error:"):
                self.errors.append(output)
            args = json.loads(call["function"]["arguments"])
            self.seen += "\n" + observed_text(call["function"]["name"], args, output)
            self.anchors |= _anchors(output, args.get("path") if call["function"]["name"] in ("read_file", "repo_map") else None)
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
            outputs.append(output)
        return outputs

    def submit(self, summary: str, *, content: str | None = None) -> None:
        self.act([(SUBMIT, {"summary": summary})], content=content)

    def episode(self, unit: str, commit: str, *, verified: dict | None = None, meta: dict | None = None) -> dict:
        return new_episode(unit, commit, self.messages, self.schemas, verified=verified or {}, meta=meta or {})


def say(rng, templates: list[str], **facts) -> str:
    """One short thought, in wording picked by the seeded ``rng`` from ``templates`` (all of which must
    use only the given facts: an unknown name fails loudly)."""
    return rng.choice(templates).format(**facts)


# ---- honesty: every action could have been chosen from what the agent had seen ----------------------
_KEYWORDS = {"async", "class", "def", "function", "func", "fn", "interface", "struct", "impl", "import", "from", "return"}
_LOCATION = re.compile(r"([\w./-]+\.\w+):(\d+)(?:-(\d+))?")
_LISTED_LINE = re.compile(r"^\s*(\d+): ")
_WORDS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def observed_text(name: str, args: dict, output: str) -> str:
    """What an observation lets the agent name next: its text, and for a folder listing the full paths
    of the entries (``src/`` listed ``core.py``: ``src/core.py`` is now known)."""
    if name == "list_dir" and args.get("path") not in (None, "", ".") and not output.startswith("error:"):
        folder = args["path"].rstrip("/")
        return output + "\n" + "\n".join(f"{folder}/{line.strip()}" for line in output.splitlines() if line.strip() and not line.startswith("..."))
    return output


def _anchors(text: str, path: str | None) -> set[tuple[str, int]]:
    """(path, line) pairs an observation shows: ``path:12`` mentions, numbered lines of a read file or
    of a repo map's file section, and ``start_line=N`` hints."""
    out = {(m.group(1), int(m.group(g))) for m in _LOCATION.finditer(text) for g in (2, 3) if m.group(g)}
    current = path
    for line in text.splitlines():
        header = re.match(r"^([\w./-]+):$", line)
        if header:
            current = header.group(1)
            continue
        listed = _LISTED_LINE.match(line)
        if listed and current:
            out.add((current, int(listed.group(1))))
        hint = re.search(r"start_line=(\d+)", line)
        if hint and current:
            out.add((current, int(hint.group(1))))
    return out


def _words_seen(value: str, seen: str) -> bool:
    return all(w in seen or w in _KEYWORDS for w in _WORDS.findall(value))


def ungrounded_actions(episode: dict, line_slack: int = 40) -> list[str]:
    """Problems with an episode's actions: an assistant turn without a thought before its calls, or a
    call whose locating arguments (paths, search patterns, symbols, line numbers, text to replace) come
    neither from the task nor from an earlier observation. The agent's own output (new text, file
    contents, the answer) is exempt. An empty list means every action was one the agent could choose."""
    problems: list[str] = []
    seen = ""
    anchors: set[tuple[str, int]] = set()
    calls: dict[str, tuple[str, dict]] = {}
    for k, message in enumerate(episode["messages"]):
        role = message["role"]
        if role == "user":
            seen += "\n" + (message.get("content") or "")
            anchors |= _anchors(message.get("content") or "", None)
            continue
        if role == "tool":
            name, args = calls.get(message.get("tool_call_id"), ("", {}))
            output = message.get("content") or ""
            seen += "\n" + observed_text(name, args, output)
            anchors |= _anchors(output, args.get("path") if name in ("read_file", "repo_map") else None)
            continue
        if role != "assistant" or not message.get("tool_calls"):
            continue
        if not (message.get("content") or "").strip():
            problems.append(f"turn {k}: no thought before {message['tool_calls'][0]['function']['name']}")
        for call in message["tool_calls"]:
            name = call["function"]["name"]
            args = json.loads(call["function"]["arguments"])
            calls[call["id"]] = (name, args)
            problems += [f"turn {k}: {name} {why}" for why in _argument_problems(name, args, seen, anchors, line_slack)]
    return problems


def _argument_problems(name: str, args: dict, seen: str, anchors: set, slack: int) -> list[str]:
    out = []
    path = args.get("path")
    if path not in (None, "", ".") and name not in ("create_file",) and path not in seen:
        out.append(f"path {path!r} was never seen")
    if name == "read_file" and int(args.get("start_line") or 1) > 1:
        start = int(args["start_line"])
        if not any(p == path and abs(n - start) <= slack for p, n in anchors):
            out.append(f"start_line {start} of {path} is not near any line an observation showed")
    if name == "search":
        pattern = args.get("pattern", "")
        if args.get("regex"):
            if not _words_seen(re.sub(r"\\[A-Za-z]", " ", pattern), seen):
                out.append(f"regex {pattern!r} names words never seen")
        elif pattern.lower() not in seen.lower():  # a word of the task, searched in the case the code uses
            out.append(f"pattern {pattern!r} was never seen")
    # a symbol may be a guess put together from seen words (``load_config`` from "load the config")
    parts = [w for w in re.split(r"[._]", args.get("symbol", "")) if len(w) >= 3]
    if name in ("find_definition", "find_references") and not all(w.lower() in seen.lower() for w in parts):
        out.append(f"symbol {args.get('symbol')!r} was never seen")
    if name == "find_files" and not _words_seen(args.get("pattern", ""), seen):
        out.append(f"pattern {args.get('pattern')!r} was never seen")
    if name == "edit":
        missing = [line for line in (args.get("old") or "").splitlines() if line.strip() and line.strip() not in seen]
        if missing:
            out.append(f"replaces text never seen: {missing[0].strip()[:60]!r}")
    if name == "run":
        for token in (args.get("command") or "").split():
            if ("/" in token or token.endswith(".py")) and token.split("::")[0] not in seen:
                out.append(f"command names {token!r}, never seen")
    return out
