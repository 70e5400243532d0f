"""Distributed runs on the CPU: 2 ranks with gloo, launched by torchrun (`--standalone`: a free
port chosen at run time), every launch under a timeout.

- `torchrun -m gradtool inspect|pareto|affinity` equals the single-process run over the same
  batches (float64 gradfile: to 1e-9), rank 0 alone prints;
- a failure on one rank ends every rank, with one error line;
- the Monitor in DDP training records the global batch's Gramian (against a single-process
  computation on the global batch), once, and leaves the training bit-identical;
- FSDP's sharded parameters are refused with one clear error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import ROOT

import gradtool

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)
TIMEOUT = 180
TRAIN = ROOT / "tests" / "_distributed_train.py"

GRADFILE = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
model = model.double()

def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 4, dtype=torch.float64, generator=g) for _ in range(5)]

def losses(model, x):
    y = model(x)
    return {
        "a": y[:, 0].pow(2).mean(),
        "b": y[:, 1].sin().mean(),
        "c": (y[:, 2] - x[:, 0]).abs().mean(),
    }
"""


def torchrun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRADTOOL_DEBUG", "FORCE_COLOR")}
    env.setdefault("GRADTOOL_DIST_TIMEOUT", "60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def single(*args: str | Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "gradtool", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def as_tensor(matrix: object) -> torch.Tensor:
    """Return a JSON matrix as float64, null as NaN."""
    rows = [[float("nan") if x is None else x for x in row] for row in matrix]  # type: ignore[attr-defined]
    return torch.tensor(rows, dtype=torch.float64)


def close(a: object, b: object, tol: float = 1e-9) -> None:
    torch.testing.assert_close(as_tensor(a), as_tensor(b), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("strategy", ["auto", "loop"])
def test_torchrun_pareto_equals_the_single_process_run(write_gradfile, strategy: str) -> None:
    path = write_gradfile(GRADFILE)
    proc = torchrun("-m", "gradtool", "pareto", path, "--json", "--strategy", strategy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)  # one document: rank 1 printed nothing
    ref = single("pareto", path, "--json", "--strategy", strategy)
    assert got["num_batches"] == ref["num_batches"] == 5
    assert got["meta"]["distributed"] == {"world": 2, "backend": "gloo"}
    close(got["dot"], ref["dot"])
    for key in ("cosine_mean", "cosine_std", "conflict_fraction"):
        close(got["batch_stats"][key], ref["batch_stats"][key])
    assert got["loss_values"] == pytest.approx(ref["loss_values"], rel=1e-12)
    assert got["pareto"]["weights"] == pytest.approx(ref["pareto"]["weights"], abs=1e-9)
    for name in ("a", "b", "c"):
        # the ranks' sums are formed to be reduced, so max_abs is known even where a single
        # process kept the structured engine's rows (null there)
        expected = ref["gradients"][name]["max_abs"]
        if expected is not None:
            assert got["gradients"][name]["max_abs"] == pytest.approx(expected, rel=1e-12)


def test_torchrun_affinity_equals_the_single_process_run(write_gradfile, tmp_path: Path) -> None:
    path = write_gradfile(GRADFILE)
    out = tmp_path / "affinity.json"
    proc = torchrun("-m", "gradtool", "affinity", path, "--lr", "0.1", "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    ref = single("affinity", path, "--lr", "0.1", "--json")
    assert got["num_batches"] == 5
    close(got["affinity"], ref["affinity"])
    close(got["affinity_first_order"], ref["affinity_first_order"])


def test_a_failure_on_one_rank_ends_every_rank_with_one_line(write_gradfile) -> None:
    path = write_gradfile(
        GRADFILE.replace(
            "def losses(model, x):\n",
            "def losses(model, x):\n    import os\n"
            "    if os.environ['RANK'] == '1':\n        raise ValueError('rank one cannot')\n",
        )
    )
    proc = torchrun("-m", "gradtool", "inspect", path)
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""
    assert proc.stderr.count("Error: rank 1 failed: losses(model, batch) raised ValueError") == 1
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: rank 1 failed: losses(model, batch) raised ValueError: rank one cannot"
    ]


def test_ddp_monitor_records_the_global_gramian_and_leaves_training_bit_identical(
    tmp_path: Path,
) -> None:
    for mode in ("ddp", "ddp-plain"):
        proc = torchrun(TRAIN, tmp_path, mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
    monitored = torch.load(tmp_path / "params-ddp.pt")
    plain = torch.load(tmp_path / "params-ddp-plain.pt")
    assert all(torch.equal(monitored[k], plain[k]) for k in plain)  # bit-identical training
    run = gradtool.read_run(tmp_path / "run-ddp.jsonl")
    assert len(run.records) == 3  # rank 0 alone wrote
    secondary = json.loads((tmp_path / "records-ddp-1.json").read_text())
    assert [r["dot"] for r in secondary] == [r.dot for r in run.records]

    sys.path.insert(0, str(TRAIN.parent))
    import _distributed_train as script

    model = script.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, record in enumerate(run.records):
        x, y = script.global_batch(step)
        losses = script.losses_of(model, x, y)  # the global batch in one process
        ref = gradtool.analyze(model, losses, strategy="loop")
        assert record.world == 2
        close(record.dot, ref.dot, 1e-6)
        local = torch.zeros(2, 2, dtype=torch.float64)
        for rank in (0, 1):
            rows = slice(rank * 4, rank * 4 + 4)
            part = gradtool.analyze(model, script.losses_of(model, x[rows], y[rows]))
            local += torch.tensor(part.dot) / 2
        close(record.local, local, 1e-6)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()


def test_fsdp_sharded_parameters_are_refused_with_one_clear_error(tmp_path: Path) -> None:
    proc = torchrun(TRAIN, tmp_path, "fsdp", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        message = (tmp_path / f"error-fsdp-{rank}.txt").read_text()
        assert "is a DTensor shard (FSDP's fully_shard" in message


def test_a_rank_without_a_batch_takes_part_with_zeros(write_gradfile) -> None:
    """A gradfile without batches: rank 0 evaluates it, rank 1 has nothing of its own."""
    path = write_gradfile(
        "import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "model = nn.Linear(4, 2).double()\nx = torch.randn(6, 4, dtype=torch.float64)\n"
        "def losses(model):\n    y = model(x)\n"
        "    return {'a': y[:, 0].pow(2).mean(), 'b': y[:, 1].mean()}\n"
    )
    proc = torchrun("-m", "gradtool", "inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, ref = json.loads(proc.stdout), single("inspect", path, "--json")
    assert got["num_batches"] == ref["num_batches"] == 1
    close(got["dot"], ref["dot"])


def test_monitor_outcomes_under_ddp(tmp_path: Path) -> None:
    """A Monitor on rank 0 alone fails at its first step with the reason instead of waiting in a
    collective; a NaN loss on one rank skips that step on every rank (static_graph: a unit test,
    tests/unit/monitoring/test_monitor_static_graph.py: DDP's static-graph teardown aborts now
    and then under gloo on the CPU, whatever the Monitor does)."""
    env_timeout = os.environ.get("GRADTOOL_DIST_TIMEOUT")
    os.environ["GRADTOOL_DIST_TIMEOUT"] = "5"
    try:
        proc = torchrun(TRAIN, tmp_path, "rank0-only")
    finally:
        if env_timeout is None:
            os.environ.pop("GRADTOOL_DIST_TIMEOUT")
        else:
            os.environ["GRADTOOL_DIST_TIMEOUT"] = env_timeout
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = (tmp_path / "error-rank0-only-0.txt").read_text()
    assert "every rank must call Monitor.step: 1 of 2 ranks reached step 0" in message

    proc = torchrun(TRAIN, tmp_path, "nonfinite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        records = json.loads((tmp_path / f"records-nonfinite-{rank}.json").read_text())
        assert [r is None for r in records] == [False, True, False]
    assert len(gradtool.read_run(tmp_path / "run-nonfinite.jsonl").records) == 2
