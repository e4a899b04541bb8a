"""How the code is shaped: the measures of issue 14 (a house a newcomer can live in), read from the source.

For the Python packages (agent, trainer, lsp_server; benchmarks and tests reported apart) it counts:
  - the largest files (lines) and how many exceed --max-file lines;
  - the longest functions (``ast``: from ``def`` to the last line of the body, nested ones counted on their own
    too) and how many exceed --max-function lines;
  - function-local imports (``import`` statements whose nearest scope is a function), split into those of a
    heavy optional dependency that must stay lazy (torch, transformers, peft, accelerate, safetensors,
    tokenizers, sentencepiece, llama_cpp, pygls, lsprotocol, watchdog, matplotlib), those that point up the
    layers (agent < trainer < lsp_server), those in a command module (``*_cli.py``, loaded for every
    command: its handlers import the implementation) and the others (README, Layout, says why the first
    three stay);
  - ``# noqa`` comments;
  - string-matched error checks. A heuristic: a ``startswith``/``endswith``/``removeprefix``/``removesuffix``
    call with a string literal on a receiver whose source names an error (``err``, ``error``, ``exc``,
    ``reason``), or ``"literal" in <such an expression>``. Tool results the model reads
    (``output.startswith("error:")``) are a text protocol by design and are not counted, nor are tests (they
    assert the user-facing wording on purpose).
Prints a table; ``--json PATH`` writes every figure.

    python benchmarks/structure.py --json /tmp/structure.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("agent", "trainer", "lsp_server")
SCOPES = {"source": SOURCE, "benchmarks": ("benchmarks",), "tests": ("tests",)}
HEAVY = {"torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "sentencepiece", "llama_cpp", "pygls",
         "lsprotocol", "watchdog", "matplotlib"}
LAYERS = {"agent": 0, "trainer": 1, "lsp_server": 2}
ERROR_NAME = re.compile(r"err|exc|reason", re.IGNORECASE)
STRING_METHODS = {"startswith", "endswith", "removeprefix", "removesuffix"}
NOQA = re.compile(r"#\s*noqa\b", re.IGNORECASE)


def python_files(folders: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for folder in folders:
        out += sorted(p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts and "__pycache__" not in p.parts)
    return out


def _local_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append(child)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, False)
    return found


def _imported_roots(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    return ["." if node.level else (node.module or "").split(".")[0]]


def _error_string_checks(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STRING_METHODS
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and ERROR_NAME.search(ast.unparse(node.func.value))):
            found.append(node)
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
                and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
                and any(ERROR_NAME.search(ast.unparse(c)) for c in node.comparators)):
            found.append(node)
    return found


def measure(folders: tuple[str, ...], max_file: int, max_function: int, top: int, count_checks: bool = True) -> dict:
    files: list[dict[str, Any]] = []
    functions: list[dict[str, Any]] = []
    local: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    noqa = 0
    for path in python_files(folders):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        files.append({"file": rel, "lines": len(lines)})
        noqa += sum(1 for line in lines if NOQA.search(line))
        tree = ast.parse(text, filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append({"function": f"{rel}:{node.lineno} {node.name}", "lines": (node.end_lineno or node.lineno) - node.lineno + 1})
        for imp in _local_imports(tree):
            roots = _imported_roots(imp)
            layer = LAYERS.get(rel.split("/")[0], -1)
            local.append({"where": f"{rel}:{imp.lineno}", "modules": roots, "heavy": any(r in HEAVY for r in roots),
                          "upward": layer >= 0 and any(LAYERS.get(r, -1) > layer for r in roots),
                          "command": layer >= 0 and rel.endswith("_cli.py")})
        if count_checks:
            checks += [{"where": f"{rel}:{n.lineno}", "code": ast.unparse(n)[:120]} for n in _error_string_checks(tree)]
    files.sort(key=lambda f: -f["lines"])
    functions.sort(key=lambda f: -f["lines"])
    heavy = sum(1 for i in local if i["heavy"])
    upward = sum(1 for i in local if i["upward"] and not i["heavy"])
    command = sum(1 for i in local if i["command"] and not i["heavy"] and not i["upward"])
    return {
        "files": len(files),
        "lines": sum(f["lines"] for f in files),
        "largest_files": files[:top],
        f"files_over_{max_file}": sum(1 for f in files if f["lines"] > max_file),
        "longest_functions": functions[:top],
        f"functions_over_{max_function}": sum(1 for f in functions if f["lines"] > max_function),
        "local_imports": len(local),
        "local_imports_heavy": heavy,
        "local_imports_upward": upward,
        "local_imports_command": command,
        "local_imports_other": len(local) - heavy - upward - command,
        "local_import_sites": local,
        "noqa": noqa,
        "error_string_checks": len(checks) if count_checks else None,
        "error_string_check_sites": checks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--max-file", type=int, default=400, help="a file longer than this is counted (lines)")
    parser.add_argument("--max-function", type=int, default=60, help="a function longer than this is counted (lines)")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest files and functions to list")
    args = parser.parse_args(argv)
    report = {name: measure(folders, args.max_file, args.max_function, args.top, count_checks=name != "tests")
              for name, folders in SCOPES.items()}
    if args.json:  # before printing, so a closed pipe (| head) cannot lose it
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    console = Console(width=160)
    summary = Table(title="Code structure (benchmarks/structure.py)")
    summary.add_column("measure")
    for name in SCOPES:
        summary.add_column(name, justify="right")
    rows: list[tuple[str, str | None]] = [
        ("python files", "files"), ("lines", "lines"), (f"files over {args.max_file} lines", f"files_over_{args.max_file}"),
        (f"functions over {args.max_function} lines", f"functions_over_{args.max_function}"),
        ("function-local imports", "local_imports"), ("  of a heavy optional dependency", "local_imports_heavy"),
        ("  of a higher layer", "local_imports_upward"), ("  in a command module's handlers", "local_imports_command"),
        ("  others", "local_imports_other"), ("# noqa comments", "noqa"),
        ("string-matched error checks", "error_string_checks")]
    rows.insert(2, ("largest file", None))
    rows.insert(3, ("longest function", None))
    for label, key in rows:
        if key is None:
            field = "largest_files" if "file" in label else "longest_functions"
            cells = [f"{r[field][0]['lines']} {r[field][0].get('file') or r[field][0].get('function')}" if r[field] else "-"
                     for r in report.values()]
        else:
            cells = ["-" if r[key] is None else str(r[key]) for r in report.values()]
        summary.add_row(label, *cells)
    console.print(summary)
    for title, field, name in (("Largest files (source)", "largest_files", "file"), ("Longest functions (source)", "longest_functions", "function")):
        table = Table(title=title)
        table.add_column(name)
        table.add_column("lines", justify="right")
        for row in report["source"][field]:
            table.add_row(row[name], str(row["lines"]))
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
