"""Reading run logs: a crash's damage is skipped with a warning, another schema is an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _runlog_samples import conflict_run, make_record, unit, write_run

from gradtool.errors import RunLogError
from gradtool.results.runlog import Record, read_run


def test_records_round_trip_through_json() -> None:
    record = make_record(
        7,
        {"a": unit(0), "b": unit(100)},
        layers={"x": {"a": [1.0], "b": [2.0]}},
        pareto={"a": 0.4, "b": 0.6},
    )
    back = Record.from_dict(json.loads(record.to_json()))
    assert back == record


def test_a_whole_run_reads_back_in_step_order_with_its_header(tmp_path: Path) -> None:
    run = read_run(write_run(tmp_path / "run.jsonl", conflict_run()))
    assert [r.step for r in run.records] == [0, 10, 20, 30]
    assert run.header is not None and run.header["every"] == 10
    assert run.sessions == 1
    assert run.warnings == []
    assert run.losses == ["a", "b"]
    assert [r.line for r in run.records] == [2, 3, 4, 5]


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    whole = conflict_run()[0]
    whole.step = 40
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(whole.to_json()[:57])  # killed mid-write: no closing brace, no newline
    run = read_run(path)
    assert [r.step for r in run.records] == [0, 10, 20, 30]
    (warning,) = run.warnings
    assert "line 6" in warning and "truncated" in warning


def test_an_invalid_line_in_the_middle_is_skipped_with_its_line_number(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, '{"schema_version": 1, "kind": "gradtool.rec')  # an old crash, then resumed
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = read_run(path)
    assert len(run.records) == 4
    (warning,) = run.warnings
    assert "line 4" in warning and "not valid JSON" in warning


def test_another_schema_version_is_a_clear_error(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    doc = json.loads(conflict_run()[0].to_json())
    doc["schema_version"] = 2
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc) + "\n")
    with pytest.raises(
        RunLogError, match=r"schema_version 2 \(line 6\); this gradtool reads 1"
    ) as e:
        read_run(path)
    assert "upgrade gradtool" in (e.value.hint or "")


def test_a_header_of_another_schema_version_is_an_error_too(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"schema_version": 0, "kind": "gradtool.run"}) + "\n", "utf-8")
    with pytest.raises(RunLogError, match="schema_version 0"):
        read_run(path)


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RunLogError, match="is empty"):
        read_run(path)


def test_a_header_without_records_is_a_clear_error(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", [])
    with pytest.raises(RunLogError, match="no record yet") as e:
        read_run(path)
    assert "every" in (e.value.hint or "")


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RunLogError, match="does not exist") as e:
        read_run(tmp_path / "nope.jsonl")
    assert e.value.exit_code == 1
    with pytest.raises(RunLogError, match="is a directory"):
        read_run(tmp_path)


def test_an_inspect_json_document_is_named_as_not_a_run_log(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"schema_version": 1, "command": "inspect"}, indent=2), "utf-8")
    with pytest.raises(RunLogError, match=r"`gradtool inspect --json` document, not a run log"):
        read_run(path)


def test_a_file_of_other_text_is_not_a_run_log(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(RunLogError, match="not a gradtool run log"):
        read_run(path)


def test_records_with_different_losses_are_an_error_naming_the_lines(tmp_path: Path) -> None:
    records = [*conflict_run(), make_record(40, {"a": unit(0), "c": unit(10)})]
    with pytest.raises(RunLogError, match=r"line 6 has losses \['a', 'c'\] but line 2"):
        read_run(write_run(tmp_path / "run.jsonl", records))


def test_a_repeated_step_keeps_the_later_record_with_a_warning(tmp_path: Path) -> None:
    records = conflict_run()
    again = make_record(10, {"a": unit(0), "b": unit(0)})  # resumed from a checkpoint at step 10
    run = read_run(write_run(tmp_path / "run.jsonl", [*records, again]))
    assert [r.step for r in run.records] == [0, 10, 20, 30]
    assert run.records[1].dot == again.dot
    assert any("repeat an earlier step" in w for w in run.warnings)


def test_a_malformed_record_names_its_line_and_field(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run()[:1])
    doc = json.loads(conflict_run()[0].to_json())
    doc["dot"] = [[1.0]]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc) + "\n")
    with pytest.raises(RunLogError, match=r"line 3: 'dot' should be a 2 x 2 matrix"):
        read_run(path)


def test_lines_of_another_kind_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.jsonl", conflict_run())
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": "epoch", "epoch": 1}) + "\n")
    run = read_run(path)
    assert len(run.records) == 4
    assert any("line 6" in w and "not a gradtool run-log line" in w for w in run.warnings)
