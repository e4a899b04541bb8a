"""One resolver for model specs ('default', a GGUF file, a local HF folder): every command and setting that
takes a model reads it through ``agent.model_spec``, and a bad spec is one ``BadModelSpec`` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.default_model import ensure_default_gguf
from agent.errors import BadModelSpec, SwespotError
from agent.model_spec import DEFAULT, resolve_model, serving_gguf_of


def test_default_empty_and_none_name_the_embedded_model():
    for spec in ("default", "", None):
        ref = resolve_model(spec)
        assert ref.kind == DEFAULT and ref.path is None and "embedded" in ref.name


def test_a_gguf_file_and_an_hf_folder_resolve_to_their_kind(tiny_gguf_f32: Path, tiny_hf_dir: Path):
    gguf = resolve_model(str(tiny_gguf_f32))
    assert (gguf.kind, gguf.path, gguf.name) == ("gguf", tiny_gguf_f32.resolve(), tiny_gguf_f32.stem)
    hf = resolve_model(tiny_hf_dir)
    assert (hf.kind, hf.path, hf.name) == ("hf", tiny_hf_dir.resolve(), tiny_hf_dir.name)


def test_a_gguf_is_known_by_its_magic_not_its_name(tiny_gguf_f32: Path, tmp_path: Path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny_gguf_f32.read_bytes()[:4096])
    assert resolve_model(renamed).kind == "gguf"
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    with pytest.raises(BadModelSpec, match=r"base model .*fake.gguf is not a GGUF file \(bad magic b'not '"):
        resolve_model(fake, "base model")


def test_bad_specs_are_one_clear_line_naming_what_to_give(tmp_path: Path):
    with pytest.raises(BadModelSpec, match=r"^base model not found: .*no-such-model \(give 'default', a .gguf file or a local "
                                           r"Hugging Face folder\)$"):
        resolve_model(tmp_path / "no-such-model", "base model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadModelSpec, match="is not a Hugging Face model folder .no config.json"):
        resolve_model(tmp_path / "empty")
    assert issubclass(BadModelSpec, SwespotError)


def test_serving_needs_a_gguf_and_says_how_to_convert_a_folder(tiny_gguf_f32: Path, tiny_hf_dir: Path):
    assert serving_gguf_of(tiny_gguf_f32) == tiny_gguf_f32.resolve()
    assert serving_gguf_of("default") == ensure_default_gguf()
    with pytest.raises(BadModelSpec, match="is a Hugging Face folder; llama.cpp serves a GGUF file .make one: swespot model "
                                           "convert"):
        serving_gguf_of(tiny_hf_dir)


def test_every_entry_point_reads_specs_through_the_resolver(tiny_gguf_f32: Path, tiny_hf_dir: Path, tmp_path: Path):
    from agent.models import model_from_spec
    from trainer.experience_cli import fit_tokenizer
    from trainer.export_check import serving_base
    from trainer.model_io import resolve_base

    missing = tmp_path / "no-such-model"
    for read in (model_from_spec, resolve_base, serving_base, fit_tokenizer):
        with pytest.raises(BadModelSpec, match="not found: .*no-such-model"):
            read(str(missing))
    with pytest.raises(BadModelSpec, match="is a Hugging Face folder"):
        model_from_spec(str(tiny_hf_dir))
    with pytest.raises(BadModelSpec, match="--fit reads a tokenizer from a folder, not from the GGUF file"):
        fit_tokenizer(str(tiny_gguf_f32))
    assert serving_base(str(tiny_gguf_f32)) == tiny_gguf_f32.resolve()
    base = resolve_base(str(tiny_hf_dir))
    assert (base.hf_dir, base.serve_gguf, base.name) == (tiny_hf_dir.resolve(), None, tiny_hf_dir.name)


def test_the_commands_refuse_a_bad_spec_with_one_line(tmp_path: Path, monkeypatch, capsys):
    from swespot.cli import main

    monkeypatch.setenv("SWESPOT_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["serve", "--base", str(folder)]) == 1
    assert main(["model", "demo", "--base", str(tmp_path / "no-such.gguf")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("swespot: error: base model ") and "is a Hugging Face folder" in err[0]
    assert err[1].startswith("swespot: error: base model not found: ") and len(err) == 2
