"""SWE-Spot Local coding agent: tools over a repository, the one episode format, and the loop.

Nothing in this package imports torch; only ``agent.runtime`` imports llama_cpp.
"""
