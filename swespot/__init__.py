"""SWE-Spot Local's application layer: the ``swespot`` command line (``swespot.cli``), assembled above the
three layers it drives (agent ← trainer ← lsp_server). Nothing below imports this package."""
