"""Adapters of monitoring to training frameworks and loggers, each an optional extra.

- `gradtool.integrations.lightning`: `GradtoolCallback` for PyTorch Lightning
  (`pip install 'gradtool[lightning]'`).
- `gradtool.integrations.transformers`: `GradtoolCallback` and `GradtoolTrainerMixin` for the
  Hugging Face `Trainer` (`pip install 'gradtool[transformers]'`).
- `gradtool.integrations.writers`: `TensorBoardWriter`, `WandbWriter`, `CSVWriter`, for
  `Monitor(..., writers=[...])` in a plain loop or in either callback.

Nothing here is imported by `import gradtool`: each module imports its framework when imported
itself, and says what to install when the framework is missing.
"""
