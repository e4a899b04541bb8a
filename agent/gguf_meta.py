"""Small readers over ``gguf.GGUFReader`` shared by the runtime (adapter checks) and the trainer
(manifests, model identity). Torch-free."""

from __future__ import annotations

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


def read_string_fields(reader: Any) -> dict[str, str]:
    """Every scalar or string key of a GGUF file as a string (arrays are left out: vocabularies are big)."""
    out: dict[str, str] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field_value(field)
        if isinstance(value, list):
            continue
        out[key] = value if isinstance(value, str) else str(value)
    return out


def tensor_shapes(reader: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in numpy order (rows first): GGUF stores ggml's ``ne`` order, innermost first."""
    return {t.name: tuple(int(d) for d in reversed(list(t.shape))) for t in reader.tensors}
