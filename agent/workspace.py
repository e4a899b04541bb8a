"""The files of one repository root as the agent's tools see them, and the change made to them so far.

Paths are relative to the root; anything that resolves outside it (``..``, absolute paths, symlinks pointing
out) is refused, and so is git's own metadata (a ``.git`` folder or file at any depth: its configuration can
make git run programs). Writes never go through a symbolic link. The listing is git's own view when the root
is a repository, else a walk that honours every ``.gitignore``.

The workspace remembers the original content of every file it changes, so ``diff`` is the whole change as a
unified diff whether or not the root is a git repository. The tools over it are ``agent.tools``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pathspec

from agent import gitsafe
from agent.errors import SwespotError
from agent.index import ParseCache, RepoIndex

MAX_FILE_BYTES = 2 * 1024 * 1024


class RepoFiles:
    """A repository root plus the change made to it so far: checked paths, cached reads, tracked writes, the
    listing, the index (re-parsing only what changed) and the diff."""

    def __init__(self, root: str | os.PathLike, *, parse_cache=None) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise SwespotError(f"repository not found: {self.root}")
        self.originals: dict[str, str | None] = {}  # path -> original text (None: did not exist)
        self._index = None
        self._files: list[str] | None = None
        self._dirty: set[str] = set()  # paths changed since the index was built
        self._texts: dict[str, str] = {}  # canonical path -> text, for files read since they last changed
        self.parse_cache = parse_cache

    def resolve(self, rel: str, *, write: bool = False) -> Path:
        """The file ``rel`` names, refused when it lies outside the root or in git's metadata; for a write,
        also when the path goes through a symbolic link (the change is made at the link's target)."""
        if not isinstance(rel, str) or not rel.strip():
            raise SwespotError("a path is required")
        path = (self.root / rel).resolve()
        if path != self.root and self.root not in path.parents:
            raise SwespotError(f"{rel} is outside the repository; use a path relative to its root")
        if is_git_metadata(rel) or is_git_metadata(self.rel(path)):
            raise SwespotError(f"{rel} is git's own metadata; the tools neither read nor change it")
        if write:
            link = symlink_on_path(self.root, rel)
            if link is not None:
                raise SwespotError(f"{rel} goes through the symbolic link {link}; use the path it points to, "
                                   f"{self.rel(path)}, instead")
        return path

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read_text(self, rel: str) -> str:
        key = posixpath.normpath(rel) if isinstance(rel, str) and rel and not rel.startswith("/") else None
        if key in self._texts:
            return self._texts[key]
        text = self._read_text(rel)
        if key is not None and not key.startswith(".."):
            self._texts[key] = text
        return text

    def _read_text(self, rel: str) -> str:
        path = self.resolve(rel)
        if not path.exists():
            raise SwespotError(f"{rel} does not exist")
        if path.is_dir():
            raise SwespotError(f"{rel} is a directory; use list_dir")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SwespotError(f"{rel} is too large to read ({path.stat().st_size // 1024} KiB, the limit is "
                               f"{MAX_FILE_BYTES // 1024} KiB); search the repository for what you need instead")
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            raise SwespotError(f"{rel} is a binary file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SwespotError(f"{rel} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc

    def write_text(self, rel: str, text: str) -> None:
        path = self.resolve(rel, write=True)
        key = self.rel(path)
        if key not in self.originals:
            self.originals[key] = path.read_text(encoding="utf-8") if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        path.write_text(text, encoding="utf-8")
        self.invalidate([key], listing=not existed)

    def invalidate(self, paths: list[str] | None = None, *, listing: bool = True) -> None:
        """Files changed behind the tools' back (or by them): refresh the listing and re-index these paths
        (all of them when ``paths`` is None)."""
        if paths is None:
            self._index, self._files, self._dirty, self._texts = None, None, set(), {}
            return
        self._dirty.update(paths)
        for rel in paths:
            self._texts.pop(posixpath.normpath(rel), None)
        if listing:
            self._files = None

    def forget_changes(self) -> None:
        """Start a new change (the caller restored the files): diff and originals begin empty."""
        self.invalidate(list(self.originals))
        self.originals = {}

    def files(self) -> list[str]:
        """Files that are not ignored: git's own view when the root is a repository, else a walk."""
        if self._files is None:
            self._files = self._list_files()
        return self._files

    def _list_files(self) -> list[str]:
        """Regular files, and links to files inside the root (a link to a file outside is not the
        repository's: neither listed, searched nor indexed)."""
        return [p for p in self._entries() if self._is_own_file(p)]

    def _entries(self) -> list[str]:
        """Every path that is not ignored, links included (git lists a link, never what is behind it)."""
        if (self.root / ".git").exists():
            done = gitsafe.run(["ls-files", "-co", "--exclude-standard", "-z"], cwd=self.root, capture_output=True)
            if done.returncode == 0:
                return sorted({p for p in done.stdout.decode("utf-8", errors="replace").split("\0") if p and not is_git_metadata(p)})
        return [p for p in walk_not_ignored(self.root, links=True) if not is_git_metadata(p)]

    def _is_own_file(self, rel: str) -> bool:
        path = self.root / rel
        if not path.is_symlink():
            return path.is_file()
        target = path.resolve()
        return target.is_file() and self.root in target.parents and not is_git_metadata(self.rel(target))

    def links(self) -> list[str]:
        """The symbolic links among the repository's paths (to files or folders, inside or outside):
        copies reproduce them as links, so a path through one leads where it leads in the repository."""
        return [p for p in self._entries() if (self.root / p).is_symlink()]

    def index(self):
        """The repository index, re-parsing only the files changed since it was built."""
        self.parse_cache = self.parse_cache or ParseCache()
        if self._index is None:
            self._index = RepoIndex.from_directory(self.root, self.files(), self.parse_cache)
        elif self._dirty:
            files = dict(self._index.files)
            for rel in self._dirty:
                files.pop(rel, None)
                if is_git_metadata(rel) or not self._is_own_file(rel):
                    continue  # gone, or now a link out of the repository: no longer indexed
                try:
                    text = (self.root / rel).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue  # unreadable: no longer indexed
                fi = self.parse_cache.get_or_parse(rel, text, persist=False)  # edits are transient
                if fi is not None:
                    files[rel] = fi
            # rebuild the cross-file maps only if some file's index really changed (an edit undone
            # returns the very same cached object)
            for rel in self._dirty:
                if files.get(rel) is not self._index.files.get(rel):
                    self._index.update_file(rel, files.get(rel))
        self._dirty = set()
        return self._index

    def diff(self) -> str:
        chunks: list[str] = []
        for rel in sorted(self.originals):
            before = self.originals[rel]
            path = self.root / rel
            after = path.read_text(encoding="utf-8") if path.exists() else None
            if before == after:
                continue
            chunks.extend(difflib.unified_diff(
                (before or "").splitlines(keepends=True), (after or "").splitlines(keepends=True),
                fromfile=f"a/{rel}" if before is not None else "/dev/null", tofile=f"b/{rel}" if after is not None else "/dev/null"))
        return "".join(c if c.endswith("\n") else c + "\n\\ No newline at end of file\n" for c in chunks)


    @contextlib.contextmanager
    def scratch_copy(self):
        """A temporary copy of the files the tools see (not ignored), as they are now."""
        with scratch_dir("swespot-run-") as tmp:
            self.copy_into(tmp)
            yield tmp

    def copy_into(self, dst: Path, *, max_bytes: int | None = None,
                  on_error: Callable[[str, OSError], None] | None = None) -> None:
        """Copy the files the tools see (not ignored) into ``dst``, with their mode and times. Symbolic links
        are copied as links, never what they point to: inside a copy (a sandbox, a snapshot) a target outside
        it does not exist, so a path through a link that leaves the repository leaves the copy too. Files
        over ``max_bytes`` are left out; a file that cannot be copied raises, or goes to ``on_error``."""
        for rel in self.links():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(self.root / rel), dst / rel)
        for rel in self.files():
            src = self.root / rel
            try:
                if src.is_symlink() or not src.is_file() or max_bytes is not None and src.stat().st_size > max_bytes:
                    continue  # a link is there already; huge files are not code to edit
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
            except OSError as exc:
                if on_error is None:
                    raise
                on_error(rel, exc)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed with everything in it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SKIPPED_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".tox"}


