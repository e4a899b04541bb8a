"""SWE-Spot Local coding agent: tools over a repository, the one episode format, and the loop.

Nothing in this package imports torch; only ``agent.runtime`` imports llama_cpp.
"""

from agent import gitsafe as _gitsafe

# every git command this process or its children run (GitPython included) runs no repository-configured
# programs: see agent/gitsafe.py
_gitsafe.protect_process()
