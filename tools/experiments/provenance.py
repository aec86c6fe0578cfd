"""Where a result came from: the model (id and weights hash), the seed, the software versions."""

from __future__ import annotations

import functools
import importlib.metadata
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from tools.loading import LoadedModel

PACKAGES = ("torch", "nnsight", "transformers", "circuitsleuth")


class Provenance(BaseModel):
    """Enough to tell whether two results are comparable, and to rerun one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    """The model's name as loaded (``"organism-default"``, a path, a Hub id)."""
    weights_hash: str
    """sha256 of the loaded state dict (`tools.loading.hash_state_dict`)."""
    seed: int | None
    """The seed that generated the prompts (``None`` for explicit prompt lists)."""
    versions: dict[str, str]
    """Installed versions of torch, nnsight, transformers and circuitsleuth (``"unknown"`` when
    a package has no metadata, e.g. a source checkout that was never pip-installed)."""
    device: str
    """Where the model ran (``"cpu"``, ``"cuda:0"``)."""
    dtype: str
    """The weights' dtype (``"float32"``)."""


def provenance_for(model: "LoadedModel", seed: int | None) -> Provenance:
    """The provenance of an experiment run on ``model`` with prompts from ``seed``."""
    return Provenance(
        model_id=model.model_id,
        weights_hash=model.weights_hash,
        seed=seed,
        versions=package_versions(),
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
    )


def package_versions() -> dict[str, str]:
    """``{package: version}`` for `PACKAGES` (read once per process)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions
