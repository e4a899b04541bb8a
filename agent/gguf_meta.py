"""GGUF files as the runtime and the trainer check them: the magic, the file's sha256 (a model's identity),
header fields read without loading tensors, and an adapter's fit to a base model. Torch-free."""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AdapterMismatch, SwespotError


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks (a 253 MB GGUF hashes in about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_gguf_file(path: Path, what: str) -> None:
    """Refuse, with one line, a path that does not exist, is not a file, or is not GGUF (its magic)."""
    if not path.exists():
        raise SwespotError(f"{what} not found: {path}")
    if not path.is_file():
        raise SwespotError(f"{what} is not a file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise SwespotError(f"{what} is not a GGUF file (bad magic {magic!r}): {path}")


def adapter_metadata(path: Path, *, architecture: str, base_sha256: Callable[[], str], base_name: str) -> dict[str, str]:
    """The adapter's header fields, checked before llama.cpp sees it: a LoRA adapter, for this
    ``architecture``, and for this base model when it names one (``base_sha256`` is called only then:
    hashing the base takes a second). Tensor shapes are checked by llama.cpp itself.
    (Reading the base with gguf would parse its whole vocabulary: 10 s for Gemma's 262k tokens.)"""
    try:
        meta = {k: str(v) for k, v in read_header_fields(path).items()}
    except (ValueError, OSError, struct.error) as exc:
        raise SwespotError(f"adapter file {path} is damaged or not a GGUF file: {exc}") from exc
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise SwespotError(
            f"{path} is not a LoRA adapter (general.type={meta.get('general.type')!r}, "
            f"adapter.type={meta.get('adapter.type')!r})"
        )
    arch = meta.get("general.architecture")
    if arch != architecture:
        raise AdapterMismatch(
            f"adapter {path} was made for a {arch!r} model, but the loaded base model is "
            f"{architecture!r} ({base_name})"
        )
    want_sha = meta.get("swespot.base.sha256")
    if want_sha and want_sha != (sha := base_sha256()):
        raise AdapterMismatch(
            f"adapter {path} was trained for another base model (sha256 {want_sha[:12]}…), "
            f"not {base_name} (sha256 {sha[:12]}…)"
        )
    return meta


def field_value(field: Any) -> Any:
    """The Python value of one GGUF key/value field (scalar, string, or list)."""
    if hasattr(field, "contents"):
        return field.contents()
    # older gguf: strings and scalars live in parts[data[0]]
    part = field.parts[field.data[0]]
    try:
        return bytes(part).decode("utf-8")
    except UnicodeDecodeError:
        return part.tolist()


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_header_fields(path) -> dict[str, object]:
    """Scalar and string key/values of a GGUF file, read straight from its header without building
    tensors or vocabularies (``GGUFReader`` takes ~10 s on a 262k-token vocabulary; this takes
    milliseconds). Arrays are skipped. Raises ValueError on a file that is not GGUF or is cut short."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        pos = 4

        def take(fmt: str):
            nonlocal pos
            value = struct.unpack_from(fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            if pos + n > len(buf):
                raise ValueError("truncated string")
            value = bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
            pos += n
            return value

        def skip(vtype: int) -> None:
            nonlocal pos
            if vtype == _STRING:
                n = take("<Q")  # not `pos += take(...)`: take() moves pos itself
                pos += n
            elif vtype in _SCALARS:
                pos += struct.calcsize(_SCALARS[vtype])
            else:
                raise ValueError(f"unknown GGUF value type {vtype}")

        version = take("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        take("<Q")  # tensor count
        fields: dict[str, object] = {}
        for _ in range(take("<Q")):
            key, vtype = string(), take("<I")
            if vtype == _STRING:
                fields[key] = string()
            elif vtype == _ARRAY:
                etype, count = take("<I"), take("<Q")
                if etype in _SCALARS:
                    pos += count * struct.calcsize(_SCALARS[etype])
                else:
                    for _ in range(count):
                        skip(etype)
            elif vtype in _SCALARS:
                fields[key] = take(_SCALARS[vtype])
            else:
                raise ValueError(f"unknown GGUF value type {vtype}")
        return fields
