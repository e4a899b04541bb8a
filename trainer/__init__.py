"""SWE-Spot Local trainer: model toolkit (conversion, export), experience, LoRA training, daemon."""
