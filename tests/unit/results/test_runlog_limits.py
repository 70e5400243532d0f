"""Reading run logs safely: bounded reads, hostile lines, and several runs in one file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _models import invoke
from _runlog_samples import conflict_run, make_record, unit, write_run
from typer.testing import CliRunner

import gradtool.results.runlog as runlog
from gradtool.errors import RunLogError
from gradtool.results.runlog import last_run, read_run


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTOOL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


def append(path: Path, *lines: str | bytes) -> Path:
    with open(path, "ab") as fh:
        for line in lines:
            fh.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def record_line(at: int, **raw: str) -> str:
    """Return a record line at step `at`, each field of `raw` replaced by the JSON text given."""
    doc = json.loads(conflict_run()[0].to_json())
    doc["step"] = at
    doc.update({key: f"@{key}@" for key in raw})
    text = json.dumps(doc, separators=(",", ":"))
    for key, value in raw.items():
        text = text.replace(f'"@{key}@"', value)
    return text


# -- hostile lines --------------------------------------------------------------------------------


def test_a_line_nested_thousands_deep_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, "[" * 100_000 + "]" * 100_000, record_line(40))
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 10, 20, 30, 40]
    (warning,) = run.warnings
    assert "line 6" in warning and "nests deeper than the JSON reader allows" in warning


def test_a_5000_digit_integer_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, record_line(40, step="7" * 5000))
    run = read_run(path)
    assert len(run.records) == 4
    (warning,) = run.warnings
    assert "line 6" in warning and "more digits than Python reads" in warning


def test_nan_and_infinity_tokens_are_not_json(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, record_line(40, time="NaN"))
    run = read_run(path)
    assert len(run.records) == 4
    assert "holds NaN, which is not JSON" in run.warnings[0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"step": "9" * 400}, r"'step' should be an integer of at most 64 bits; found an integer"),
        ({"step": str(2**63)}, r"'step' should be an integer of at most 64 bits"),
        ({"dot": "[[1e999,0],[0,1]]"}, r"'dot' should be a finite number; found inf"),
        ({"dot": f"[[{'9' * 400},0],[0,1]]"}, r"'dot' should be a finite number; found an int"),
        ({"loss_values": '{"a":-1e999,"b":1}'}, r"'loss_values.a' should be a finite number"),
    ],
)
def test_numbers_out_of_range_in_a_record_are_errors_naming_the_field(
    tmp_path: Path, raw: dict[str, str], message: str
) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, record_line(40, **raw))
    with pytest.raises(RunLogError, match=message) as e:
        read_run(path)
    assert "line 6" in str(e.value)


def test_a_huge_time_or_parameter_count_is_dropped_not_an_overflow(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    big = "9" * 400
    append(path, record_line(40, time=big, parameters=f'{{"count":{big},"numel":3}}'))
    last = read_run(path).records[-1]
    assert last.time is None and last.parameters == {"numel": 3}


def test_a_line_longer_than_the_limit_is_skipped_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runlog, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr(runlog, "_READ_CHUNK", 1000)  # the long line spans several chunks
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, "x" * 10_000, record_line(40))
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 10, 20, 30, 40]
    (warning,) = run.warnings
    assert "line 6" in warning and "longer than 4 KiB" in warning


def test_a_file_over_the_byte_limit_is_an_error(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    size = path.stat().st_size
    assert len(read_run(path, max_bytes=size).records) == 4  # exactly at the limit: read
    with pytest.raises(RunLogError, match="is larger than"):
        read_run(path, max_bytes=size - 1)


def test_skipped_line_warnings_are_capped(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, *["garbage"] * 100)
    run = read_run(path)
    assert len(run.warnings) == runlog.MAX_LINE_WARNINGS + 1
    assert run.warnings[-1] == f"{100 - runlog.MAX_LINE_WARNINGS} more line(s) of {path} skipped"


def test_header_metadata_nested_too_deep_is_left_out(tmp_path: Path) -> None:
    deep: object = 1
    for _ in range(500):  # below the JSON reader's limit, far above what recursion downstream takes
        deep = [deep]
    path = tmp_path / "run.jsonl"
    header = {"schema_version": 1, "kind": "gradtool.run", "every": 10, "metadata": deep}
    path.write_text(json.dumps(header) + "\n" + conflict_run()[0].to_json() + "\n")
    run = read_run(path)
    assert run.header is not None and "metadata" not in run.header
    assert any("'metadata' nests deeper than 32 levels" in w for w in run.warnings)


# -- through the CLI: one Error line, one Hint line, exit 1 --------------------------------------


def assert_one_error(result: object, *fragments: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert [line.split(":")[0] for line in lines] == ["Error", "Hint"], lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""  # type: ignore[attr-defined]


def test_report_of_only_hostile_lines_is_one_error(runner: CliRunner, tmp_path: Path) -> None:
    nested = append(tmp_path / "nested.jsonl", "[" * 50_000 + "]" * 50_000)
    assert_one_error(invoke(runner, "report", nested), "not a gradtool run log")
    digits = append(tmp_path / "digits.jsonl", "1" * 5000)
    assert_one_error(invoke(runner, "report", digits), "not a gradtool run log")
    out_of_range = write_run(tmp_path / "range.jsonl", conflict_run())
    append(out_of_range, record_line(40, step="9" * 400))
    assert_one_error(invoke(runner, "report", out_of_range), "'step' should be an integer")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_report_dev_zero_ends_with_one_error(runner: CliRunner) -> None:
    assert_one_error(invoke(runner, "report", "/dev/zero"), "is larger than 1 GiB", "no line")


# -- several runs in one file --------------------------------------------------------------------


def run_records(run: str | None, steps: list[int], losses: tuple[str, ...] = ("a", "b")) -> list:
    records = [make_record(s, {name: unit(10 * k) for k, name in enumerate(losses)}) for s in steps]
    for r in records:
        r.run = run
    return records


def header(run: str | None) -> str:
    doc: dict[str, object] = {"schema_version": 1, "kind": "gradtool.run", "every": 10}
    if run is not None:
        doc["run"] = run
    return json.dumps(doc)


def test_the_last_run_is_read_and_the_earlier_ones_named(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    append(path, header(None), *[r.to_json() for r in run_records(None, [0, 10])])  # old gradtool
    append(path, header("aa11"), *[r.to_json() for r in run_records("aa11", [0, 10, 20])])
    append(path, header("bb22"), *[r.to_json() for r in run_records("bb22", [0], ("x",))])
    run = read_run(path)
    assert run.run_id == "bb22" and run.losses == ["x"] and run.sessions == 1
    assert [(r.label, r.records) for r in run.runs] == [("(no id)", 2), ("aa11", 3), ("bb22", 1)]
    (warning,) = run.warnings
    assert "holds 3 runs" in warning and "2 earlier run(s) left out ((no id), aa11)" in warning
    assert [r.step for r in read_run(path, run="aa11").records] == [0, 10, 20]
    assert [r.step for r in read_run(path, run="aa").records] == [0, 10, 20]  # a unique prefix
    assert read_run(path, run="#1").run_id is None and read_run(path, run=1).run_id is None
    assert read_run(path, run=-2).run_id == "aa11"
    assert read_run(path, run="aa11").warnings == []


@pytest.mark.parametrize("run", ["cc", "#4", "#0", 0, "#x"])
def test_a_run_not_in_the_file_is_an_error_listing_its_runs(tmp_path: Path, run: object) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    append(path, header("aa11"), *[r.to_json() for r in run_records("aa11", [0])])
    append(path, header("ab22"), *[r.to_json() for r in run_records("ab22", [0])])
    with pytest.raises(RunLogError, match=r"holds no run .*aa11 \(1 records\), ab22") as e:
        read_run(path, run=run)  # type: ignore[arg-type]
    assert e.value.option == "run"
    with pytest.raises(RunLogError, match="holds no run 'a'"):
        read_run(path, run="a")  # a prefix of both


def test_a_log_without_run_ids_reads_as_before(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    append(path, header(None), record_line(40))  # a resumed session of an old gradtool
    run = read_run(path)
    assert run.run_id is None and run.sessions == 2 and run.warnings == []
    assert [r.step for r in run.records] == [0, 10, 20, 30, 40]


def test_records_without_run_belong_to_the_header_above(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    append(path, header("aa11"), *[r.to_json() for r in run_records(None, [0, 10])])
    run = read_run(path)
    assert run.run_id == "aa11" and [r.run for r in run.records] == ["aa11", "aa11"]


def test_interleaved_runs_are_sorted_out_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    a, b = run_records("aa11", [0, 10, 20]), run_records("bb22", [0, 5, 10], ("x",))
    path.write_text("")
    append(path, header("aa11"), header("bb22"))
    for ra, rb in zip(a, b, strict=True):
        append(path, ra.to_json(), rb.to_json())
    run = read_run(path)
    assert run.run_id == "bb22" and [r.step for r in run.records] == [0, 5, 10]
    assert any("runs aa11, bb22 are interleaved" in w for w in run.warnings)
    assert [r.step for r in read_run(path, run="aa11").records] == [0, 10, 20]


def test_a_resumed_run_is_not_interleaving(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    a = run_records("aa11", [0, 10, 20])
    b = run_records("bb22", [0])
    append(path, header("aa11"), a[0].to_json(), header("bb22"), b[0].to_json())
    append(path, header("aa11"), a[1].to_json(), a[2].to_json())  # resumed by its id
    run = read_run(path)
    assert run.run_id == "aa11" and run.sessions == 2
    assert [r.step for r in run.records] == [0, 10, 20]
    assert not any("interleaved" in w for w in run.warnings)


def test_last_run_reads_the_id_of_the_last_valid_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    assert last_run(path) is None
    path.write_text("")
    append(path, header("aa11"), *[r.to_json() for r in run_records("aa11", [0])])
    append(path, header("bb22"))
    path.open("a").write('{"schema_version":1,"kind":"gradtool.record","run":"cc')  # torn
    found = last_run(path)
    assert found is not None and found.id == "bb22" and found.first_line == 3
    legacy = write_run(tmp_path / "old.jsonl", conflict_run())
    found = last_run(legacy)
    assert found is not None and found.id is None


def test_a_later_run_without_records_yet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("")
    append(path, header("aa11"), *[r.to_json() for r in run_records("aa11", [0, 10])])
    append(path, header("bb22"))  # a re-run that has not reached its first record
    run = read_run(path)
    assert run.run_id == "aa11"
    (warning,) = run.warnings
    assert "run bb22 (from line 4" in warning and "holds no record yet" in warning
    with pytest.raises(RunLogError, match=r"run bb22 of .* holds no record yet"):
        read_run(path, run="bb22")


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_document_given_as_a_run_log_is_named_as_such(
    tmp_path: Path, indent: int | None
) -> None:
    import json

    from _models import MULTITASK

    from gradtool.api import InspectRequest, run_gradfile

    doc = run_gradfile(InspectRequest(gradfile=MULTITASK)).to_json(indent=indent)
    path = tmp_path / "snapshot.json"
    path.write_text(doc + "\n")
    assert json.loads(doc)["command"] == "inspect"
    with pytest.raises(RunLogError, match=r"is a `gradtool inspect --json` document, not a run"):
        read_run(path)


def test_a_log_whose_only_record_is_unreadable_says_why(tmp_path: Path) -> None:
    from _models import ROOT

    header, record = (ROOT / "docs" / "runs" / "multitask.jsonl").read_text().splitlines()[:2]
    doc = json.loads(record)
    doc["step"] = 0
    line = json.dumps(doc).replace('"step": 0', '"step": ' + "9" * 5000, 1)
    path = tmp_path / "big.jsonl"
    path.write_text(header + "\n" + line + "\n")
    with pytest.raises(RunLogError, match="holds no readable record: line 2") as info:
        read_run(path)
    assert "more digits" in info.value.message
