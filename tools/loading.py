"""Load a Hugging Face causal LM into nnsight, with its architecture adapter.

``load_model("gpt2")``, ``load_model("/path/to/folder")``, ``load_model("organism-default")``
and ``load_model("gemma-3-270m")`` all end in the same `LoadedModel`; ``wrap_model`` does
the same for a model already in memory (tests build tiny random ones from a config).

Names resolve in this order: the special names (``gemma-3-270m``, ``organism-default``,
``organism-planted``), an existing local file or folder (always read with
``local_files_only=True``), else a Hub id (read from the local cache only when
``offline=True``). Every way a name can fail — a missing path, an id that is neither
local nor cached, a folder that is not a model, a family with no adapter — raises one
of `tools.errors`' user errors with a one-line message; transformers' own exceptions
never escape for these cases.

The weights hash is sha256 over the *state dict as loaded* (every tensor's name, dtype,
shape and raw bytes, in sorted-name order; a tied tensor is hashed once and named as an
alias after). It is computed once, at load, and so is the same for the same weights
whether they came from a folder, the Hub or memory, and differs when the same checkpoint
is loaded in another dtype (whose experiment results differ too).
"""

from __future__ import annotations

import os

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tools.adapters import ArchitectureAdapter, adapter_for
from tools.backends import Backend, LocalBackend
from tools.errors import (
    ModelError,
    ModelNotFoundError,
    NotAModelError,
    UnsupportedArchitectureError,
    UserInputError,
)

if TYPE_CHECKING:
    from nnsight import TransformersModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GEMMA_NAME = "gemma-3-270m"
ORGANISM_NAMES = {"organism-default": "default", "organism-planted": "planted"}
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
    "vocab.json", "vocab.txt", "merges.txt",
)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A causal LM ready for experiments: the nnsight model and what it takes to read it."""

    lm: "TransformersModel"
    """The nnsight model (``nnsight.TransformersModel`` with task text-generation, which is
    what the deprecated ``nnsight.LanguageModel`` is). Experiments trace it through
    `trace`, never ``lm.trace`` directly, so that the backend decides where it runs."""
    adapter: ArchitectureAdapter
    """Canonical component names -> module sites, and the model's dimensions."""
    tokenizer: "PreTrainedTokenizerBase"
    """The tokenizer nnsight uses (``lm.tokenizer``); nnsight sets it to pad on the left,
    with EOS as the pad token when there is none."""
    model_id: str
    """The name as given (``"gpt2"``, ``"organism-default"``, a path)."""
    weights_hash: str
    """sha256 hex digest of the loaded state dict (see the module docstring)."""
    source: str
    """Where the weights came from: a resolved local folder, a Hub id, or ``"<memory>"``."""
    device: torch.device
    """Where the weights live."""
    dtype: torch.dtype
    """The floating dtype of the weights."""
    backend: Backend = field(default_factory=LocalBackend)
    """Where traces run (`tools.backends`): here by default, or on NDIF."""
    forwards: "ForwardCounter" = field(default_factory=lambda: ForwardCounter())
    """Counts the forward passes the model runs here (`wrap_model` attaches it)."""

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """``with model.trace(ids):`` — an nnsight trace of `lm` on this model's `backend`.

        The one way experiments open a trace, so none of them knows where it runs.
        """
        return self.backend.trace(self.lm, *inputs, **kwargs)

    def generate(self, *inputs: Any, **kwargs: Any) -> Any:
        """``with model.generate(ids, max_new_tokens=n) as tracer:`` — traced generation on
        this model's `backend`; the ids are ``tracer.result`` (save it)."""
        return self.backend.generate(self.lm, *inputs, **kwargs)

    def with_backend(self, backend: Backend) -> "LoadedModel":
        """The same model (same weights, nnsight wrapper and hash) with traces run by ``backend``.

        Raises:
            UserInputError: when ``backend`` cannot run this model (e.g. NDIF and a local folder).
        """
        backend.check(self)
        return replace(self, backend=backend)

    @property
    def hf_model(self) -> "PreTrainedModel":
        """The underlying transformers model (calls on it bypass nnsight)."""
        return self.lm._module

    @property
    def config(self) -> Any:
        """The transformers config."""
        return self.hf_model.config


