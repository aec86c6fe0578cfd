"""Every experiment kind in one place: the spec union, dispatch, and loading saved results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Union

from pydantic import Field, TypeAdapter

from tools.errors import SpecError
from tools.experiments.ablation import AblationResult, AblationSpec, run_ablation
from tools.experiments.activation_patching import (
    ActivationPatchingResult,
    ActivationPatchingSpec,
    run_activation_patching,
)
from tools.experiments.attention import (
    AttentionPatternResult,
    AttentionPatternSpec,
    run_attention_patterns,
)
from tools.experiments.attribution_patching import (
    AttributionPatchingResult,
    AttributionPatchingSpec,
    run_attribution_patching,
)
from tools.experiments.behaviour import BehaviourExperimentSpec, BehaviourResult, run_behaviour
from tools.experiments.cross_model_patching import (
    CrossModelPatchingResult,
    CrossModelPatchingSpec,
    run_cross_model_patching,
)
from tools.experiments.direct_logit_attribution import (
    DirectLogitAttributionResult,
    DirectLogitAttributionSpec,
    run_direct_logit_attribution,
)
from tools.experiments.logit_lens import LogitLensResult, LogitLensSpec, run_logit_lens
from tools.experiments.neurons import NeuronActivationResult, NeuronActivationSpec, run_neuron_activations
from tools.experiments.path_patching import PathPatchingResult, PathPatchingSpec, run_path_patching
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec
from tools.experiments.steering import SteeringResult, SteeringSpec, run_steering

if TYPE_CHECKING:
    from tools.loading import LoadedModel

AnyExperimentSpec = Annotated[
    Union[
        BehaviourExperimentSpec, LogitLensSpec, DirectLogitAttributionSpec, ActivationPatchingSpec,
        AttributionPatchingSpec, PathPatchingSpec, AblationSpec, SteeringSpec, AttentionPatternSpec,
        NeuronActivationSpec,
    ],
    Field(discriminator="kind"),
]
"""Any experiment spec, told apart by ``kind`` (use with pydantic or `parse_spec`)."""

_SPEC_ADAPTER: TypeAdapter = TypeAdapter(AnyExperimentSpec)

EXPERIMENTS: dict[str, tuple[type[ExperimentSpec], type[ExperimentResult], Callable[..., Any]]] = {
    "behaviour": (BehaviourExperimentSpec, BehaviourResult, run_behaviour),
    "logit_lens": (LogitLensSpec, LogitLensResult, run_logit_lens),
    "direct_logit_attribution": (DirectLogitAttributionSpec, DirectLogitAttributionResult,
                                 run_direct_logit_attribution),
    "activation_patching": (ActivationPatchingSpec, ActivationPatchingResult,
                            run_activation_patching),
    "attribution_patching": (AttributionPatchingSpec, AttributionPatchingResult,
                             run_attribution_patching),
    "path_patching": (PathPatchingSpec, PathPatchingResult, run_path_patching),
    "ablation": (AblationSpec, AblationResult, run_ablation),
    "steering": (SteeringSpec, SteeringResult, run_steering),
    "attention_patterns": (AttentionPatternSpec, AttentionPatternResult, run_attention_patterns),
    "neuron_activations": (NeuronActivationSpec, NeuronActivationResult, run_neuron_activations),
}
"""kind -> (spec class, result class, run function)."""

TWO_MODEL_EXPERIMENTS: dict[str, tuple[type[ExperimentSpec], type[ExperimentResult], Callable[..., Any]]] = {
    "cross_model_patching": (CrossModelPatchingSpec, CrossModelPatchingResult, run_cross_model_patching),
}
"""Experiments on two models (``run(model, source, spec)``): stored and loaded like the others,
but not offered to `parse_spec` / `run_experiment`, whose callers hold one model."""


def parse_spec(data: str | bytes | dict) -> ExperimentSpec:
    """A spec from JSON text or a dict, its class chosen by ``kind``.

    Raises:
        SpecError: for an unknown kind (other mistakes raise `SpecError` or pydantic's
            ``ValidationError``, which names the field).
    """
    raw = json.loads(data) if isinstance(data, (str, bytes)) else data
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in EXPERIMENTS:
        raise SpecError("kind", f"unknown experiment kind {kind!r}; use one of {', '.join(EXPERIMENTS)}")
    return _SPEC_ADAPTER.validate_python(raw)


def run_experiment(model: "LoadedModel", spec: ExperimentSpec, **options: Any) -> ExperimentResult:
    """Run any spec with its kind's ``run_*`` function (``options``: e.g. ``batch_size``)."""
    if spec.kind not in EXPERIMENTS:
        raise SpecError("kind", f"unknown experiment kind {spec.kind!r}; use one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[spec.kind][2](model, spec, **options)


def load_result(path: str | os.PathLike) -> ExperimentResult:
    """Read any saved result (its JSON path), its class chosen by the embedded spec's kind."""
    kind = json.loads(Path(path).read_text(encoding="utf-8"))["spec"]["kind"]
    entry = EXPERIMENTS.get(kind) or TWO_MODEL_EXPERIMENTS.get(kind)
    if entry is None:
        raise SpecError("kind", f"{path}: unknown experiment kind {kind!r}")
    return entry[1].load(path)
