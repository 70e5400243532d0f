"""Views for many losses through the CLI: the most conflicting pairs (`--top`) in inspect, pareto
and report, loss groups (`--loss-group NAME=GLOB`), the EMA of `report --ema`, and the CSV of
`report --csv`; bad input is one `Error:` line (and a hint), exit 2."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _models import MULTITASK, invoke, strict_json
from _runlog_samples import many_losses_run, write_run
from typer.testing import CliRunner

TOP_PAIR_KEYS = {
    "a",
    "b",
    "i",
    "j",
    "cosine",
    "angle_deg",
    "conflict",
    "batch_cos_mean",
    "batch_cos_stderr",
    "batch_conflict",
    "batches_defined",
    "batches_below",
    "batch_conflict_fraction",
}
LOSS_GROUP_KEYS = {
    "names",
    "members",
    "ungrouped",
    "loss_values",
    "norms",
    "dot",
    "cosine",
    "angle_deg",
    "conflict",
}

# Twelve losses on one linear layer: l00..l05 pull its output towards +k, n00..n05 towards -k,
# so pairs across the two families conflict; two batches.
TWELVE = """
import torch

model = torch.nn.Linear(3, 2)

def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 3, generator=g) for _ in range(2)]

def losses(model, batch):
    y = model(batch)
    out = {}
    for k in range(6):
        out[f"l{k:02d}"] = ((y[:, k % 2] - (k + 1)) ** 2).mean()
    for k in range(6):
        other = 0.1 * (y[:, 1 - k % 2] ** 2).mean()
        out[f"n{k:02d}"] = ((y[:, k % 2] + (k + 1)) ** 2).mean() + other
    return out
