"""Evaluation on the user's own repository under a knowledge cutoff.

Everything up to the cutoff may be learned; every task comes from the commits after it:

- **line** (completion): the first substantial line of each hunk a later commit added, completed left to
  right from the file above it; exact match and edit similarity of the greedy completion, and the
  per-token loss of the real line.
- **body** (completion): Python functions a later commit added or changed, written from their
  signature; edit similarity and per-token loss of the real body.
- **infill** (completion with the code after the cursor): the first lines (up to ``INFILL_MAX_LINES``) of
  each hunk a later commit added inside a file, written between the code before and the code after, in
  the prompt the language server builds (``lsp_server.completion.build_prompt``) and with the layout it
  serves: fill-in-the-middle when the model has FIM tokens or the adapter's manifest declares ones it was
  trained with (``serving_fim``), else left to right with the code after the cursor as a comment. Loss of
  the real middle; exact match and edit similarity of the greedy suggestion trimmed as the server trims
  it. A model scored in the FIM layout also gets ``ltr_loss``, the same tasks left to right, so the
  layout's own effect can be read off (``layout_comparison``). Specialize's gate asks for it only when some
  model serves a FIM layout (``evaluate(infill_only_with_fim=True)``, ``INFILL_LEFT_OUT``).
- **design** (QA): questions about symbols defined after the cutoff, answered from the index of the
  newest commit (where is it defined, who calls it); accuracy of the generated answer and loss of the
  grounded answer. Asked without tools: it measures what the weights know.
- **facts** (QA): the held-out facts (``trainer/experience/heldout.py``): the design questions, in the
  exact words the training episodes use, about the pre-cutoff symbols whose design episodes the
  experience withholds. The model saw their code in the other units, never the question. Asked at the
  cutoff, without tools; accuracy (the answer names the right file, caller, ...) and loss of the
  grounded answer.
- **replay** (agent tasks): a later commit's message is the task, its parent the starting state, in a
  scratch copy. Scored by the commit's own tests where it added or changed tests (written in after the
  agent stops, run sandboxed), else by how closely the agent's change matches the real one. Turns and
  tokens per task are recorded.

All models run through llama.cpp exactly as they are served (the base GGUF plus an adapter), so the
numbers are what the user would get. Torch-free.

Every comparison is paired over the same tasks (``paired_comparison``): per family and metric, the
difference candidate − reference with a paired bootstrap 95% interval (tasks resampled; for the
token-weighted loss the ratio is recomputed on each resample), and a verdict read from the interval,
never from the point estimate: "better", "worse" or "no measurable change". The headline is the
token-weighted per-token loss over the line and body tasks.

Tasks are spread over all the commits after the cutoff (``spread_tasks``: one task per commit in turn, so a
big commit cannot crowd out the rest). Loss is computed for every task (one decode pass); the greedy
generation behind exact match and edit similarity costs several times more, so it runs on an evenly
spread subset of the line and body tasks (``generate_line``, ``generate_body``).

The package: ``profiles`` (the families, EVAL_PROFILES, ``Task``, ``ModelSpec``), ``tasks`` (building the
tasks), ``runner`` (``Evaluator``, ``evaluate``, the per-task scores) and ``statistics`` (summaries,
paired intervals, verdicts, the gate's ``compare``). Everything is importable from ``trainer.evaluation``.
"""

from trainer.evaluation.profiles import EVAL_PROFILES, FAMILIES, ModelSpec, Task
from trainer.evaluation.runner import (
    DESIGN_SYSTEM,
    INFILL_LEFT_OUT,
    PROMPT_CHARS,
    Evaluator,
    adapter_manifest,
    answer_names,
    edit_similarity,
    evaluate,
    names_any,
    serving_layouts,
    target_loss,
)
from trainer.evaluation.statistics import (
    BETTER,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    HEADLINE_FAMILIES,
    MIN_PAIRED_TASKS,
    NO_CHANGE,
    PAIRED_METRICS,
    WORSE,
    bootstrap_interval,
    compare,
    describe,
    layout_comparison,
    paired_comparison,
    paired_interval,
    resample_indices,
    summarize,
    verdict_of,
)
from trainer.evaluation.tasks import (
    CODE_SUFFIXES,
    INFILL_MAX_LINES,
    INFILL_SUFFIX_LINES,
    MAX_BODY_LINES,
    MIN_LINE_CHARS,
    body_tasks,
    design_tasks,
    facts_tasks,
    infill_tasks,
    line_tasks,
    make_tasks,
    post_cutoff_changes,
    replay_tasks,
)

__all__ = [
    "BETTER", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CODE_SUFFIXES", "DESIGN_SYSTEM", "EVAL_PROFILES", "FAMILIES",
    "HEADLINE_FAMILIES", "INFILL_LEFT_OUT", "INFILL_MAX_LINES", "INFILL_SUFFIX_LINES", "MAX_BODY_LINES", "MIN_LINE_CHARS",
    "MIN_PAIRED_TASKS", "NO_CHANGE", "PAIRED_METRICS", "PROMPT_CHARS", "WORSE", "Evaluator", "ModelSpec", "Task",
    "adapter_manifest", "answer_names", "body_tasks", "bootstrap_interval", "compare", "describe", "design_tasks", "edit_similarity",
    "evaluate", "facts_tasks", "infill_tasks", "layout_comparison", "line_tasks", "make_tasks", "names_any",
    "paired_comparison", "paired_interval", "post_cutoff_changes", "replay_tasks", "resample_indices", "serving_layouts", "summarize", "target_loss",
    "verdict_of",
]
