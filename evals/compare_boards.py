"""Two scoreboards (``sleuth eval --json`` or ``scoreboard.json``) compared field by field.

Everything is compared except what differs between two runs of the same eval by construction:
run ids, wall times, workspace paths, the eval's timestamps, and the question file's path and
``--seed-shift`` (the questions, seeds included, are compared one by one). Used to
check that a change leaves every score as it was, or that a killed and resumed eval scores what
an uninterrupted one does::

    python -m evals.compare_boards A.json B.json [--json]

Exit code 0 when every compared field is equal, 1 when some differ, 2 for a file that cannot be
read as a scoreboard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RUN_DEPENDENT = frozenset({"run_id", "wall_s", "workspace", "questions_file", "created_at", "resumed_at",
                           "seed_shift"})
"""Fields that differ between two runs of one eval whatever the scores (skipped at every depth); the
question file's path and ``seed_shift`` say how the questions were given, and the questions
themselves (their text, key and seeds) are compared one by one."""


def compare(a: Any, b: Any, path: str = "") -> tuple[int, list[tuple[str, Any, Any]]]:
    """(fields compared, [(path, a's value, b's value)] for those that differ). Lists of unequal
    length and values of different shapes count as one differing field."""
    if isinstance(a, dict) and isinstance(b, dict):
        compared, differ = 0, []
        for k in sorted(set(a) | set(b)):
            if k not in RUN_DEPENDENT:
                n, d = compare(a.get(k), b.get(k), f"{path}.{k}" if path else k)
                compared, differ = compared + n, differ + d
        return compared, differ
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        compared, differ = 0, []
        for i, (x, y) in enumerate(zip(a, b)):
            n, d = compare(x, y, f"{path}[{i}]")
            compared, differ = compared + n, differ + d
        return compared, differ
    return 1, ([] if a == b else [(path, a, b)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.compare_boards", description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    boards = []
    for path in (args.a, args.b):
        try:
            board = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"compare_boards: error: {path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
            return 2
        if not isinstance(board, dict) or not {"questions", "summary"} <= set(board):
            print(f"compare_boards: error: {path}: not a scoreboard (no questions and summary)", file=sys.stderr)
            return 2
        boards.append(board)
    compared, differ = compare(*boards)
    if args.json:
        print(json.dumps({"compared": compared, "differ": [{"field": p, "a": x, "b": y} for p, x, y in differ]}))
    else:
        print(f"{compared} fields compared, {len(differ)} differ")
        for p, x, y in differ:
            print(f"  {p}: {x!r} -> {y!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
