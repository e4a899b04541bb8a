"""The one error type users see. Every expected failure is a ``SwespotError`` with a message that says
what went wrong and what to do; the CLI prints it without a traceback, the language server turns it into
an LSP error at one boundary."""


class SwespotError(Exception):
    """An expected, user-facing failure (bad input, missing file, unsupported model...)."""
