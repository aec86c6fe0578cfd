"""Path patching: a hand-written reference on plain torch hooks, identities, and spec errors.

The reference (`reference_logit_diff`) runs Wang et al.'s three steps one prompt at a time
on ``model.hf_model`` with ordinary forward hooks — no nnsight, no adapter, no batching,
no padding — with each family's q/k/v projection layout written here from the Hugging
Face source. `test_qkv_layout_addresses_the_right_head_and_input` checks the layout the
implementation uses by its consequences instead (which head's attention a perturbation
moves, and whether linearly), so a layout misread the same way in both places still fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from tests._experiment_models import EXPERIMENT_FAMILIES, hf_last_logits, tiny_loaded, word_pairs, uneven_pairs
from tests.test_adapters import tiny_tokenizer
from tools.components import parse_component
from tools.errors import SpecError
from tools.experiments import ActivationPatchingSpec, PromptPairs, run_activation_patching
from tools.experiments.path_patching import (
    PathPatchingResult,
    PathPatchingSpec,
    PathReceiver,
    qkv_layout,
    run_path_patching,
)
from tools.loading import LoadedModel, wrap_model

ATOL = 1e-5
_COMMON = dict(vocab_size=64, bos_token_id=1, eos_token_id=1, pad_token_id=None)
_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, **_COMMON)
_DEEP = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=64,
                                               **_COMMON)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64,
        max_position_embeddings=64, use_parallel_residual=False, **_COMMON)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_LLAMA_LIKE)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**dict(
        _LLAMA_LIKE, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=4, layer_types=["sliding_attention", "full_attention", "full_attention"]))),
}


def deep_loaded(family: str) -> LoadedModel:
    """A random 3-layer model (so a layer sits between sender and receiver), params perturbed.

    The GPT-NeoX one is sequential (no parallel residual), so its MLPs are downstream of
    its heads; the 2-layer `tiny_loaded` one is parallel."""
    torch.manual_seed(3)
    model = _DEEP[family]()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return wrap_model(model.eval(), tiny_tokenizer(), model_id=f"deep-{family}")


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def loaded(request) -> LoadedModel:
    return tiny_loaded(request.param)


@pytest.fixture(scope="module", params=EXPERIMENT_FAMILIES)
def deep(request) -> tuple[str, LoadedModel]:
    return request.param, deep_loaded(request.param)


# -- the reference: Wang et al.'s three steps on plain hooks, one unpadded prompt at a time -----


def _block(hf, family: str, layer: int):
    return hf.transformer.h[layer] if family == "gpt2" else (
        hf.gpt_neox.layers[layer] if family == "gpt_neox" else hf.model.layers[layer])


def _o_proj(hf, family: str, layer: int):
    block = _block(hf, family, layer)
    return {"gpt2": lambda: block.attn.c_proj, "gpt_neox": lambda: block.attention.dense}.get(
        family, lambda: block.self_attn.o_proj)()


def _qkv_module_and_slice(hf, family: str, layer: int, head: int, letter: str):
    """The projection whose output holds ``letter`` of ``head``, and that slice (HF source)."""
    config = hf.config
    n = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // n
    block = _block(hf, family, layer)
    i = "qkv".index(letter)
    if family == "gpt2":  # c_attn(x).split(n_embd): [q | k | v]
        return block.attn.c_attn, slice(i * n * d + head * d, i * n * d + (head + 1) * d)
    if family == "gpt_neox":  # query_key_value(x).view(..., n, 3 * d).chunk(3, -1)
        return block.attention.query_key_value, slice(head * 3 * d + i * d, head * 3 * d + (i + 1) * d)
    module = getattr(block.self_attn, f"{letter}_proj")
    if letter != "q":
        head //= n // config.num_key_value_heads
    return module, slice(head * d, (head + 1) * d)


def _run(hf, ids, hooks):
    handles = [register(hook) for register, hook in hooks]
    try:
        with torch.no_grad():
            return hf(ids)
    finally:
        for handle in handles:
            handle.remove()


_CAPTURED: dict = {}
"""(model, prompt ids) -> the reference's step-1 cache (the same prompt recurs across variants)."""


def reference_logit_diff(model: LoadedModel, family: str, base: list[int], source: list[int],
                         answer: int, foil: int, senders: list[str], receivers: list[str],
                         positions: list[int] | None, freeze_mlps: bool = True) -> float:
    hf = model.hf_model
    n_layers = hf.config.num_hidden_layers
    n_heads = hf.config.num_attention_heads
    d = model.adapter.d_head
    base_ids, source_ids = torch.tensor([base]), torch.tensor([source])

    # 1. cache the embedding, every head's z (o_proj input) and every MLP output of both runs
    def capture(ids):
        key = (hf, tuple(ids[0].tolist()))  # holding hf keeps its id from being reused
        if key in _CAPTURED:
            return _CAPTURED[key]
        store = _CAPTURED[key] = {}
        hooks = [(hf.get_input_embeddings().register_forward_hook,
                  lambda m, a, out: store.__setitem__("embed", out.clone()))]
        for layer in range(n_layers):
            hooks.append((_o_proj(hf, family, layer).register_forward_pre_hook,
                          lambda m, args, l=layer: store.__setitem__(("z", l), args[0].clone())))
            hooks.append((_block(hf, family, layer).mlp.register_forward_hook,
                          lambda m, a, out, l=layer: store.__setitem__(("mlp", l), out.clone())))
        _run(hf, ids, hooks)
        return store

    cached_base, cached_source = capture(base_ids), capture(source_ids)
    parsed = [parse_component(s) for s in senders]

    # 2. senders from the source run, every other head (and MLP) frozen to the base run
    def frozen_z(module, args, layer):
        z = cached_base[("z", layer)].clone()
        for c in parsed:
            if c.layer == layer and c.kind == "attn":
                z = cached_source[("z", layer)].clone()
            if c.layer == layer and c.kind == "head":
                z[..., c.head * d:(c.head + 1) * d] = cached_source[("z", layer)][..., c.head * d:(c.head + 1) * d]
        return (z, *args[1:])

    def mlp_out(module, args, out, layer):
        if any(c.kind == "mlp" and c.layer == layer for c in parsed):
            return cached_source[("mlp", layer)]
        return cached_base[("mlp", layer)] if freeze_mlps else out

    recorded: dict = {}
    hooks = []
    if any(c.kind == "embed" for c in parsed):
        hooks.append((hf.get_input_embeddings().register_forward_hook,
                      lambda m, a, out: cached_source["embed"]))
    for layer in range(n_layers):
        hooks.append((_o_proj(hf, family, layer).register_forward_pre_hook,
                      lambda m, args, l=layer: frozen_z(m, args, l)))
        hooks.append((_block(hf, family, layer).mlp.register_forward_hook,
                      lambda m, a, out, l=layer: mlp_out(m, a, out, l)))
    if receivers == ["logits"]:
        logits = _run(hf, base_ids, hooks).logits[0, -1]
        if positions is not None and len(base) - 1 not in positions:
            logits = _run(hf, base_ids, []).logits[0, -1]
        return float(logits[answer] - logits[foil])
    targets = []
    for receiver in receivers:
        head_name, letter = receiver.rsplit(".", 1)
        c = parse_component(head_name)
        module, features = _qkv_module_and_slice(hf, family, c.layer, c.head, letter)
        targets.append((module, features))
    for module in {id(m): m for m, _ in targets}.values():
        hooks.append((module.register_forward_hook,
                      lambda m, a, out: recorded.__setitem__(id(m), out.clone())))
    _run(hf, base_ids, hooks)

    # 3. the base run with only the receivers' slices replaced by the recorded values
    def patch(module, args, out):
        out = out.clone()
        for target, features in targets:
            if target is module:
                for p in range(out.shape[1]) if positions is None else positions:
                    out[:, p, features] = recorded[id(module)][:, p, features]
        return out

    logits = _run(hf, base_ids, [(m.register_forward_hook, patch) for m in
                                 {id(m): m for m, _ in targets}.values()]).logits[0, -1]
    return float(logits[answer] - logits[foil])


def _ids(model: LoadedModel, pairs: PromptPairs, i: int) -> tuple[list[int], list[int], int, int]:
    tok = model.tokenizer
    return (tok(pairs.clean[i])["input_ids"], tok(pairs.corrupted[i])["input_ids"],
            tok.convert_tokens_to_ids(pairs.answer[i].strip()),
            tok.convert_tokens_to_ids(pairs.foil[i].strip()))


