"""Cache directory and crash-safe file writing helpers.

Downloaded archives and derived files live under one cache directory so that
they can be shared between runs and wiped in one go. Every write goes through
a temporary file in the destination folder followed by :func:`os.replace`, so
a crash or an exception half-way through never leaves a truncated file where a
good one used to be.

Example:
    >>> from polyrec.data.cache import cache_dir, atomic_write_bytes
    >>> target = atomic_write_bytes(cache_dir() / "notes.txt", b"hello")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Union

__all__ = [
    "ABANDONED_AFTER_S",
    "CACHE_ENV_VAR",
    "atomic_write",
    "atomic_write_bytes",
    "cache_dir",
    "remove_abandoned",
    "sha256_file",
    "temp_prefix",
]

#: Environment variable that overrides the default cache location.
CACHE_ENV_VAR = "POLYREC_CACHE"

PathLike = Union[str, "os.PathLike[str]"]


def cache_dir() -> Path:
    """Return the polyrec cache directory, creating it if needed.

    The location is ``$POLYREC_CACHE`` when that variable is set to a
    non-empty value, otherwise ``~/.cache/polyrec``.

    Returns:
        Absolute path of an existing directory.

    Raises:
        OSError: if the directory cannot be created (the message names the
            path and how to point polyrec somewhere writable).

    Example:
        >>> import os
        >>> os.environ["POLYREC_CACHE"] = "/tmp/polyrec-cache"
        >>> str(cache_dir())
        '/tmp/polyrec-cache'
    """
    override = os.environ.get(CACHE_ENV_VAR, "").strip()
    root = Path(override).expanduser() if override else Path.home() / ".cache" / "polyrec"
    root = root.absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"cannot create the polyrec cache directory {str(root)!r}: {exc}. "
            f"Set the environment variable {CACHE_ENV_VAR} to a writable folder."
        ) from exc
    if not root.is_dir():
        raise NotADirectoryError(
            f"polyrec cache path {str(root)!r} exists but is not a directory; "
            f"remove it or set {CACHE_ENV_VAR} to another folder."
        )
    return root


# ----------------------------------------------------------------------------- temporary names

#: A temporary file or folder older than this is abandoned whoever wrote it: no write takes hours, and
#: a pid cannot be checked from another machine (a shared cache) or on Windows.
ABANDONED_AFTER_S = 6 * 3600

# ``.tmp-<pid>-<host>-<random>`` (or ``.old-``): the writer's pid and host are in the name.
_TEMP_NAME = re.compile(r"^\.(?:tmp|old)-(\d+)-([A-Za-z0-9._]*)-")


def _host_tag() -> str:
    # Only characters that cannot be confused with the name's separators.
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40]


def temp_prefix(kind: str = "tmp") -> str:
    """Prefix of a temporary name that records which process wrote it: ``.{kind}-{pid}-{host}-``.

    A writer killed part-way (``kill -9``, power loss) cannot clean up after itself; the pid in the name
    lets :func:`remove_abandoned` tell its leftovers from the files of a writer still at work.

    Args:
        kind: ``tmp`` (a file or folder being written) or ``old`` (an entry being replaced).
    """
    if kind not in ("tmp", "old"):
        raise ValueError(f"temp_prefix: kind must be 'tmp' or 'old', got {kind!r}")
    return f".{kind}-{os.getpid()}-{_host_tag()}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def remove_abandoned(folder: PathLike, max_age_s: float = ABANDONED_AFTER_S) -> list[Path]:
    """Delete the temporary files and folders (``.tmp-*``, ``.old-*``) that dead writers left in ``folder``.

    One is abandoned when its name records a process of this machine that no longer runs, or when it is
    older than ``max_age_s`` (names without a pid, written by older versions, other machines sharing the
    cache, and pids reused by a new process). Temporaries of live writers are kept.

    Args:
        folder: the folder to clean (a missing folder is nothing to clean).
        max_age_s: age (seconds since the last change) after which any temporary is abandoned.

    Returns:
        The paths removed.
    """
    root = Path(folder)
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    host, now, removed = _host_tag(), time.time(), []
    for path in entries:
        if not path.name.startswith((".tmp-", ".old-")):
            continue
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:  # its writer finished (or cleaned up) meanwhile
            continue
        match = _TEMP_NAME.match(path.name)
        # os.kill(pid, 0) on Windows would terminate the process: there, only the age counts.
        dead = match is not None and match.group(2) == host and os.name != "nt" and not _pid_alive(int(match.group(1)))
        if not (dead or age > max_age_s):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------ atomic writes


def _fsync_path(path: Path) -> None:
    # Flush file contents to disk before the rename so that a power loss
    # cannot leave the new name pointing at an empty inode.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> Path:
    # The temporary file must live in the same directory as the target:
    # os.replace is only atomic within one filesystem. Keeping the target's
    # name as the suffix preserves its extension, which writers such as
    # DataFrame.to_csv use to pick a compression codec.
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix("tmp"), suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: PathLike, writer_fn: Callable[[Path], object]) -> Path:
    """Write a file atomically through a callback.

    ``writer_fn`` receives a temporary path next to ``path`` and must write the
    complete file there. Only if it returns normally is the temporary file
    renamed over ``path``; if it raises, the temporary file is removed, the
    exception propagates and any previous ``path`` is left untouched.

    Args:
        path: Final destination. Its parent directory is created if missing.
        writer_fn: Callable taking the temporary :class:`~pathlib.Path` to
            write to. Its return value is ignored.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: if ``writer_fn`` returned without leaving a file at
            the temporary path.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"a": [1, 2]})
        >>> atomic_write("/tmp/a.parquet", lambda tmp: df.to_parquet(tmp))  # doctest: +SKIP
        PosixPath('/tmp/a.parquet')
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target)
    try:
        writer_fn(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(
                f"atomic_write: writer_fn returned without writing the temporary file {str(tmp)!r}; "
                f"it must write the full contents of {str(target)!r} to the path it is given."
            )
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        # Also on KeyboardInterrupt: never leave stray temporaries behind.
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``.

    Args:
        path: Destination file. Its parent directory is created if missing.
        data: Complete new contents.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> atomic_write_bytes("/tmp/hello.txt", b"hi")  # doctest: +SKIP
        PosixPath('/tmp/hello.txt')
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"atomic_write_bytes: data must be bytes, got {type(data).__name__}; "
            "encode text first, e.g. text.encode('utf-8')."
        )

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks.

    Args:
        path: File to hash.
        chunk_size: Bytes read per step; bounds memory use for large files.

    Returns:
        Lower-case 64-character hex digest.

    Raises:
        FileNotFoundError: if ``path`` does not exist.

    Example:
        >>> sha256_file("/tmp/hello.txt")  # doctest: +SKIP
        '8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4'
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sha256_file: no such file {str(p)!r}")
    digest = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
