"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest

from tests._experiment_models import tiny_loaded


@pytest.fixture
def no_forward():
    """The tiny GPT-2, with any forward pass failing the test: for checks that must happen
    before the model runs (a bad spec raises `SpecError` before the first forward)."""
    model = tiny_loaded("gpt2")

    def refuse(module, args, kwargs):
        raise AssertionError("the model ran a forward pass")

    handle = model.hf_model.register_forward_pre_hook(refuse, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()
