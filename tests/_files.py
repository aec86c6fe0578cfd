"""What a folder stores, for tests that check nothing stored was lost or changed."""

from __future__ import annotations

from pathlib import Path


def stored_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes), the ``.lock`` files aside: they hold
    only a note of who last held the lock, rewritten by every writer."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}