REFERENCE_CASES = [
    # receivers, positions, mode, freeze_mlps
    (["head.2.1.q"], None, "noising", True),
    (["head.2.3.k", "head.2.0.v"], None, "denoising", True),
    (["head.1.2.q", "head.2.2.v"], (1, -1), "noising", True),
    (["head.2.1.k"], (-1, -2), "noising", False),
    (["logits"], None, "noising", True),
    (["logits"], (1, 3), "denoising", False),
]


@pytest.mark.parametrize(("receivers", "positions", "mode", "freeze"), REFERENCE_CASES)
def test_path_patching_equals_the_hand_written_reference(deep, receivers, positions, mode,
                                                         freeze) -> None:
    family, model = deep
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=7)
    sets = [("head.0.1", "mlp.0"), ("attn.0",), ("embed",)]
    spec = PathPatchingSpec(prompts=pairs, receivers=receivers, mode=mode, freeze_mlps=freeze,
                            positions=positions, sender_sets=sets)
    result = run_path_patching(model, spec, batch_size=7)
    first = min(r.layer for r in result.receivers)
    assert result.senders == tuple(f"head.{l}.{h}" for l in range(first) for h in range(4))
    moved = 0.0
    for i in range(len(pairs.clean)):
        clean, corrupted, answer, foil = _ids(model, pairs, i)
        base, source = (clean, corrupted) if mode == "noising" else (corrupted, clean)
        resolved = None if positions is None else [p if p >= 0 else len(base) + p for p in positions]
        unpatched = reference_logit_diff(model, family, base, source, answer, foil, [], receivers,
                                         resolved, freeze)
        variants = [[s] for s in result.senders] + [list(s) for s in sets]
        got = torch.cat([result.tensors["logit_diff.senders"], result.tensors["logit_diff.sets"]])
        for v, senders in enumerate(variants):
            expected = reference_logit_diff(model, family, base, source, answer, foil, senders,
                                            receivers, resolved, freeze)
            assert got[v, i].item() == pytest.approx(expected, abs=ATOL), (senders, i)
            moved = max(moved, abs(expected - unpatched))
    assert moved > 1e-3  # the paths do carry something, so agreement means something


def test_reference_on_the_shipped_two_layer_models(loaded) -> None:
    """The same reference on the parallel-residual GPT-NeoX and 2-layer GQA models."""
    family = loaded.adapter.family
    pairs = word_pairs(n=2, length=[6, 5], seed=8)
    receivers = ["head.1.3.k", "head.1.1.q", "head.1.0.v"]
    spec = PathPatchingSpec(prompts=pairs, receivers=receivers, sender_sets=[("mlp.0", "embed")])
    result = run_path_patching(loaded, spec)
    for i in range(2):
        clean, corrupted, answer, foil = _ids(loaded, pairs, i)
        for v, senders in enumerate([[s] for s in result.senders] + [["mlp.0", "embed"]]):
            expected = reference_logit_diff(loaded, family, clean, corrupted, answer, foil,
                                            senders, receivers, None)
            got = torch.cat([result.tensors["logit_diff.senders"], result.tensors["logit_diff.sets"]])
            assert got[v, i].item() == pytest.approx(expected, abs=ATOL), (senders, i)


# -- the layout the implementation uses, checked by its consequences ---------------------------


@pytest.mark.parametrize("letter", ["q", "k", "v"])
def test_qkv_layout_addresses_the_right_head_and_input(loaded, letter: str) -> None:
    """Perturbing a head's slice at position ``p`` (via `qkv_layout`) must move only that
    head's attention output (its GQA group's, for k/v); a query perturbation only at ``p``,
    a key or value one only at ``p`` and after; and only a value one linearly (attention is
    linear in values, not in queries or keys)."""
    adapter, hf = loaded.adapter, loaded.hf_model
    layout = qkv_layout(adapter, letter)
    ids = torch.tensor([[5, 9, 13, 2, 40, 7]])
    p, d = 2, adapter.d_head
    layer = 1
    block = _block(hf, adapter.family, layer)
    module = block.get_submodule(layout.path)
    o_proj = block.get_submodule(adapter.paths.o_proj)
    group = adapter.n_heads // adapter.n_kv_heads
    for head in range(adapter.n_heads):
        index = head // group if layout.shared else head
        start = layout.offset + index * layout.stride
        seen: dict = {}

        def z_with(scale: float) -> torch.Tensor:
            noise = torch.randn(d, generator=torch.Generator().manual_seed(head)) * scale

            def perturb(m, a, out):
                out = out.clone()
                out[0, p, start:start + d] += noise
                return out

            hooks = [(module.register_forward_hook, perturb),
                     (o_proj.register_forward_pre_hook, lambda m, args: seen.__setitem__("z", args[0]))]
            _run(hf, ids, hooks if scale else hooks[1:])
            return seen["z"].reshape(1, ids.shape[1], adapter.n_heads, d)

        z0, z1, z2 = z_with(0.0), z_with(3.0), z_with(6.0)
        moved = (z1 - z0).abs().amax(dim=-1)[0]  # [pos, head]
        heads = set(range(index * group, (index + 1) * group)) if letter != "q" else {head}
        others = [h for h in range(adapter.n_heads) if h not in heads]
        if others:  # (Gemma 3's single key/value head is shared by every query head)
            assert moved[:, others].max() <= 1e-6
        assert moved[:p].max() <= 1e-6
        assert moved[p, sorted(heads)].min() > 1e-5
        if letter == "q":
            assert moved[p + 1:].max() <= 1e-6
        else:
            assert moved[p + 1:, sorted(heads)].max() > 1e-5
        deviation = ((z2 - z0) - 2 * (z1 - z0)).abs().max().item()
        assert (deviation <= 1e-4) == (letter == "v"), deviation


