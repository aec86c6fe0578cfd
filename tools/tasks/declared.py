"""Behaviours a model folder declares about itself (a planted organism's ``ground_truth.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from tools.tasks.base import TaskGenerator
from tools.tasks.trigger import TriggerTask


DECLARED_BEHAVIOURS = ("trigger",)
"""Behaviours a model folder may declare (their generators need the folder's ground truth)."""


def declared_tasks(model_dir: str | Path | None) -> dict[str, TaskGenerator]:
    """Extra task generators declared by ``model_dir/ground_truth.json`` (none if absent, or
    when ``model_dir`` is not a folder, e.g. a hub id: pass a loaded model's ``source`` as is)."""
    if model_dir is None or not Path(model_dir).is_dir():
        return {}
    path = Path(model_dir) / "ground_truth.json"
    if not path.is_file():
        return {}
    truth = json.loads(path.read_text())
    if truth.get("behaviour") == "trigger":
        return {"trigger": TriggerTask(truth["trigger"], truth["target"])}
    return {}
