"""GGUF metadata readers shared by the runtime (adapter checks) and the trainer (model identity).
Torch-free."""

from __future__ import annotations

import mmap
import struct
from typing import Any


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