class ForwardCounter:
    """Forward passes of one model run in this process: ``calls`` (each batched) and ``rows``
    (sequences forwarded, summed over calls). Remote (NDIF) runs happen elsewhere and count 0."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0

    def mark(self) -> tuple[int, int]:
        """``(calls, rows)`` now, for `since`."""
        return self.calls, self.rows

    def since(self, mark: tuple[int, int]) -> tuple[int, int]:
        """``(calls, rows)`` forwarded since ``mark`` (from `mark`)."""
        return self.calls - mark[0], self.rows - mark[1]

    def attach(self, module: torch.nn.Module) -> None:
        def count(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids")
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is None and args and isinstance(args[0], torch.Tensor):
                ids = args[0]
            self.calls += 1
            self.rows += int(ids.shape[0]) if isinstance(ids, torch.Tensor) and ids.dim() >= 2 else 1

        module.register_forward_pre_hook(count, with_kwargs=True)


# -- public API --------------------------------------------------------------------------


def load_model(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    offline: bool = False,
) -> LoadedModel:
    """Load a causal LM by special name, local path or Hub id into nnsight.

    Args:
        name_or_path: ``gemma-3-270m``, ``organism-default``, ``organism-planted``, a
            local model folder, or a Hugging Face Hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: a torch floating dtype or its name (``"bfloat16"``); float32 by default.
        offline: read Hub ids from the local cache only (the effect of HF_HUB_OFFLINE,
            without changing the process environment). Local paths are always offline.

    Raises:
        ModelNotFoundError, NotAModelError, UnsupportedArchitectureError, UserInputError.
    """
    torch_device = _parse_device(device)
    torch_dtype = _parse_dtype(dtype)
    source, is_local = resolve_model_source(name_or_path)
    # HF_HUB_OFFLINE is read here, at the call, not only when transformers was imported
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    local_files_only = is_local or offline

    config = _load_config(name_or_path, source, is_local, local_files_only)
    adapter_for(config)  # refuse an unsupported family before reading any weights
    model = _load_weights(name_or_path, source, config, torch_dtype, local_files_only)
    tokenizer = _load_tokenizer(name_or_path, source, local_files_only)
    model.to(torch_device)
    loaded = wrap_model(model, tokenizer, model_id=name_or_path, source=source)
    logger.info("loaded %s from %s (%s, %s, weights %s)", name_or_path, source,
                loaded.device, loaded.dtype, loaded.weights_hash[:12])
    return loaded


def wrap_model(
    hf_model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    *,
    model_id: str | None = None,
    source: str = "<memory>",
    count_forwards: bool = True,
) -> LoadedModel:
    """Wrap an in-memory transformers causal LM (put in eval mode) into a `LoadedModel`.

    The tokenizer is adopted by nnsight, which sets ``padding_side="left"`` and, when it
    has none, the pad token to EOS. ``count_forwards`` attaches the forward counter (a hook
    that stays on the module); a model wrapped again and again (a training run's canaries at
    every save) should pass False so hooks do not pile up.

    Raises:
        UnsupportedArchitectureError: when no adapter serves the model's family.
    """
    from nnsight import TransformersModel

    adapter = adapter_for(hf_model.config)
    hf_model.eval()
    weights_hash = hash_state_dict(hf_model)
    first = next(hf_model.parameters())
    lm = TransformersModel(
        hf_model, tokenizer=tokenizer, task="text-generation", device=first.device
    )
    try:
        adapter.check_modules(lm)
    except (AttributeError, IndexError) as error:
        raise UnsupportedArchitectureError(
            f"{type(hf_model).__name__} has model_type {hf_model.config.model_type!r} but not the "
            f"module layout the {adapter.family} adapter expects ({error}); "
            "add or fix an adapter in tools/adapters/"
        ) from None
    counter = ForwardCounter()
    if count_forwards:
        counter.attach(hf_model)
    return LoadedModel(
        lm=lm,
        forwards=counter,
        adapter=adapter,
        tokenizer=lm.tokenizer if lm.tokenizer is not None else tokenizer,
        model_id=model_id or getattr(hf_model.config, "name_or_path", "") or type(hf_model).__name__,
        weights_hash=weights_hash,
        source=source,
        device=first.device,
        dtype=first.dtype,
    )


def resolve_model_source(name_or_path: str) -> tuple[str, bool]:
    """``(source, is_local)``: a special name or existing path -> local folder, else a Hub id.

    Raises:
        ModelNotFoundError: for a path that does not exist, or a special name whose
            folder cannot be produced.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelNotFoundError("no model given; pass a model folder, a Hub id, "
                                 f"{GEMMA_NAME}, or one of {', '.join(ORGANISM_NAMES)}")
    name = name_or_path.strip()
    if name == GEMMA_NAME:
        return _resolve_gemma(), True
    if name in ORGANISM_NAMES:
        return _resolve_organism(ORGANISM_NAMES[name]), True
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), True
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no such model folder: {name}; check the path")
    return name, False


def hash_state_dict(model: torch.nn.Module) -> str:
    """sha256 hex digest over a model's state dict (names, dtypes, shapes, bytes; sorted)."""
    digest = hashlib.sha256()
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        header = f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|"
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            digest.update(f"{header}alias:{seen[key]}\n".encode())
            continue
        seen[key] = name
        digest.update(header.encode())
        flat = tensor.contiguous().reshape(-1).cpu()
        digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
        digest.update(b"\n")
    return digest.hexdigest()


