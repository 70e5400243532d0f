"""The gradient-noise section of `gradtool report` for runs recorded under DDP, against records
built from a known true Gramian and a known per-sample covariance (McCandlish et al. 2018, A.1).

A record of R ranks with b samples each holds, in expectation, dot = T + C/(R b) (the global
batch) and local = T + C/b (one rank's batch), where T is the true gradients' Gramian and C the
per-sample covariance's inner products. The records below hold exactly these, so the estimates
are exact: signal S = T_ii, noise N = C_ii/b, noise scale N/S = C_ii/(b T_ii).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from _models import invoke, strict_json
from _runlog_samples import make_record, unit, write_run
from rich.console import Console
from typer.testing import CliRunner

from gradtool.analysis.timeline import build_timeline, noise_timeline
from gradtool.render import render_timeline
from gradtool.results.runlog import Record

Grid = list[list[float]]
NAMES = ["a", "b"]


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


def ddp_record(step: int, true: Grid, cov: Grid, *, world: int, batch: int) -> Record:
    """Return a record whose `dot` and `local` are the expected Gramians of the global batch
    (world * batch samples) and of one rank's batch (batch samples)."""
    m = len(true)
    dot = [[true[i][j] + cov[i][j] / (world * batch) for j in range(m)] for i in range(m)]
    local = [[true[i][j] + cov[i][j] / batch for j in range(m)] for i in range(m)]
    names = NAMES[:m] if m <= len(NAMES) else [f"l{k}" for k in range(m)]
    return Record(
        step=step,
        losses=names,
        loss_values=dict.fromkeys(names, 1.0),
        dot=dot,
        world=world,
        local=local,
    )


def noise_row(out: str, name: str) -> list[str]:
    """Return the cells of loss `name`'s row in the printed gradient-noise table."""
    table = out[out.index("Gradient noise (DDP") :]
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [name])


# T: |g_a|^2 = 4, |g_b|^2 = 1; C: tr(Sigma_a) = 32, tr(Sigma_b) = 80; b = 8 per rank.
TRUE: Grid = [[4.0, 1.0], [1.0, 1.0]]
COV: Grid = [[32.0, -4.0], [-4.0, 80.0]]
BATCH = 8


@pytest.mark.parametrize("world", [2, 4, 8])
def test_signal_noise_and_noise_scale_match_the_closed_form(world: int) -> None:
    records = [ddp_record(10 * k, TRUE, COV, world=world, batch=BATCH) for k in range(3)]
    noise = build_timeline(records).noise
    assert noise is not None
    assert (noise.world, noise.records, noise.last_step) == (world, 3, 20)
    for i, row in enumerate(noise.rows):
        signal, per_batch = TRUE[i][i], COV[i][i] / BATCH
        assert row.name == NAMES[i] and row.records == 3
        assert row.signal == pytest.approx(signal, rel=1e-12)
        assert row.noise == pytest.approx(per_batch, rel=1e-12)
        assert row.noise_scale == pytest.approx(COV[i][i] / (BATCH * signal), rel=1e-12)
        assert row.noise_share == pytest.approx(per_batch / (per_batch + signal), rel=1e-12)
        assert row.signal_end == pytest.approx(signal, rel=1e-12)
        assert row.noise_end == pytest.approx(per_batch, rel=1e-12)
        assert row.noise_scale_end == pytest.approx(per_batch / signal, rel=1e-12)
    # a: 32/(8*4) = 1x one rank's batch, b: 80/(8*1) = 10x
    a, b = noise.rows
    assert (a.noise_scale, b.noise_scale) == (pytest.approx(1.0), pytest.approx(10.0))


def test_the_run_estimate_is_the_ratio_of_the_mean_signal_and_noise() -> None:
    # two records with different truths: the mean S and N, then their ratio (not the mean ratio)
    first = ddp_record(0, [[4.0, 0.0], [0.0, 1.0]], [[32.0, 0.0], [0.0, 8.0]], world=2, batch=8)
    last = ddp_record(10, [[1.0, 0.0], [0.0, 1.0]], [[64.0, 0.0], [0.0, 24.0]], world=2, batch=8)
    noise = build_timeline([first, last]).noise
    assert noise is not None
    a, b = noise.rows
    assert a.signal == pytest.approx((4.0 + 1.0) / 2)
    assert a.noise == pytest.approx((4.0 + 8.0) / 2)
    assert a.noise_scale == pytest.approx(6.0 / 2.5)  # not the mean of 1 and 8
    assert a.noise_share == pytest.approx(6.0 / 8.5)
    assert a.noise_scale_end == pytest.approx(8.0)  # the last record's own
    assert b.noise_scale == pytest.approx(2.0 / 1.0)
    assert b.noise_scale_end == pytest.approx(3.0)


