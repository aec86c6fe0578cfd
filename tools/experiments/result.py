"""The base of every experiment result: spec + provenance + small numbers, tensors beside.

A ``run_*`` function is pure: it returns its result with the large arrays held in memory
in ``tensors`` (excluded from the JSON). Persisting is a separate step at the edge::

    result = run_activation_patching(model, spec)      # no I/O
    path = result.save("runs/abc")                       # <key>.json + <key>.safetensors
    again = ActivationPatchingResult.load(path)          # or tools.experiments.load_result

``key`` is the content address of the experiment (sha256 of weights hash and spec JSON),
so the same experiment on the same weights always lands on the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.experiments.provenance import Provenance
from tools.experiments.spec import ExperimentSpec


class ExperimentResult(BaseModel):
    """Fields every result has; subclasses narrow ``spec`` and add their summary numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    spec: ExperimentSpec
    """The spec that produced this result (subclasses narrow the type)."""
    provenance: Provenance
    """The model, seed and software versions it ran with."""
    tensor_shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    """Name -> shape of every array in ``tensors`` (kept in the JSON, so readers know what the
    tensor file holds without opening it). Each result class documents its names and axes."""
    tensor_file: str | None = None
    """File name (beside the JSON) of the saved tensors; None until `save`."""
    tensors: dict[str, torch.Tensor] = Field(default_factory=dict, exclude=True, repr=False)
    """The arrays themselves, in memory (CPU). Not serialised: `save` writes them to
    ``<key>.safetensors``."""

    @model_validator(mode="before")
    @classmethod
    def _describe_tensors(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tensors") and "tensor_shapes" not in data:
            data = dict(data, tensor_shapes={k: tuple(v.shape) for k, v in data["tensors"].items()})
        return data

    @property
    def key(self) -> str:
        """Content address: sha256 of the weights hash and the spec's JSON."""
        return self.spec.cache_key(self.provenance.weights_hash)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<key>.safetensors`` and ``<key>.json`` into ``directory``; return the JSON path.

        Each file is written atomically and fsynced (`tools.atomic`), tensors first: the JSON is
        the commit record, so a killed process leaves either a complete result or no JSON at all.
        """
        from safetensors.torch import save as tensors_to_bytes

        from tools.atomic import atomic_write_bytes, atomic_write_text

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensor_name = f"{self.key}.safetensors"
        atomic_write_bytes(folder / tensor_name, tensors_to_bytes(
            {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}))
        stored = self.model_copy(update={"tensor_file": tensor_name})
        return atomic_write_text(folder / f"{self.key}.json", stored.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        """Read a result written by `save` (its JSON path), with its tensors."""
        from safetensors.torch import load_file

        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        tensors = load_file(path.parent / data["tensor_file"]) if data.get("tensor_file") else {}
        return cls.model_validate({**data, "tensors": tensors})

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self.model_dump(exclude={"tensor_file"}) != other.model_dump(exclude={"tensor_file"}):
            return False
        mine, theirs = self.tensors, other.tensors
        return mine.keys() == theirs.keys() and all(
            mine[k].shape == theirs[k].shape and mine[k].dtype == theirs[k].dtype
            and torch.equal(mine[k].isnan(), theirs[k].isnan())
            and torch.equal(mine[k].nan_to_num(0.0), theirs[k].nan_to_num(0.0)) for k in mine
        )

    __hash__ = None  # type: ignore[assignment]