# -- identities ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["noising", "denoising"])
def test_no_sender_and_equal_prompts_give_the_base_run(loaded, mode: str) -> None:
    for receivers in (["head.1.2.q"], ["head.1.0.k", "head.1.3.v"], ["logits"]):
        spec = PathPatchingSpec(prompts=word_pairs(n=3, length=[5, 6, 4], seed=1), mode=mode,
                                receivers=receivers, sender_sets=[(), ("embed", "mlp.0")])
        result = run_path_patching(loaded, spec)
        base = result.tensors["clean_logit_diff" if mode == "noising" else "corrupted_logit_diff"]
        assert (result.tensors["logit_diff.sets"][0] - base).abs().max() <= ATOL
        assert result.sender_sets[0].effect == pytest.approx(result.base_effect, abs=1e-4)
        assert (result.tensors["logit_diff.sets"][1] - base).abs().max() > 1e-3

        same = spec.model_copy(update={"prompts": word_pairs(n=2, length=[5, 6], seed=2, same=True)})
        result = run_path_patching(loaded, same)
        unpatched = result.tensors["clean_logit_diff"]
        assert not result.normalisable and result.top == ()
        for name in ("logit_diff.senders", "logit_diff.sets"):
            assert (result.tensors[name] - unpatched).abs().max() <= ATOL, name
        assert torch.isnan(result.tensors["effect.senders"]).all()
        assert all(s.effect is None for s in result.sender_sets)


@pytest.mark.parametrize("mode", ["noising", "denoising"])
def test_every_sender_to_the_logits_is_the_source_run(loaded, mode: str) -> None:
    """The final residual is embed + position embedding + every attention and MLP write, so
    path patching all of them to the logits gives the source run's logits exactly."""
    n = loaded.adapter.n_layers
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=3)
    every_attn = ("embed",) + tuple(f"attn.{l}" for l in range(n)) + tuple(f"mlp.{l}" for l in range(n))
    every_head = ("embed",) + tuple(f"head.{l}.{h}" for l in range(n) for h in range(4)) + tuple(
        f"mlp.{l}" for l in range(n))
    spec = PathPatchingSpec(prompts=pairs, receivers=["logits"], mode=mode, senders=(),
                            sender_sets=[every_attn, every_head])
    result = run_path_patching(loaded, spec)
    logits = hf_last_logits(loaded, pairs, corrupted=(mode == "noising"))
    rows = torch.arange(3)
    prompts_ids = [_ids(loaded, pairs, i) for i in range(3)]
    answer = torch.tensor([a for *_, a, _ in prompts_ids])
    foil = torch.tensor([f for *_, f in prompts_ids])
    source = logits[rows, answer] - logits[rows, foil]
    for i in range(2):
        assert (result.tensors["logit_diff.sets"][i] - source).abs().max() <= ATOL
        assert result.sender_sets[i].effect == pytest.approx(1.0 - result.base_effect, abs=1e-4)


