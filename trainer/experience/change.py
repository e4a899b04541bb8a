"""One commit as a replayable change (``Change``: its message and the text of every touched file
before and after), and the judgements made of it without running anything: whether its subject says
something (``uninformative``), whether it is only formatting or a version bump (``trivial_reason``).

The task text (``Change.task``) is the subject, the message body (without trailers such as
Signed-off-by) and the changelog entry the commit adds, where there is one: the lines it adds to a
CHANGES/CHANGELOG/HISTORY/NEWS file, or a new fragment under changelog.d/, newsfragments/ or changes/.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

MAX_CHANGELOG_CHARS = 800
CODE_SUFFIXES = {".py", ".pyi", ".pyx", ".js", ".jsx", ".mjs", ".ts", ".tsx", ".go", ".rs", ".java", ".kt", ".scala", ".c",
                 ".h", ".cc", ".cpp", ".hpp", ".cs", ".rb", ".php", ".swift", ".m", ".sh", ".lua", ".jinja", ".html"}
CHANGELOG_NAMES = re.compile(r"^(changes|changelog|history|news|release[-_]?notes)(\.\w+)?$", re.I)
FRAGMENT_DIRS = {"changelog.d", "newsfragments", "changes", "news", "changelog"}
# a subject that says nothing by itself: optional verbs, then a word that names no behaviour
NOISE_SUBJECT = re.compile(
    r"^(?:(?:fix(?:ed|es)?|update[ds]?|minor|small|more|some|add(?:ed)?|run|apply|address|the|a|and|&)\s+)*"
    r"(?:typos?|tests?|lint(?:ing)?|style|format(?:ting)?|reformat|wip|cleanup|clean[- ]?up|tweaks?|changes?|fix(?:es)?"
    r"|updates?|docs?|documentation|changelog(?: entry)?|comments?|whitespace|oops|refactor(?:ing)?|misc|stuff|pep ?8"
    r"|flake8|black|isort|ruff|mypy|ci|build|requirements|dependencies|deps|review|feedback|nits?|\.+)$", re.I)
VERSION_SUBJECT = re.compile(r"^(?:(?:bump|release|releasing|prepare|preparing|start|set|update|tag|version)"
                             r"(?:\s+(?:the|a|new|next|version|release|dev|development|cycle|to|for|of|v))*\s*:?\s*)?"
                             r"v?\d+\.\d+(?:\.\d+)*(?:[-.]?[a-z]+\d*)?\.?$|^bump version\b", re.I)
VERSION_LINE = re.compile(r"""^\s*(?:__version__|version|VERSION|"version"|release)\s*[:=]\s*["']?v?\d+\.\d+""")
TRAILER = re.compile(r"^[A-Z][\w-]+(?:-by|-authored-by)?: .+$")


def line_opcodes(a: list[str], b: list[str]) -> list:
    """difflib opcodes for two line lists, matching only the part between their common prefix and
    suffix (most commits touch a few lines of a long file: this makes diffs ~100x cheaper)."""
    pre = 0
    while pre < len(a) and pre < len(b) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < len(a) - pre and suf < len(b) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    middle = difflib.SequenceMatcher(None, a[pre:len(a) - suf], b[pre:len(b) - suf], autojunk=False).get_opcodes()
    ops = [("equal", 0, pre, 0, pre)] if pre else []
    ops += [(tag, i1 + pre, i2 + pre, j1 + pre, j2 + pre) for tag, i1, i2, j1, j2 in middle]
    if suf:
        ops.append(("equal", len(a) - suf, len(a), len(b) - suf, len(b)))
    return [op for op in ops if op[2] > op[1] or op[4] > op[3]]


@dataclass
class FileChange:
    kind: str  # "A" added, "M" modified, "D" deleted, "R" renamed
    old_path: str | None
    new_path: str | None
    before: str | None
    after: str | None

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @functools.cached_property
    def opcodes(self) -> list:
        """Line-level difference before → after, computed once (every consumer needs it)."""
        return line_opcodes((self.before or "").splitlines(keepends=True), (self.after or "").splitlines(keepends=True))

    @property
    def changed_lines(self) -> int:
        return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in self.opcodes if tag != "equal")

    @property
    def added(self) -> list[tuple[int, int]]:
        """The 0-based line ranges ``[j1, j2)`` of ``after`` that this change inserted or rewrote."""
        return [(j1, j2) for tag, _i1, _i2, j1, j2 in self.opcodes if tag in ("insert", "replace")]


