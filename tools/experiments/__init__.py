"""Experiments on nnsight: typed specs in, typed results out, pure ``run_*`` functions.

Every spec is a frozen pydantic model discriminated by ``kind``; `AnyExperimentSpec`
parses any of them from JSON, and `run_experiment` dispatches on the kind. Results embed
their spec and `Provenance`, hold their large arrays in ``tensors`` (not serialised) and
write them beside their JSON with ``save``; `load_result` reads any of them back.

==========================  ==========================================  ==============================
kind                        spec                                        run function
==========================  ==========================================  ==============================
``behaviour``               `BehaviourExperimentSpec`                   `run_behaviour`
``logit_lens``              `LogitLensSpec`                             `run_logit_lens`
``direct_logit_attribution`` `DirectLogitAttributionSpec`               `run_direct_logit_attribution`
``activation_patching``     `ActivationPatchingSpec`                    `run_activation_patching`
``attribution_patching``    `AttributionPatchingSpec`                   `run_attribution_patching`
``path_patching``           `PathPatchingSpec`                          `run_path_patching`
``ablation``                `AblationSpec`                              `run_ablation`
``steering``                `SteeringSpec`                              `run_steering`
``attention_patterns``      `AttentionPatternSpec`                      `run_attention_patterns`
``neuron_activations``      `NeuronActivationSpec`                      `run_neuron_activations`
``cross_model_patching``    `CrossModelPatchingSpec` (two models)       `run_cross_model_patching`
==========================  ==========================================  ==============================
"""

from tools.experiments.activation_patching import (
    ActivationPatchingResult,
    ActivationPatchingSpec,
    PatchSweep,
    run_activation_patching,
)
from tools.experiments.ablation import AblationResult, AblationSpec, run_ablation
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
from tools.experiments.neurons import (
    NeuronActivationResult,
    NeuronActivationSpec,
    run_neuron_activations,
)
from tools.experiments.path_patching import (
    PathPatchingResult,
    PathPatchingSpec,
    PathReceiver,
    run_path_patching,
)
from tools.experiments.patching import Patch, cache_run, run_patched_variants
from tools.experiments.prompts import PromptBatch, PromptPairs, tokenize_prompts
from tools.experiments.provenance import Provenance
from tools.experiments.registry import (
    AnyExperimentSpec,
    load_result,
    parse_spec,
    run_experiment,
)
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec
from tools.experiments.steering import SteeringResult, SteeringSpec, run_steering

__all__ = [
    "ActivationPatchingResult", "ActivationPatchingSpec", "AnyExperimentSpec",
    "BehaviourExperimentSpec", "BehaviourResult", "DirectLogitAttributionResult",
    "DirectLogitAttributionSpec", "ExperimentResult", "ExperimentSpec", "LogitLensResult",
    "LogitLensSpec", "Patch", "PatchSweep", "PromptBatch", "PromptPairs", "Provenance",
    "cache_run", "load_result", "parse_spec", "run_activation_patching", "run_behaviour",
    "run_direct_logit_attribution", "run_experiment", "run_logit_lens", "run_patched_variants",
    "tokenize_prompts",
    "AblationResult", "AblationSpec", "run_ablation",
    "AttentionPatternResult", "AttentionPatternSpec", "run_attention_patterns",
    "AttributionPatchingResult", "AttributionPatchingSpec", "run_attribution_patching",
    "NeuronActivationResult", "NeuronActivationSpec", "run_neuron_activations",
    "PathPatchingResult", "PathPatchingSpec", "PathReceiver", "run_path_patching",
    "SteeringResult", "SteeringSpec", "run_steering",
    "CrossModelPatchingResult", "CrossModelPatchingSpec", "run_cross_model_patching",
]