@pytest.mark.parametrize("mode", ["noising", "denoising"])
def test_a_last_layer_sender_to_the_logits_is_activation_patching(loaded, mode: str) -> None:
    """Nothing but the unembedding is downstream of the last MLP, so its only path is the
    direct one; a last-layer head's paths are direct or through that MLP, so with MLPs
    recomputed (``freeze_mlps=False``) it equals activation patching too."""
    last = loaded.adapter.n_layers - 1
    pairs = word_pairs(n=3, length=[6, 5, 6], seed=4)
    components = [(f"mlp.{last}",), (f"head.{last}.2",), (f"attn.{last}",), (f"head.{last}.0", f"mlp.{last}")]
    expected = run_activation_patching(loaded, ActivationPatchingSpec(
        prompts=pairs, mode=mode, sweeps=(), component_sets=components))
    result = run_path_patching(loaded, PathPatchingSpec(
        prompts=pairs, receivers=["logits"], mode=mode, senders=(), sender_sets=components,
        freeze_mlps=False))
    assert (result.tensors["logit_diff.sets"] - expected.tensors["logit_diff.sets"]).abs().max() <= ATOL
    frozen = run_path_patching(loaded, PathPatchingSpec(
        prompts=pairs, receivers=["logits"], mode=mode, senders=(), sender_sets=components[:1]))
    assert (frozen.tensors["logit_diff.sets"][0] - expected.tensors["logit_diff.sets"][0]).abs().max() <= ATOL


def test_batching_and_layout_of_the_head_sweep(deep) -> None:
    _, model = deep
    pairs = word_pairs(n=3, length=[5, 6, 4], seed=9)
    spec = PathPatchingSpec(prompts=pairs, receivers=[{"component": "head.2.1", "input": "v"}],
                            senders=("head.1.3", "mlp.0", "head.0.2", "embed"))
    one = run_path_patching(model, spec, batch_size=1)
    many = run_path_patching(model, spec, batch_size=1000)
    for name, values in one.tensors.items():
        assert torch.allclose(values, many.tensors[name], atol=ATOL, equal_nan=True), name
    heads = one.tensors["effect.heads"]
    assert heads.shape == (3, 4)
    assert heads[1, 3] == one.tensors["effect.senders"][0] and heads[0, 2] == one.tensors["effect.senders"][2]
    assert int(torch.isnan(heads).sum()) == 10
    clean, corrupted = one.clean_logit_diff, one.corrupted_logit_diff
    means = one.tensors["logit_diff.senders"].mean(-1)
    assert torch.allclose(one.tensors["effect.senders"], (means - corrupted) / (clean - corrupted), atol=1e-5)
    distance = (one.tensors["effect.senders"] - one.base_effect).abs()
    assert one.top[0].senders == (one.senders[int(distance.argmax())],)


def test_grouped_query_receivers_report_the_shared_head() -> None:
    model = tiny_loaded("llama")  # 4 query heads, 2 key/value heads
    spec = PathPatchingSpec(prompts=word_pairs(n=2), receivers=["head.1.3.k", "head.1.2.q"],
                            senders=("head.0.0",))
    info = {r.receiver: r for r in run_path_patching(model, spec).receivers}
    assert info["head.1.3.k"].kv_head == 1 and info["head.1.3.k"].query_heads == (2, 3)
    assert info["head.1.2.q"].kv_head is None and info["head.1.2.q"].query_heads == (2,)


def test_spec_and_result_round_trip(tmp_path) -> None:
    spec = PathPatchingSpec(prompts=word_pairs(n=2), receivers=["head.1.0.q", {"component": "head.1.2",
                            "input": "k"}], sender_sets=[("embed", "mlp.0"), ()], positions=(-1,))
    assert spec.receivers[0] == PathReceiver(component="head.1.0", input="q")
    assert PathPatchingSpec.model_validate_json(spec.model_dump_json()) == spec
    alias = PathPatchingSpec(prompts=word_pairs(n=2), receivers=["resid_final"])
    assert alias.receivers == (PathReceiver(component="logits"),)
    result = run_path_patching(tiny_loaded("gpt2"), spec)
    again = PathPatchingResult.load(result.save(tmp_path))
    # (not `again == result`: ExperimentResult.__eq__ uses torch.equal, and NaN != NaN in
    # effect.heads, which marks the heads not swept)
    assert again.model_dump(exclude={"tensor_file"}) == result.model_dump(exclude={"tensor_file"})
    assert again.tensors.keys() == result.tensors.keys()
    for name, values in result.tensors.items():
        assert torch.allclose(again.tensors[name], values, rtol=0, atol=0, equal_nan=True), name
    assert not math.isnan(again.tensors["effect.sets"][0])


