"""`--out` of train, study run, study analyze and data synth: checked before any work, and
locked while a command writes into it (issue 12, "Nothing lost or silently wrong").

The lock is held by a second, real process (`_Holder`); killing it with SIGKILL must free the
folder at once, since the OS drops an flock with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from attrimp import io as aio
from attrimp.cli import main
from tests.conftest import REPO

TINY_CONFIG = REPO / "studies" / "configs" / "synthetic_tiny.toml"
SYNTH = ["--identities", "4", "--cameras", "2", "--images-per-camera", "1", "--size", "64x32"]
FAST = ["--quick", "--no-progress", "--no-figures", "--repeats", "1", "--bootstrap", "0"]


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the real console entry point in this process: ``(exit code, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["attrimp", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 120
    hat = rng.integers(0, 2, n)
    df = pd.DataFrame(
        {"pid": np.repeat(np.arange(40), 3), "hat": hat, "bag": rng.integers(0, 2, n)}
    )
    df["ap"] = np.clip(0.4 + 0.3 * hat + rng.normal(0, 0.1, n), 0, 1)
    path = tmp_path_factory.mktemp("t") / "t.csv"
    df.to_csv(path, index=False)
    return path


class _Holder:
    """Another process that holds the lock of ``folder`` until it is killed."""

    def __init__(self, folder, *, replaced_whole: bool = False) -> None:
        code = (
            "import sys, time\n"
            "from attrimp.io import output_folder\n"
            f"cm = output_folder(sys.argv[1], replaced_whole={replaced_whole})\n"
            "cm.__enter__()\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def _commands(out, table):
    return {
        "train": ["train", TINY_CONFIG, "--out", out, "--no-progress"],
        "study run": ["study", "run", TINY_CONFIG, "--out", out, "--quiet"],
        "study analyze": [
            "study",
            "analyze",
            table,
            "-y",
            "ap",
            "--cluster",
            "pid",
            "--out",
            out,
            *FAST,
        ],
        "data synth": ["data", "synth", "--out", out, *SYNTH],
    }


@pytest.mark.parametrize("command", ["train", "study run", "study analyze", "data synth"])
def test_second_run_on_a_locked_out_stops_at_once(tmp_path, monkeypatch, capsys, table, command):
    out = tmp_path / "out"
    holder = _Holder(out, replaced_whole=command == "data synth")
    try:
        start = time.perf_counter()
        code, err = cli(monkeypatch, capsys, *_commands(out, table)[command])
        took = time.perf_counter() - start
    finally:
        holder.kill()
    assert code == 2, err
    assert f"is in use by another attrimp process (pid {holder.proc.pid})" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    # nothing was written: no config, no world, no report
    written = [p.name for p in out.glob("*") if p.name != aio.LOCK_FILE]
    assert written == [], written
    assert took < 30


def test_a_killed_holder_leaves_no_lock_behind(tmp_path, monkeypatch, capsys, table):
    """A stale lock (its process died with SIGKILL) never blocks: the OS released it."""
    world = tmp_path / "world"
    holder = _Holder(world, replaced_whole=True)
    holder.kill()
    code, err = cli(monkeypatch, capsys, "data", "synth", "--out", world, *SYNTH)
    assert code == 0, err
    assert (world / "synth.json").is_file()
    out = tmp_path / "report"
    holder = _Holder(out)
    holder.kill()
    code, err = cli(monkeypatch, capsys, *_commands(out, table)["study analyze"])
    assert code == 0, err
    assert (out / "report.json").is_file()
    # and the lock is free again after a normal end, in this same process
    with aio.output_folder(out):
        pass


def test_the_lock_excludes_within_one_process_too(tmp_path):
    busy = pytest.raises(aio.OutputFolderError, match="in use by another attrimp process")
    with aio.output_folder(tmp_path / "o"), busy, aio.output_folder(tmp_path / "o"):
        pass
    with aio.output_folder(tmp_path / "o"):  # released on exit
        pass


def test_ranks_other_than_0_take_no_lock(tmp_path, monkeypatch):
    with aio.run_output(tmp_path / "o"):
        monkeypatch.setenv("RANK", "1")
        with aio.run_output(tmp_path / "o"):  # rank 1 reads rank 0's folder, locks nothing
            pass


@pytest.mark.parametrize("command", ["train", "study run", "study analyze", "data synth"])
def test_out_that_is_a_file_is_one_sentence_before_any_work(
    tmp_path, monkeypatch, capsys, table, command
):
    out = tmp_path / "out"
    out.write_text("not a folder")
    code, err = cli(monkeypatch, capsys, *_commands(out, table)[command])
    assert code == 2, err
    assert "is a file, not a folder" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["train", "study run", "study analyze", "data synth"])
def test_unwritable_out_is_one_sentence_before_any_work(
    tmp_path, monkeypatch, capsys, table, command
):
    """A read-only folder. Tests may run as root, whom permission bits do not stop, so the
    probe write is made to fail as it would on a read-only mount; the battery, the training,
    the world generator must then never start."""

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(aio.tempfile, "mkstemp", read_only)
    import attrimp.data.synth
    import attrimp.train.pipeline
    import studies.battery

    monkeypatch.setattr(studies.battery, "run_battery", never)
    monkeypatch.setattr(attrimp.train.pipeline, "prepare_data", never)
    monkeypatch.setattr(attrimp.data.synth, "make_synthetic_world", never)
    out = tmp_path / "out"
    out.mkdir()
    code, err = cli(monkeypatch, capsys, *_commands(out, table)[command])
    assert code == 2, err
    assert "cannot be written into: Read-only file system" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_out_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(aio.OutputFolderError, match=r"cannot be created: Not a directory"):
        aio.check_writable_folder(tmp_path / "f" / "sub")


def test_atomic_write_leaves_old_or_new_never_a_mixture(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    aio.atomic_write_json(path, {"v": 1})

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aio.os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        aio.atomic_write_json(path, {"v": 2})
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "b").write_bytes(data)
    assert aio.sha256_file(tmp_path / "b") == hashlib.sha256(data).hexdigest()
