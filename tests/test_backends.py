"""Execution backends: every experiment runs unchanged on NDIF's path, and no test touches a network.

The remote path is exercised without a server in two ways:

* nnsight's own dry run (``NDIFBackend(dry_run=True)``, nnsight ``remote="local"``): each
  trace is serialised as for NDIF, deserialised with every non-installed module (``tools``,
  ``tests``) hidden, and run here;
* the real ``RemoteBackend`` (model key, API key, compressed payload) with only its network
  step (``request``: websocket + HTTP POST) replaced by `FakeNDIF`, which records the job and
  runs it like the dry run. Sockets are blocked for the whole module, so anything that tries
  to reach a network fails the test instead of reaching it.

Every model forward during a remote run must happen inside a job (a forward pre-hook checks
it), so a trace opened around the backend — ``lm.trace`` instead of ``model.trace`` — fails.
"""

from __future__ import annotations

import ast
import importlib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests._experiment_models import word_pairs
from tests.test_adapters import tiny_model, tiny_tokenizer
from tools.backends import Backend, LocalBackend, NDIFBackend
from tools.errors import UserInputError
from tools.experiments import ExperimentSpec, PromptPairs
from tools.loading import LoadedModel, wrap_model

HUB_ID = "test-org/tiny-model"
KEY = "test-key-123"
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "tools" / "experiments"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection in these tests is a bug: fail loudly instead of connecting."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def ndif_config(monkeypatch):
    """nnsight's CONFIG with no key and the default host, whatever this machine has set."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(CONFIG.API, "HOST", "https://ndif.example.invalid")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    return CONFIG


def hub_model(family: str) -> LoadedModel:
    """A tiny random model posing as one NDIF hosts (named by a Hub id, not a folder)."""
    hf_model = tiny_model(family)
    hf_model.config.name_or_path = hf_model.name_or_path = HUB_ID  # as from_pretrained(HUB_ID) sets them
    return wrap_model(hf_model, tiny_tokenizer(), model_id=HUB_ID, source=HUB_ID)


# -- choosing a backend ----------------------------------------------------------------------


def test_local_backend_is_the_default_and_with_backend_keeps_the_model():
    model = hub_model("gpt2")
    assert isinstance(model.backend, LocalBackend)
    moved = model.with_backend(NDIFBackend(dry_run=True))
    assert isinstance(moved.backend, NDIFBackend) and isinstance(model.backend, LocalBackend)
    assert moved.lm is model.lm and moved.weights_hash == model.weights_hash


def test_ndif_without_a_key_is_a_user_error(ndif_config):
    with pytest.raises(UserInputError, match="NDIF_API_KEY"):
        NDIFBackend()
    NDIFBackend(dry_run=True)  # a dry run needs no key


def test_ndif_key_comes_from_nnsight_config_or_the_environment(ndif_config, monkeypatch):
    monkeypatch.setattr(ndif_config.API, "APIKEY", "from-config")
    assert NDIFBackend().api_key == "from-config"
    monkeypatch.setattr(ndif_config.API, "APIKEY", None)
    monkeypatch.setenv("NDIF_API_KEY", "from-env")
    assert NDIFBackend().api_key == "from-env"
    assert NDIFBackend(api_key="given").api_key == "given"


def test_ndif_refuses_a_bad_host(ndif_config):
    with pytest.raises(UserInputError, match="host"):
        NDIFBackend(api_key=KEY, host="ndif.us")


def test_ndif_refuses_models_it_cannot_host(ndif_config, tmp_path):
    hf_model, tokenizer = tiny_model("gpt2"), tiny_tokenizer()
    in_memory = wrap_model(hf_model, tokenizer, model_id="tiny")
    from_folder = wrap_model(hf_model, tokenizer, model_id=str(tmp_path), source=str(tmp_path))
    for model in (in_memory, from_folder):
        with pytest.raises(UserInputError, match="Hub id"):
            model.with_backend(NDIFBackend(api_key=KEY))
        model.with_backend(NDIFBackend(dry_run=True))  # runs here, so any model will do


# -- every experiment on the remote path -------------------------------------------------------


@dataclass
class Job:
    model_key: str
    api_key: str
    host: str
    payload_bytes: int


class FakeNDIF:
    """Stands in for NDIF's network step: records each job, then runs it as a server would.

    ``RemoteBackend.request`` is replaced; everything before it (model key, API key, the
    compressed payload from ``_serialize``) is nnsight's real code. The job is then run by
    nnsight's `LocalSimulationBackend`, which deserialises it with our modules hidden.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.jobs: list[Job] = []

    def request(self, backend, request, tracer):
        from nnsight.intervention.backends.local import LocalSimulationBackend

        blob = backend._serialize(tracer)
        self.jobs.append(Job(request.model_key, backend.api_key, backend.host, len(blob)))
        LocalSimulationBackend(self.model.lm)(tracer)
        return None