# -- spec errors, before any forward pass --------------------------------------------------------




_Q = ["head.1.0.q"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(receivers=[]), "receivers"),
        (dict(receivers=["head.1.0"]), "receivers[0]"),
        (dict(receivers=["logits", "head.1.0.q"]), "receivers"),
        (dict(receivers=[{"component": "head.1.0", "input": "x"}]), "receivers[0].input"),
        (dict(receivers=[{"component": "head.1.0"}]), "receivers[0].input"),
        (dict(receivers=[{"component": "logits", "input": "q"}]), "receivers[0].input"),
        (dict(receivers=[{"component": "mlp.1", "input": "q"}]), "receivers[0].component"),
        (dict(receivers=[{"component": "heed.1.0", "input": "q"}]), "receivers[0].component"),
        (dict(receivers=["head.1.0.q", "head.1.0.q"]), "receivers[1]"),
        (dict(receivers=_Q, senders=("head.0.1", "nonsense")), "senders[1]"),
        (dict(receivers=_Q, senders=("head.1.1",)), "senders[0]"),
        (dict(receivers=_Q, senders=("mlp.2",)), "senders[0]"),
        (dict(receivers=_Q, senders=("resid_pre.0",)), "senders[0]"),
        (dict(receivers=_Q, senders=("mlp.0", "mlp.0")), "senders"),
        (dict(receivers=_Q, sender_sets=[("embed", "attn.1")]), "sender_sets[0][1]"),
        (dict(receivers=_Q, senders=()), "senders"),
        (dict(receivers=_Q, positions=()), "positions"),
    ],
)
def test_structural_mistakes_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(SpecError) as error:
        PathPatchingSpec(prompts=word_pairs(), **changes)
    assert error.value.field == field


def test_path_patching_needs_corrupted_prompts() -> None:
    with pytest.raises(SpecError) as error:
        PathPatchingSpec(prompts=PromptPairs(clean=["w1 w2"], answer=[" w3"], foil=[" w4"]),
                         receivers=["logits"])
    assert error.value.field == "prompts.corrupted"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(receivers=["head.2.0.q"]), "receivers[0].component"),
        (dict(receivers=["head.1.4.v"]), "receivers[0].component"),
        (dict(receivers=["logits"], senders=("head.2.0",)), "senders[0]"),
        (dict(receivers=["logits"], senders=("head.0.7",)), "senders[0]"),
        (dict(receivers=["logits"], sender_sets=[("mlp.0", "mlp.5")]), "sender_sets[0][1]"),
        (dict(receivers=["head.0.1.q"]), "senders"),
        (dict(receivers=_Q, positions=(6,)), "positions[0]"),
        (dict(receivers=_Q, positions=(-7,)), "positions[0]"),
        (dict(receivers=_Q, prompts=uneven_pairs()), "prompts.corrupted[1]"),
    ],
)
def test_model_dependent_mistakes_raise_before_any_forward(no_forward, changes: dict,
                                                           field: str) -> None:
    spec = PathPatchingSpec(**{"prompts": word_pairs(), **changes})
    with pytest.raises(SpecError) as error:
        run_path_patching(no_forward, spec)
    assert error.value.field == field


def test_the_forward_guard_is_real(no_forward) -> None:
    with pytest.raises(AssertionError, match="forward pass"):
        run_path_patching(no_forward, PathPatchingSpec(prompts=word_pairs(), receivers=_Q))


def test_runs_unchanged_on_the_remote_dry_run_path() -> None:
    """nnsight's serverless simulation of NDIF (`NDIFBackend(dry_run=True)`): the trace bodies
    are serialised as for a remote job, so they must refer to nothing that cannot travel."""
    from tools.backends import NDIFBackend

    model = tiny_loaded("gemma3")
    for receivers in (["head.1.0.k", "head.1.2.q"], ["logits"]):
        spec = PathPatchingSpec(prompts=word_pairs(n=2, length=5, seed=3), receivers=receivers,
                                senders=("head.0.1",), sender_sets=[("embed", "mlp.0")])
        local = run_path_patching(model, spec)
        remote = run_path_patching(model.with_backend(NDIFBackend(dry_run=True)), spec)
        assert local.tensors.keys() == remote.tensors.keys()
        for name, values in local.tensors.items():
            torch.testing.assert_close(remote.tensors[name], values, rtol=0, atol=1e-6,
                                       equal_nan=True)
