"""Printing a benchmark's rows: one rich table whose columns are every key the rows have, in order."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_rows(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for key in keys:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*[str(row.get(k, "")) for k in keys])
    Console(width=220).print(table)
