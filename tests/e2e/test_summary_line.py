"""The header says which parameters were analysed: tied ones once, frozen ones not at all."""

from __future__ import annotations

from _models import HEADER, invoke, strict_json

TIED = (
    HEADER
    + """
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(self.frozen(self.emb(x)))


model = M()


def losses(model):
    y = model(torch.tensor([1, 2, 3]))
    return {"a": y.mean(), "b": (y ** 2).mean()}
"""
)


def test_tied_and_frozen_parameters_are_named_in_the_header(write_gradfile, runner) -> None:
    path = write_gradfile(TIED)
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("2 losses · 1 parameter tensor (20 values) · 1 batch")
    notes = "\n".join(lines[1:4])
    assert "tied: emb.weight = head.weight" in notes
    assert "2 frozen parameters (20 values) not analysed" in notes
    doc = strict_json(invoke(runner, "inspect", path, "--json").stdout)
    assert doc["meta"]["tied_parameters"] == [["emb.weight", ["head.weight"]]]
    assert doc["meta"]["frozen_parameters"] == {"count": 2, "numel": 20}


def test_a_plain_model_has_no_selection_notes(write_gradfile, runner) -> None:
    from _models import LOSSES

    path = write_gradfile(HEADER + "model = nn.Linear(3, 2)\n" + LOSSES)
    result = invoke(runner, "inspect", path)
    assert result.exit_code == 0, result.output
    assert "tied" not in result.stdout and "frozen" not in result.stdout
