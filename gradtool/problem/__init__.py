"""The user's problem: the model, its losses, the batches and the parameters to analyse.

`load_problem` builds one from a gradfile; `Problem.live` from loss tensors of a training step.
"""

from gradtool.problem.loader import LoadOptions, import_gradfile, load_problem, select_parameters
from gradtool.problem.problem import (
    Problem,
    move_to_device,
    named_parameters,
    no_batch_error,
    validate_losses,
)

__all__ = [
    "LoadOptions",
    "Problem",
    "import_gradfile",
    "load_problem",
    "move_to_device",
    "named_parameters",
    "no_batch_error",
    "select_parameters",
    "validate_losses",
]
