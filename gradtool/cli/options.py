"""The option types the commands share: choices and annotated Typer options."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradtool.errors import UsageError

if TYPE_CHECKING:
    from gradtool.problem import LoadOptions


class StrategyChoice(str, Enum):
    auto = "auto"
    structured = "structured"
    batched = "batched"
    loop = "loop"
    backward = "backward"


class NormalizeChoice(str, Enum):
    none = "none"
    l2 = "l2"
    loss = "loss"
    loss_plus = "loss+"


# The library's defaults, repeated here because importing them would import torch (`--help` must
# not); tests/e2e/test_conflict_display.py checks they agree.
DEFAULT_CONFLICT_THRESHOLD = 0.05  # gradtool.analysis.report.DEFAULT_CONFLICT_THRESHOLD
DEFAULT_TOL = 1e-6  # gradtool.linalg.pareto.STATIONARY_TOL
DEFAULT_TOP = 10  # gradtool.analysis.report.DEFAULT_TOP

GradfileArg = Annotated[
    Path,
    typer.Argument(
        help="The gradfile: a .py defining `model` and `losses` (it is run).", show_default=False
    ),
]
ParamsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--params", help="Glob on dotted parameter names; repeatable (union).", show_default=False
    ),
]
GroupOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--group",
        help="NAME=GLOB: a table row for the parameters whose dotted name matches GLOB, across "
        "modules (e.g. attention='*.attn.*'); repeatable, the same NAME again adds a glob.",
        show_default=False,
    ),
]
LossGroupOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--loss-group",
        help="NAME=GLOB: a table row for the summed gradient of the losses whose name matches "
        "GLOB (e.g. aux='aux_*'), with its cosine to the other groups; repeatable, the same NAME "
        "again adds a glob.",
        show_default=False,
    ),
]
TopOpt = Annotated[
    int | None,
    typer.Option(
        "--top",
        min=1,
        help="List the K most conflicting pairs instead of every pair (default: the 10 most "
        "conflicting, beyond 8 losses).",
        show_default=False,
    ),
]
BatchesOpt = Annotated[
    int | None, typer.Option("--batches", min=1, help="Take at most N batches.", show_default=False)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed torch/random before the file runs.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Load these weights into the model first: a state dict file (torch.save or "
        ".safetensors) or a save_pretrained folder.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
EvalOpt = Annotated[
    bool, typer.Option("--eval", help="Run the model in eval mode (default: train).")
]
DepthOpt = Annotated[
    int, typer.Option("--depth", min=1, help="Group the layer table by module path to this depth.")
]
StrategyOpt = Annotated[
    StrategyChoice,
    typer.Option(
        "--strategy",
        help="Engine strategy (auto: layer Gramians from inputs and output gradients where "
        "that is cheaper, else the loop on the CPU and batched first elsewhere; structured: "
        "every weight it covers that way; backward: through reentrant checkpoints).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the JSON document (schema_version 1) and nothing else."),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Also write the JSON document to this file (atomically).",
        show_default=False,
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show engine details.")]
LowMemoryOpt = Annotated[
    bool,
    typer.Option(
        "--low-memory",
        help="Take each parameter block's Gramian as its gradients arrive: extra memory "
        "O(losses x largest block), not O(losses x all parameters) (one batch; see README).",
    ),
]
PlotFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the cosine matrix and per-layer cosines to this image (.png, .svg, .pdf; "
        "needs matplotlib).",
        show_default=False,
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="Weighting method(s), comma-separated: mgda (exact min-norm), mean, sum, upgrad, "
        "dualproj, pcgrad, imtl_g, aligned_mtl, cagrad, nash_mtl, fairgrad.",
    ),
]
ConflictThresholdOpt = Annotated[
    float,
    typer.Option(
        "--conflict-threshold",
        help="A cosine below minus this is a conflict (0 to 1); over batches, a pair conflicts "
        "when its mean cosine is below minus this by more than its standard error.",
    ),
]
TolOpt = Annotated[
    float,
    typer.Option(
        "--tol",
        help="Pareto-stationary when the min-norm |d| is at most this fraction of the largest "
        "gradient norm.",
    ),
]
PreferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--preference",
        help="Comma-separated positive weights, one per loss, for the methods that take a "
        "preference (upgrad, dualproj, aligned_mtl).",
        show_default=False,
    ),
]


def load_options(
    params: list[str] | None,
    batches: int | None,
    seed: int,
    checkpoint: Path | None,
    device: str,
    eval_mode: bool,
) -> LoadOptions:
    """Return the gradfile's load options from the options every command shares."""
    from gradtool.problem import LoadOptions

    return LoadOptions(
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        eval_mode=eval_mode,
        params=tuple(params or ()),
        max_batches=batches,
    )


def conflict_threshold_option(value: float) -> float:
    """Return `--conflict-threshold` checked (0 to 1), before the gradfile runs; exit 2 if not."""
    from gradtool.analysis.report import check_conflict_threshold

    return check_conflict_threshold(value)


def tol_option(value: float) -> float:
    """Return `--tol` checked (finite, >= 0), before the gradfile runs; exit 2 if not."""
    from gradtool.linalg.pareto import check_tol

    return check_tol(value)


def methods_option(text: str) -> tuple[str, ...]:
    """Return the registry names in `--method` (comma-separated); exit 2 on an unknown one."""
    from gradtool.weightings import parse_methods

    return parse_methods(text)


GROUP_HINT = (
    "e.g. --group attention='*.attn.*' --group mlp='*.mlp.*'; repeat --group with the same "
    "NAME to add a glob to that group"
)


def groups_option(values: list[str] | None) -> dict[str, tuple[str, ...]] | None:
    """Return the `--group NAME=GLOB` values as {name: (glob, ...)} (None without any), checked
    before the gradfile runs: each has a name and a glob, and no NAME=GLOB is given twice;
    exit 2 if not. Whether each glob matches a parameter is checked once the model is built."""
    return _name_globs(values, "--group", GROUP_HINT, "groups")


LOSS_GROUP_HINT = (
    "e.g. --loss-group depth='depth*' --loss-group aux='aux_*'; repeat --loss-group with the "
    "same NAME to add a glob to that group"
)


def loss_groups_option(values: list[str] | None) -> dict[str, tuple[str, ...]] | None:
    """Return the `--loss-group NAME=GLOB` values as {name: (glob, ...)} (None without any),
    checked before any work: each has a name and a glob, and no NAME=GLOB is given twice; exit 2
    if not. Whether each glob matches a loss is checked once the loss names are known."""
    return _name_globs(values, "--loss-group", LOSS_GROUP_HINT, "loss_groups")


def _name_globs(
    values: list[str] | None, flag: str, hint: str, option: str
) -> dict[str, tuple[str, ...]] | None:
    """Return repeated `flag NAME=GLOB` values as {name: (glob, ...)} (None without any);
    a malformed one, or one given twice, is a `UsageError` for `option`."""
    if not values:
        return None
    groups: dict[str, list[str]] = {}
    for text in values:
        name, sep, glob = text.partition("=")
        problem = (
            "should be NAME=GLOB"
            if not sep
            else "has no group name before '='"
            if not name
            else "has no glob after '='"
            if not glob
            else "is given twice (the same glob again adds nothing)"
            if glob in groups.get(name, ())
            else None
        )
        if problem is not None:
            raise UsageError(f"{flag} {text!r} {problem}", hint=hint, option=option)
        groups.setdefault(name, []).append(glob)
    return {name: tuple(globs) for name, globs in groups.items()}
