"""The user's problem: the model, its losses, the batches and the parameters to analyse.

`load_problem` builds one from a gradfile (`load_checkpoint` fills its model from a torch.save
file, a .safetensors file or a save_pretrained folder); `Problem.live` from loss tensors of a
training step.
"""

from gradtool.problem.checkpoint import CheckpointLoad, load_checkpoint, read_checkpoint
from gradtool.problem.loader import (
    LoadOptions,
    closest_patterns,
    import_gradfile,
    load_problem,
    select_parameters,
)
from gradtool.problem.problem import (
    Problem,
    frozen_parameters,
    gradfile_folder_on_path,
    move_to_device,
    named_parameters,
    no_batch_error,
    parameter_aliases,
    tied_parameters,
    validate_losses,
)

__all__ = [
    "CheckpointLoad",
    "LoadOptions",
    "Problem",
    "closest_patterns",
    "frozen_parameters",
    "gradfile_folder_on_path",
    "import_gradfile",
    "load_checkpoint",
    "load_problem",
    "move_to_device",
    "named_parameters",
    "no_batch_error",
    "parameter_aliases",
    "read_checkpoint",
    "select_parameters",
    "tied_parameters",
    "validate_losses",
]