class Simulated:
    """Whether a forward pass is running inside nnsight's simulated server right now."""

    def __init__(self, monkeypatch) -> None:
        from nnsight.intervention.backends.local import LocalSimulationBackend

        self.active = False
        original = LocalSimulationBackend.__call__

        def call(backend, tracer):
            self.active = True
            try:
                return original(backend, tracer)
            finally:
                self.active = False

        monkeypatch.setattr(LocalSimulationBackend, "__call__", call)


KINDS: dict[str, tuple[str, str, Callable[[PromptPairs], dict]]] = {
    # kind -> (module in tools.experiments, run function, spec fields for 3 prompt pairs)
    "behaviour": ("behaviour", "run_behaviour", lambda pairs: {}),
    "logit_lens": ("logit_lens", "run_logit_lens", lambda pairs: {}),
    "direct_logit_attribution": ("direct_logit_attribution", "run_direct_logit_attribution",
                                 lambda pairs: {}),
    "activation_patching": ("activation_patching", "run_activation_patching", lambda pairs: {
        "sweeps": ({"site": "head"}, {"site": "resid_pre", "per_position": True}),
        "component_sets": (("head.1.0", "mlp.0"),)}),
    "attribution_patching": ("attribution_patching", "run_attribution_patching", lambda pairs: {
        "sweeps": ({"site": "head"}, {"site": "mlp"})}),
    "path_patching": ("path_patching", "run_path_patching", lambda pairs: {
        "receivers": ("head.1.0.q",)}),
    "ablation": ("ablation", "run_ablation", lambda pairs: {
        "components": ("head.0.1", "mlp.1"), "method": "mean"}),
    "steering": ("steering", "run_steering", lambda pairs: {
        "direction": {"kind": "mean_difference", "site": "resid_pre.1"}, "site": "resid_pre.1",
        "alphas": (0.0, 2.0), "generate": 2, "generate_prompts": 2}),
    "attention_patterns": ("attention", "run_attention_patterns", lambda pairs: {}),
    "neuron_activations": ("neurons", "run_neuron_activations", lambda pairs: {"top_k": 3}),
}
"""Every experiment kind with a small spec (`test_every_registered_kind_is_covered` keeps it complete)."""


def test_every_registered_kind_is_covered():
    from tools.experiments.registry import EXPERIMENTS

    assert set(KINDS) == set(EXPERIMENTS)


def experiment(kind: str) -> tuple[object, Callable]:
    """``(spec, run function)`` of ``kind`` on 3 word prompt pairs."""
    module_name, run_name, fields = KINDS[kind]
    module = importlib.import_module(f"tools.experiments.{module_name}")
    run = getattr(module, run_name)
    spec_class = next(value for value in vars(module).values()
                      if isinstance(value, type) and issubclass(value, ExperimentSpec)
                      and value.model_fields["kind"].default == kind)
    pairs = word_pairs(n=3, length=5, seed=3)
    return spec_class(prompts=pairs, **fields(pairs)), run


def _assert_same(local, remote) -> None:
    assert local.tensors.keys() == remote.tensors.keys()
    for name, value in local.tensors.items():
        torch.testing.assert_close(remote.tensors[name], value, rtol=0, atol=1e-6, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("route", "family"), [("ndif", "gpt2"), ("dry_run", "gemma3")])
