"""SWE-Spot Local language server (pygls). Never imports torch."""

import agent  # noqa: F401 - importing agent makes every git command of this process safe (agent/gitsafe.py)
