"""One module per pipeline stage. Each exposes `run(context) -> metrics` and reads like a recipe.

Stages compose the components in `dapt.data`, `dapt.model`, `dapt.train` and `dapt.eval`; the
pipeline (`dapt.pipeline`) decides what runs and writes the manifests.
"""
