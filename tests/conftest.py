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


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real ``chroma run`` (the server the chromadb package ships) on a free localhost port;
    yields its URL. Every test that takes ``memory_backend`` runs once against it."""
    from memory.server import LocalChromaServer

    with LocalChromaServer(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


@pytest.fixture(params=["embedded", "server"])
def memory_backend(request):
    """``None`` for the workspace's embedded chroma, or the URL of a real local chroma server."""
    if request.param == "embedded":
        return None
    return request.getfixturevalue("chroma_server")


@pytest.fixture
def namespace(request):
    """A collection prefix of this test alone (the server is shared by the session)."""
    import hashlib

    return "t" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def ioi_report(tmp_path_factory):
    """A finished IOI investigation of the default organism with its reports (n=32): the
    summary ``sleuth ask --json`` printed and the workspace. Read-only for the tests that share
    it: a test that edits stored files copies the workspace first (`copy_workspace`)."""
    from agents.investigate import ask

    workspace = tmp_path_factory.mktemp("report") / "ws"
    out = ask("Why does the model do indirect object identification?", model="organism-default",
              workspace=str(workspace), n=32)
    return out, workspace

