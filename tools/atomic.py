"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every write goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over the final name (``os.replace`` is atomic on POSIX filesystems); the folder is fsynced so
the rename itself survives a power cut. A failure at any step removes the temporary file,
leaves the previous version in place and raises `StorageError` naming the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tools.errors import StorageError

TEMP_SUFFIX = ".partial"
"""Suffix of in-flight temporary files; readers ignore them and writers may delete stale ones."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; return the path."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as e:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(f"could not write {path}: {e.strerror or e}") from e
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def fsync_directory(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