def test_estimates_match_averages_of_simulated_per_sample_gradients() -> None:
    # per-sample gradients g + N(0, 0.5^2 I): the estimates are unbiased, so their means over
    # 2000 simulated steps come close to the truth: |g|^2 = 1, tr(Sigma)/b = 2 * 0.25 / 4 =
    # 0.125 (tolerances about 5 standard errors, measured over 30 seeds)
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    world, batch, dim = 4, 4, 2
    true = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # (m, dim), unit norms
    records = []
    for step in range(2000):
        samples = true[None, None] + 0.5 * torch.randn(
            world, batch, 2, dim, generator=gen, dtype=torch.float64
        )
        rank_means = samples.mean(dim=1)  # (R, m, dim)
        glob = rank_means.mean(dim=0)
        local = torch.einsum("rid,rjd->ij", rank_means, rank_means) / world
        records.append(
            Record(
                step=step,
                losses=NAMES,
                loss_values=dict.fromkeys(NAMES, 1.0),
                dot=(glob @ glob.T).tolist(),
                world=world,
                local=local.tolist(),
            )
        )
    noise = noise_timeline(records, NAMES)
    assert noise is not None
    for row in noise.rows:
        assert row.signal == pytest.approx(1.0, abs=0.03)
        assert row.noise == pytest.approx(dim * 0.25 / batch, abs=0.01)
        assert row.noise_scale == pytest.approx(dim * 0.25 / batch, abs=0.01)


def test_a_signal_estimate_that_is_not_positive_leaves_the_ratios_undefined() -> None:
    # b's global Gramian is at most 1/R of its local one: S_bb = (R dot - local)/(R - 1) < 0
    rec = ddp_record(0, TRUE, COV, world=2, batch=BATCH)
    rec.dot[1][1] = 0.4 * rec.local[1][1] / 2  # type: ignore[index,operator]
    report = build_timeline([rec])
    assert report.noise is not None
    a, b = report.noise.rows
    assert b.signal is not None and b.signal < 0
    assert b.noise is not None and b.noise > 0
    assert (b.noise_scale, b.noise_share, b.noise_scale_end) == (None, None, None)
    assert a.noise_scale == pytest.approx(1.0)
    doc = strict_json(report.to_json())
    assert doc["noise"]["rows"][1]["noise_scale"] is None
    text = " ".join(report.verdict)
    assert "the noise scale is 1x one rank's batch for a" in text
    assert "the gradient of b is mostly noise" in text
    assert "below the noise scale" in text


def test_runs_without_local_gramians_have_no_noise_section() -> None:
    records = [make_record(s, {"a": unit(0), "b": unit(40)}) for s in (0, 10)]
    report = build_timeline(records)
    assert report.noise is None
    assert strict_json(report.to_json())["noise"] is None
    assert not any("gradient noise" in line for line in report.verdict)
    out = io.StringIO()
    render_timeline(report, Console(file=out, width=100, color_system=None))
    assert "Gradient noise" not in out.getvalue()


def test_a_single_rank_record_gives_no_estimate() -> None:
    rec = ddp_record(0, TRUE, COV, world=2, batch=BATCH)
    rec.world = 1  # R = 1: the two batch sizes are the same, nothing to estimate from
    assert build_timeline([rec]).noise is None


def test_only_records_with_a_local_gramian_are_averaged() -> None:
    plain = make_record(0, {"a": [3.0, 0.0], "b": [0.0, 5.0]})
    ddp = [ddp_record(10 * k, TRUE, COV, world=2, batch=BATCH) for k in (1, 2)]
    report = build_timeline([plain, *ddp])
    assert report.noise is not None
    assert (report.noise.records, report.noise.last_step) == (2, 20)
    assert report.noise.rows[0].signal == pytest.approx(4.0)


def test_records_of_different_world_sizes_are_each_estimated_with_their_own() -> None:
    records = [
        ddp_record(0, TRUE, COV, world=2, batch=BATCH),
        ddp_record(10, TRUE, COV, world=4, batch=BATCH),
    ]
    report = build_timeline(records)
    assert report.noise is not None and report.noise.world == 4
    assert report.noise.rows[1].noise_scale == pytest.approx(10.0)
    assert any("2 and 4 ranks" in w for w in report.warnings)


def test_report_cli_prints_the_noise_table_and_verdict(runner: CliRunner, tmp_path: Path) -> None:
    records = [ddp_record(10 * k, TRUE, COV, world=2, batch=BATCH) for k in range(3)]
    run_log = write_run(tmp_path / "ddp.jsonl", records)
    result = invoke(runner, "report", run_log)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Gradient noise (DDP, 2 ranks)" in out
    assert "noise scale" in out and "at step 20" in out
    # loss, signal, noise, share, noise scale, at the last step
    assert noise_row(out, "a") == ["a", "4", "4", "50%", "1x", "1x"]
    assert noise_row(out, "b") == ["b", "1", "10", "91%", "10x", "10x"]
    assert "McCandlish" in out
    assert "gradient noise (DDP, 2 ranks): the noise scales are 1x / 10x one rank's batch" in out

    doc = strict_json(invoke(runner, "report", run_log, "--json").stdout)
    assert doc["noise"]["world"] == 2 and doc["noise"]["records"] == 3
    b = doc["noise"]["rows"][1]
    assert b["name"] == "b"
    assert b["noise_scale"] == pytest.approx(10.0)
    assert b["noise"] == pytest.approx(10.0)
    assert b["signal"] == pytest.approx(1.0)


def test_report_cli_without_ddp_records_prints_no_noise_table(
    runner: CliRunner, tmp_path: Path
) -> None:
    records = [make_record(s, {"a": unit(0), "b": unit(40)}) for s in (0, 10)]
    run_log = write_run(tmp_path / "plain.jsonl", records)
    result = invoke(runner, "report", run_log)
    assert result.exit_code == 0, result.output
    assert "Gradient noise" not in result.stdout
    assert "gradient noise" not in result.stdout
    doc = json.loads(invoke(runner, "report", run_log, "--json").stdout)
    assert doc.get("noise") is None
