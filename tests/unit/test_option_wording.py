"""Options named in messages are worded once and read right in each vocabulary."""

from __future__ import annotations

import pytest
import torch

import gradtool
from gradtool.analysis import ParetoOptions
from gradtool.cli.errors import cli_option
from gradtool.errors import UsageError, opt, word


@pytest.mark.parametrize(
    ("ref", "python", "cli"),
    [
        (opt("strategy"), "strategy", "--strategy"),
        (opt("strategy", "loop"), "strategy='loop'", "--strategy loop"),
        (opt("lr", 0.1), "lr=0.1", "--lr 0.1"),
        (opt("methods", ("mgda", "upgrad")), "methods=('mgda', 'upgrad')", "--method mgda,upgrad"),
        (opt("methods", ("mgda",)), "methods=('mgda',)", "--method mgda"),
        (opt("preference", (1, 1, 2)), "preference=(1, 1, 2)", "--preference 1,1,2"),
        (opt("max_batches", 1), "max_batches=1", "--batches 1"),
    ],
)
def test_an_option_reads_right_for_python_and_the_command_line(
    ref: str, python: str, cli: str
) -> None:
    assert word(f"use {ref} here") == f"use {python} here"
    assert word(f"use {ref} here", cli_option) == f"use {cli} here"


def _losses() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = torch.nn.Linear(3, 1)
    y = model(torch.ones(2, 3)).mean()
    return model, {"a": y, "b": 2 * y}


def test_library_hints_suggest_values_the_library_accepts() -> None:
    model, losses = _losses()
    with pytest.raises(UsageError) as info:
        gradtool.analyze(model, losses, pareto=ParetoOptions(methods=("mgda",), preference=(1, 2)))
    assert info.value.hint == "add one of them, e.g. methods=('mgda', 'upgrad')"
    # the suggestion works as given
    report = gradtool.analyze(
        model, losses, pareto=ParetoOptions(methods=("mgda", "upgrad"), preference=(1, 2))
    )
    assert report.methods is not None and len(report.methods) == 2


def test_a_preference_given_as_text_is_refused_with_the_form_it_takes() -> None:
    model, losses = _losses()
    with pytest.raises(UsageError, match="should hold numbers") as info:
        gradtool.analyze(model, losses, pareto=ParetoOptions(methods=("upgrad",), preference="1,2"))  # type: ignore[arg-type]
    assert info.value.hint == "e.g. preference=(1, 1, 2)"


def test_a_bad_depth_is_a_usage_error_naming_it() -> None:
    model, losses = _losses()
    with pytest.raises(UsageError, match=r"^depth should be at least 1") as info:
        gradtool.analyze(model, losses, depth=0)
    assert info.value.option == "depth"


def test_a_wrong_length_preference_names_no_gradfile_in_library_use() -> None:
    model, losses = _losses()
    with pytest.raises(UsageError) as info:
        gradtool.analyze(
            model, losses, pareto=ParetoOptions(methods=("upgrad",), preference=(1, 2, 3))
        )
    assert "gradfile" not in info.value.message
    assert "3 values but there are 2 losses (a, b)" in info.value.message
