"""Our experiments against TransformerLens 4 on the same weights and token ids: max abs diff <= 1e-4.

Each model is loaded twice from the same local Hugging Face folder — by `tools.loading`
(nnsight) and by ``TransformerBridge.boot_transformers`` in compatibility mode
(`evals.reference.transformerlens`) — and every experiment is run once through our tools
and once TransformerLens's way (its patching utilities, ``ActivationCache`` decompositions
and hooks). The prompts are IOI prompts of one token length, so no padding enters either
side; both sides see the token ids our tokenizer produced. Compared: per-prompt logit
differences, normalised effects, per-component attributions and log-probabilities — never
raw logits, which compatibility mode shifts by centring the unembedding.

The default organism runs in seconds; gemma-3-270m (18 layers × 4 heads, a 262k-token
unembedding) is ``slow`` and shares one module-scoped set-up, with its residual sweep
restricted to a few layers so the file stays within a few minutes on 2 cores.

Booting happens with the Hub switched off (``HF_HUB_OFFLINE``) and sockets refused, so a
boot that reached for the network would fail here rather than pass by downloading.
``pytest tests/test_reference_transformerlens.py -s`` prints every measured max abs diff.
"""

from __future__ import annotations

import socket
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pytest
import torch

pytest.importorskip("transformer_lens", reason="TransformerLens 4 is a dev dependency")

from evals.reference import transformerlens as tl_ref  # noqa: E402
from tools.experiments.ablation import AblationSpec, run_ablation  # noqa: E402
from tools.experiments.activation_patching import (  # noqa: E402
    ActivationPatchingSpec,
    PatchSweep,
    run_activation_patching,
)
from tools.experiments.direct_logit_attribution import (  # noqa: E402
    DirectLogitAttributionSpec,
    run_direct_logit_attribution,
)
from tools.experiments.logit_lens import LogitLensSpec, run_logit_lens  # noqa: E402
from tools.experiments.prompts import PromptBatch, PromptPairs, tokenize_prompts  # noqa: E402
from tools.loading import LoadedModel, load_model  # noqa: E402
from tools.tasks import get_task  # noqa: E402

ATOL = 1e-4
MEASURED: dict[str, float] = {}
"""``"<model> <check>" -> max abs diff``, printed at the end of the module (``-s``)."""


@dataclass(frozen=True)
class Case:
    """One model, loaded by us and by TransformerLens, with its prompts and sweep ranges."""

    name: str
    ours: LoadedModel
    bridge: object
    pairs: PromptPairs
    batch: PromptBatch
    """``pairs`` tokenised by our tokenizer: the ids both sides run."""
    resid_layers: tuple[int, ...]
    """Layers of the residual layer × position sweep."""
    head_layers: tuple[int, ...]
    """Layers of the head (all positions) sweep."""
    ablation_set: tuple[str, ...]
    """The component set of the ablation tests."""
    memo: dict = field(default_factory=dict)
    """Reference numbers shared by several tests (the TransformerLens ablation baselines)."""


@contextmanager
def offline() -> Iterator[None]:
    """The Hub in offline mode and every socket connection refused, for the duration."""
    import huggingface_hub.constants as hub_constants

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


def one_length_ioi(model: LoadedModel, n: int, seed: int) -> PromptPairs:
    """``n`` held-out IOI prompts that all tokenise to the most common clean length."""
    items = get_task("ioi").generate(6 * n, split="heldout", seed=seed, tokenizer=model.tokenizer)
    lengths = [len(model.tokenizer(item.clean)["input_ids"]) for item in items]
    length = Counter(lengths).most_common(1)[0][0]
    chosen = [item for item, k in zip(items, lengths) if k == length][:n]
    assert len(chosen) == n, f"only {len(chosen)} IOI prompts of {length} tokens"
    return PromptPairs(clean=tuple(i.clean for i in chosen), corrupted=tuple(i.corrupted for i in chosen),
                       answer=tuple(i.answer for i in chosen), foil=tuple(i.foil for i in chosen))


