"""The structured engine end to end: the CLI (in process and as a real process), `analyze`
and the Monitor say what ran per layer class, and give the plain engine's numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from _models import ROOT, invoke, strict_json
from torch import nn
from typer.testing import CliRunner

import gradtool

WIDE = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.ModuleDict({
    "emb": nn.Embedding(500, 128),
    "trunk": nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256)),
    "a": nn.Linear(256, 4),
    "b": nn.Linear(256, 1),
})
ids = torch.randint(0, 500, (8, 4))

def losses(model):
    h = model["trunk"](model["emb"](ids).mean(1))
    decay = 1e-4 * model["trunk"][2].weight.pow(2).sum()
    return {
        "cls": nn.functional.cross_entropy(model["a"](h), torch.arange(8) % 4),
        "reg": model["b"](h).pow(2).mean() + decay,
    }
"""


def test_inspect_json_states_the_paths_and_matches_the_loop(
    runner: CliRunner, write_gradfile
) -> None:
    path = write_gradfile(WIDE)
    got = strict_json(invoke(runner, "inspect", path, "--json").stdout)
    ref = strict_json(invoke(runner, "inspect", path, "--json", "--strategy", "loop").stdout)
    assert got["meta"]["strategy"] == "structured"
    assert ref["meta"]["strategy"] == "loop" and "structured" not in ref["meta"]
    paths = got["meta"]["structured"]["paths"]
    assert paths["embedding"] == {"structured": 1, "gradient": 0}
    assert paths["linear"]["structured"] >= 1
    assert got["meta"]["structured"]["not_covered"] == {
        "trunk.2.weight": "also used by PowBackward0",
        "a.weight": "its gradient costs less than its rows at 8 rows",  # the cost model's choice
        "b.weight": "its gradient costs less than its rows at 8 rows",
    }
    assert got["gradients"]["cls"]["max_abs"] is None  # entries never formed
    assert ref["gradients"]["cls"]["max_abs"] > 0
    torch.testing.assert_close(
        torch.tensor(got["dot"]), torch.tensor(ref["dot"]), rtol=1e-5, atol=1e-9
    )


def test_verbose_table_words_the_paths_and_hides_the_unknown_maximum(
    runner: CliRunner, write_gradfile
) -> None:
    out = " ".join(invoke(runner, "inspect", write_gradfile(WIDE), "-v").stdout.split())
    assert "strategy structured" in out
    assert "Gramians from layer rows (no gradient formed), weights of: embedding 1 of 1" in out
    assert "weights by their gradients: " in out
    assert "trunk.2.weight (also used by PowBackward0)" in out
    assert "a.weight (its gradient costs less than its rows at 8 rows)" in out
    assert "max |g_k|: not formed where Gramians come from layer rows" in out
    assert " max |g_k| " not in out  # no column
    plain = invoke(runner, "inspect", write_gradfile(WIDE), "--strategy", "loop").stdout
    assert "max |g_k|" in plain


def test_explicit_structured_on_a_model_it_cannot_cover_says_why(
    runner: CliRunner, write_gradfile
) -> None:
    path = write_gradfile(
        "import torch\nfrom torch import nn\nmodel = nn.Linear(3, 2)\n"
        "def losses(model):\n"
        "    y = torch.ones(4, 3) @ model.weight.T * model.weight.sum()\n"
        "    return {'a': y.mean(), 'b': (y ** 2).mean()}\n"
    )
    doc = strict_json(invoke(runner, "inspect", path, "--json", "--strategy", "structured").stdout)
    assert doc["meta"]["strategy"] == "loop"
    assert "no weight is used only through linear" in doc["meta"]["fallback_reason"]
    assert doc["meta"]["structured"]["not_covered"] == {"weight": "also used by SumBackward0"}


def test_pareto_and_affinity_accept_the_strategy(runner: CliRunner, write_gradfile) -> None:
    path = write_gradfile(WIDE)
    pareto = strict_json(
        invoke(runner, "pareto", path, "--json", "--strategy", "structured").stdout
    )
    assert pareto["pareto"]["weights"]
    affinity = invoke(runner, "affinity", path, "--lr", "0.1", "--json", "--strategy", "structured")
    assert affinity.exit_code == 0, affinity.stderr
    meta = json.loads(affinity.stdout)["meta"]
    assert "never forms" in meta["fallback_reason"]


def test_a_real_process_runs_the_structured_engine(write_gradfile) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradtool", "inspect", str(write_gradfile(WIDE)), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["meta"]["strategy"] == "structured"


def wide_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh())


def test_analyze_uses_it_and_leaves_the_graph_for_backward() -> None:
    model = wide_model()
    h = model(torch.randn(4, 64))
    losses = {"a": h[:, :128].pow(2).mean(), "b": h.sin().mean()}
    report = gradtool.analyze(model, losses)
    assert report.meta["strategy"] == "structured"
    plain = gradtool.analyze(model, losses, strategy="loop")
    torch.testing.assert_close(
        torch.tensor(report.dot), torch.tensor(plain.dot), rtol=1e-5, atol=1e-9
    )
    sum(losses.values()).backward()
    assert model[0].weight.grad is not None


def test_the_monitor_records_what_the_loop_records(tmp_path) -> None:
    runs = {}
    for strategy in ("auto", "loop"):
        model = wide_model()
        path = tmp_path / f"{strategy}.jsonl"
        with gradtool.Monitor(path, every=1, strategy=strategy) as monitor:
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(3):
                h = model(torch.randn(4, 64, generator=torch.Generator().manual_seed(step)))
                losses = {"a": h[:, :128].pow(2).mean(), "b": h.sin().mean()}
                monitor.step(model, losses)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
        runs[strategy] = [json.loads(line) for line in path.read_text().splitlines()]
    got = [r for r in runs["auto"] if r.get("kind") == "gradtool.record"]
    ref = [r for r in runs["loop"] if r.get("kind") == "gradtool.record"]
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(
            torch.tensor(a["dot"]), torch.tensor(b["dot"]), rtol=1e-5, atol=1e-9
        )


def test_a_reader_that_closes_stdout_early_loses_no_written_file(tmp_path) -> None:
    """`gradtool inspect FILE -o doc.json | head -1`: the document is written before printing."""
    out = tmp_path / "doc.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradtool", "inspect", "samples/multitask.py", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    proc.wait(timeout=120)
    assert json.loads(out.read_text())["command"] == "inspect"
