"""Small file helpers shared by checkpoints, exports and downloads."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once it is completely written and synced.

    The data goes to a temporary file beside ``path`` (``.<name>.<pid>.<random>.tmp``), which is
    fsynced and renamed over it, so a crash or an error mid-write leaves the previous file (or none)
    and never a truncated one. A process killed mid-write leaves its temporary file behind: the next
    write of the same ``path`` removes it (`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would surprise whoever shares the file
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss only once the folder is synced
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STALE_SECONDS = 24 * 3600  # a temporary file without a writer's pid is stale after this long


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files an interrupted `atomic_writer` of ``path`` left: those of
    ``.<name>.<pid>.*.tmp`` whose pid no longer runs (a live writer's file is never touched), and
    pid-less ``.<name>.*.tmp`` ones older than `STALE_SECONDS`. Only this target's own temporaries
    match, so other files in the folder are safe. Returns what was removed."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        middle = tmp.name[len(path.name) + 2:-len(".tmp")]
        pid_text = middle.split(".", 1)[0]
        try:
            if pid_text.isdigit() and "." in middle:
                stale = int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_SECONDS
            if stale and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters quoted (a file may be called ``run[1].pt``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a folder that cannot be opened for reading: nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class OutputError(ValueError):
    """An output path a command must not write: it exists (without --force), it is one of the
    command's inputs, or it cannot be written."""


def check_output(path: str | Path, *, inputs: tuple[str | Path | None, ...] = (), force: bool = False,
                 flag: str = "--force") -> Path:
    """The one rule for every file a command writes, checked before any work is done: never one of
    the command's own ``inputs`` (even with ``force``), never an existing file without ``force``,
    never a folder, and its folder must accept a new file (probed with a temporary file)."""
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise OutputError(f"{path} is also an input of this command; write the output elsewhere")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    if path.exists() and not force:
        raise OutputError(f"{path} exists; pass {flag} to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