def build_case(name: str) -> Case:
    with offline():
        if name == "organism-default":
            ours = load_model("organism-default")
            n, ablation_set = 6, ("head.1.0", "head.3.2", "mlp.2")
            resid_layers = head_layers = tuple(range(ours.adapter.n_layers))
        else:
            ours = load_model("gemma-3-270m")
            n, ablation_set = 3, ("head.5.0", "head.9.3", "mlp.4")
            resid_layers, head_layers = (9,), (0, 9, 17)  # a subset keeps the file within ~3 min on 2 cores
        bridge = tl_ref.boot_reference(ours.source)
    pairs = one_length_ioi(ours, n, seed=7)
    batch = tokenize_prompts(ours, pairs, need_corrupted=True, aligned=True)
    assert int(batch.lengths.min()) == int(batch.lengths.max()) == batch.clean.shape[1]
    return Case(name, ours, bridge, pairs, batch, resid_layers, head_layers, ablation_set)


@pytest.fixture(scope="module", params=["organism-default",
                                        pytest.param("gemma-3-270m", marks=pytest.mark.slow)])
def case(request) -> Case:
    return build_case(request.param)


@pytest.fixture(scope="module", autouse=True)
def print_measured() -> Iterator[None]:
    yield
    for key, value in MEASURED.items():
        print(f"max abs diff vs TransformerLens  {key:<48s} {value:.2e}")


