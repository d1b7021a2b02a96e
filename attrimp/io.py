"""Files that are never half-written, hashes that catch a changed file, and output folders that
one process at a time writes into.

Torch-free, so `attrimp study analyze` and the studies layer can use it.

* **Atomic writes** — every writer puts its bytes under a temporary name in the same folder,
  flushes them to disk and moves them into place with ``os.replace``; a kill at any moment
  leaves either the old file or the new one, never a mixture.
* **Hashes** — `sha256_file` is the integrity check of every weight file a checkpoint records.
* **Output folders** — `output_folder` checks that ``--out`` can be written *before* any work
  and holds an exclusive lock on it while the command runs, so a second command pointed at the
  same folder stops at once with one sentence instead of mixing its files with the first's.
  A command that fails before writing anything there (a refused input) leaves no trace: the
  lock file and the folders it created are removed again.
  The lock is an OS file lock (``flock``), which the OS releases when its process ends, however
  it ends: a run killed with ``kill -9`` never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from attrimp.errors import AttrimpError

#: the lock file inside an output folder (or beside it, for a folder replaced as a whole)
LOCK_FILE = ".attrimp.lock"


class OutputFolderError(AttrimpError):
    """An output folder that cannot be written, or that another process is writing into."""


# ----------------------------------------------------------------------------- atomic writes
def tmp_name(path: Path) -> Path:
    """The temporary sibling a writer of ``path`` uses (hidden, unique to this process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, document: Any, *, indent: int = 2, **kwargs: Any) -> None:
    """``document`` as JSON with a final newline (``kwargs`` go to `json.dumps`)."""
    atomic_write_text(path, json.dumps(document, indent=indent, **kwargs) + "\n")


def atomic_write_frame(frame: Any, path: str | Path) -> None:
    """A pandas DataFrame as Parquet (a ``.parquet`` path) or CSV (any other), without its
    index, written atomically. CSV lines end in ``\\n`` on every platform, so the same table
    gives the same bytes everywhere."""
    path = Path(path)
    if path.suffix == ".parquet":
        with atomic_writer(path, "wb") as fh:
            frame.to_parquet(fh, index=False)
    else:
        with atomic_writer(path, "w", newline="") as fh:
            frame.to_csv(fh, index=False, lineterminator="\n")