# -- resolution ------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.endswith("/")
        or name.count("/") > 1
        or "\\" in name
        or name.endswith((".safetensors", ".bin", ".gguf", ".json"))
    )


def _resolve_gemma() -> str:
    try:
        from tools.gemma_gguf import ensure_gemma_folder
    except ImportError as error:
        raise ModelNotFoundError(
            f"{GEMMA_NAME} is not available: tools.gemma_gguf.ensure_gemma_folder cannot be "
            f"imported ({error}); install the project with its dependencies "
            "(pip install -e .) or pass a model folder instead"
        ) from None
    return str(ensure_gemma_folder())


def _resolve_organism(kind: str) -> str:
    spec = importlib.util.find_spec("evals")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "organisms" / kind
        if (folder / "config.json").is_file():
            return str(folder)
    where = f"{Path(locations[0]) / 'organisms' / kind}" if locations else "evals/organisms/"
    raise ModelNotFoundError(
        f"model organism {kind!r} is not built (no config.json at {where}); "
        "build it with its training recipe in evals/organisms/"
    )


# -- loading pieces, each turning library errors into user errors ---------------------------


def _load_config(name: str, source: str, is_local: bool, local_files_only: bool) -> Any:
    from transformers import AutoConfig

    if is_local:
        path = Path(source)
        if path.is_file():
            raise NotAModelError(
                f"{name} is a file, not a model folder; pass the folder that holds config.json "
                "and the weights"
            )
        if not (path / "config.json").is_file():
            raise NotAModelError(
                f"{name} is not a model folder (no config.json); pass a folder written by "
                "save_pretrained (config.json, weights and tokenizer files)"
            )
        model_type = _read_model_type(path / "config.json", name)
        from transformers import CONFIG_MAPPING

        if model_type not in CONFIG_MAPPING:
            raise UnsupportedArchitectureError(
                f"{name} has model_type {model_type!r}, which this transformers version does "
                "not know and no adapter serves; use a GPT-2, GPT-NeoX, Llama/Mistral/Qwen or "
                "Gemma model"
            )
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError) as error:
        if is_local:
            raise NotAModelError(
                f"{name} holds a config.json that transformers cannot read "
                f"({_one_line(error)}); re-save the model with save_pretrained"
            ) from None
        where = "the local Hugging Face cache (offline)" if local_files_only else "the Hugging Face Hub"
        raise ModelNotFoundError(
            f"model {name!r} not found: it is not a local folder and not in {where}; "
            "check the spelling, pass a model folder, or download it where there is network"
        ) from None


def _read_model_type(config_path: Path, name: str) -> Any:
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotAModelError(
            f"{name}/config.json is not valid JSON ({_one_line(error)}); re-save the model "
            "with save_pretrained"
        ) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise NotAModelError(
            f"{name}/config.json has no model_type, so it is not a transformers model config; "
            "re-save the model with save_pretrained"
        )
    return data["model_type"]


def _load_weights(
    name: str, source: str, config: Any, dtype: torch.dtype, local_files_only: bool
) -> "PreTrainedModel":
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, local_files_only=local_files_only
        )
    except OSError as error:
        raise NotAModelError(
            f"{name} has a config but its weights cannot be read ({_one_line(error)}); "
            "it needs model.safetensors (or pytorch_model.bin) written by save_pretrained"
        ) from None
    except ValueError as error:
        raise UnsupportedArchitectureError(
            f"{name} is not a causal language model transformers can load "
            f"({_one_line(error)}); use a *ForCausalLM checkpoint"
        ) from None
    except RuntimeError as error:
        raise ModelError(f"{name}: the checkpoint does not match its config ({_one_line(error)})") from None
    return model


def _load_tokenizer(name: str, source: str, local_files_only: bool) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    folder = Path(source)
    if folder.is_dir() and not any((folder / file).is_file() for file in _TOKENIZER_FILES):
        raise NotAModelError(
            f"{name} has no tokenizer files; save one next to the weights with "
            "tokenizer.save_pretrained(folder)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise NotAModelError(
            f"{name} has no usable tokenizer ({_one_line(error)}); save one next to the weights "
            "with tokenizer.save_pretrained(folder)"
        ) from None
    if not callable(tokenizer) or not getattr(tokenizer, "vocab_size", 1):
        raise NotAModelError(
            f"{name} has no usable tokenizer; save one with tokenizer.save_pretrained(folder)"
        )
    return tokenizer


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserInputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return parsed


def _parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        parsed = dtype
    else:
        aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                   "float": "float32"}
        name = aliases.get(str(dtype).lower(), str(dtype).lower()).removeprefix("torch.")
        parsed = getattr(torch, name, None)
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise UserInputError(
            f"unknown dtype {dtype!r}; use float32, bfloat16 or float16"
        )
    return parsed


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
