"""The four units of Repository-Centric Experience, each a generator of episodes.

Every episode is an oracle session (``oracle.py``): the policy knows the answer from the index or the
history, but every observation comes from the real tools run on a snapshot of the repository at the
episode's commit. An episode whose tools fail or whose result does not verify is rejected and counted.

The package: ``base`` (``UnitStats``, finishing an episode, the teacher's code verifier, the test
runner), one module per unit here (``software_design``, ``implementation``, ``evolution``) and the
fourth, semantic-runtime alignment, in ``trainer/experience/runtime/``. The names the builder and the
runtime unit use are importable from ``trainer.experience.units``.
"""

from trainer.experience.units.base import FIX_SUBJECT, GENERATOR_VERSION, HONEST_UNITS, WRONG_LOOK_RATE, UnitStats, finish_episode, pytest_runner
from trainer.experience.units.evolution import (
    MAX_HUNK_LINES,
    bug_episode,
    edit_script,
    edit_seen,
    first_changed_line,
    hunk_completions,
    locate,
    replay_episode,
    undo_files,
)
from trainer.experience.units.implementation import MAX_BODY_LINES, implementation_episodes
from trainer.experience.units.software_design import RECALL_VERSION, design_episodes, recall_episodes, resolver_for

__all__ = [
    "GENERATOR_VERSION", "HONEST_UNITS", "MAX_BODY_LINES", "MAX_HUNK_LINES", "RECALL_VERSION", "WRONG_LOOK_RATE", "UnitStats", "FIX_SUBJECT",
    "edit_seen", "finish_episode", "first_changed_line", "locate", "undo_files", "bug_episode", "design_episodes",
    "edit_script", "hunk_completions", "implementation_episodes", "pytest_runner", "recall_episodes", "replay_episode", "resolver_for",
]
