"""The errors users see. Every expected failure is a ``SwespotError`` (or one of its kinds below) with a
message that says what went wrong and what to do. The CLI prints it without a traceback and exits with
the kind's ``exit_code`` (one boundary: ``swespot.cli.main``); the language server turns it into an LSP
error at one boundary. Callers that must react to a kind match it by type, never by its message text."""

from __future__ import annotations


class SwespotError(Exception):
    """An expected, user-facing failure (bad input, missing file, unsupported model...)."""

    exit_code = 1  # what the command line exits with


class NothingPublished(SwespotError):
    """A refresh (``swespot specialize``, the daemon) failed before publishing: the served adapter is
    unchanged. ``detail`` is the cause alone; the message adds "; nothing was published" once, so code
    that reports the failure in its own words uses ``detail`` instead of cutting the suffix off."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{detail}; nothing was published")


class DiskFull(NothingPublished):
    """The disk (or quota) holding the state folder filled up during a refresh. The daemon frees its
    training scratch when it sees this kind."""


class DaemonUnavailable(SwespotError):
    """This installation cannot run the trainer daemon (``swespot daemon``): background training is off
    until its extras are installed. The language server reports it as ``available: false``."""


class AdapterMismatch(SwespotError):
    """A LoRA adapter was made for another base model (architecture or file hash) than the one loaded."""


class BadModelSpec(SwespotError):
    """A model spec (``default``, a GGUF file, a local Hugging Face folder) that names nothing usable here
    (``agent.model_spec.resolve_model``)."""
