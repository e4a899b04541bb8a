"""One resolver for model specs: the words every command and setting takes for a model.

A spec is ``default`` (or empty: the embedded Gemma 3 270M), a GGUF file, or a local Hugging Face
folder (one with ``config.json``). Training takes any of the three (``trainer.model_io.resolve_base``),
serving needs a GGUF (``serving_gguf_of`` here; ``trainer.export_check.serving_base`` converts a folder).
A spec that names none of them is a ``BadModelSpec`` with one line saying what to give instead.

Torch-free and cheap: resolving reads at most a file's first four bytes; the embedded model is
assembled only when its GGUF is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.default_model import ensure_default_gguf
from agent.errors import BadModelSpec

DEFAULT = "default"
SPEC_CHOICES = "'default', a .gguf file or a local Hugging Face folder"


@dataclass(frozen=True)
class ModelRef:
    """A resolved spec: ``kind`` is "default", "gguf" or "hf"; ``path`` the file or folder, resolved (None
    for default); ``name`` what reports call it (the file's stem or folder's name as given)."""

    kind: str
    path: Path | None = None
    name: str = "gemma-3-270m (embedded default)"


def resolve_model(spec: str | os.PathLike | None, what: str = "model", choices: str = SPEC_CHOICES) -> ModelRef:
    """``spec`` as a ``ModelRef``, or ``BadModelSpec`` naming ``what`` (e.g. "base model") and ``choices``."""
    if spec is None or str(spec) in ("", DEFAULT):
        return ModelRef(DEFAULT)
    path = Path(spec).expanduser()
    if not path.exists():
        raise BadModelSpec(f"{what} not found: {path} (give {choices})")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadModelSpec(f"{what} {path} is not a Hugging Face model folder (no config.json; give {choices})")
        return ModelRef("hf", path.resolve(), path.name)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise BadModelSpec(f"{what} {path} is not a GGUF file (bad magic {magic!r}; give {choices})")
    return ModelRef("gguf", path.resolve(), path.stem)


def serving_gguf_of(spec: str | os.PathLike | None, what: str = "model", choices: str = "'default' or a .gguf file",
                    progress: Callable[[str], None] | None = None) -> Path:
    """The GGUF llama.cpp loads for ``spec`` where no conversion is at hand (the language server, the
    agent, the demo): the embedded model's (assembled once) or the file itself. A folder is refused
    with the command that converts it."""
    ref = resolve_model(spec, what, choices)
    if ref.kind == DEFAULT:
        return ensure_default_gguf(progress)
    assert ref.path is not None
    if ref.kind == "hf":
        raise BadModelSpec(f"{what} {ref.path} is a Hugging Face folder; llama.cpp serves a GGUF file "
                           f"(make one: swespot model convert {ref.path} --out MODEL.gguf)")
    return ref.path
