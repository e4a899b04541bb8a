"""Git that a repository cannot turn against us.

A repository's own configuration (``.git/config``, or a ``.gitattributes`` naming a driver) can make git
run programs: ``core.fsmonitor`` runs on ``status``/``ls-files``, hooks on commits and checkouts,
``diff.external`` and textconv drivers on diffs, ``core.sshCommand`` and credential helpers on network
operations, ``gpg.program`` when a signature is shown. Every git command SWE-Spot runs gets these set
to values that run nothing, through git's public ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_<n>``/
``GIT_CONFIG_VALUE_<n>`` variables, which outrank every configuration file (as ``git -c`` does).

``protect_process()`` puts them into this process's environment, so that GitPython (which starts git
with ``os.environ``) and every child that inherits our environment is covered; ``agent/__init__``
calls it, so importing any part of SWE-Spot is enough. ``run()`` is ``subprocess.run`` for git with the
same settings even when the caller passes its own ``env``. Diffs and logs add ``--no-ext-diff
--no-textconv`` (``DIFF_FLAGS``): ``diff.external`` has no value that means "none".

Filter drivers (``filter.<name>.clean/smudge/process``, named by ``.gitattributes`` and defined in a
configuration file) run when git writes or hashes work-tree files (``checkout-index``, ``read-tree -u``,
``archive``, ``status``). They have no switch, so ``protect_repo()`` reads which names the configuration
seen from a repository defines and adds empty drivers for them (an empty driver runs nothing and passes
the content through); the snapshot and scratch copies call it before they check files out.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

# key -> value that runs nothing. Not here: diff.external (an empty value makes every `git diff` fail with
# "cannot run", and no value means "none"); external diffs and textconv drivers only run where porcelain
# makes a patch, and SWE-Spot makes none without DIFF_FLAGS (GitPython passes --no-ext-diff itself)
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.sshCommand", "false"),
    ("core.gitProxy", ""),
    ("core.askPass", ""),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("sequence.editor", "false"),
    ("credential.helper", ""),
    ("protocol.allow", "user"),
    ("protocol.ext.allow", "never"),
    ("protocol.fd.allow", "never"),
    ("gpg.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.x509.program", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
)

# variables that name programs for git to run; GIT_CONFIG_PARAMETERS (how ``git -c`` reaches children)
# would be read after our settings and win
UNSET = ("GIT_EXTERNAL_DIFF", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS", "GIT_EDITOR", "GIT_SEQUENCE_EDITOR",
         "GIT_PROXY_COMMAND", "GIT_CONFIG_PARAMETERS")

FIXED = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "GIT_OPTIONAL_LOCKS": "0"}

DIFF_FLAGS = ("--no-ext-diff", "--no-textconv")

_filter_names: set[str] = set()  # filter drivers found by protect_repo: emptied in every git command


def safe_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with the safe settings on top. Configuration the caller's
    environment already passes through ``GIT_CONFIG_KEY_<n>`` is kept, unless it names one of our keys."""
    env = dict(os.environ if base is None else base)
    safe = list(SAFE_CONFIG) + _filter_overrides()
    ours = {key.lower() for key, _ in safe}
    kept = []
    try:
        count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    except ValueError:
        count = 0
    for n in range(count):
        key, value = env.get(f"GIT_CONFIG_KEY_{n}"), env.get(f"GIT_CONFIG_VALUE_{n}", "")
        if key and key.lower() not in ours:
            kept.append((key, value))
    for n in range(count):
        env.pop(f"GIT_CONFIG_KEY_{n}", None)
        env.pop(f"GIT_CONFIG_VALUE_{n}", None)
    pairs = kept + safe
    for n, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{n}"] = key
        env[f"GIT_CONFIG_VALUE_{n}"] = value
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for name in UNSET:
        env.pop(name, None)
    env.update(FIXED)
    return env


def protect_process() -> None:
    """Apply ``safe_env`` to this process's own environment (idempotent)."""
    wanted = safe_env()
    for name in UNSET:
        os.environ.pop(name, None)
    for key, value in wanted.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _filter_overrides() -> list[tuple[str, str]]:
    return [(f"filter.{name}.{key}", value) for name in sorted(_filter_names)
            for key, value in (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false"))]


def protect_repo(repo_dir: str | os.PathLike, git_dir: str | os.PathLike | None = None) -> None:
    """Empty every filter driver the configuration of this repository (its own, the user's, included
    files) defines, in this process and every git command it runs from now on. Reading configuration
    runs nothing."""
    where = ["--git-dir", str(git_dir)] if git_dir else []
    done = subprocess.run(["git", *where, "config", "--name-only", "--get-regexp", r"^filter\..+\.(clean|smudge|process|required)$"],
                          cwd=repo_dir, env=safe_env(), capture_output=True, text=True)
    names = {key[len("filter."):].rsplit(".", 1)[0] for key in done.stdout.split("\n") if key.startswith("filter.")}
    if names - _filter_names:
        _filter_names.update(names)
        protect_process()


def run(args: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(["git", *args], ...)`` with the safe settings, whatever ``env`` the caller gives."""
    return subprocess.run(["git", *args], env=safe_env(env), **kwargs)
