"""SWE-Spot Local trainer: model toolkit (conversion, export), experience, LoRA training, daemon."""

import agent  # noqa: F401 - importing agent makes every git command of this process safe (agent/gitsafe.py)
