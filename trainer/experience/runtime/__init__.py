"""Unit 4, semantic-runtime alignment: what the code actually does when it runs.

The repository's tests run in the scratch snapshot in the repository's own terms (``testenv``: its
source roots first on the path, its pytest configuration, no plugin of ours but the report), sandboxed,
on a seeded sample of its test files within a time budget. A small plugin records every test's full
node id and outcome and, for functions of the repository, literal arguments and results and the tests
that called them. Episodes then (a) predict a call's output, answered with the observed value, (b)
write a test that pins that behaviour, which is executed and must pass, (c) say which tests fail when a
function's result is dropped (a mutation, run against the tests that called it and passed), and (d)
write a reproduction of a historical fix, newest fixes first, that fails before it and passes after
(both executed, by node id). The trace is cached by the content of every learnable file and the sample.

Every way this unit comes up empty has a name in the stats ("runtime trace is empty: ...", "tests do not
pass before the mutation", ...), so a build that makes no runtime episode says why.

The parts: ``trace`` (the traced run and its cache), ``calls`` (predict an output, write a passing test; and
``runtime_shards``, the unit's entry), ``mutation``, ``repro`` (fail-to-pass reproductions), ``common`` (what
they share: the trace's version, the budget, the shard bookkeeping).
"""

from __future__ import annotations

from trainer.experience.runtime.calls import runtime_episodes, runtime_shards
from trainer.experience.runtime.common import TRACE_VERSION
from trainer.experience.runtime.mutation import first_return, mutation_episode, mutation_shards, mutation_targets
from trainer.experience.runtime.repro import fail_to_pass, repro_episode, repro_shards
from trainer.experience.runtime.trace import load_trace, trace_edges, traced_run

__all__ = ["TRACE_VERSION", "fail_to_pass", "first_return", "load_trace", "mutation_episode", "mutation_shards", "mutation_targets",
           "repro_episode", "repro_shards", "runtime_episodes", "runtime_shards", "trace_edges", "traced_run"]
