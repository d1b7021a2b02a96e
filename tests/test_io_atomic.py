"""attrimp.io's streaming writer and folder writer: the new file or folder appears whole or not
at all, and a failure leaves neither a temporary behind nor the old contents changed."""

from __future__ import annotations

import csv
import os

import pytest

from attrimp.io import atomic_folder, atomic_writer, replace_folder


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_writer_streams_text_and_bytes(tmp_path):
    with atomic_writer(tmp_path / "a.csv", newline="") as fh:
        csv.writer(fh).writerows([["x", "y"], [1, "é"]])
    assert (tmp_path / "a.csv").read_bytes() == "x,y\r\n1,é\r\n".encode()
    with atomic_writer(tmp_path / "sub" / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert hidden(tmp_path) == [] and hidden(tmp_path / "sub") == []


def test_atomic_writer_keeps_the_old_file_and_no_temporary_on_an_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk gone"), atomic_writer(path) as fh:
        fh.write("half of the new")
        assert hidden(tmp_path) != []  # the bytes go to a temporary, not to path
        raise RuntimeError("disk gone")
    assert path.read_text() == "old\n"
    assert hidden(tmp_path) == []


def test_atomic_writer_refuses_append_and_read_modes(tmp_path):
    with pytest.raises(ValueError, match="'a'"), atomic_writer(tmp_path / "x", "a"):
        pass


def test_atomic_folder_publishes_a_whole_folder_and_replaces_an_old_one(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        assert tmp != target and not target.exists()
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("2")
        assert (target / "a").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert hidden(tmp_path) == []


def test_atomic_folder_leaves_the_old_folder_and_no_temporary_on_an_error(tmp_path):
    target = tmp_path / "world"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "new").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old"]
    assert hidden(tmp_path) == []


def test_replace_folder_puts_the_old_folder_back_when_the_move_fails(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (dst / "old").write_text("kept")
    real = os.replace
    calls = []

    def failing_second_move(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(os, "replace", failing_second_move)
    with pytest.raises(OSError, match="No space"):
        replace_folder(src, dst)
    assert [p.name for p in dst.iterdir()] == ["old"] and src.is_dir()
