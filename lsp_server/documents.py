"""Open documents as the server may use them, and agent changes turned into an LSP ``WorkspaceEdit``.

The editor's buffers are the truth: the agent works on a snapshot that holds their unsaved text, and its
change comes back as versioned ``TextDocumentEdit``s against exactly the versions it saw. If a document
moved on meanwhile, applying the edit would corrupt it, so the edit is refused with a message instead.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.uris import from_fs_path, to_fs_path

from agent.errors import SwespotError
from agent.tools import is_git_metadata, symlink_on_path

MAX_DOCUMENT_CHARS = 2_000_000  # the agent's tools read files up to 2 MiB; a bigger buffer is not code
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class DocumentSnapshot:
    uri: str
    path: Path
    version: int | None
    text: str


def check_text(uri: str, text: str) -> str:
    """The text if the model may read it: not huge, and valid Unicode. (Bytes that were not UTF-8 in
    the message, and lone surrogates a client escaped, both arrive as surrogate code points.)"""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise SwespotError(f"{uri} is too large for the model ({len(text):,} characters; the limit is "
                           f"{MAX_DOCUMENT_CHARS:,}); SWE-Spot skips it")
    bad = _SURROGATE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise SwespotError(f"{uri} holds text that is not valid UTF-8 (line {line}); save it as UTF-8 to use SWE-Spot on it")
    return text


def is_excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    """Whether a repository-relative path matches one of the user's excluded-path globs (a pattern
    naming a folder excludes everything under it)."""
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.rstrip("/") + "/*") for p in patterns)


def path_of(uri: str) -> Path:
    path = to_fs_path(uri)
    if not path or not unquote(uri).startswith("file:"):
        raise SwespotError(f"{uri} is not a file URI; SWE-Spot works on files of the repository")
    return Path(path).resolve()


def uri_of(path: Path) -> str:
    return from_fs_path(str(path)) or path.as_uri()


# ---- text positions --------------------------------------------------------------------------------
def units(text: str, encoding: str) -> int:
    """Length of ``text`` in the negotiated position encoding's code units."""
    if encoding == lsp.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8"))
    if encoding == lsp.PositionEncodingKind.Utf32:
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def end_position(lines: list[str], encoding: str) -> lsp.Position:
    """The position just after the last character of a text split with ``keepends``."""
    if not lines:
        return lsp.Position(0, 0)
    last = lines[-1]
    if last.endswith(("\n", "\r")):
        return lsp.Position(len(lines), 0)
    return lsp.Position(len(lines) - 1, units(last, encoding))


def text_edits(before: str, after: str, encoding: str) -> list[lsp.TextEdit]:
    """The smallest set of whole-line replacements that turns ``before`` into ``after``. Line-based
    edits have character 0 on both ends (except at a last line without a newline), so they mean the
    same thing in every position encoding and survive clients that normalise line endings."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    edits = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start = lsp.Position(i1, 0) if i1 < len(old) else end_position(old, encoding)
        end = lsp.Position(i2, 0) if i2 < len(old) else end_position(old, encoding)
        # (a last line without a newline differs from the same line with one, so text is never appended
        # after such a line: the line itself is replaced)
        edits.append(lsp.TextEdit(range=lsp.Range(start, end), new_text="".join(new[j1:j2])))
    return edits


# ---- workspace edits ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileChange:
    rel: str
    before: str | None  # None: the file was created
    after: str | None  # None: the file was deleted


def build_workspace_edit(root: Path, changes: list[FileChange], snapshots: dict[str, DocumentSnapshot],
                         current: dict[str, DocumentSnapshot], encoding: str) -> lsp.WorkspaceEdit:
    """The agent's change as one ``WorkspaceEdit``. ``snapshots`` are the open documents the agent saw
    (by repository path), ``current`` the open documents now: an edit to a document whose version moved,
    or that was opened with other text than the agent saw, is refused."""
    operations: list = []
    for change in changes:
        check_edit_target(root, change.rel)
        path = root / change.rel
        uri = uri_of(path)
        seen, now = snapshots.get(change.rel), current.get(change.rel)
        version = _version_to_edit(change, seen, now)
        if change.before is None:
            operations.append(lsp.CreateFile(uri=uri, options=lsp.CreateFileOptions(overwrite=False, ignore_if_exists=False)))
            before = ""
        else:
            before = change.before
        if change.after is None:
            operations.append(lsp.DeleteFile(uri=uri, options=lsp.DeleteFileOptions(ignore_if_not_exists=True)))
            continue
        edits = text_edits(before, change.after, encoding)
        if edits:
            document = lsp.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
            operations.append(lsp.TextDocumentEdit(text_document=document, edits=edits))
    return lsp.WorkspaceEdit(document_changes=operations)


def check_edit_target(root: Path, rel: str) -> None:
    """An edit lands only on a file of the repository itself: never in git's metadata, never through a
    symbolic link (the editor would write wherever the link points), never outside the root."""
    if is_git_metadata(rel):
        raise SwespotError(f"the agent's change touches {rel}, git's own metadata; no edit was made")
    link = symlink_on_path(root, rel)
    if link is not None:
        raise SwespotError(f"the agent's change to {rel} would go through the symbolic link {link}; no edit was made")
    target = (root / rel).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise SwespotError(f"the agent's change to {rel} lies outside the repository; no edit was made")


def _version_to_edit(change: FileChange, seen: DocumentSnapshot | None, now: DocumentSnapshot | None) -> int | None:
    if seen is not None:
        if now is None:
            raise SwespotError(f"{change.rel} was closed while the agent worked on it; run the task again")
        if now.version != seen.version:
            raise SwespotError(f"{change.rel} changed while the agent worked on it (version {seen.version} -> "
                               f"{now.version}); its edit would not apply cleanly, so none was made. Run the task again.")
        return seen.version
    if now is not None:  # opened after the snapshot: fine if its text is what the agent started from
        if change.before is None or now.text != change.before:
            raise SwespotError(f"{change.rel} was opened with other text while the agent worked; run the task again")
        return now.version
    return None  # not open: the client applies it to the file as it is on disk
