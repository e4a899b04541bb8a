"""The VS Code extension (vscode-extension/): its type check and mocha unit tests, the contract it shares
with the language server, and an end-to-end run of the packaged extension in a real, offline VS Code
(code-server) driven through its UI by Playwright and Debian's chromium, against `swespot serve` on the
tiny model.

The node toolchain (Node 24, the extension's locked npm dependencies, code-server, Debian's chromium) is
installed by ``scripts/test`` (through ``scripts/vscode-setup --e2e``) into ``~/.cache/swespot-vscode-e2e``
(``$SWESPOT_VSCODE_CACHE``); these tests install nothing, they find it with ``scripts/vscode-setup --check``.
A missing part skips them with the reason, except in CI (``$CI`` set), where it is a failure: a broken
set-up must not read as green. Screenshots of each e2e step land in ``vscode-extension/test-artifacts/e2e/``
(``$SWESPOT_E2E_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools_support import missing_tool

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "vscode-extension"
SETUP = ROOT / "scripts" / "vscode-setup"
E2E_TIMEOUT_S = 600


def _toolchain(e2e: bool) -> dict[str, str]:
    """The environment scripts/vscode-setup exports for the installed toolchain (Node 24 first on PATH,
    code-server with ``e2e``); installs nothing."""
    done = subprocess.run([str(SETUP), "--check", *(["--e2e"] if e2e else [])], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        missing_tool(done.stderr.strip()[-2000:] or f"scripts/vscode-setup --check failed ({done.returncode})")
    env = dict(os.environ)
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"export (\w+)=(.*)", line.strip())
        if match:
            env[match[1]] = match[2].replace("$PATH", env.get("PATH", ""))
    return env


@pytest.fixture(scope="session")
def node_env() -> dict[str, str]:
    return _toolchain(e2e=False)


def _npm(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(["npm", *args], cwd=EXT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"npm {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    return done


def test_extension_type_checks_and_its_unit_tests_pass(node_env):
    _npm(node_env, "run", "typecheck")
    out = _npm(node_env, "run", "test:unit").stdout
    passing = re.search(r"(\d+) passing", out)
    assert passing and int(passing[1]) >= 30 and "failing" not in out, out[-3000:]


# ---- the contract with the language server ---------------------------------------------------------
def _ts_constants(source: str) -> dict[str, str]:
    return dict(re.findall(r"export const (\w+) = '([^']*)';", source))


def test_protocol_mirror_names_the_servers_methods_commands_and_fields():
    """vscode-extension/src/protocol.ts mirrors lsp_server/protocol.py: same method and command names,
    and every field of every wire type (camelCase), so a rename on one side fails here."""
    import attrs

    from lsp_server import protocol as P

    source = (EXT / "src" / "protocol.ts").read_text()
    constants = _ts_constants(source)
    python_names = {name: value for name, value in vars(P).items()
                    if isinstance(value, str) and name.isupper() and (value.startswith("swespot") or name.startswith("CMD_"))}
    assert {k: v for k, v in constants.items() if k in python_names} == python_names
    assert set(python_names) <= set(constants), f"missing in protocol.ts: {set(python_names) - set(constants)}"
    for cls in P.PROTOCOL_TYPES:
        body = re.search(rf"export interface {cls.__name__} \{{(.*?)\n\}}", source, re.S)
        assert body, f"protocol.ts has no interface {cls.__name__}"
        ts_fields = set(re.findall(r"^\s+(\w+)\??:", body[1], re.M))
        py_fields = {P.camel(f.name) for f in attrs.fields(cls)}
        assert ts_fields == py_fields, f"{cls.__name__}: protocol.ts has {sorted(ts_fields)}, protocol.py {sorted(py_fields)}"


def test_contributed_settings_are_the_servers_settings_with_its_defaults():
    from dataclasses import MISSING, fields

    from lsp_server.settings import Settings, camel

    props = json.loads((EXT / "package.json").read_text())["contributes"]["configuration"]["properties"]
    server_keys = {k.removeprefix("swespot.") for k in props if "." not in k.removeprefix("swespot.")}
    assert server_keys == {camel(f.name) for f in fields(Settings)}
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else f.default_factory()
        contributed = props[f"swespot.{camel(f.name)}"]["default"]
        assert contributed == (list(default) if isinstance(default, tuple) else default), f.name
    settings_ts = (EXT / "src" / "settings.ts").read_text()
    assert re.findall(r"^  '(\w+)',$", settings_ts, re.M) == [camel(f.name) for f in fields(Settings)]


# ---- end to end in code-server --------------------------------------------------------------------
OPS = '"""Arithmetic helpers."""\n\n\ndef add(a, b):\n    """Return a + b."""\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n'


def _fixture_workspace(root: Path, model: Path, state: Path) -> Path:
    (root / "calc").mkdir(parents=True)
    (root / "calc" / "__init__.py").write_text("from calc.ops import add, mul\n")
    (root / "calc" / "ops.py").write_text(OPS)
    (root / "tests").mkdir()
    (root / "tests" / "test_ops.py").write_text("from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    (root / ".vscode").mkdir()
    (root / ".vscode" / "settings.json").write_text(json.dumps({
        "swespot.server.path": str(ROOT / ".venv" / "bin" / "swespot"),
        "swespot.model": str(model),
        "swespot.threads": 1,
        "swespot.contextSize": 4096,
        "swespot.chatMaxTokens": 48,
        "swespot.chatMaxSteps": 1,
        "swespot.inlineCompletion.enabled": False,
        "swespot.trace.server": "messages",
    }, indent=2))
    return root


ARTIFACTS = Path(os.environ.get("SWESPOT_E2E_ARTIFACTS", EXT / "test-artifacts"))


@pytest.fixture(scope="module")
def e2e_env() -> dict[str, str]:
    """The toolchain with code-server and chromium (the suites drive /usr/bin/chromium)."""
    env = _toolchain(e2e=True)
    if not Path("/usr/bin/chromium").exists():
        missing_tool("Debian's chromium is not at /usr/bin/chromium")
    if not (ROOT / ".venv" / "bin" / "swespot").exists():
        pytest.fail("the language server is not installed: run ./scripts/setup")
    return env


def _task_script(path: Path) -> Path:
    """A scripted agent model (shipped in agent.models) that fixes add, for a deterministic diff."""
    path.write_text(json.dumps([
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "edit", "arguments": {"path": "calc/ops.py", "old": "    return a - b\n", "new": "    return a + b\n"}}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "submit", "arguments": {"summary": "add now adds"}}}]},
    ]))
    return path


@pytest.mark.slow
def test_packaged_extension_in_code_server_chats_and_applies_a_reviewed_task(e2e_env, tiny_gguf_q8, tmp_path):
    _npm(e2e_env, "run", "package")
    vsix = EXT / "swespot-local.vsix"
    workspace = _fixture_workspace(tmp_path / "proj", tiny_gguf_q8, tmp_path / "state")
    script = _task_script(tmp_path / "task.json")
    chat_script = tmp_path / "chat.json"  # a reply naming a file and line, to click in the chat panel
    chat_script.write_text(json.dumps([{"role": "assistant", "content": "add is defined in calc/ops.py:4 and tested in tests/test_ops.py."}]))
    artifacts = ARTIFACTS / "e2e"
    shutil.rmtree(artifacts, ignore_errors=True)
    env = {**e2e_env, "SWESPOT_STATE_DIR": str(tmp_path / "state"), "SWESPOT_LOG_LEVEL": "DEBUG"}
    done = subprocess.run(
        ["node", "e2e/run.mjs", "--workspace", str(workspace), "--vsix", str(vsix), "--artifacts", str(artifacts),
         "--task-model", f"scripted:{script}", "--chat-model", f"scripted:{chat_script}"],
        cwd=EXT, env=env, capture_output=True, text=True, timeout=E2E_TIMEOUT_S)
    sys.stderr.write(done.stderr[-6000:])
    results = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    assert done.returncode == 0, f"e2e failed: {results.get('error')}; steps: {json.dumps(results.get('steps'), indent=1)[-6000:]}"
    steps = {s["name"]: s for s in results["steps"]}
    for name in ("install-extension", "status-bar-ready", "status-menu", "chat-streamed-reply", "switch-to-scripted-agent-model",
                 "task-diff-shown", "task-accepted-and-saved", "chat-file-reference-opens-the-file"):
        assert steps[name]["ok"], name
    assert steps["chat-streamed-reply"]["deltas"] >= 1 and steps["chat-streamed-reply"]["reply"].strip()
    assert "tokens" in steps["chat-streamed-reply"]["footer"]
    assert steps["chat-file-reference-opens-the-file"]["link"] == "calc/ops.py:4"
    assert (workspace / "calc" / "ops.py").read_text() == OPS.replace("return a - b", "return a + b")
    assert len(results["screenshots"]) >= 8 and all(Path(p).stat().st_size > 10_000 for p in results["screenshots"])


@pytest.mark.slow
def test_in_editor_suite_passes_in_code_server(e2e_env, tiny_gguf_q8, tmp_path):
    """test/suite/ inside VS Code's extension host (VS Code's test payload): ghost text and its feedback,
    code actions routed through the review, explain in the panel, a rejected task, the status menu's
    requests, all against the real server."""
    subprocess.run(["node", "esbuild.mjs", "--tests"], cwd=EXT, env=e2e_env, check=True, timeout=300)
    workspace = _fixture_workspace(tmp_path / "proj", tiny_gguf_q8, tmp_path / "state")
    (workspace / "calc" / "report.py").write_text(
        "from calc.ops import add\n\n\ndef total(xs):\n    out = 0\n    for x in xs:\n        out = add(out, x)\n    return out\n")
    artifacts = ARTIFACTS / "suite"
    shutil.rmtree(artifacts, ignore_errors=True)
    env = {**e2e_env, "SWESPOT_STATE_DIR": str(tmp_path / "state"), "SWESPOT_TASK_SCRIPT": str(_task_script(tmp_path / "task.json"))}
    done = subprocess.run(["node", "e2e/suite.mjs", "--workspace", str(workspace), "--artifacts", str(artifacts)],
                          cwd=EXT, env=env, capture_output=True, text=True, timeout=E2E_TIMEOUT_S)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"log": [done.stderr[-4000:]]}
    log = "\n".join(result["log"])
    assert done.returncode == 0 and result["exitCode"] == 0, log[-6000:]
    passing = re.search(r"(\d+) passing", log)
    assert passing and int(passing[1]) == 9 and "failing" not in log, log[-3000:]