"""


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture
def twelve(write_gradfile: Callable[..., Path]) -> Path:
    return write_gradfile(TWELVE, "twelve.py")


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run.jsonl", many_losses_run(12, 8))


def _ok(runner: CliRunner, *args: object) -> str:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _json(runner: CliRunner, *args: object) -> dict[str, Any]:
    return strict_json(_ok(runner, *args, "--json"))


def _usage_error(runner: CliRunner, *args: object) -> str:
    """Return the `Error:` line of a run that must fail with exit 2, nothing on stdout, and at
    most one `Hint:` line after it."""
    result = invoke(runner, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ")
    assert [line.split(":")[0] for line in lines[1:]] in ([], ["Hint"]), lines
    assert result.stdout == ""
    return lines[0]


def _table(out: str, title: str) -> list[list[str]]:
    """Return the rows of the table titled `title` (the lines between its rule and the next blank
    line), split on whitespace."""
    lines = out[out.index(title) :].splitlines()
    rule = next(k for k, line in enumerate(lines) if line.strip().startswith("─"))
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


# --- inspect / pareto: the most conflicting pairs ------------------------------------------------


def test_many_losses_list_the_ten_most_conflicting_pairs(runner: CliRunner, twelve: Path) -> None:
    out = _ok(runner, "inspect", twelve)
    assert "Most conflicting pairs (10 of 66, lowest cosine first)" in out
    assert "\nPairs\n" not in out  # the 66-row pair table is left out
    assert "the 12 x 12 cosine matrix: cosine in --json" not in out  # 12 losses: grid still shown
    doc = _json(runner, "inspect", twelve)
    rows = _table(out, "Most conflicting pairs")
    assert len(rows) == 10
    for row, pair in zip(rows, doc["top_pairs"], strict=True):
        assert row[:3] == [pair["a"], "~", pair["b"]]
        assert row[3] == f"{pair['cosine']:+.2f}" + ("!" if pair["conflict"] else "")
        assert f"{pair['batches_below']}/{pair['batches_defined']}" in row
    conflicts = sum(doc["conflict"][i][j] for i in range(12) for j in range(i + 1, 12))
    assert f"{conflicts} of the 66 pairs conflict (cos < -0.05)" in out


def test_top_pairs_in_the_json_are_sorted_with_batch_statistics(
    runner: CliRunner, twelve: Path
) -> None:
    doc = _json(runner, "inspect", twelve, "--top", "4")
    top = doc["top_pairs"]
    assert len(top) == 4
    assert all(set(p) == TOP_PAIR_KEYS for p in top)
    every = sorted((doc["cosine"][i][j], i, j) for i in range(12) for j in range(i + 1, 12))[:4]
    assert [(p["i"], p["j"]) for p in top] == [(i, j) for _, i, j in every]
    for p in top:
        assert p["cosine"] == doc["cosine"][p["i"]][p["j"]]
        assert p["batch_cos_mean"] == doc["batch_stats"]["cosine_mean"][p["i"]][p["j"]]
        assert p["batches_defined"] == 2
        assert p["batch_conflict_fraction"] == pytest.approx(p["batches_below"] / 2)


def test_top_k_chooses_the_rows_and_replaces_the_pair_table_for_few_losses(
    runner: CliRunner,
) -> None:
    plain = _ok(runner, "inspect", MULTITASK)
    assert "\nPairs\n" in plain and "Most conflicting pairs" not in plain
    out = _ok(runner, "inspect", MULTITASK, "--top", "1")
    assert "Most conflicting pairs (1 of 3, lowest cosine first)" in out
    assert _table(out, "Most conflicting pairs") == [["depth", "~", "normals", "-0.43!", "115.3°"]]
    assert "1 of the 3 pairs conflicts (cos < -0.05)" in out
    assert "\nPairs\n" not in out
    pareto = _ok(runner, "pareto", MULTITASK, "--top", "2")
    assert "Most conflicting pairs (2 of 3, lowest cosine first)" in pareto
    assert len(_json(runner, "pareto", MULTITASK)["top_pairs"]) == 3


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_top_is_one_error_line(runner: CliRunner, value: str) -> None:
    line = _usage_error(runner, "inspect", MULTITASK, "--top", value)
    assert "'--top'" in line


# --- loss groups ----------------------------------------------------------------------------------


def test_loss_groups_table_and_json(runner: CliRunner, twelve: Path) -> None:
    args = ("inspect", twelve, "--loss-group", "pull=l*", "--loss-group", "push=n0[0-3]")
    doc = _json(runner, *args)
    groups = doc["loss_groups"]
    assert set(groups) == LOSS_GROUP_KEYS
    assert groups["names"] == ["pull", "push"]
    assert groups["members"] == {
        "pull": [f"l{k:02d}" for k in range(6)],
        "push": ["n00", "n01", "n02", "n03"],
    }
    assert groups["ungrouped"] == ["n04", "n05"]
    assert doc["meta"]["loss_groups"] == {"pull": ["l*"], "push": ["n0[0-3]"]}
    # G_AB = sum over i in A, j in B of G_ij, from the document's own Gramian
    index = {name: k for k, name in enumerate(doc["losses"])}
    for x, a in enumerate(groups["names"]):
        for y, b in enumerate(groups["names"]):
            total = math.fsum(
                doc["dot"][index[i]][index[j]]
                for i in groups["members"][a]
                for j in groups["members"][b]
            )
            assert groups["dot"][x][y] == pytest.approx(total, rel=1e-9)
    cos = groups["cosine"][0][1]
    assert cos is not None and cos < -0.05 and groups["conflict"][0][1]
    out = _ok(runner, *args)
    rows = _table(out, "Loss groups: the summed gradient of each group")
    assert rows[0][:3] == ["[0]", "pull", "6"]
    assert rows[1][:3] == ["[1]", "push", "4"]
    assert f"{cos:+.2f}!" in rows[0]
    assert "in no group: 2 of 12 losses (n04, n05)" in out
    assert f"» loss groups pull and push conflict (cos {cos:+.2f} of their summed gradients)" in out


def test_pareto_takes_loss_groups_too(runner: CliRunner) -> None:
    out = _ok(runner, "pareto", MULTITASK, "--loss-group", "dn=depth", "--loss-group", "dn=normals")
    assert "Loss groups: the summed gradient of each group" in out
    assert "in no group: 1 of 3 losses (segmentation)" in out
    assert "loss_groups" not in _json(runner, "pareto", MULTITASK)


def test_a_loss_glob_matching_nothing_is_one_line_and_a_hint(runner: CliRunner) -> None:
    line = _usage_error(runner, "inspect", MULTITASK, "--loss-group", "d=dpth")
    assert line == (
        "Error: loss group 'd' (--loss-group): the glob 'dpth' matched none of the 3 losses"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("aux", "--loss-group 'aux' should be NAME=GLOB"),
        ("=aux_*", "--loss-group '=aux_*' has no group name before '='"),
        ("aux=", "--loss-group 'aux=' has no glob after '='"),
    ],
)
def test_malformed_loss_group_is_refused_before_the_gradfile_runs(
    runner: CliRunner, write_gradfile: Callable[..., Path], tmp_path: Path, value: str, needle: str
) -> None:
    marker = tmp_path / "ran"
    gradfile = write_gradfile(
        f"""
        import pathlib
        import torch
        pathlib.Path({str(marker)!r}).write_text("ran")
        model = torch.nn.Linear(3, 1)
        def losses(model):
            y = model(torch.ones(2, 3))
            return {{"a": y.mean(), "b": (y ** 2).mean()}}
        """
    )
    assert _usage_error(runner, "inspect", gradfile, "--loss-group", value) == f"Error: {needle}"
    assert not marker.exists()


# --- report: top pairs, loss groups, EMA ---------------------------------------------------------


def test_report_ranks_the_pairs_most_often_in_conflict(runner: CliRunner, run_log: Path) -> None:
    out = _ok(runner, "report", run_log)
    assert "Pairs most often in conflict (10 of 66)" in out
    assert "Gradient cosine over training" not in out
    doc = _json(runner, "report", run_log)
    top = doc["top_pairs"]
    assert len(top) == 10
    keys = [(-(p["conflict_fraction"] or 0.0), p["cos_mean"]) for p in doc["pairs"]]
    assert [(-(p["conflict_fraction"] or 0.0), p["cos_mean"]) for p in top] == sorted(keys)[:10]
    rows = _table(out, "Pairs most often in conflict")
    for row, pair in zip(rows, top, strict=True):
        assert row[:3] == [pair["a"], "~", pair["b"]]
        assert row[3] == f"{pair['conflict_records']}/{pair['defined_records']}"
    # 8 MGDA weight columns would not fit: the heaviest 7 of 12 are shown
    assert "the 7 of 12 losses of largest mean weight" in out
    few = _ok(runner, "report", run_log, "--top", "3")
    assert len(_table(few, "Pairs most often in conflict (3 of 66)")) == 3


def test_report_loss_groups(runner: CliRunner, run_log: Path) -> None:
    args = ("report", run_log, "--loss-group", "low=l0[0-4]", "--loss-group", "high=l1*")
    doc = _json(runner, *args)
    groups = doc["loss_groups"]
    assert groups["members"] == {
        "low": ["l00", "l01", "l02", "l03", "l04"],
        "high": ["l10", "l11"],
    }
    assert groups["ungrouped"] == ["l05", "l06", "l07", "l08", "l09"]
    assert [p["a"] + "~" + p["b"] for p in groups["pairs"]] == ["low~high"]
    assert len(groups["cosine"]["low~high"]) == doc["num_records"]
    out = _ok(runner, *args)
    assert "Loss groups: cosine of the summed gradients" in out
    assert "Loss groups: norm of the summed gradients" in out
    assert "in no group: 5 of 12 losses (l05, l06, l07, l08, l09)" in out
    line = _usage_error(runner, "report", run_log, "--loss-group", "x=zz*")
    assert (
        line == "Error: loss group 'x' (--loss-group): the glob 'zz*' matched none of the 12 losses"
    )


def test_report_ema_smooths_the_tables_and_keeps_the_raw_series(
    runner: CliRunner, run_log: Path
) -> None:
    raw = _json(runner, "report", run_log)
    doc = _json(runner, "report", run_log, "--ema", "0.5")
    assert doc["ema"] == 0.5 and raw["ema"] is None and "series_ema" not in raw
    assert doc["series"] == raw["series"]
    smooth = doc["series_ema"]
    assert set(smooth) == {"alpha", "half_life", "norms", "cosine", "mgda_weights"}
    assert smooth["half_life"] == pytest.approx(1.0)  # alpha 0.5 halves every record
    key = "l00~l01"
    xs, ss = raw["series"]["cosine"][key], smooth["cosine"][key]
    expected = [xs[0]]
    for x in xs[1:]:
        expected.append(0.5 * x + 0.5 * expected[-1])
    assert ss == pytest.approx(expected, rel=1e-12)
    pair = next(p for p in doc["pairs"] if f"{p['a']}~{p['b']}" == key)
    assert pair["cos_end"] == pytest.approx(expected[-1], rel=1e-12)
    out = _ok(runner, "report", run_log, "--ema", "0.5")
    assert "EMA 0.5 (half-life 1 records)" in out
    assert "cosines: EMA 0.5 over the records (half-life 1 records); raw series: --json" in out


@pytest.mark.parametrize("value", ["0", "1", "-0.2", "nan"])
def test_a_bad_ema_is_one_error_line(runner: CliRunner, run_log: Path, value: str) -> None:
    line = _usage_error(runner, "report", run_log, "--ema", value)
    assert line.startswith("Error: --ema should be a number between 0 and 1")


# --- report --csv ---------------------------------------------------------------------------------


def test_report_csv_holds_one_row_per_record(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    path = tmp_path / "series.csv"
    doc = _json(runner, "report", run_log, "--csv", path, "--ema", "0.3", "--loss-group", "g=l0*")
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    header, body = rows[0], rows[1:]
    names = doc["losses"]
    assert header[0] == "step"
    assert header[1 : 1 + 12] == [f"loss/{n}" for n in names]
    assert len(header) == len(set(header))
    assert [int(r[0]) for r in body] == doc["series"]["steps"]
    column = {name: [r[k] for r in body] for k, name in enumerate(header)}

    def floats(cells: list[str]) -> list[float | None]:
        return [float(c) if c else None for c in cells]

    series = doc["series"]
    for n in names:
        assert floats(column[f"loss/{n}"]) == pytest.approx(series["loss_values"][n], rel=1e-15)
        assert floats(column[f"grad_norm/{n}"]) == pytest.approx(series["norms"][n], rel=1e-15)
        assert floats(column[f"mgda_weight/{n}"]) == pytest.approx(
            series["mgda_weights"][n], rel=1e-15
        )
        ema_norms = doc["series_ema"]["norms"][n]
        assert floats(column[f"ema/grad_norm/{n}"]) == pytest.approx(ema_norms, rel=1e-15)
    for key, values in series["cosine"].items():
        assert floats(column[f"grad_cos/{key}"]) == pytest.approx(values, rel=1e-15)
    assert len([h for h in header if h.startswith("grad_cos/")]) == 66
    assert floats(column["mgda_min_norm"]) == pytest.approx(series["mgda_min_norm"], rel=1e-15)
    assert floats(column["group_norm/g"]) == pytest.approx(
        doc["loss_groups"]["norms"]["g"], rel=1e-15
    )
    assert floats(column["lowest_cos/trunk"]) == pytest.approx(
        series["layer_lowest_cos"][0], rel=1e-15
    )


def test_csv_is_written_beside_the_tables_and_said_on_stderr(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    path = tmp_path / "series.csv"
    result = invoke(runner, "report", run_log, "--csv", path)
    assert result.exit_code == 0, result.output
    assert "Pairs most often in conflict" in result.stdout
    assert f"wrote {path}" in result.stderr
    assert path.read_text(encoding="utf-8").startswith("step,loss/l00,")


def test_csv_onto_an_input_or_the_json_document_is_refused(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    before = run_log.read_bytes()
    line = _usage_error(runner, "report", run_log, "--csv", run_log)
    assert (
        line
        == f"Error: --csv {run_log} would overwrite the run log {run_log}, an input of this run"
    )
    assert run_log.read_bytes() == before
    same = tmp_path / "out"
    line = _usage_error(runner, "report", run_log, "-o", same, "--csv", same)
    assert line == f"Error: -o {same} and --csv {same} name the same file"
    assert not same.exists()
    missing = tmp_path / "nowhere" / "series.csv"
    line = _usage_error(runner, "report", run_log, "--csv", missing)
    assert line == f"Error: --csv {missing}: the folder {missing.parent} does not exist"
    line = _usage_error(runner, "report", run_log, "--csv", tmp_path)
    assert line == f"Error: --csv {tmp_path} is a directory"


def test_a_failed_run_removes_an_earlier_csv(
    runner: CliRunner, run_log: Path, tmp_path: Path
) -> None:
    path = tmp_path / "series.csv"
    path.write_text("step\n0\n", encoding="utf-8")
    result = invoke(runner, "report", run_log, "--csv", path, "--run", "no-such-run")
    assert result.exit_code != 0
    assert not path.exists()


def test_the_cli_default_top_is_the_library_s() -> None:
    from gradtool.analysis.report import DEFAULT_TOP as LIBRARY
    from gradtool.cli.options import DEFAULT_TOP as CLI

    assert CLI == LIBRARY
