"""The tables: names shown inert, conflict marks only where the analysis flagged them (and never
on a value that prints as 0.00), layouts that fit the console's width, no trailing spaces."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from _runlog_samples import make_record
from rich.console import Console
from rich.text import Text

from gradtool.analysis import ParetoOptions, build_report, build_timeline
from gradtool.engine import EngineResult
from gradtool.render import render_report, render_timeline
from gradtool.render.common import (
    CONFLICT_STYLE,
    Column,
    blocks_of,
    cos_text,
    inert,
    pack,
    printable,
    show,
    table_of,
)

NAMES = ["a\x1b[31m", "b\r", "c\nd", "e\t", "f ", "f", "[bold]g[/bold]", ":smile:"]


def engine_result(rows: list[list[float]], names: list[str]) -> EngineResult:
    """Return an EngineResult of one parameter block ("layer.weight") holding `rows`."""
    j = torch.tensor(rows, dtype=torch.float64)
    m = len(names)
    return EngineResult(
        loss_names=names,
        loss_values=[1.0] * m,
        param_names=["layer.weight"],
        param_numels=[j.shape[1]],
        gramians=(j @ j.T)[None],
        max_abs=j.abs().amax(dim=1).tolist(),
        nonfinite=torch.zeros(1, m, dtype=torch.int64),
        reached=torch.ones(1, m, dtype=torch.bool),
        batch_gramians=None,
        num_batches=1,
        strategy="loop",
    )


def random_rows(m: int, dim: int = 12, seed: int = 0) -> list[list[float]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, dim, generator=g, dtype=torch.float64).tolist()


def plain_console(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, color_system=None, force_terminal=False), out


def assert_tidy(text: str, width: int) -> None:
    for line in text.splitlines():
        assert len(line) <= width, line
        assert line == line.rstrip(), repr(line)
    assert "…" not in text


# --- inert names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("depth", "depth"),
        ("heads.depth", "heads.depth"),
        ("[bold]g[/bold]", "[bold]g[/bold]"),
        ("a b", "a b"),
        ("a ", "'a '"),
        (" a", "' a'"),
        ("", "''"),
        ("a\x1b[31m", "'a\\x1b[31m'"),
        ("b\r", "'b\\r'"),
        ("c\nd", "'c\\nd'"),
        ("e\t", "'e\\t'"),
        ("zero\u200bwidth", "'zero\\u200bwidth'"),
        ("'q'", "\"'q'\""),
    ],
)
def test_inert_shows_plain_names_as_written_and_quotes_the_rest(name: str, shown: str) -> None:
    assert inert(name) == shown
    assert inert(name).isprintable()


def test_lookalike_names_stay_apart() -> None:
    names = ["a", "a ", " a", "'a'", "a\\x1b", "a\x1b", "'a\\x1b'", "a\t", "a\\t", ""]
    assert len({inert(n) for n in names}) == len(names)


def test_printable_escapes_control_characters_and_leaves_the_rest() -> None:
    assert printable("x\x1b[31my\r") == "x\\x1b[31my\\r"
    assert printable("cos -0.43, 115°") == "cos -0.43, 115°"


def test_report_tables_and_verdict_print_names_inert() -> None:
    rows = [[1.0, 0.1 * k, 0.0, -0.3 * (k % 2)] for k in range(len(NAMES))]
    report = build_report(engine_result(rows, NAMES), command="inspect")
    console, out = plain_console(100)
    render_report(report, console)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\t" not in text
    assert "😄" not in text and ":smile:" in text  # no emoji code is interpreted
    for name in NAMES:
        assert inert(name) in text
    assert "'f '" in text  # the trailing space shows, so 'f ' and f differ


def test_report_with_colour_emits_no_escape_sequence_from_a_name() -> None:
    report = build_report(engine_result([[1.0, 0.0], [0.5, 0.5]], ["x\x1b[2J", "y"]), command="x")
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    render_report(report, console)
    assert "\x1b[2J" not in out.getvalue()  # a name that would clear the screen
    assert "'x\\x1b[2J'" in out.getvalue()


def test_verdict_lines_from_any_builder_are_printed_escaped() -> None:
    report = build_report(engine_result([[1.0, 0.0], [0.5, 0.5]], ["x", "y"]), command="x")
    report.verdict = ["built elsewhere with a raw \x1b[31mname\r"]
    console, out = plain_console(80)
    render_report(report, console)
    assert "» built elsewhere with a raw \\x1b[31mname\\r" in out.getvalue()


def test_timeline_tables_print_names_inert() -> None:
    records = []
    for k, c in enumerate([-0.5, 0.3]):
        vectors = {"x\r": [1.0, 0.0], "y ": [c, math.sqrt(1 - c * c)]}
        records.append(make_record(10 * k, vectors, layers={"l\x1b[1m": vectors}))
    console, out = plain_console(80)
    render_timeline(build_timeline(records), console)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert "'x\\r' ~ 'y '" in text and "'l\\x1b[1m'" in text
    assert_tidy(text, 80)


# --- conflict marks follow the analysis' flags ----------------------------------------------------


def test_cos_text_marks_only_flagged_values() -> None:
    assert cos_text(-0.43, True).plain == "-0.43!"
    assert cos_text(-0.43, True).style == CONFLICT_STYLE
    unflagged = cos_text(-0.43, False)
    assert unflagged.plain == "-0.43" and unflagged.style != CONFLICT_STYLE


@pytest.mark.parametrize("value", [-0.001, -0.0049, 0.0])
def test_a_value_that_prints_as_zero_is_never_red(value: float) -> None:
    text = cos_text(value, True)
    assert text.plain in ("-0.00", "+0.00") and text.style != CONFLICT_STYLE


def test_undefined_cosine_is_dim_dashes() -> None:
    assert cos_text(None, True).plain == "--"


def styles_of(console: Console, renderable: object) -> list[str]:
    return [str(seg.style) for seg in console.render(renderable) if seg.text.strip()]


def test_report_paints_no_red_for_tiny_negative_cosines() -> None:
    # cos -0.001 with threshold 0: flagged by the analysis, but it prints as -0.00
    rows = [[1.0, 0.0], [-0.001, math.sqrt(1 - 1e-6)]]
    report = build_report(engine_result(rows, ["a", "b"]), command="x", conflict_threshold=0.0)
    assert report.conflict[0][1]
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system="standard")
    render_report(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "-0.00!" not in text and "\x1b[1;31m-0.00" not in text


def test_report_marks_the_flagged_pair_in_grid_pairs_and_layers() -> None:
    rows = [[1.0, 0.0], [-0.5, math.sqrt(0.75)], [-0.02, math.sqrt(1 - 0.0004)]]
    report = build_report(engine_result(rows, ["a", "b", "c"]), command="inspect")
    console, out = plain_console(100)
    render_report(report, console)
    text = out.getvalue()
    assert text.count("-0.50!") == 2 + 1 + 2  # grid (twice), pairs, layer row and total
    assert "-0.02!" not in text and "-0.02" in text
    assert "! and red: a conflict, cos < -0.05" in text


# --- near-convergence in the Pareto summary -------------------------------------------------------


def test_pareto_summary_shows_the_relative_min_norm_and_tol() -> None:
    rows = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]  # DESIGN's reference: |d| = sqrt(2)
    options = ParetoOptions(tol=1e-3)
    report = build_report(engine_result(rows, ["g0", "g1"]), command="pareto", pareto=options)
    console, out = plain_console(100)
    render_report(report, console)
    ratio = math.sqrt(2) / math.sqrt(38)
    assert f"Pareto-stationary no (|d| / max_i |g_i| = {ratio:.3g} > tol 0.001)" in out.getvalue()


def test_pareto_summary_when_stationary_and_normalised() -> None:
    rows = [[1.0, 2.0], [-2.0, -4.0]]
    options = ParetoOptions(normalize="l2")
    report = build_report(engine_result(rows, ["a", "b"]), command="pareto", pareto=options)
    console, out = plain_console(100)
    render_report(report, console)
    assert re.search(
        r"Pareto-stationary yes \(normalised \|d\| / max_i \|g_i / s_i\| = \S+ <= tol 1e-06\)",
        out.getvalue(),
    )


# --- layouts by width -----------------------------------------------------------------------------


def test_pack_breaks_between_parts_only() -> None:
    assert pack(["aaa", "bb", "cccc"], 9) == ["aaa · bb", "cccc"]
    assert pack(["a" * 12, "b"], 5) == ["a" * 12, "b"]
    assert pack([], 10) == []


def test_show_leaves_no_trailing_spaces() -> None:
    console, out = plain_console(60)
    table = table_of([Column("left", ["x", "longer"], justify="left"), Column("n", ["1", "22"])])
    show(console, Text("title   "), table)
    assert_tidy(out.getvalue(), 60)
    assert "title\n" in out.getvalue()


def test_blocks_keep_key_columns_and_every_cell_whole() -> None:
    console, out = plain_console(40)
    values = [f"{k:.6f}" for k in range(3)]
    groups = [[Column(f"col{k}", values)] for k in range(8)]
    blocks = blocks_of(console, "Title", [Column("key", ["r0", "r1", "r2"])], groups)
    assert len(blocks) > 1
    show(console, *blocks)
    text = out.getvalue()
    assert_tidy(text, 40)
    assert text.count("key") == len(blocks) and "Title (continued)" in text
    for k in range(8):
        assert f"col{k}" in text
    assert text.count("2.000000") == 8


@pytest.mark.parametrize("width", [60, 80, 100])
def test_twenty_losses_fit_the_width_with_every_name(width: int) -> None:
    names = [f"objective_number_{k:02d}" for k in range(20)]
    report = build_report(engine_result(random_rows(20, dim=40), names), command="inspect")
    console, out = plain_console(width)
    render_report(report, console)
    text = out.getvalue()
    assert_tidy(text, width)
    for name in names:
        assert name in text
    for k in range(20):
        assert f"[{k}]" in text


def test_long_names_move_to_a_legend_under_the_grid() -> None:
    names = [f"a_rather_long_loss_name_number_{k}" for k in range(6)]
    report = build_report(engine_result(random_rows(6), names), command="pareto")
    console, out = plain_console(80)
    render_report(report, console)
    text = out.getvalue()
    assert_tidy(text, 80)
    assert "[5] a_rather_long_loss_name_number_5" in text


def test_layer_table_fits_eighty_columns_in_blocks() -> None:
    names = ["depth", "segmentation", "normals", "surface"]
    report = build_report(engine_result(random_rows(4), names), command="inspect")
    console, out = plain_console(80)
    render_report(report, console)
    text = out.getvalue()
    assert_tidy(text, 80)
    for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        assert f"cos {i}~{j}" in text
    assert "|g| [3]" in text