def assert_close(case: Case, check: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Same shape and max abs diff <= ATOL (and no NaN on either side); records the diff."""
    ours, reference = ours.detach().float().cpu(), reference.detach().float().cpu()
    assert ours.shape == reference.shape, f"{check}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    assert torch.isfinite(ours).all() and torch.isfinite(reference).all(), f"{check}: non-finite values"
    diff = (ours - reference).abs().max().item()
    MEASURED[f"{case.name} {check}"] = max(diff, MEASURED.get(f"{case.name} {check}", 0.0))
    assert diff <= ATOL, f"{case.name} {check}: max abs diff {diff:.3g} > {ATOL}"


# -- activation patching ---------------------------------------------------------------------


def test_resid_pre_patching_by_position_matches_transformerlens(case: Case) -> None:
    spec = ActivationPatchingSpec(prompts=case.pairs, layers=case.resid_layers,
                                  sweeps=(PatchSweep(site="resid_pre", per_position=True),))
    ours = run_activation_patching(case.ours, spec)
    b = case.batch
    ref = tl_ref.patch_resid_pre(case.bridge, b.clean, b.corrupted, b.answer, b.foil,
                                 layers=case.resid_layers)
    assert_close(case, "patching clean logit diff", ours.tensors["clean_logit_diff"], ref.clean)
    assert_close(case, "patching corrupted logit diff", ours.tensors["corrupted_logit_diff"], ref.corrupted)
    assert_close(case, "resid_pre patched logit diff", ours.tensors["logit_diff.resid_pre_by_pos"],
                 ref.patched)
    assert_close(case, "resid_pre normalised effect", ours.tensors["effect.resid_pre_by_pos"], ref.effect)
    # the comparison has something to compare: the behaviour is there, and some patches restore it
    assert float(ref.clean.mean() - ref.corrupted.mean()) > 0.5
    assert float(ref.effect.max()) > 0.5


def test_head_patching_all_positions_matches_transformerlens(case: Case) -> None:
    spec = ActivationPatchingSpec(prompts=case.pairs, layers=case.head_layers,
                                  sweeps=(PatchSweep(site="head"),))
    ours = run_activation_patching(case.ours, spec)
    b = case.batch
    ref = tl_ref.patch_head_all_pos(case.bridge, b.clean, b.corrupted, b.answer, b.foil,
                                    layers=case.head_layers)
    assert_close(case, "head patched logit diff", ours.tensors["logit_diff.head"], ref.patched)
    assert_close(case, "head normalised effect", ours.tensors["effect.head"], ref.effect)
    assert float(ref.effect.abs().max()) > 0.05


# -- direct logit attribution and logit lens -------------------------------------------------


def test_direct_logit_attribution_matches_transformerlens(case: Case) -> None:
    ours = run_direct_logit_attribution(case.ours, DirectLogitAttributionSpec(prompts=case.pairs))
    b = case.batch
    ref = tl_ref.direct_logit_attribution(case.bridge, b.clean, b.answer, b.foil)
    # DLA attributes the logit difference before any soft-cap; neither model has one
    assert not case.ours.adapter.final_logit_softcap
    assert_close(case, "DLA logit diff", ours.tensors["logit_diff"], ref.logit_diff)
    assert_close(case, "DLA per head", ours.tensors["head"], ref.head)
    assert_close(case, "DLA per MLP", ours.tensors["mlp"], ref.mlp)
    assert float(ref.head.abs().max()) > 0.1


def test_logit_lens_matches_transformerlens(case: Case) -> None:
    ours = run_logit_lens(case.ours, LogitLensSpec(prompts=case.pairs))
    b = case.batch
    ref = tl_ref.logit_lens(case.bridge, b.clean, b.answer, b.foil)
    assert_close(case, "logit lens logit diff", ours.tensors["logit_diff"], ref.logit_diff)
    # log-probabilities, not raw logits; where our probability is representable in float32
    log_prob = ours.tensors["answer_prob"].log()
    shown = log_prob > -80
    assert shown.float().mean() > 0.5
    assert_close(case, "logit lens answer log-prob", log_prob[shown], ref.log_prob[shown])
    assert_close(case, "logit lens answer prob", ours.tensors["answer_prob"], ref.log_prob.exp())


# -- ablation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ablate", "keep"])
@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablation_matches_transformerlens(case: Case, method: str, mode: str) -> None:
    spec = AblationSpec(prompts=case.pairs, components=case.ablation_set, method=method, mode=mode)
    ours = run_ablation(case.ours, spec)
    if method == "mean":
        assert ours.mean_over == "prompts"  # one mean per position over the corrupted prompts
    n_layers, n_heads = case.ours.adapter.n_layers, case.ours.adapter.n_heads
    universe = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    names = [c.split(".") for c in case.ablation_set]
    listed_heads = [(int(n[1]), int(n[2])) for n in names if n[0] == "head"]
    listed_mlps = [int(n[1]) for n in names if n[0] == "mlp"]
    if mode == "ablate":
        heads, mlps = listed_heads, listed_mlps
    else:
        heads = [h for h in universe if h not in listed_heads]
        mlps = [m for m in range(n_layers) if m not in listed_mlps]
    b = case.batch
    assert set(ours.ablated) == {f"head.{l}.{h}" for l, h in heads} | {f"mlp.{m}" for m in mlps}
    if "clean" not in case.memo:
        case.memo["clean"] = tl_ref.logit_diff(case.bridge, b.clean, b.answer, b.foil)
    if method not in case.memo:  # one source run and one everything-ablated run per method
        values = None if method == "zero" else tl_ref.ablation_values(
            case.bridge, method, b.corrupted, batch=b.size)
        case.memo[method] = (values, tl_ref.ablated_logit_diff(
            case.bridge, b.clean, b.answer, b.foil, heads=universe, mlps=range(n_layers), values=values))
    clean, (values, everything) = case.memo["clean"], case.memo[method]
    ablated = tl_ref.ablated_logit_diff(case.bridge, b.clean, b.answer, b.foil, heads=heads, mlps=mlps,
                                        values=values)
    assert_close(case, f"{method} ablation clean logit diff", ours.tensors["clean_logit_diff"], clean)
    assert_close(case, f"{method}/{mode} ablated logit diff", ours.tensors["ablated_logit_diff"], ablated)
    assert_close(case, f"{method} everything-ablated logit diff",
                 ours.tensors["everything_ablated_logit_diff"], everything)
    scale = clean.mean() - everything.mean()
    if mode == "ablate":
        expected = (clean.mean() - ablated.mean()) / scale
        assert_close(case, f"{method} necessity", torch.tensor([ours.necessity]), expected.reshape(1))
    else:
        expected = (ablated.mean() - everything.mean()) / scale
        assert_close(case, f"{method} faithfulness", torch.tensor([ours.faithfulness]), expected.reshape(1))
    # the ablation does something, so agreement is not agreement on "nothing changed"
    assert float((ablated - clean).abs().max()) > 1e-2
