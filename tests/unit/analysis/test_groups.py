"""Parameter groups: a group's Gramian is the Gramian of its parameters' concatenated gradients,
across modules; groups may overlap; a glob matching nothing is a usage error naming `groups`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtool
from gradtool.analysis.layers import check_groups, group_by_globs, groups_of, ungrouped
from gradtool.analysis.report import build_report
from gradtool.engine import EngineResult, compute_gramians
from gradtool.errors import UsageError
from gradtool.problem import Problem, parameter_aliases


class Block(nn.Module):
    """A transformer-like block: `attn` and `mlp` submodules, so globs cut across blocks."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.tanh(self.attn(x))
        return x + self.mlp(x)


class Net(nn.Module):
    """An embedding, two blocks and two heads (`a`, `b`)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.a = nn.Linear(width, 1)
        self.b = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.a(h), self.b(h)


GROUPS = {"attention": "*.attn.*", "mlp": ["*.mlp.0.*", "*.mlp.2.*"], "blocks": "blocks.*"}


def _losses(model: Net) -> dict[str, torch.Tensor]:
    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    a, b = model(x)
    return {"fit": ((a - 1) ** 2).mean(), "spread": (b**2).mean(), "mix": (a * b).mean()}


def _result() -> tuple[Net, dict[str, torch.Tensor], EngineResult]:
    torch.manual_seed(0)
    model = Net()
    losses = _losses(model)
    result = compute_gramians(Problem.live(model, losses), strategy="loop", retain_graph=True)
    return model, losses, result


def _reference_gramian(
    model: nn.Module, losses: dict[str, torch.Tensor], names: list[str]
) -> torch.Tensor:
    """Return J J^T for the per-loss gradients over `names`, concatenated, by a plain loop."""
    params = [p for n, p in model.named_parameters() if n in names]
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            ).double()
        )
    jac = torch.stack(rows)
    return jac @ jac.T


def test_a_groups_gramian_is_that_of_its_parameters_concatenated_gradients() -> None:
    model, losses, result = _result()
    shares = groups_of(result, GROUPS)
    assert [s.name for s in shares] == ["attention", "mlp", "blocks"]
    for share in shares:
        names = [result.param_names[b] for b in share.indices]
        expected = _reference_gramian(model, losses, names)
        torch.testing.assert_close(share.gramian, expected, rtol=1e-10, atol=1e-12)
        assert share.numel == sum(p.numel() for n, p in model.named_parameters() if n in names)


def test_globs_cut_across_modules_and_groups_may_overlap() -> None:
    _, _, result = _result()
    by_name = {s.name: s for s in groups_of(result, GROUPS)}
    names = {k: {result.param_names[b] for b in v.indices} for k, v in by_name.items()}
    assert names["attention"] == {
        f"blocks.{i}.attn.{kind}" for i in (0, 1) for kind in ("weight", "bias")
    }
    assert len(names["mlp"]) == 8  # two Linear layers of each of two blocks
    # every attention and mlp parameter is also in `blocks`: overlapping groups both count it
    assert names["attention"] | names["mlp"] == names["blocks"]
    torch.testing.assert_close(
        by_name["attention"].gramian + by_name["mlp"].gramian, by_name["blocks"].gramian
    )
    assert ungrouped(result.param_names, list(by_name.values())) == [
        "embed.weight",
        "embed.bias",
        "a.weight",
        "a.bias",
        "b.weight",
        "b.bias",
    ]


def test_a_glob_matching_no_parameter_is_a_usage_error_naming_groups() -> None:
    _, _, result = _result()
    with pytest.raises(UsageError) as info:
        groups_of(result, {"attention": "*.attn.*", "experts": ["*.mlp.*", "*.expert*"]})
    assert info.value.option == "groups"
    message = info.value.message
    assert "'*.expert*'" in message and "'experts'" in message and "(groups)" in message
    assert "--" not in message and "--" not in (info.value.hint or "")


def test_a_near_miss_glob_gets_a_suggestion() -> None:
    _, _, result = _result()
    with pytest.raises(UsageError) as info:
        groups_of(result, {"embedding": "embed"})
    assert "'embed.*'" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        ("*.attn.*", "should map group names to globs"),
        ({"": "*.attn.*"}, "a group name should be a non-empty string"),
        ({"a": ""}, "non-empty glob strings"),
        ({"a": []}, "has no glob"),
        ({"a": ["x.*", 3]}, "non-empty glob strings"),
        ({"a": ["x.*", "x.*"]}, "holds the glob 'x.*' twice"),
    ],
)
def test_a_malformed_groups_argument_is_refused(groups: object, needle: str) -> None:
    with pytest.raises(UsageError, match=r"^groups") as info:
        check_groups(groups)  # type: ignore[arg-type]
    assert needle in info.value.message


def test_a_glob_may_name_a_tied_parameter_by_its_other_name() -> None:
    model = Net()
    model.tied = model.a  # registered twice: `tied.weight` is `a.weight`
    names = [n for n, _ in model.named_parameters()]
    assert "tied.weight" not in names
    found = group_by_globs(names, {"tied": ("tied.*",)}, aliases=parameter_aliases(model))
    assert [names[b] for b in found[0].indices] == ["a.weight", "a.bias"]


def test_the_report_holds_groups_like_layers_and_the_parameters_in_none() -> None:
    _, _, result = _result()
    report = build_report(result, command="inspect", groups={"attention": "*.attn.*"})
    assert report.groups is not None and report.ungrouped is not None
    (group,) = report.groups
    assert group.name == "attention"
    assert group.parameters == [n for n in result.param_names if ".attn." in n]
    assert len(report.ungrouped) == len(result.param_names) - 4
    doc = report.to_dict()
    assert set(doc["groups"][0]) >= {"name", "numel", "norms", "cosine", "dot", "parameters"}
    assert set(doc["groups"][0]["norms"]) == {"fit", "spread", "mix"}
    assert doc["meta"]["groups"] == {"attention": ["*.attn.*"]}
    plain = build_report(result, command="inspect").to_dict()
    assert "groups" not in plain and "ungrouped" not in plain


def test_analyze_takes_groups_and_checks_them_before_any_gradient() -> None:
    torch.manual_seed(0)
    model = Net()
    report = gradtool.analyze(model, _losses(model), groups=GROUPS)
    assert report.groups is not None
    assert [g.name for g in report.groups] == list(GROUPS)
    blocks = report.groups[2]
    # a loss's norm over a group is at most its norm over the whole model
    for name, norm in blocks.norms.items():
        whole = report.gradients[name].norm
        assert norm is not None and whole is not None and norm <= whole * (1 + 1e-12)
    losses = _losses(model)
    with pytest.raises(UsageError, match="matched none"):
        gradtool.analyze(model, losses, groups={"x": "nothing.*"}, retain_graph=False)
    # the refusal came before any gradient: the graph, not retained otherwise, is still whole
    sum(losses.values()).backward()
