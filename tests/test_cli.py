"""The entry point on top: ``swespot`` (and ``python -m swespot``) assembles every command from its layer's
module, nothing below imports it, errors become exit codes at its one boundary, and the language server
starts the trainer daemon with the documented command."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import DaemonUnavailable, NothingPublished, SwespotError
from daemon_support import FILES, ROOT, commit, git

COMMANDS = {"model", "experience", "train", "adapters", "daemon", "eval", "specialize", "agent", "serve"}


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swespot", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def subcommands(parser) -> set[str]:
    return {name for action in parser._subparsers._group_actions for name in action.choices}


def test_every_command_is_registered_once_from_its_own_module():
    from swespot.cli import COMMAND_MODULES, build_parser

    assert subcommands(build_parser()) >= COMMANDS
    owners = {m.__name__.split(".")[0] for m in COMMAND_MODULES}
    assert owners == {"agent", "trainer", "lsp_server"}


def test_help_starts_without_the_heavy_libraries(tmp_path):
    probe = ("import sys\nfrom swespot.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp', 'pygls') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "specialize" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout


def test_no_layer_imports_the_entry_point():
    """agent <- trainer <- lsp_server <- swespot: the application package is on top, imported by nobody below."""
    offenders = []
    tracked = git(ROOT, "ls-files", "--", "agent/*.py", "trainer/*.py", "lsp_server/*.py").split()
    assert len(tracked) > 30
    for path in (ROOT / name for name in tracked if (ROOT / name).is_file()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "swespot"]
    assert offenders == []


def test_a_swespot_error_is_one_line_and_its_kinds_exit_code(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "Start", FILES)
    done = run("adapters", "rollback", "v0042", "--repo", str(repo), cwd=tmp_path, env={"SWESPOT_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == SwespotError.exit_code == 1, done.stderr
    assert done.stderr.startswith("swespot: error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_nothing_published_says_so_once_and_keeps_the_cause():
    exc = NothingPublished("could not publish into /x: [Errno 28] No space left on device")
    assert str(exc) == "could not publish into /x: [Errno 28] No space left on device; nothing was published"
    assert exc.detail == "could not publish into /x: [Errno 28] No space left on device"
    assert isinstance(exc, SwespotError)


def test_the_server_starts_the_daemon_with_the_documented_command(tmp_path):
    """``daemon_command`` is what README documents (``swespot daemon --repo``); here with ``--status``, which
    answers at once, through the very argv the language server runs."""
    from lsp_server.daemon import daemon_command

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "Start", FILES)
    argv = daemon_command(repo)
    assert argv[:4] == [sys.executable, "-m", "swespot", "daemon"]
    done = subprocess.run([*argv, "--status"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "SWESPOT_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["running"] is False


def test_an_installation_without_the_daemon_extras_reports_it_unavailable(tmp_path, monkeypatch):
    import lsp_server.daemon as D

    monkeypatch.setattr(D, "DAEMON_NEEDS", {"swespot_no_such_module": "daemon"})
    daemon = D.DaemonProcess(tmp_path, tmp_path / "state")
    try:
        assert daemon.start() is False and not daemon.running
        assert isinstance(daemon.failure, DaemonUnavailable) and not daemon.available
        assert daemon.error == "background training needs the daemon extra: pip install 'swespot[daemon]'"
        with pytest.raises(DaemonUnavailable):
            D.check_daemon_installed()
    finally:
        daemon.close()
    monkeypatch.setattr(D, "DAEMON_NEEDS", {"json": "daemon"})  # present: nothing to report
    D.check_daemon_installed()


def test_specialize_takes_repo_and_base_and_still_the_older_spellings(tmp_path):
    from swespot.cli import build_parser
    from trainer.eval_cli import specialize_options

    parser = build_parser()
    new = specialize_options(parser.parse_args(["specialize", "--repo", str(tmp_path), "--base", "m.gguf", "--no-eval"]))
    old = specialize_options(parser.parse_args(["specialize", str(tmp_path), "--model", "m.gguf", "--no-eval"]))
    assert new == old and new.repo == tmp_path.resolve() and new.base == "m.gguf" and not new.evaluate
    assert specialize_options(parser.parse_args(["specialize"])).repo == Path(".").resolve()
    with pytest.raises(SwespotError, match="two repositories"):
        specialize_options(parser.parse_args(["specialize", str(tmp_path), "--repo", str(tmp_path / "other")]))
    serve = parser.parse_args(["serve", "--model", "m.gguf"])
    assert serve.base == "m.gguf" and parser.parse_args(["serve"]).base is None


def test_adapter_commands_are_one_group(tmp_path):
    from swespot.cli import build_parser

    parser = build_parser()
    names = subcommands(parser)
    assert "adapters" in names and "adapter" in names  # the older name is an alias of the one group
    export = parser.parse_args(["adapter", "export", "a", "--base", "hf", "--out", "a.gguf"])
    assert export.func is parser.parse_args(["adapters", "export", "a", "--base", "hf", "--out", "a.gguf"]).func


def test_adapters_rollback_and_prune_answer_in_json(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "Start", FILES)
    done = run("adapters", "prune", "--keep", "2", "--repo", str(repo), "--json", cwd=tmp_path,
               env={"SWESPOT_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"removed": []}


def profile_options(parser, command: str = "") -> dict:
    """Every ``--profile`` option of the command line, by command ("experience build", "train", ...)."""
    found = {}
    for action in parser._actions:
        if "--profile" in action.option_strings:
            found[command] = action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(profile_options(sub, f"{command} {name}".strip()))
    return found


def test_every_command_takes_the_same_profiles_with_one_meaning_each(capsys):
    from swespot.cli import build_parser, main
    from trainer.config import MAX_HOLDOUT, PROFILE_NAMES, TRAIN_PRESETS, profile_name
    from trainer.evaluation import EVAL_PROFILES
    from trainer.pipeline import GPU_TRAIN_PROFILE, PROFILES

    assert set(PROFILES) == set(EVAL_PROFILES) == set(MAX_HOLDOUT) == set(PROFILE_NAMES) == {"tiny", "quick", "full"}
    assert {p["train_profile"] for p in PROFILES.values()} | {GPU_TRAIN_PROFILE} <= set(TRAIN_PRESETS)
    options = profile_options(build_parser())
    assert set(options) == {"experience build", "train", "eval", "specialize", "daemon"}
    assert all(a.type is profile_name for a in options.values())
    for old, new in (("cpu", "use quick"), ("real", "use full (the GPU recipe")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--data", "x", "--profile", old])
        assert exit_info.value.code == 2
        assert f"argument --profile: {old!r} was a training preset; the profiles are tiny, quick, full" in capsys.readouterr().err
        assert new in str(pytest.raises(argparse.ArgumentTypeError, profile_name, old).value)


def test_swespot_train_trains_as_the_profiles_refresh_does(tmp_path):
    from swespot.cli import build_parser
    from trainer.pipeline import PROFILES, train_config
    from trainer.train_cli import config_from_args

    def config(*args: str):
        return config_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o", "--device", "cpu", *args]))

    for profile in ("tiny", "quick", "full"):
        steps = PROFILES[profile]["steps"]
        assert config("--profile", profile) == train_config(profile, device="cpu", steps=steps, data="d", out="o", base="default")
    quick, rate = config(), PROFILES["quick"]["train"]["lr"]  # quick by default: its steps, learning rate and window
    assert (quick.steps, quick.lr, quick.max_len) == (PROFILES["quick"]["steps"], rate, 2048)
    full = config("--profile", "full")  # full on a CPU: one pass over the data, within a floor and a cap of steps
    assert (full.steps, full.epochs) == (0, 1.0) and PROFILES["quick"]["steps"] < full.min_steps < full.max_steps
    assert (config("--profile", "full", "--steps", "7").steps, config("--steps", "7").lr) == (7, rate)
    longer = config("--profile", "full", "--epochs", "3")  # the command line's length, without the profile's floor and cap
    assert (longer.steps, longer.epochs, longer.min_steps, longer.max_steps) == (0, 3.0, 0, 0)
    longer = config("--epochs", "3")  # how long is the command line's when it says
    assert (longer.steps, longer.epochs, longer.lr) == (0, 3.0, rate)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"max_trained_tokens": 5000, "lr": 1e-4}))
    budget = config("--config", str(settings), "--lr", "3e-4")
    assert (budget.steps, budget.max_trained_tokens, budget.lr) == (0, 5000, 3e-4)


def test_full_means_steps_on_a_cpu_and_every_unit_for_an_epoch_on_a_cuda_gpu(monkeypatch):
    import torch

    from trainer.pipeline import GPU_TRAIN_PROFILE, LOSS_VOCAB, profile_settings, train_config

    cpu = profile_settings("full", "cpu")
    assert cpu["steps"] is None and "cuda" not in cpu and set(cpu["experience"]["units"]) == {"design", "text"}
    where = {"data": "d", "out": "o"}
    on_cpu = train_config("full", device="cpu", steps=cpu["steps"], **where)
    assert (on_cpu.steps, on_cpu.epochs, on_cpu.loss_vocab) == (0, 1.0, LOSS_VOCAB)  # the narrowed softmax on a CPU
    assert (on_cpu.min_steps, on_cpu.max_steps) == (140, 175)  # one pass, at least 140 steps and at most 175
    assert train_config("full", device="cpu", steps=40, **where).steps == 40  # a refresh that continues: continue_steps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the hardware boundary: no GPU here
    gpu = profile_settings("full", "cuda")
    assert gpu["steps"] is None and len(gpu["experience"]["units"]) == 5 and gpu["experience"]["run_tests"]
    cfg = train_config("full", device="cuda", **where)
    assert (cfg.steps, cfg.epochs, cfg.device, cfg.gradient_checkpointing) == (0, 1.0, "cuda", True)  # the GPU recipe
    assert cfg.loss_vocab == 0 and (cfg.min_steps, cfg.max_steps) == (0, 0)  # the whole vocabulary; the epoch, uncapped
    assert GPU_TRAIN_PROFILE == "real" and profile_settings("quick", "cuda") == profile_settings("quick", "cpu")