def test_every_experiment_runs_on_the_remote_path_offline(route, family, kind, ndif_config, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.modeling import huggingface

    spec, run = experiment(kind)
    model = hub_model(family)
    local = run(model, spec)

    server = FakeNDIF(model)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, request, tracer: server.request(
        self, request, tracer))
    monkeypatch.setitem(huggingface._ID_CACHE, HUB_ID, HUB_ID)  # no Hub look-up for the key
    if route == "ndif":
        backend = NDIFBackend(api_key=KEY)
    else:
        backend = NDIFBackend(dry_run=True)
        monkeypatch.setattr(RemoteBackend, "__init__", lambda *a, **k: pytest.fail("dry run built a RemoteBackend"))
    simulated = Simulated(monkeypatch)
    forwards: list[bool] = []
    hook = model.hf_model.register_forward_pre_hook(lambda module, args: forwards.append(simulated.active))
    try:
        remote = run(model.with_backend(backend), spec)
    finally:
        hook.remove()

    _assert_same(local, remote)
    assert forwards and all(forwards), "a forward pass ran outside the backend"
    if route == "ndif":
        assert len(server.jobs) == len(forwards)
        for job in server.jobs:
            assert HUB_ID in job.model_key and "TransformersModel" in job.model_key
            assert job.api_key == KEY and job.host == "https://ndif.example.invalid"
            assert job.payload_bytes > 0
    else:
        assert not server.jobs


def test_dry_run_really_hides_our_modules(monkeypatch):
    """The dry run is only evidence if our code is unreachable during deserialisation:
    without shipping ``tools`` by value, it must fail."""
    import cloudpickle.cloudpickle as cp

    import nnsight.ndif as ndif

    model = hub_model("gpt2")
    backend = NDIFBackend(dry_run=True)
    monkeypatch.setattr(backend, "_ship_our_code", lambda: None)
    monkeypatch.setattr(ndif, "pull_env", lambda: None)
    monkeypatch.setattr(cp, "_PICKLE_BY_VALUE_MODULES", set())
    # An editable install (``pip install -e .``, what `make test` does) reaches our code through
    # a meta-path finder that the simulation does not hide; NDIF has no such install.
    monkeypatch.setattr(sys, "meta_path", [finder for finder in sys.meta_path
                                           if "__editable__" not in getattr(finder, "__module__", "")])
    with pytest.raises(Exception, match="tools|tests"):
        spec, run = experiment("behaviour")
        run(model.with_backend(backend), spec)


def test_experiments_open_traces_only_through_the_model_helper():
    """Every trace in tools/experiments goes through ``model.trace`` (the backend seam)."""
    offenders = []
    for path in sorted(EXPERIMENTS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            attr, owner = node.func.attr, node.func.value
            on_model = isinstance(owner, ast.Name) and owner.id == "model"
            on_lm = (isinstance(owner, ast.Name) and owner.id == "lm") or (
                isinstance(owner, ast.Attribute) and owner.attr == "lm")
            if attr in ("trace", "session", "scan", "edit") and not on_model:
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}(...)")
            elif attr == "generate" and on_lm:
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}(...)")
    assert not offenders, ("open traces with `with model.trace(ids):` or `with model.generate(ids, ...):` "
                           f"(tools.loading.LoadedModel) so the backend decides where they run: {offenders}")


@pytest.mark.parametrize("route", ["local", "ndif", "dry_run"])
def test_traced_generation_goes_through_the_backend(route, ndif_config, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.modeling import huggingface

    model = hub_model("gpt2")
    server = FakeNDIF(model)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, request, tracer: server.request(
        self, request, tracer))
    monkeypatch.setitem(huggingface._ID_CACHE, HUB_ID, HUB_ID)
    backend = {"local": LocalBackend(), "ndif": NDIFBackend(api_key=KEY),
               "dry_run": NDIFBackend(dry_run=True)}[route]
    ids = torch.tensor([[3, 4, 5, 6]])
    with model.with_backend(backend).generate(ids, max_new_tokens=3, do_sample=False) as tracer:
        first = model.adapter.resid_post(model.lm, 0).save()
        out = tracer.result.save()
    expected = model.hf_model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, expected)
    assert first.shape == (1, 4, model.adapter.d_model)
    assert len(server.jobs) == (1 if route == "ndif" else 0)


def test_backend_is_an_abstract_strategy():
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]
