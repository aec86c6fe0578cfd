"""Architecture adapters against tiny random models of each family (no download).

Every check compares nnsight + adapter against the plain Hugging Face forward, so a wrong
module path, a tuple output read as a tensor, or a setter that silently does nothing
fails here.
"""

from __future__ import annotations

import nnsight
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tools.adapters import (
    Gemma3Adapter,
    GPT2Adapter,
    GPTNeoXAdapter,
    LlamaAdapter,
    adapter_for,
    project_heads,
)
from tools.components import Component, check_component, parse_component
from tools.errors import UnsupportedArchitectureError, UserInputError
from tools.loading import LoadedModel, wrap_model

VOCAB = 64
ATOL = 1e-5
_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=1, pad_token_id=None)
_LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, **_COMMON,
)
_GEMMA_LIKE = dict(
    _LLAMA_LIKE, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
    layer_types=["sliding_attention", "full_attention"],
)

FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, **_COMMON)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
        max_position_embeddings=64, use_parallel_residual=True, **_COMMON)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_LLAMA_LIKE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_LLAMA_LIKE)),
    "gemma": lambda: GemmaForCausalLM(GemmaConfig(**dict(_LLAMA_LIKE, head_dim=8))),
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**_GEMMA_LIKE)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**_GEMMA_LIKE)),
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``<unk> <eos> w0 .. w61`` (ids = positions)."""
    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A random 2-layer model of ``family``, in eval mode, every parameter perturbed.

    The perturbation makes zero-initialised biases and Gemma's zero norm weights
    non-trivial, so bias and ``(1 + weight)`` handling is actually exercised.
    """
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def tiny_ids(batch: int = 2, pos: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(family: str) -> LoadedModel:
    return wrap_model(tiny_model(family), tiny_tokenizer(), model_id=f"tiny-{family}")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return tiny_ids()


@pytest.fixture(scope="module")
def reference_logits(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.hf_model(ids).logits


@pytest.fixture(scope="module")
def clean(loaded: LoadedModel, ids: torch.Tensor) -> dict:
    """Every site of a clean run, read in forward order in one trace."""
    adapter, lm = loaded.adapter, loaded.lm
    with lm.trace(ids):
        sites = nnsight.save({"layers": []})
        sites["embed"] = adapter.embed(lm)
        for layer in range(adapter.n_layers):
            sites["layers"].append({
                "resid_pre": adapter.resid_pre(lm, layer),
                "z": adapter.z(lm, layer),
                "heads": adapter.head_out(lm, layer),
                "o_proj_out": adapter.o_proj_out(lm, layer),
                "attn": adapter.attn_out(lm, layer),
                "mlp": adapter.mlp_out(lm, layer),
                "resid_post": adapter.resid_post(lm, layer),
            })
        sites["logits"] = adapter.logits(lm)
    return sites


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


# -- the adapter is the right one, with the right numbers ----------------------------------


EXPECTED = {
    "gpt2": (GPT2Adapter, 4, 4, 8),
    "gpt_neox": (GPTNeoXAdapter, 4, 4, 8),
    "llama": (LlamaAdapter, 4, 2, 8),
    "qwen2": (LlamaAdapter, 4, 2, 8),
    "gemma3": (Gemma3Adapter, 4, 1, 16),
}


def test_adapter_dimensions(family: str, loaded: LoadedModel) -> None:
    adapter = loaded.adapter
    assert adapter.n_layers == 2 and adapter.d_model == 32 and adapter.vocab_size == VOCAB
    if family in EXPECTED:
        cls, n_heads, n_kv_heads, d_head = EXPECTED[family]
        assert type(adapter) is cls
        assert (adapter.n_heads, adapter.n_kv_heads, adapter.d_head) == (n_heads, n_kv_heads, d_head)
    assert adapter.W_O(loaded.lm, 0).shape == (adapter.n_heads, adapter.d_head, adapter.d_model)
    assert adapter.parallel_residual == (family == "gpt_neox")


def test_trace_matches_hf_forward(clean: dict, reference_logits: torch.Tensor) -> None:
    assert _max_diff(clean["logits"], reference_logits) <= ATOL


# -- (1) heads: projected per-head outputs add up to the attention output ------------------


def test_head_outputs_sum_to_o_proj_output(loaded: LoadedModel, clean: dict) -> None:
    adapter, lm = loaded.adapter, loaded.lm
    for layer, sites in enumerate(clean["layers"]):
        z = sites["z"]
        assert z.shape[-1] == adapter.n_heads * adapter.d_head
        heads = project_heads(z, adapter.W_O(lm, layer), adapter.n_heads)
        assert heads.shape == (*z.shape[:2], adapter.n_heads, adapter.d_model)
        bias = adapter.b_O(lm, layer)
        total = heads.sum(-2) + (bias if bias is not None else 0.0)
        assert _max_diff(total, sites["o_proj_out"]) <= ATOL


def test_head_writes_sum_to_attention_write(loaded: LoadedModel, clean: dict) -> None:
    """For Gemma 2/3 the heads are linearised through the post-attention RMSNorm."""
    adapter, lm = loaded.adapter, loaded.lm
    for layer, sites in enumerate(clean["layers"]):
        bias = adapter.b_O(lm, layer)
        bias_write = 0.0
        if bias is not None:
            bias_write = bias * adapter.post_attn_norm_scale(lm, layer, sites["o_proj_out"])
        assert _max_diff(sites["heads"].sum(-2) + bias_write, sites["attn"]) <= ATOL
        recomputed = adapter.head_writes(lm, layer, sites["z"], sites["o_proj_out"])
        assert torch.equal(recomputed, sites["heads"])


def test_gemma_linearisation_is_not_the_raw_projection(family: str, loaded: LoadedModel, clean: dict) -> None:
    if not loaded.adapter.has_post_norms:
        pytest.skip("no post-attention norm in this family")
    sites = clean["layers"][0]
    raw = project_heads(sites["z"], loaded.adapter.W_O(loaded.lm, 0), loaded.adapter.n_heads)
    assert _max_diff(raw, sites["heads"]) > 1e-3
    with pytest.raises(ValueError):
        loaded.adapter.head_writes(loaded.lm, 0, sites["z"])


# -- (2) identity interventions leave the logits unchanged; real ones do not ---------------


@pytest.mark.parametrize("kind", ["resid_pre", "attn", "mlp", "resid_post", "embed", "head"])
def test_identity_intervention_keeps_logits(
    loaded: LoadedModel, ids: torch.Tensor, reference_logits: torch.Tensor, kind: str
) -> None:
    adapter, lm = loaded.adapter, loaded.lm
    if kind == "embed":
        components = [Component("embed")]
    elif kind == "head":
        components = [Component("head", layer, head)
                      for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    else:
        components = [Component(kind, layer) for layer in range(adapter.n_layers)]
    with lm.trace(ids):
        for component in components:
            value = adapter.read(lm, component)
            adapter.write(lm, component, value + 0.0)
        logits = adapter.logits(lm).save()
    assert _max_diff(logits, reference_logits) <= ATOL


def test_zero_ablating_last_mlp_removes_exactly_its_write(
    loaded: LoadedModel, ids: torch.Tensor, clean: dict, reference_logits: torch.Tensor
) -> None:
    adapter, lm = loaded.adapter, loaded.lm
    last = adapter.n_layers - 1
    with lm.trace(ids):
        mlp = adapter.mlp_out(lm, last)
        adapter.set_mlp_out(lm, last, torch.zeros_like(mlp))
        logits = adapter.logits(lm).save()
    sites = clean["layers"][last]
    expected = adapter.resid_to_logits(lm, sites["resid_post"] - sites["mlp"])
    assert _max_diff(logits, expected) <= ATOL
    assert _max_diff(logits, reference_logits) > 1e-3


def test_setting_z_changes_attention_output(loaded: LoadedModel, ids: torch.Tensor, clean: dict) -> None:
    adapter, lm = loaded.adapter, loaded.lm
    zeros = torch.zeros(ids.shape[0], ids.shape[1], adapter.d_head)
    with lm.trace(ids):
        adapter.write(lm, parse_component("head.0.1"), zeros)
        adapter.write(lm, parse_component("head.0.3"), zeros)  # a second write keeps the first
        o_proj_out = adapter.o_proj_out(lm, 0).save()
    clean_sites = clean["layers"][0]
    raw = project_heads(clean_sites["z"], adapter.W_O(lm, 0), adapter.n_heads)
    expected = clean_sites["o_proj_out"] - raw[..., 1, :] - raw[..., 3, :]
    assert _max_diff(o_proj_out, expected) <= ATOL


# -- (3) and (4): the residual stream is one stream, and ends in the logits -----------------


def test_resid_pre_next_equals_resid_post(loaded: LoadedModel, clean: dict) -> None:
    layers = clean["layers"]
    for layer in range(loaded.adapter.n_layers - 1):
        assert torch.equal(layers[layer + 1]["resid_pre"], layers[layer]["resid_post"])


def test_resid_post_is_resid_pre_plus_writes(loaded: LoadedModel, clean: dict) -> None:
    for sites in clean["layers"]:
        assert _max_diff(sites["resid_pre"] + sites["attn"] + sites["mlp"], sites["resid_post"]) <= ATOL


def test_final_norm_and_unembed_reproduce_logits(
    loaded: LoadedModel, clean: dict, reference_logits: torch.Tensor
) -> None:
    resid = clean["layers"][-1]["resid_post"]
    assert _max_diff(loaded.adapter.resid_to_logits(loaded.lm, resid), reference_logits) <= ATOL


def test_sites_must_be_read_in_forward_order(loaded: LoadedModel, ids: torch.Tensor) -> None:
    adapter, lm = loaded.adapter, loaded.lm
    with pytest.raises(Exception, match="ran past"):
        with lm.trace(ids):
            adapter.resid_post(lm, 1)
            adapter.resid_pre(lm, 0)


# -- components --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embed", "resid_pre.0", "resid_post.11", "attn.3", "mlp.0", "head.1.2"])
def test_component_round_trip(name: str) -> None:
    component = parse_component(name)
    assert str(component) == name
    assert parse_component(str(component)) == component


def test_component_fields() -> None:
    assert parse_component("head.1.2") == Component("head", 1, 2)
    assert parse_component("mlp.4").layer == 4 and parse_component("mlp.4").head is None
    with pytest.raises(Exception):
        parse_component("mlp.4").layer = 5  # frozen


@pytest.mark.parametrize(
    "name",
    ["", "head.1", "head.1.2.3", "mlp", "mlp.x", "attn.-1", "embed.0", "neuron.1.2",
     "resid_pre.1.", "Head.1.2", "head..1", "resid_mid.1"],
)
def test_malformed_component_names(name: str) -> None:
    with pytest.raises(UserInputError):
        parse_component(name)


def test_component_bounds() -> None:
    with pytest.raises(UserInputError, match="out of range"):
        check_component(parse_component("attn.2"), n_layers=2, n_heads=4)
    with pytest.raises(UserInputError, match="out of range"):
        check_component(parse_component("head.0.4"), n_layers=2, n_heads=4)
    with pytest.raises(UserInputError):
        Component("head", 1)


def test_unsupported_architecture() -> None:
    from transformers import BertConfig

    with pytest.raises(UnsupportedArchitectureError, match="bert"):
        adapter_for(BertConfig())
