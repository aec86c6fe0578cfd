"""Attention patterns and neuron activations against plain Hugging Face runs and hand loops.

Patterns are checked two independent ways on every family: against a separately built
eager-attention copy of the model (``output_attentions=True``), and by rebuilding each
head's output (the o_proj input of an ordinary SDPA run) from the pattern and the value
vectors. Scores are checked against loops written from their definitions; the induction
score against a known property of the trained default organism.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests._experiment_models import EXPERIMENT_FAMILIES, tiny_loaded
from tests.test_adapters import tiny_model
from tools.errors import SpecError
from tools.experiments.attention import (
    AttentionPatternSpec,
    run_attention_patterns,
    score_patterns,
)
from tools.experiments.neurons import NeuronActivationSpec, run_neuron_activations
from tools.experiments.prompts import PromptPairs
from tools.loading import hash_state_dict, load_model

ATOL = 1e-5
TEXTS = ("w5 w9 w5 w9 w7", "w3 w4", "w8 w3 w8 w3 w8 w2 w3", "w6 w6 w1 w6")
"""Different lengths (padding is exercised) and repeated tokens (duplicate / induction)."""


def _pairs(texts) -> PromptPairs:
    """Prompt-only experiments ignore answers and foils; PromptPairs still wants them."""
    return PromptPairs(clean=tuple(texts), answer=(" w1",) * len(texts), foil=(" w2",) * len(texts))


def _ids(model, text: str) -> torch.Tensor:
    return torch.tensor([model.tokenizer(text)["input_ids"]])


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(family):
    return tiny_loaded(family)


@pytest.fixture(scope="module")
def fresh(family, loaded):
    """An independent copy of the same weights, untouched by nnsight (SDPA attention)."""
    model = tiny_model(family)
    assert hash_state_dict(model) == loaded.weights_hash
    return model


# -- attention patterns ------------------------------------------------------------------------


def test_patterns_match_hf_eager_output_attentions(family, loaded) -> None:
    before = loaded.hf_model.config._attn_implementation
    spec = AttentionPatternSpec(prompts=_pairs(TEXTS), layers=(1, 0), heads=(3, 0, 2),
                                saved_prompts=len(TEXTS))
    result = run_attention_patterns(loaded, spec, batch_size=3)
    assert loaded.hf_model.config._attn_implementation == before  # restored
    eager = tiny_model(family)
    eager.set_attn_implementation("eager")
    pattern = result.tensors["pattern"]
    assert pattern.shape == (len(TEXTS), 2, 3, 7, 7)
    for p, text in enumerate(TEXTS):
        ids = _ids(loaded, text)
        n = ids.shape[1]
        assert int(result.tensors["pattern_lengths"][p]) == n
        assert torch.equal(result.tensors["pattern_tokens"][p, :n], ids[0])
        with torch.no_grad():
            reference = eager(ids, output_attentions=True).attentions
        for i, layer in enumerate(result.layers):
            for j, head in enumerate(result.heads):
                ours = pattern[p, i, j]
                assert (ours[:n, :n] - reference[layer][0, head]).abs().max() <= ATOL
                assert ours[n:].abs().sum() == 0 and ours[:, n:].abs().sum() == 0


def _value_and_z_modules(hf, family: str, layer: int):
    """(module whose output holds V, function output -> V [batch, pos, n_heads, d_head],
    the output projection whose input is z)."""
    config = hf.config
    n_heads = config.num_attention_heads
    if family == "gpt2":
        attn = hf.transformer.h[layer].attn
        d = config.n_embd

        def values(out):
            return out.split(d, dim=-1)[2].reshape(*out.shape[:2], n_heads, d // n_heads)
        return attn.c_attn, values, attn.c_proj
    if family == "gpt_neox":
        attn = hf.gpt_neox.layers[layer].attention
        d_head = config.hidden_size // n_heads

        def values(out):
            return out.reshape(*out.shape[:2], n_heads, 3 * d_head)[..., 2 * d_head:]
        return attn.query_key_value, values, attn.dense
    attn = hf.model.layers[layer].self_attn
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    groups = n_heads // config.num_key_value_heads

    def values(out):
        v = out.reshape(*out.shape[:2], config.num_key_value_heads, d_head)
        return v.repeat_interleave(groups, dim=2)
    return attn.v_proj, values, attn.o_proj


def test_patterns_rebuild_each_heads_output_of_an_sdpa_run(family, loaded, fresh) -> None:
    """z[q, h] == Σ_k A[h, q, k] · v[k, h]: the pattern is what the ordinary run attends with."""
    result = run_attention_patterns(
        loaded, AttentionPatternSpec(prompts=_pairs(TEXTS), saved_prompts=len(TEXTS)), batch_size=2)
    assert fresh.config._attn_implementation != "eager"
    for layer in range(loaded.adapter.n_layers):
        v_module, to_values, o_proj = _value_and_z_modules(fresh, family, layer)
        for p, text in enumerate(TEXTS):
            seen = {}
            handles = [
                v_module.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out)),
                o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0])),
            ]
            try:
                with torch.no_grad():
                    fresh(_ids(loaded, text))
            finally:
                for handle in handles:
                    handle.remove()
            n = seen["z"].shape[1]
            values = to_values(seen["v"])[0]  # [k, head, d_head]
            pattern = result.tensors["pattern"][p, layer, :, :n, :n]  # [head, q, k]
            rebuilt = torch.einsum("hqk,khd->qhd", pattern, values)
            z = seen["z"][0].reshape(n, loaded.adapter.n_heads, -1)
            assert (rebuilt - z).abs().max() <= ATOL


def _hand_scores(pattern, rows, target):
    """The score definitions as plain loops over ``rows`` (token id lists)."""
    n_layers, n_heads = pattern.shape[1:3]
    sums = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64)
            for k in ("previous_token", "duplicate_token", "induction", "attend_to_token")}
    counts = dict.fromkeys(sums, 0)
    for b, tokens in enumerate(rows):
        for q in range(len(tokens)):
            keys = {
                "previous_token": [q - 1] if q >= 1 else [],
                "duplicate_token": [k for k in range(q) if tokens[k] == tokens[q]],
                "induction": [k for k in range(1, q) if tokens[k - 1] == tokens[q]],
                "attend_to_token": [k for k in range(q) if tokens[k] == target],
            }
            for name, chosen in keys.items():
                if chosen:
                    counts[name] += 1
                    sums[name] += pattern[b, :, :, q, chosen].double().sum(-1)
    return sums, counts


def test_scores_follow_their_definitions() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = [[5, 9, 5, 9, 7, 5, 9], [3, 4, 3], [8, 8, 8, 2, 3, 8]]
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.zeros(len(rows), 7, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        ids[b, len(r):] = 5  # padding that equals a real token must not count
    logits = torch.randn(len(rows), 2, 3, 7, 7, generator=generator)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    pattern = logits.masked_fill(~causal, -torch.inf).softmax(-1)
    ours = score_patterns(pattern, ids, lengths, target=9)
    sums, counts = _hand_scores(pattern, rows, target=9)
    for name in sums:
        total, count = ours[name]
        assert count == counts[name] > 0
        assert torch.allclose(total.double(), sums[name], atol=1e-6)


def test_attend_to_token_and_patterns_of_the_first_prompts() -> None:
    loaded = tiny_loaded("llama")
    spec = AttentionPatternSpec(prompts=_pairs(TEXTS), attend_to_token="w3", saved_prompts=2)
    result = run_attention_patterns(loaded, spec, batch_size=3)
    assert result.attend_to_token_id == loaded.tokenizer.convert_tokens_to_ids("w3")
    assert result.tensors["pattern"].shape[0] == 2 and result.n_saved == 2
    full = run_attention_patterns(
        loaded, spec.model_copy(update={"saved_prompts": len(TEXTS)}), batch_size=len(TEXTS))
    rows = [loaded.tokenizer(t)["input_ids"] for t in TEXTS]
    sums, counts = _hand_scores(full.tensors["pattern"], rows, result.attend_to_token_id)
    for name in result.scored:
        assert torch.allclose(result.tensors[f"score.{name}"].double(), sums[name] / counts[name],
                              atol=1e-6)
    best = result.top["attend_to_token"][0]
    assert best.score == pytest.approx(float(result.tensors["score.attend_to_token"].max()))


def test_a_score_defined_nowhere_is_nan() -> None:
    loaded = tiny_loaded("gpt_neox")
    result = run_attention_patterns(loaded, AttentionPatternSpec(prompts=_pairs(("w1 w2 w3",))))
    assert torch.isnan(result.tensors["score.induction"]).all()
    assert result.top["induction"] == ()
    assert not torch.isnan(result.tensors["score.previous_token"]).any()


def test_default_organism_has_an_induction_head() -> None:
    """A known property of a trained model: some head attends to the token after the earlier
    occurrence of the current token, and only when the sequence actually repeats."""
    model = load_model("organism-default")
    rng = random.Random(0)
    words = sorted(w for w in model.tokenizer.get_vocab() if w.isalpha() and w.islower())
    T, n = 8, 6
    repeated, shuffled = [], []
    for _ in range(n):
        picked = rng.sample(words, 2 * T)
        repeated.append(" ".join(picked[:T] * 2))
        shuffled.append(" ".join(picked))  # same length, no token repeats
    results = {}
    for name, texts in (("repeated", repeated), ("shuffled", shuffled)):
        results[name] = run_attention_patterns(
            model, AttentionPatternSpec(prompts=_pairs(texts), saved_prompts=n))

    def offset_diagonal(result):
        """Mean attention from each second-half query q to q - T + 1, per [layer, head]."""
        pattern, lengths = result.tensors["pattern"], result.tensors["pattern_lengths"]
        values = []
        for p in range(n):
            length = int(lengths[p])
            for q in range(length - T, length):
                values.append(pattern[p, :, :, q, q - T + 1])
        return torch.stack(values).mean(0)

    induction = results["repeated"].tensors["score.induction"]
    # the score is the offset diagonal on distinct-token repeats (its definition, seen another way)
    assert torch.allclose(induction, offset_diagonal(results["repeated"]), atol=1e-5)
    best = results["repeated"].top["induction"][0]
    layer = int(best.component.split(".")[1])
    assert layer >= 1, "induction needs a previous-token head in an earlier layer"
    control = offset_diagonal(results["shuffled"]).max()
    assert best.score > control + 0.3, (best, float(control))


# -- neuron activations ------------------------------------------------------------------------


def _hand_neurons(fresh, family: str, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """Post-nonlinearity MLP hidden ``[pos, d_mlp]`` from plain hooks on the activation itself."""
    seen = {}
    if family == "gpt2":
        mlp = fresh.transformer.h[layer].mlp
        handles = [mlp.act.register_forward_hook(lambda m, a, out: seen.__setitem__("h", out))]
    elif family == "gpt_neox":
        mlp = fresh.gpt_neox.layers[layer].mlp
        handles = [mlp.act.register_forward_hook(lambda m, a, out: seen.__setitem__("h", out))]
    else:
        mlp = fresh.model.layers[layer].mlp
        handles = [mlp.gate_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("g", out)),
                   mlp.up_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("u", out))]
    try:
        with torch.no_grad():
            fresh(ids)
    finally:
        for handle in handles:
            handle.remove()
    if "h" in seen:
        return seen["h"][0]
    return (mlp.act_fn(seen["g"]) * seen["u"])[0]


def test_neuron_activations_match_a_plain_hook(family, loaded, fresh) -> None:
    layers, neurons, k = (1, 0), (5, 0, 63), 4
    spec = NeuronActivationSpec(prompts=_pairs(TEXTS), layers=layers, neurons=neurons, top_k=k)
    result = run_neuron_activations(loaded, spec, batch_size=3)
    assert result.d_mlp == loaded.adapter.d_mlp and result.top_k == k
    assert result.n_tokens == sum(len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS)
    rows = [_ids(loaded, text) for text in TEXTS]
    for i, layer in enumerate(layers):
        hidden = [_hand_neurons(fresh, family, layer, ids) for ids in rows]  # [pos, d_mlp] each
        for j, neuron in enumerate(neurons):
            every = torch.cat([h[:, neuron] for h in hidden])
            expected = every.topk(k).values
            assert torch.allclose(result.tensors["top_activation"][i, j], expected, atol=ATOL)
            assert result.tensors["mean_activation"][i, j] == pytest.approx(float(every.mean()), abs=ATOL)
            for r in range(k):
                p = int(result.tensors["top_prompt"][i, j, r])
                pos = int(result.tensors["top_position"][i, j, r])
                assert pos < rows[p].shape[1]
                assert float(hidden[p][pos, neuron]) == pytest.approx(
                    float(result.tensors["top_activation"][i, j, r]), abs=ATOL)
                assert int(result.tensors["top_token"][i, j, r]) == int(rows[p][0, pos])
    inline = {(t.layer, t.neuron): t for t in result.top}
    assert set(inline) == {(layer, neuron) for layer in layers for neuron in neurons}
    first = inline[(layers[0], neurons[0])].examples[0]
    assert first.activation == pytest.approx(float(result.tensors["top_activation"][0, 0, 0]))
    assert first.token == TEXTS[first.prompt].split()[first.position]


def test_top_k_is_capped_by_the_number_of_tokens() -> None:
    loaded = tiny_loaded("gemma3")
    result = run_neuron_activations(loaded, NeuronActivationSpec(
        prompts=_pairs(("w3 w4",)), layers=(0,), neurons=(1,), top_k=50))
    assert result.top_k == 2 and result.tensors["top_activation"].shape == (1, 1, 2)
    assert torch.isfinite(result.tensors["top_activation"]).all()


# -- bad specs: SpecError naming the field, before any forward pass --------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return tiny_loaded("gpt2")



@pytest.mark.parametrize(("spec", "field"), [
    (AttentionPatternSpec(prompts=_pairs(TEXTS), layers=(2,)), "layers[0]"),
    (AttentionPatternSpec(prompts=_pairs(TEXTS), heads=(0, 4)), "heads[1]"),
    (AttentionPatternSpec(prompts=_pairs(TEXTS), heads=()), "heads"),
    (AttentionPatternSpec(prompts=_pairs(TEXTS), attend_to_token="w3 w4"), "attend_to_token"),
    (AttentionPatternSpec(prompts=_pairs(TEXTS), attend_to_token="nope"), "attend_to_token"),
    (NeuronActivationSpec(prompts=_pairs(TEXTS), neurons=(3, 128)), "neurons[1]"),
    (NeuronActivationSpec(prompts=_pairs(TEXTS), layers=(0, 0)), "layers"),
    (NeuronActivationSpec(prompts=_pairs(TEXTS), layers=(5,)), "layers[0]"),
])
def test_bad_specs_fail_before_any_forward_pass(no_forward, spec, field) -> None:
    run = run_attention_patterns if isinstance(spec, AttentionPatternSpec) else run_neuron_activations
    with pytest.raises(SpecError) as error:
        run(no_forward, spec)
    assert error.value.field == field


@pytest.mark.parametrize(("make", "field"), [
    (lambda: NeuronActivationSpec(prompts=_pairs(TEXTS), top_k=0), "top_k"),
    (lambda: AttentionPatternSpec(prompts=_pairs(TEXTS), saved_prompts=-1), "saved_prompts"),
    (lambda: AttentionPatternSpec(prompts=_pairs(TEXTS), attend_to_token=""), "attend_to_token"),
])
def test_structural_mistakes_fail_when_the_spec_is_built(make, field) -> None:
    with pytest.raises(SpecError) as error:
        make()
    assert error.value.field == field


def test_specs_round_trip_through_json() -> None:
    for spec in (AttentionPatternSpec(prompts=_pairs(TEXTS), layers=(1,), attend_to_token="w3"),
                 NeuronActivationSpec(prompts=_pairs(TEXTS), neurons=(2, 3), top_k=5)):
        assert type(spec).model_validate_json(spec.model_dump_json()) == spec


def test_last_token_scores_read_the_saved_patterns(family, loaded) -> None:
    """to_answer / to_foil / to_changed: the last token's attention summed over the positions
    holding the answer, the foil, or a token the corruption changed — from the patterns."""
    clean = ("w5 w9 w5 w9 w7", "w3 w4 w1 w3", "w8 w2 w8 w3 w8 w2")
    corrupted = ("w5 w9 w6 w9 w7", "w3 w4 w1 w3", "w8 w2 w8 w3 w4 w2")
    pairs = PromptPairs(clean=clean, corrupted=corrupted, answer=(" w9", " w1", " w2"), foil=(" w5", " w7", " w8"))
    result = run_attention_patterns(loaded, AttentionPatternSpec(prompts=pairs, from_last=True,
                                                                 saved_prompts=len(clean)), batch_size=2)
    assert {"to_answer", "to_foil", "to_changed"} <= set(result.scored)
    pattern = result.tensors["pattern"]
    for p, (c, x, a, f) in enumerate(zip(clean, corrupted, pairs.answer, pairs.foil)):
        ids, other = _ids(loaded, c)[0], _ids(loaded, x)[0]
        n = ids.shape[0]
        answer_id, foil_id = (loaded.tokenizer.convert_tokens_to_ids(t.strip()) for t in (a, f))
        masks = {"to_answer": ids == answer_id, "to_foil": ids == foil_id, "to_changed": ids != other}
        for name, mask in masks.items():
            got = result.tensors[f"last.{name}"][..., p]  # [layer, head]
            if not mask.any():
                assert got.isnan().all()
                continue
            expected = pattern[p, :, :, n - 1, :n][..., mask].sum(-1)
            assert torch.allclose(got, expected, atol=ATOL), name
    # the mean over prompts skips those where a score is undefined (the unchanged second pair)
    changed = result.tensors["last.to_changed"]
    assert torch.allclose(result.tensors["score.to_changed"], changed[..., [0, 2]].mean(-1), atol=ATOL)
