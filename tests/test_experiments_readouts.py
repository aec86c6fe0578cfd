"""Behaviour, logit lens and direct logit attribution against the plain Hugging Face forward."""

from __future__ import annotations

import pytest
import torch

from tests._experiment_models import (
    EXPERIMENT_FAMILIES,
    hf_last_logits,
    tiny_loaded,
    token_ids,
    word_pairs,
)
from tools.experiments import (
    BehaviourExperimentSpec,
    DirectLogitAttributionSpec,
    LogitLensSpec,
    run_behaviour,
    run_direct_logit_attribution,
    run_logit_lens,
)

ATOL = 1e-5


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def loaded(request):
    return tiny_loaded(request.param)


@pytest.fixture(scope="module")
def pairs():
    """Prompts of different lengths, so right padding is exercised."""
    return word_pairs(n=5, length=[3, 6, 4, 6, 5], seed=3)


@pytest.fixture(scope="module")
def reference(loaded, pairs):
    logits = hf_last_logits(loaded, pairs)
    rows = torch.arange(len(pairs.clean))
    answer, foil = token_ids(loaded, pairs.answer), token_ids(loaded, pairs.foil)
    return {"logits": logits, "answer": answer, "foil": foil,
            "logit_diff": logits[rows, answer] - logits[rows, foil]}


def test_behaviour_matches_unpadded_hf_forward(loaded, pairs, reference) -> None:
    result = run_behaviour(loaded, BehaviourExperimentSpec(prompts=pairs), batch_size=2)
    rows = torch.arange(len(pairs.clean))
    probs = reference["logits"].softmax(-1)
    assert torch.allclose(result.tensors["logit_diff"], reference["logit_diff"], atol=ATOL)
    assert torch.allclose(result.tensors["answer_prob"], probs[rows, reference["answer"]], atol=ATOL)
    correct = reference["logits"].argmax(-1) == reference["answer"]
    assert torch.equal(result.tensors["correct"], correct)
    assert result.accuracy == pytest.approx(correct.float().mean().item())
    assert result.logit_diff == pytest.approx(reference["logit_diff"].mean().item(), abs=ATOL)
    corrupted = hf_last_logits(loaded, pairs, corrupted=True)
    expected = corrupted[rows, reference["answer"]] - corrupted[rows, reference["foil"]]
    assert torch.allclose(result.tensors["corrupted_logit_diff"], expected, atol=ATOL)


def test_logit_lens_final_layer_is_the_model_output(loaded, pairs, reference) -> None:
    result = run_logit_lens(loaded, LogitLensSpec(prompts=pairs), batch_size=3)
    n_sites = loaded.adapter.n_layers + 1
    assert [layer.site for layer in result.layers] == ["embed", "resid_post.0", "resid_post.1"]
    assert result.tensor_shapes == {k: (n_sites, 5) for k in ("logit_diff", "answer_prob", "answer_rank")}
    rows = torch.arange(5)
    logits = reference["logits"]
    assert torch.allclose(result.tensors["logit_diff"][-1], reference["logit_diff"], atol=ATOL)
    assert torch.allclose(result.tensors["answer_prob"][-1],
                          logits.softmax(-1)[rows, reference["answer"]], atol=ATOL)
    rank = (logits > logits[rows, reference["answer"]].unsqueeze(-1)).sum(-1)
    assert torch.equal(result.tensors["answer_rank"][-1], rank)
    # the earlier sites really are earlier: the lens differs from the output there
    assert not torch.allclose(result.tensors["logit_diff"][0], reference["logit_diff"], atol=1e-3)


def test_logit_lens_embedding_site_is_resid_pre_0(loaded, pairs) -> None:
    result = run_logit_lens(loaded, LogitLensSpec(prompts=pairs))
    adapter, lm = loaded.adapter, loaded.lm
    ids = torch.tensor([loaded.tokenizer(pairs.clean[1])["input_ids"]])
    with lm.trace(ids):
        resid = adapter.resid_pre(lm, 0).save()
    with torch.no_grad():
        logits = adapter.resid_to_logits(lm, resid)[0, -1]
    answer, foil = token_ids(loaded, pairs.answer[1:2]), token_ids(loaded, pairs.foil[1:2])
    expected = (logits[answer] - logits[foil]).item()
    assert result.tensors["logit_diff"][0, 1].item() == pytest.approx(expected, abs=ATOL)


def test_dla_terms_add_up_to_the_logit_difference(loaded, pairs, reference) -> None:
    result = run_direct_logit_attribution(loaded, DirectLogitAttributionSpec(prompts=pairs), batch_size=2)
    t = result.tensors
    adapter = loaded.adapter
    assert t["head"].shape == (adapter.n_layers, adapter.n_heads, 5)
    total = t["head"].sum((0, 1)) + t["attn_bias"].sum(0) + t["mlp"].sum(0) + t["embed"] + t["final_bias"]
    # the tiny models have no soft-cap, so the uncapped logit diff is the model's
    assert not adapter.final_logit_softcap
    assert torch.allclose(t["logit_diff"], reference["logit_diff"], atol=ATOL)
    assert torch.allclose(total, reference["logit_diff"], atol=ATOL)
    assert result.max_abs_error <= ATOL
    assert result.top and abs(result.top[0].dla) >= abs(result.top[-1].dla)


def test_dla_of_heads_and_mlps_matches_their_actual_writes(loaded, pairs) -> None:
    """Independent route: project attn_out / mlp_out (read directly) through the frozen final norm."""
    result = run_direct_logit_attribution(loaded, DirectLogitAttributionSpec(prompts=pairs))
    adapter, lm = loaded.adapter, loaded.lm
    i = 3
    ids = torch.tensor([loaded.tokenizer(pairs.clean[i])["input_ids"]])
    writes = []
    with lm.trace(ids):
        for layer in range(adapter.n_layers):
            writes.append(adapter.attn_out(lm, layer)[0, -1].save())
            writes.append(adapter.mlp_out(lm, layer)[0, -1].save())
        final = adapter.resid_post(lm, adapter.n_layers - 1)[0, -1].save()
    norm = loaded.hf_model.get_submodule(adapter.paths.final_norm)
    unembed = loaded.hf_model.get_submodule(adapter.paths.unembed)
    answer, foil = token_ids(loaded, pairs.answer[i:i + 1]), token_ids(loaded, pairs.foil[i:i + 1])
    u = (unembed.weight[answer] - unembed.weight[foil])[0]
    with torch.no_grad():
        # the final norm with its scale frozen on this run, written out by hand
        if isinstance(norm, torch.nn.LayerNorm):
            centred = final - final.mean()
            scale = 1 / torch.sqrt(centred.pow(2).mean() + norm.eps)
            lin = lambda w: ((w - w.mean()) * scale * norm.weight) @ u
        else:
            eps = adapter._norm_eps(norm)
            scale = 1 / torch.sqrt(final.pow(2).mean() + eps)
            lin = lambda w: (w * scale * (adapter.norm_weight_offset + norm.weight)) @ u
        for layer in range(adapter.n_layers):
            attn = result.tensors["head"][layer, :, i].sum() + result.tensors["attn_bias"][layer, i]
            assert attn.item() == pytest.approx(lin(writes[2 * layer]).item(), abs=ATOL)
            assert result.tensors["mlp"][layer, i].item() == pytest.approx(
                lin(writes[2 * layer + 1]).item(), abs=ATOL)