def is_git_metadata(rel: str) -> bool:
    """Whether a repository path is git's own: a ``.git`` folder or file at any depth (a nested
    repository's, a submodule's). Any case, and trailing dots or spaces, count: some file systems ignore
    them. (``.gitignore``, ``.gitattributes`` and ``.gitmodules`` are content: git runs no program from
    them that our settings in ``agent.gitsafe`` leave enabled.)"""
    return any(part.rstrip(". ").casefold() == ".git" for part in PurePosixPath(rel).parts)


def symlink_on_path(root: Path, rel: str) -> str | None:
    """The first part of ``rel`` (under ``root``) that is a symbolic link on disk, or None. Checked part
    by part, as the file system resolves a path, so ``link/../x`` counts as going through ``link``."""
    current = root
    for part in PurePosixPath(rel).parts:
        if part in ("", ".", "/"):
            continue
        current = current.parent if part == ".." else current / part
        if current.is_symlink():
            return current.relative_to(root).as_posix() if current.is_relative_to(root) else str(current)
        if not current.exists():
            return None
    return None


def walk_not_ignored(root: Path, *, links: bool = False) -> list[str]:
    """Files under ``root`` that git would not ignore, for folders that are not git repositories: every
    ``.gitignore`` applies below its own folder (pathspec implements git's pattern rules), ignored folders
    are not entered, and symlinked folders are not followed (with ``links``, they are listed, as git
    lists them)."""
    out: list[str] = []
    specs: list[tuple[str, pathspec.PathSpec]] = []  # (folder prefix, its .gitignore), outermost first

    def ignored(rel: str, is_dir: bool) -> bool:
        # as in git, the last matching pattern decides, and deeper .gitignore files come later
        probe, verdict = (rel + "/" if is_dir else rel), False
        for prefix, spec in specs:
            include = spec.check_file(probe[len(prefix):]).include
            verdict = verdict if include is None else include
        return verdict

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        specs[:] = [(p, sp) for p, sp in specs if prefix.startswith(p)]  # leave folders we walked out of
        if ".gitignore" in filenames:
            lines = _text_or_empty(Path(dirpath, ".gitignore")).splitlines()
            specs.append((prefix, pathspec.GitIgnoreSpec.from_lines(lines)))
        if links:
            out.extend(prefix + d for d in dirnames if os.path.islink(os.path.join(dirpath, d)) and not ignored(prefix + d, False))
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not ignored(prefix + d, True))
        out.extend(prefix + f for f in filenames if not ignored(prefix + f, False))
    return sorted(out)


def detect_test_command(root: Path) -> str | None:
    """The repository's test command when it is evident from its files (what ``run`` does with no
    command); None when nothing says how its tests run."""
    if (root / "pytest.ini").exists() or (root / "conftest.py").exists() or (root / "tests").is_dir() \
            or "[tool.pytest" in _text_or_empty(root / "pyproject.toml") or "[tool:pytest]" in _text_or_empty(root / "setup.cfg"):
        return "python -m pytest -q"
    if (root / "package.json").exists() and '"test"' in _text_or_empty(root / "package.json"):
        return "npm test"
    if (root / "go.mod").exists():
        return "go test ./..."
    if (root / "Cargo.toml").exists():
        return "cargo test"
    return None


def _text_or_empty(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""

