"""What a Monitor refuses, before it writes a record a report could not read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import TwoHeads
from torch import nn

from gradtool import Monitor, UsageError
from gradtool.errors import LossError
from gradtool.results.runlog import read_run


def model_and_losses() -> tuple[TwoHeads, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoHeads(nn.Linear(3, 4), nn.Tanh())
    a, b = model(torch.randn(8, 3))
    return model, {"a": a.pow(2).mean(), "b": (b - 1).pow(2).mean()}


def test_other_loss_names_at_a_later_step_are_refused_and_the_log_stays_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    with Monitor(path, every=1) as monitor:
        model, losses = model_and_losses()
        monitor.step(model, losses, step=0)
        model, losses = model_and_losses()
        renamed = {"a": losses["a"], "c": losses["b"]}
        with pytest.raises(LossError, match=r"losses are \['a', 'c'\] at step 1") as info:
            monitor.step(model, renamed, step=1)
        assert info.value.reason == "loss_names_changed"
        model, losses = model_and_losses()
        monitor.step(model, losses, step=2)
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 2]


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_a_step_that_is_not_a_nonnegative_integer_is_refused(tmp_path: Path, step: object) -> None:
    with Monitor(tmp_path / "run.jsonl", every=2) as monitor:
        model, losses = model_and_losses()
        with pytest.raises(UsageError, match=r"^step should be an integer >= 0") as info:
            monitor.step(model, losses, step=step)  # type: ignore[arg-type]
        assert info.value.option == "step"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"every": 0}, "every"), ({"depth": 0}, "depth"), ({"metadata": [1]}, "metadata")],
)
def test_bad_arguments_are_usage_errors_naming_them(
    tmp_path: Path, kwargs: dict[str, object], name: str
) -> None:
    with pytest.raises(UsageError, match=rf"^{name} should be"):
        Monitor(tmp_path / "run.jsonl", **kwargs)  # type: ignore[arg-type]


def test_parameters_may_be_a_mapping_of_names_to_parameters(tmp_path: Path) -> None:
    model, losses = model_and_losses()
    chosen = dict(model.trunk.named_parameters(prefix="trunk"))
    with Monitor(tmp_path / "run.jsonl", every=1, parameters=chosen) as monitor:
        record = monitor.step(model, losses)
    assert record is not None and record.parameters == {"count": 2, "numel": 16}