@contextmanager
def atomic_writer(
    path: str | Path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """A file open for writing (``mode`` ``"w"`` or ``"wb"``) whose contents replace ``path``
    when the block ends without an error, for writers that stream (``csv.writer``, a download).

    The handle writes to `tmp_name` of ``path``; on success it is flushed to disk and moved into
    place with ``os.replace``; on any error (or a check in the block that raises) the temporary
    is deleted and ``path`` keeps its old contents.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer writes with mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    text = dict(encoding=encoding, newline=newline) if mode == "w" else {}
    try:
        with open(tmp, mode, **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """An empty temporary folder beside ``path`` to fill; when the block ends without an error
    it replaces ``path`` as a whole (a folder already there is moved aside first and then
    deleted), so a reader sees the old folder or the new one, never a half-written one. On an
    error the temporary folder is deleted and ``path`` is left as it was.

    The temporary is `tmp_name` of ``path`` (its name carries this process's id, which is how
    a cleaner of stale temporaries tells a dead writer's from a live one's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(src: Path, dst: Path) -> None:
    """Move the folder ``src`` to ``dst``, replacing a folder there: the old one is first renamed
    aside (``os.replace`` cannot replace a non-empty folder), then ``src`` renamed into place,
    then the old one deleted."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = tmp_name(dst.with_name(f"{dst.name}.old"))  # a temporary too, for stale cleaners
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the old folder back: never leave no folder at all
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- hashes
def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- output folders
def check_writable_folder(folder: str | Path, *, flag: str = "--out", create: bool = True) -> Path:
    """``folder`` as a folder this process can write into (created when ``create``), or one
    sentence saying why not. Checked by writing and deleting a probe file, because permission
    bits do not tell (root ignores them; a read-only mount or a full disk does not show)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(
            f"{flag} {str(folder)!r} is a file, not a folder; choose a folder to write into."
        )
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputFolderError(
                f"{flag} {str(folder)!r} cannot be created: {e.strerror or e}."
            ) from None
    _probe_write(folder, flag)
    return folder


def _probe_write(folder: Path, flag: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".attrimp-probe-", dir=folder)
    except OSError as e:
        raise OutputFolderError(
            f"{flag} {str(folder)!r} cannot be written into: {e.strerror or e}."
        ) from None
    os.close(fd)
    os.unlink(name)


@contextmanager
def output_folder(
    folder: str | Path, *, flag: str = "--out", replaced_whole: bool = False
) -> Iterator[Path]:
    """Check that ``folder`` can be written, then hold its lock until the block ends.

    ``replaced_whole``: the command publishes the folder by renaming a finished sibling over
    it (`attrimp data synth`), so the folder is not created here and its lock file lives
    beside it (``.<name>.attrimp.lock`` in the parent) instead of inside.
    """
    folder = Path(folder)
    if replaced_whole:
        if folder.exists() and not folder.is_dir():
            raise OutputFolderError(
                f"{flag} {str(folder)!r} is a file, not a folder; choose a folder to write into."
            )
        parent = folder.parent
        created = _missing_folders(parent)
        check_writable_folder(parent, flag=f"the folder of {flag}")
        lock_path = parent / f".{folder.name}{LOCK_FILE}"
    else:
        created = _missing_folders(folder)
        check_writable_folder(folder, flag=flag)
        lock_path = folder / LOCK_FILE
    new_lock = not lock_path.exists()
    with folder_lock(lock_path, folder, flag=flag):
        try:
            yield folder
        except BaseException:
            # still under the lock, so no second command can have started writing here
            _remove_if_untouched(lock_path if new_lock else None, created)
            raise


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that creating ``folder`` would create, deepest first."""
    missing: list[Path] = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_if_untouched(lock_path: Path | None, created: list[Path]) -> None:
    """After a command failed: remove the lock file it created and, deepest first, the folders
    it created that are now empty, so a refused input (a missing table, a bad config) leaves
    no ``--out`` holding only ``.attrimp.lock``. A folder with anything else in it is kept:
    what a failed run did write is the user's to inspect (and ``--resume`` may reuse it)."""
    if lock_path is not None:
        try:
            lock_path.unlink()
        except OSError:  # Windows cannot delete an open file; the lock stays, harmlessly
            return
    for p in created:
        try:
            p.rmdir()
        except OSError:  # not empty (or not ours any more): keep it and everything above
            return


@contextmanager
def folder_lock(lock_path: Path, folder: Path, *, flag: str = "--out") -> Iterator[None]:
    """An exclusive, non-blocking OS lock on ``lock_path``; a second holder gets one sentence."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputFolderError(
            f"{flag} {str(folder)!r} cannot be locked ({str(lock_path)!r}: {e.strerror or e})."
        ) from None
    try:
        if not _try_lock(fd):
            holder = _read_holder(fd)
            raise OutputFolderError(
                f"{flag} {str(folder)!r} is in use by another attrimp process{holder}; wait "
                f"for it to finish or choose another {flag}."
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def is_main_process() -> bool:
    """Whether this process writes the outputs: a plain process, or rank 0 under ``torchrun``."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def run_output(
    folder: str | Path, *, flag: str = "--out", replaced_whole: bool = False
) -> Iterator[Path]:
    """`output_folder` on the process that writes (rank 0 under ``torchrun``); the other ranks
    only read what rank 0 wrote and take no lock."""
    if not is_main_process():
        yield Path(folder)
        return
    with output_folder(folder, flag=flag, replaced_whole=replaced_whole) as out:
        yield out
