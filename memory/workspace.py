"""The workspace: one folder that holds runs, the shared experiment cache and the vector memory.

Layout::

    WORKSPACE/
      workspace.json        format marker
      .lock                 held (flock) by the one writer
      runs/<run_id>/        run.json, claims.jsonl, experiments/<key>.{json,safetensors}, reports
      cache/experiments/    <key>.{json,safetensors}: every result ever computed here, by content hash
      chroma/               the embedded chromadb (unused when a chroma server URL is configured)

Where it is: ``--workspace`` if given, else ``$SLEUTH_WORKSPACE``, else ``./sleuth-workspace``.

One writer per workspace: a writer takes an exclusive ``flock`` on ``.lock`` (released by the
kernel when the process dies, even by SIGKILL, so a crash never leaves a stale lock); a second
writer polls for a bounded time (``--lock-timeout``, ``$SLEUTH_LOCK_TIMEOUT``, default 10 s) and
then fails with a message naming the holder. Readers (``sleuth runs``, ``sleuth memory search``)
take no lock. Several concurrent investigations should share a chroma server
(``--chroma-url``) and use one workspace each on shared storage.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from tools.atomic import atomic_write_json
from tools.errors import StorageError

DEFAULT_WORKSPACE = "sleuth-workspace"
WORKSPACE_ENV = "SLEUTH_WORKSPACE"
LOCK_TIMEOUT_ENV = "SLEUTH_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 10.0
FORMAT = 1


def resolve_workspace(path: str | os.PathLike | None = None) -> Path:
    """The workspace folder: the argument, else ``$SLEUTH_WORKSPACE``, else ``./sleuth-workspace``."""
    chosen = path if path not in (None, "") else os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
    return Path(chosen).expanduser().absolute()


def lock_timeout(value: float | None = None) -> float:
    if value is not None:
        return float(value)
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise StorageError(f"${LOCK_TIMEOUT_ENV} must be a number of seconds, not {raw!r}") from None


class Workspace:
    """An opened workspace folder. ``writer=True`` holds the lock until `close`."""

    def __init__(self, path: Path, *, writer: bool, lock_fd: int | None = None) -> None:
        self.path = path
        self.writer = writer
        self._lock_fd = lock_fd

    runs_dir = property(lambda self: self.path / "runs")
    cache_dir = property(lambda self: self.path / "cache" / "experiments")
    chroma_dir = property(lambda self: self.path / "chroma")

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, writer: bool = False,
             timeout: float | None = None, create: bool | None = None) -> "Workspace":
        """Open the workspace at ``path`` (see `resolve_workspace`).

        A writer creates the folder when its parent exists (``create`` defaults to ``writer``),
        checks it can write there by writing the format marker, and takes the lock. A reader
        needs an existing workspace.
        """
        root = resolve_workspace(path)
        create = writer if create is None else create
        try:
            return cls._open(root, writer=writer, timeout=timeout, create=create)
        except OSError as e:  # anything the checks below did not foresee (permissions on a parent...)
            raise StorageError(f"cannot open workspace {root}: {e.strerror or e}") from e

    @classmethod
    def _open(cls, root: Path, *, writer: bool, timeout: float | None, create: bool) -> "Workspace":
        if root.exists() and not root.is_dir():
            raise StorageError(f"workspace {root} is a file, not a folder")
        if not root.exists():
            if not create:
                raise StorageError(f"no workspace at {root}: nothing has run there yet "
                                   f"(pass --workspace or set ${WORKSPACE_ENV})")
            if not root.parent.is_dir():
                raise StorageError(f"cannot create workspace {root}: the folder {root.parent} does not exist")
            try:
                root.mkdir()
            except FileExistsError:
                pass
            except OSError as e:
                raise StorageError(f"cannot create workspace {root}: {e.strerror or e}") from e
        marker = root / "workspace.json"
        if marker.exists():
            try:
                fmt = json.loads(marker.read_text(encoding="utf-8")).get("format")
            except (OSError, ValueError, AttributeError) as e:
                raise StorageError(f"workspace marker {marker} is unreadable ({e}); "
                                   "is this a circuitsleuth workspace?") from e
            if fmt != FORMAT:
                raise StorageError(f"workspace {root} has format {fmt!r}; this circuitsleuth reads format {FORMAT}")
        elif any(p.name != ".lock" for p in root.iterdir()):  # never adopt someone's own folder
            raise StorageError(f"{root} is not a circuitsleuth workspace (no workspace.json) and is not empty; "
                               "choose an empty or new folder")
        if not writer:
            return cls(root, writer=False)
        fd = acquire_lock(root, lock_timeout(timeout))
        try:
            if not marker.exists():
                atomic_write_json(marker, {"format": FORMAT})
            for folder in (root / "runs", root / "cache" / "experiments"):
                folder.mkdir(parents=True, exist_ok=True)
            _probe_writable(root)
        except OSError as e:
            os.close(fd)
            raise StorageError(f"workspace {root} is not writable: {e.strerror or e}") from e
        except StorageError:
            os.close(fd)
            raise
        return cls(root, writer=True, lock_fd=fd)

    def require_writer(self) -> None:
        if not self.writer:
            raise StorageError(f"workspace {self.path} was opened read-only")

    def close(self) -> None:
        """Release the writer lock (idempotent)."""
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, writer={self.writer})"


def _probe_writable(root: Path) -> None:
    probe = root / f".probe-{os.getpid()}"
    probe.write_bytes(b"ok")
    probe.unlink()


def acquire_lock(root: Path, timeout: float, *, busy: Callable[[str], str] | None = None) -> int:
    """An exclusive flock on ``root/.lock``, waiting up to ``timeout`` seconds; the open
    descriptor (closing it releases the lock). The holder's note (pid, host, since) goes into
    the file for whoever waits next.

    Raises:
        StorageError: the folder is not writable, or another holder kept the lock past
            ``timeout`` (``busy(holder note)`` words the message; default: a workspace's).
    """
    lock_path = root / ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"workspace {root} is not writable: cannot open {lock_path}: {e.strerror or e}") from e
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _read_holder(lock_path)
                os.close(fd)
                raise StorageError(busy(holder) if busy is not None else (
                    f"workspace {root} is in use by another writer ({holder}); waited {timeout:g} s. "
                    f"Wait for it, use another --workspace, or share memory through a chroma server "
                    f"(--chroma-url) with one workspace per investigation")) from None
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.01)))
        except OSError as e:
            os.close(fd)
            raise StorageError(f"cannot lock workspace {root}: {e.strerror or e}") from e
    try:  # tell a waiting writer who holds the lock (best effort: the flock is what counts)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    except OSError:
        pass
    return fd


def _read_holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
