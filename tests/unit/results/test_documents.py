"""`write_atomic`: a regular file is replaced whole (never partial, mode kept), a symbolic link is
kept and its target replaced, and anything that is not a regular file (a device, a FIFO) is
written in place, never replaced or unlinked."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from gradtool.results import write_atomic

TEXT = '{"schema_version": 1}\n'
POSIX = pytest.mark.skipif(os.name != "posix", reason="needs POSIX devices, FIFOs and links")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_new_file_gets_the_text_and_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_atomic(path, TEXT)
    assert path.read_text(encoding="utf-8") == TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask()
    assert leftovers(tmp_path) == []


def test_a_relative_path_is_written_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_atomic(Path("out.json"), TEXT)
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == TEXT
    assert leftovers(tmp_path) == []


@POSIX
def test_an_existing_file_is_replaced_by_rename_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old and much longer than the new text\n" * 10, encoding="utf-8")
    path.chmod(0o640)
    before = path.stat().st_ino
    write_atomic(path, TEXT)
    assert path.read_text(encoding="utf-8") == TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != before  # a new file renamed over the old: never half-written
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_whole_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    path.write_bytes(b"earlier document\n")

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, TEXT)
    assert path.read_bytes() == b"earlier document\n"
    assert leftovers(tmp_path) == []


@POSIX
def test_a_symlink_to_a_file_is_kept_and_its_target_replaced(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "42.json"
    target.write_text("earlier\n", encoding="utf-8")
    target.chmod(0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(Path("runs") / "42.json")
    write_atomic(link, TEXT)
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "42.json")
    assert target.read_text(encoding="utf-8") == TEXT
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "runs") == []


@POSIX
def test_a_dangling_symlink_is_kept_and_its_target_created(tmp_path: Path) -> None:
    link = tmp_path / "latest.json"
    link.symlink_to("new.json")
    write_atomic(link, TEXT)
    assert link.is_symlink()
    assert (tmp_path / "new.json").read_text(encoding="utf-8") == TEXT


@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_dev_null_is_written_in_place_and_stays_a_character_device() -> None:
    write_atomic(Path("/dev/null"), TEXT)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@POSIX
def test_a_symlink_to_a_device_is_written_through_and_both_stay(tmp_path: Path) -> None:
    link = tmp_path / "sink.json"
    link.symlink_to("/dev/null")
    write_atomic(link, TEXT)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert leftovers(tmp_path) == []


@POSIX
def test_a_fifo_is_written_in_place_to_its_reader_and_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def write() -> None:  # opening a FIFO for writing waits for a reader, as `> fifo` does
        try:
            write_atomic(fifo, TEXT)
        except BaseException as exc:
            errors.append(exc)

    # The reader opens without blocking, so a write_atomic that wrongly replaced the FIFO
    # fails the test instead of hanging it.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    received = b""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                received += chunk
            elif chunk == b"" and not writer.is_alive():
                break  # end of file and the writer is done
            else:
                time.sleep(0.01)
    finally:
        os.close(reader)
    writer.join(timeout=10)
    assert not writer.is_alive() and errors == []
    assert received.decode("utf-8") == TEXT
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []
