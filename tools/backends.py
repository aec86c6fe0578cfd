"""Where a trace runs: here (`LocalBackend`) or on NDIF (`NDIFBackend`), chosen once per model.

Experiments never ask which. Every forward pass in ``tools/experiments/`` opens its trace
through one helper, ``model.trace(ids)`` (`tools.loading.LoadedModel.trace`; generation:
``model.generate(ids, max_new_tokens=n)``), which hands it to the model's backend; a
backend only decides which nnsight execution backend that trace gets. So moving a whole investigation to NDIF is one line at the edge::

    model = load_model("meta-llama/Llama-3.1-8B").with_backend(NDIFBackend())
    run_activation_patching(model, spec)   # unchanged: every trace is now a remote job

`NDIFBackend` is nnsight's ``remote=True`` made explicit: each trace becomes one
``nnsight.intervention.backends.remote.RemoteBackend`` job for the model's Hub id, with the
API key read from nnsight's ``CONFIG`` (the ``NDIF_API_KEY`` environment variable, or the key
saved with ``CONFIG.set_default_api_key``). ``NDIFBackend(dry_run=True)`` takes nnsight's
serverless simulation of the same path (``remote="local"``): the trace is serialised exactly
as for NDIF, deserialised with every non-installed module hidden, as on the server, and run
here — the cheap way to learn that an experiment *would* run remotely before spending
queue time on it.

What remote execution costs, and what does not work there (nnsight 0.8)
=====================================================================
* **Local tensors travel with the request.** A trace body that uses a tensor computed
  outside it uploads that tensor: the patched run's source activations and masks
  (`tools.experiments.patching`), and the cached ``resid_post`` that ``Envoy.skip`` feeds
  to the skipped blocks. Skipping saves compute on the server but costs upload, ``batch ×
  pos × d_model`` floats per skipped forward pass; on a slow link, caching fewer layers
  (``base_resid_post=None``) can be faster.
* **Saved values travel back**, so experiments save only the rows they read (the last
  position) where they can; a full-sequence cache (`cache_run` for patching) is downloaded.
* **Weights used outside a trace must be local.** The readout applies the unembedding to
  the saved final hidden state after the trace (`tools.experiments.readout.unembed_rows`),
  the logit lens applies the final norm there, and direct logit attribution reads ``W_O``
  and ``W_U`` there. So the `LoadedModel` must hold real weights, as `load_model` gives it;
  a model nnsight builds on the ``meta`` device for remote-only use would need those
  readouts moved inside the trace first.
* **Every trace is a round trip.** An experiment that opens many small traces pays the
  queue and network latency each time; batch sizes matter more remotely than here.
* **Gradients must be taken inside the trace.** A trace with ``.backward()`` inside it runs
  remotely like any other (``.grad`` values ``.save()``d come back). A gradient taken
  *after* the trace from saved values (``torch.autograd.grad`` on them) works here and in
  the dry run — same process, autograd graph intact — but not on NDIF, where saved values
  come back as plain tensors.
* The code a trace calls (``tools.*``) is not installed on the server; `NDIFBackend`
  registers the ``tools`` package with nnsight for by-value pickling, so its source ships
  with every request.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.errors import UserInputError

if TYPE_CHECKING:
    from nnsight import TransformersModel

    from tools.loading import LoadedModel

NDIF_KEY_VARIABLE = "NDIF_API_KEY"
"""The environment variable nnsight reads the NDIF API key from (at import, into ``CONFIG``)."""
SHIPPED_PACKAGES = ("tools",)
"""Our packages whose code runs inside traces, so must travel with a remote request."""


class Backend(ABC):
    """A strategy for running nnsight traces; the experiments never see which one.

    Subclasses say which nnsight execution backend a trace gets (`nnsight_backend`) and may
    refuse a model they cannot run (`check`, called by ``LoadedModel.with_backend``).
    """

    name: str = "backend"
    """Short name for logs and provenance (``"local"``, ``"ndif"``)."""

    def trace(self, lm: "TransformersModel", *inputs: Any, **kwargs: Any) -> Any:
        """Open ``lm.trace(*inputs, **kwargs)`` on this backend (use it as a ``with`` block)."""
        backend = self.nnsight_backend(lm)
        if backend is not None:
            kwargs["backend"] = backend
        return lm.trace(*inputs, **kwargs)

    def generate(self, lm: "TransformersModel", *inputs: Any, **kwargs: Any) -> Any:
        """Open a traced ``lm.generate(*inputs, **kwargs)`` on this backend (a ``with`` block).

        nnsight's ``lm.generate`` captures its ``with`` block where it is *called*, which
        would be here, not in the experiment; so generation is opened as a trace whose
        function is the undecorated ``generate`` (the capture then happens at ``with``).
        """
        method = type(lm).generate
        fn = getattr(method, "__wrapped__", method).__get__(lm, type(lm))
        return self.trace(lm, *inputs, fn=fn, **kwargs)

    @abstractmethod
    def nnsight_backend(self, lm: "TransformersModel") -> Any:
        """The nnsight execution backend for one trace of ``lm`` (None: nnsight's local default)."""

    def check(self, model: "LoadedModel") -> None:
        """Raise `UserInputError` when this backend cannot run ``model`` (default: it can)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LocalBackend(Backend):
    """Run every trace in this process, on the device the weights live on (the default)."""

    name = "local"

    def nnsight_backend(self, lm: "TransformersModel") -> None:
        return None


class NDIFBackend(Backend):
    """Run every trace as a job on NDIF (nnsight ``remote=True``), or simulate that here.

    Args:
        api_key: the NDIF API key; default nnsight's ``CONFIG.API.APIKEY``, which nnsight
            fills from ``NDIF_API_KEY`` at import (the variable is read again here, so one
            set after import counts too).
        host: the NDIF API URL; default nnsight's ``CONFIG.API.HOST`` (``NDIF_HOST``).
        dry_run: serialise each trace exactly as for NDIF, deserialise it with every
            non-installed module hidden, and run it here (nnsight ``remote="local"``).
            Needs no key and no network.

    Raises:
        UserInputError: when no API key can be found (and ``dry_run`` is False).
    """

    name = "ndif"

    def __init__(self, *, api_key: str | None = None, host: str | None = None,
                 dry_run: bool = False) -> None:
        from nnsight import CONFIG

        self.dry_run = dry_run
        self.host = host or CONFIG.API.HOST
        if not self.host.startswith(("http://", "https://")):
            raise UserInputError(f"NDIF host {self.host!r} is not a URL; it must start with "
                                 "http:// or https://")
        self.api_key = api_key or CONFIG.API.APIKEY or os.environ.get(NDIF_KEY_VARIABLE) or None
        if not self.api_key and not dry_run:
            raise UserInputError(
                f"remote execution on NDIF needs an API key: set {NDIF_KEY_VARIABLE} (a key "
                "comes with an account at https://login.ndif.us), or run locally"
            )
        self._registered = False

    def check(self, model: "LoadedModel") -> None:
        """NDIF runs models it hosts, named by Hub id: refuse a local folder or an in-memory model.

        A dry run runs here, so it takes any model.
        """
        if self.dry_run:
            return
        source = model.source
        if source == "<memory>" or Path(source).expanduser().exists():
            raise UserInputError(
                f"NDIF can run only a model it hosts, named by its Hugging Face Hub id; "
                f"{model.model_id!r} was loaded from {source!r}. Load it by Hub id "
                "(e.g. load_model('meta-llama/Llama-3.1-8B')) or run it locally"
            )

    def nnsight_backend(self, lm: "TransformersModel") -> Any:
        self._ship_our_code()
        if self.dry_run:
            from nnsight.intervention.backends.local import LocalSimulationBackend

            return LocalSimulationBackend(lm)
        from nnsight.intervention.backends.remote import RemoteBackend

        return RemoteBackend(lm.to_model_key(), host=self.host, api_key=self.api_key,
                             env=lm._remoteable_get_env(), blocking=True)

    def _ship_our_code(self) -> None:
        """Register our packages for by-value pickling (they are not installed on NDIF).

        nnsight does this on its own only for packages it finds outside site-packages,
        which misses an installed (``pip install``) circuitsleuth.
        """
        if self._registered:
            return
        from nnsight import register

        for package in SHIPPED_PACKAGES:
            register(package)
        self._registered = True

    def __repr__(self) -> str:
        return f"NDIFBackend(host={self.host!r}, dry_run={self.dry_run})"
