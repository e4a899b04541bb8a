"""SWE-Spot Local language server (pygls). Never imports torch."""