@dataclass
class Change:
    commit: str
    parent: str
    message: str
    author_time: int
    files: list[FileChange]
    issue_refs: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.message.strip().splitlines()[0] if self.message.strip() else ""

    @property
    def changed_lines(self) -> int:
        return sum(f.changed_lines for f in self.files)

    @property
    def body(self) -> str:
        """The message after the subject, without trailers (Signed-off-by, Co-authored-by, ...)."""
        lines = self.message.strip().splitlines()[1:]
        return "\n".join(line for line in lines if not TRAILER.match(line.strip())).strip()

    @functools.cached_property
    def changelog(self) -> str:
        """The changelog entry this commit adds: lines added to a changelog file, or a new fragment."""
        out: list[str] = []
        for fc in self.files:
            if fc.after is None or not is_changelog(fc.path):
                continue
            lines = fc.after.splitlines()
            added = lines if fc.kind == "A" else [line for j1, j2 in fc.added for line in lines[j1:j2]]
            out.extend(line.rstrip() for line in added if _entry_line(line))
        return "\n".join(out).strip()[:MAX_CHANGELOG_CHARS]

    @property
    def task(self) -> str:
        """The request an episode replays: subject, body and the changelog entry the commit adds."""
        parts = [self.subject, self.body]
        if self.changelog:
            parts.append("Changelog entry:\n" + self.changelog)
        return "\n\n".join(p for p in parts if p)


def is_changelog(path: str) -> bool:
    p = PurePosixPath(path)
    return bool(CHANGELOG_NAMES.match(p.name)) or (len(p.parts) > 1 and p.parts[-2].lower() in FRAGMENT_DIRS
                                                  and p.suffix.lower() in (".md", ".rst", ".txt", ""))


def is_code(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in CODE_SUFFIXES


def _entry_line(line: str) -> bool:
    """A changelog line that says something: not blank, not an underline, not a version heading."""
    text = line.strip().lstrip("#").strip()
    return bool(text) and not re.fullmatch(r"[-=~^*`'_.:]+", text) and not re.match(
        r"^(?:version\s+|release\s+)?v?\d+\.\d+[\w.\-]*(?:\s*[(\-].*)?$|^unreleased\b", text, re.I)


def uninformative(subject: str) -> bool:
    """A subject that names no behaviour ("Fix tests", "wip", "typo", "Update CHANGES.rst")."""
    text = re.sub(r"\(#\d+\)|#\d+|\[[^\]]*\]|^\w+(?:\([^)]*\))?!?:\s*", " ", subject)  # refs, [ci skip], "docs:" prefixes
    text = " ".join(text.strip().rstrip(".!").split())
    if NOISE_SUBJECT.match(text) or not text:
        return True
    words = text.split()
    update_file = len(words) == 2 and words[0].lower() in ("update", "updated", "edit", "edited") and "." in words[1]
    return update_file or (len(words) == 1 and not re.search(r"[_.(`]|[a-z][A-Z]", text))


def trivial_reason(change: Change) -> str | None:
    """Why a change teaches nothing about the code (None: it does): formatting only, or a version bump."""
    code = [fc for fc in change.files if is_code(fc.path)]
    if code and all(re.sub(r"\s+", "", fc.before or "") == re.sub(r"\s+", "", fc.after or "") for fc in code if fc.kind != "R"):
        return "formatting only"
    changed = []
    for fc in change.files:
        if is_changelog(fc.path):
            continue
        a, b = (fc.before or "").splitlines(), (fc.after or "").splitlines()
        for tag, i1, i2, j1, j2 in fc.opcodes:
            if tag != "equal":
                changed += a[i1:i2] + b[j1:j2]
    if changed and all(VERSION_LINE.match(line) or not line.strip() for line in changed):
        return "version bump"
    return None
