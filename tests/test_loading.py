"""load_model / wrap_model: round trips through disk, name resolution, and bad input.

Every bad input must end in one of tools.errors' user errors with one line of text,
never a transformers / huggingface traceback.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.test_adapters import tiny_ids, tiny_model, tiny_tokenizer
from tools.errors import (
    ModelNotFoundError,
    NotAModelError,
    UnsupportedArchitectureError,
    UserInputError,
)
from tools.loading import hash_state_dict, load_model, resolve_model_source, wrap_model


def _save_tiny(folder: Path, family: str = "gpt2", *, tokenizer: bool = True) -> torch.nn.Module:
    model = tiny_model(family)
    model.save_pretrained(folder)
    if tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    return folder, _save_tiny(folder)


def _assert_one_line(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert message and "\n" not in message and "Traceback" not in message
    assert error.value.__cause__ is None  # the library error is not chained into the report


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_through_disk(saved_gpt2) -> None:
    folder, model = saved_gpt2
    first = load_model(str(folder))
    second = load_model(str(folder))
    assert first.weights_hash == second.weights_hash
    assert first.weights_hash == hash_state_dict(model)
    assert len(first.weights_hash) == 64
    assert first.model_id == str(folder) and first.source == str(folder.resolve())
    assert first.dtype == torch.float32 and first.device == torch.device("cpu")
    assert first.adapter.family == "gpt2"
    assert not first.hf_model.training

    ids = tiny_ids()
    with torch.no_grad():
        expected = model.eval()(ids).logits
    with first.lm.trace(ids):
        logits = first.lm.output.logits.save()
    assert (logits - expected).abs().max().item() <= 1e-5


def test_text_input_is_tokenized(saved_gpt2) -> None:
    loaded = load_model(str(saved_gpt2[0]))
    assert loaded.tokenizer("w3 w4 w5").input_ids == [5, 6, 7]
    with loaded.lm.trace("w3 w4 w5"):
        logits = loaded.lm.output.logits.save()
    assert logits.shape == (1, 3, 64)


def test_hash_changes_with_weights_and_dtype(saved_gpt2) -> None:
    folder, model = saved_gpt2
    assert load_model(str(folder), dtype="bfloat16").weights_hash != hash_state_dict(model)
    other = tiny_model("gpt2", seed=1)
    assert wrap_model(other, tiny_tokenizer()).weights_hash != hash_state_dict(model)


def test_wrap_model_defaults() -> None:
    loaded = wrap_model(tiny_model("llama"), tiny_tokenizer(), model_id="tiny")
    assert loaded.model_id == "tiny" and loaded.source == "<memory>"
    assert loaded.tokenizer.padding_side == "left"  # nnsight's choice for causal LMs
    assert loaded.tokenizer.pad_token == "<eos>"


# -- special names ----------------------------------------------------------------------------


def test_organism_names_resolve_under_evals(tmp_path, monkeypatch) -> None:
    package = tmp_path / "evals"
    _save_tiny(package / "organisms" / "planted")
    spec = types.SimpleNamespace(submodule_search_locations=[str(package)])
    monkeypatch.setattr("tools.loading.importlib.util.find_spec",
                        lambda name: spec if name == "evals" else None)
    loaded = load_model("organism-planted")
    assert loaded.model_id == "organism-planted"
    assert loaded.source == str(package / "organisms" / "planted")
    with pytest.raises(ModelNotFoundError, match="organism 'default'") as error:
        load_model("organism-default")
    _assert_one_line(error)


def test_gemma_name_uses_ensure_gemma_folder(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "gemma"
    _save_tiny(folder, "gemma3")
    fake = types.ModuleType("tools.gemma_gguf")
    fake.ensure_gemma_folder = lambda: folder
    monkeypatch.setitem(sys.modules, "tools.gemma_gguf", fake)
    loaded = load_model("gemma-3-270m")
    assert loaded.model_id == "gemma-3-270m" and loaded.adapter.family == "gemma3"


def test_gemma_name_without_its_module(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tools.gemma_gguf", None)  # import fails
    with pytest.raises(ModelNotFoundError, match="gemma-3-270m") as error:
        resolve_model_source("gemma-3-270m")
    _assert_one_line(error)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/nonexistent/model", "./no-such-folder", "a/b/c", "", "  "])
def test_missing_paths(name: str) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        load_model(name)
    _assert_one_line(error)


def test_unknown_hub_id_offline() -> None:
    with pytest.raises(ModelNotFoundError, match="not found") as error:
        load_model("nobody-circuitsleuth/no-such-model", offline=True)
    _assert_one_line(error)


def test_folder_with_a_random_file(tmp_path) -> None:
    (tmp_path / "notes.bin").write_bytes(torch.randint(0, 255, (64,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(NotAModelError, match="no config.json") as error:
        load_model(str(tmp_path))
    _assert_one_line(error)
    with pytest.raises(NotAModelError, match="is a file") as error:
        load_model(str(tmp_path / "notes.bin"))
    _assert_one_line(error)


@pytest.mark.parametrize(
    "config_text, match",
    [("{not json", "not valid JSON"), (json.dumps({"hidden_size": 4}), "no model_type")],
)
def test_broken_config(tmp_path, config_text: str, match: str) -> None:
    (tmp_path / "config.json").write_text(config_text)
    with pytest.raises(NotAModelError, match=match) as error:
        load_model(str(tmp_path))
    _assert_one_line(error)


def test_config_without_weights(tmp_path) -> None:
    tiny_model("gpt2").config.save_pretrained(tmp_path)
    with pytest.raises(NotAModelError, match="weights") as error:
        load_model(str(tmp_path))
    _assert_one_line(error)


def test_weights_without_tokenizer(tmp_path) -> None:
    _save_tiny(tmp_path, tokenizer=False)
    with pytest.raises(NotAModelError, match="tokenizer") as error:
        load_model(str(tmp_path))
    _assert_one_line(error)


def test_unsupported_architectures(tmp_path) -> None:
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedArchitectureError, match="'bert'") as error:
        load_model(str(tmp_path / "bert"))
    _assert_one_line(error)

    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text(json.dumps({"model_type": "alien_lm"}))
    with pytest.raises(UnsupportedArchitectureError, match="alien_lm") as error:
        load_model(str(tmp_path / "alien"))
    _assert_one_line(error)


def test_wrap_model_refuses_unknown_families() -> None:
    from transformers import BertConfig, BertForMaskedLM

    tiny_bert = BertForMaskedLM(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=8, vocab_size=16))
    with pytest.raises(UnsupportedArchitectureError):
        wrap_model(tiny_bert, tiny_tokenizer())


@pytest.mark.parametrize("kwargs", [{"device": "tpu9"}, {"dtype": "int8"}, {"dtype": "float99"}])
def test_bad_device_or_dtype(saved_gpt2, kwargs: dict) -> None:
    with pytest.raises(UserInputError) as error:
        load_model(str(saved_gpt2[0]), **kwargs)
    _assert_one_line(error)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(saved_gpt2) -> None:
    with pytest.raises(UserInputError, match="CUDA"):
        load_model(str(saved_gpt2[0]), device="cuda")


def test_forward_passes_are_counted_and_a_cache_hit_costs_none(tmp_path):
    import torch

    from memory.runstore import RunStore
    from memory.workspace import Workspace
    from tools.experiments import BehaviourExperimentSpec, PromptPairs

    model = load_model("organism-default")
    with torch.no_grad():
        model.hf_model(torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert (model.forwards.calls, model.forwards.rows) == (1, 2)
    with Workspace.open(tmp_path / "ws", writer=True) as ws:
        run = RunStore(ws).create("q", model.model_id)
        spec = BehaviourExperimentSpec(prompts=PromptPairs(task="ioi", n=8, seed=3))
        before = model.forwards.calls
        run.experiment(model, spec)
        spent = model.forwards.calls - before
        assert spent >= 1 and run.record.cost.forward_passes == spent  # clean (and corrupted) batches
        run.experiment(model, spec)
        assert run.record.cost.forward_passes == spent and model.forwards.calls == before + spent
