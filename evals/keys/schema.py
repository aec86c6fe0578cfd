"""Answer keys: what matters for one behaviour of one model, and exactly how that was found.

An `AnswerKey` is a JSON file (``evals/keys/<name>.json`` for the shipped ones, or a user's
own). It names the model (and the hash of the weights it was computed on), the prompt set it
was computed on — which is also where the eval harness re-measures claims and circuits — the
components that matter, the edges between them, and, for a planted organism, the component
the mechanism was planted in. A brute-force key (`evals.keys.compute`) also carries its
method with every threshold, the full table it was read from, and the command that recomputes
it; a hand-written key may leave those out.

Component names are the project's (``head.L.H``, ``mlp.L``); an edge's receiver is a head's
query, key or value input (``head.L.H.q``) or ``logits`` (the sender's direct path to the
output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.components import parse_component
from tools.errors import UserInputError

if TYPE_CHECKING:
    from tools.experiments.prompts import PromptPairs
    from tools.loading import LoadedModel

KEYS_DIR = Path(__file__).resolve().parent
"""Where the shipped answer keys live (``<name>.json``)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _kind(name: str) -> str:
    """The component kind of ``name`` (a malformed name is a validation error of the field)."""
    try:
        return parse_component(name).kind
    except UserInputError as error:
        raise ValueError(str(error)) from None


class Effect(_Frozen):
    """A fraction of the behaviour with its bootstrap confidence interval (ratio of means)."""

    estimate: float
    low: float
    high: float

    @property
    def clear_of_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class ComponentEffect(_Frozen):
    """One row of a brute-force key's table: a head or MLP patched alone, both ways."""

    component: str
    restores: Effect
    """Denoising: the share of the clean − corrupted logit difference restored by patching the
    component's clean value into the corrupted run (sufficiency)."""
    removes: Effect
    """Noising: the share removed by patching its corrupted value into the clean run (necessity)."""
    matters: bool
    """Whether it passes the key's component rule (`KeyMethod.component_threshold`)."""


class Edge(_Frozen):
    """A path from a sender component into a receiver input."""

    sender: str
    """``head.L.H`` or ``mlp.L``."""
    receiver: str
    """``head.L.H.q`` / ``.k`` / ``.v``, or ``logits``."""
    carried: Effect | None = None
    """Brute-force keys: the share of the logit difference the path carries (noising path
    patching: patching the sender's corrupted output into the receiver along this path only)."""

    @property
    def pair(self) -> tuple[str, str]:
        return (self.sender, self.receiver)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if _kind(value) not in ("head", "mlp"):
            raise ValueError(f"edge sender {value!r} must be a head (head.L.H) or an MLP (mlp.L)")
        return value

    @field_validator("receiver")
    @classmethod
    def _receiver(cls, value: str) -> str:
        if value == "logits":
            return value
        head, _, part = value.rpartition(".")
        if part not in ("q", "k", "v") or not head or _kind(head) != "head":
            raise ValueError(f"edge receiver {value!r} must be 'logits' or a head's input like 'head.3.0.q'")
        return value


class KeyPrompts(_Frozen):
    """The prompt set of a key: a task's split and seed, or explicit prompt lists."""

    task: str | None = None
    """A `tools.tasks` name, or a behaviour the model folder declares (``trigger``)."""
    split: Literal["train", "heldout"] = "heldout"
    seed: int = 0
    n: int | None = Field(None, ge=1)
    """How many prompts the task generates (with ``task``)."""
    clean: tuple[str, ...] = ()
    corrupted: tuple[str, ...] = ()
    answer: tuple[str, ...] = ()
    foil: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_form(self) -> "KeyPrompts":
        lists = (self.clean, self.corrupted, self.answer, self.foil)
        if self.task is not None:
            if any(lists):
                raise ValueError("give either a task (with n) or prompt lists, not both")
            if self.n is None:
                raise ValueError("a task needs n, the number of prompts to generate")
            return self
        if not self.clean:
            raise ValueError("give a task with n, or clean, corrupted, answer and foil lists")
        if len({len(x) for x in lists}) != 1:
            raise ValueError("clean, corrupted, answer and foil must have one entry each per prompt")
        return self

    @property
    def size(self) -> int:
        return self.n if self.task is not None else len(self.clean)

    def pairs(self, model: "LoadedModel", n: int | None = None) -> "PromptPairs":
        """The prompts for ``model`` (the first ``n`` of them when ``n`` is given: a generator
        draws its items in sequence, so a smaller ``n`` gives a prefix of the same set)."""
        from tools.experiments.prompts import PromptPairs
        from tools.tasks import TASK_NAMES
        from tools.tasks.declared import declared_tasks

        count = self.size if n is None else min(n, self.size)
        if self.task is None:
            return PromptPairs(clean=self.clean[:count], corrupted=self.corrupted[:count],
                               answer=self.answer[:count], foil=self.foil[:count])
        name = self.task.strip().lower().replace("-", "_")
        if name in TASK_NAMES:
            return PromptPairs(task=name, n=count, split=self.split, seed=self.seed)
        generator = declared_tasks(model.source).get(name)
        if generator is None:
            raise UserInputError(f"task {self.task!r} is neither a known task nor a behaviour model "
                                 f"{model.model_id!r} declares")
        items = generator.generate(count, split=self.split, seed=self.seed, tokenizer=model.tokenizer)
        return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                           answer=[i.answer for i in items], foil=[i.foil for i in items])


class KeyMethod(_Frozen):
    """Everything that decides a brute-force key's answer (`evals.keys.compute`)."""

    patching: str = ("activation patching of every head (its z) and every MLP (its output), each alone, "
                     "at every position, in both directions: denoising (clean into corrupted) and "
                     "noising (corrupted into clean)")
    component_threshold: float = 0.10
    """A component matters when it restores or removes at least this share of the logit
    difference, with that effect's confidence interval clear of zero."""
    edges: str = ("noising path patching (Wang et al. 2022; heads and MLPs frozen, so only the direct "
                  "path) from every component that matters into the logits, and into the query, key and "
                  "value inputs of every head that matters from every component that matters in an "
                  "earlier layer")
    edge_threshold: float = 0.05
    """An edge counts when its path carries at least this share, CI clear of zero."""
    confidence: float = 0.99
    """Two-sided level of the expanded percentile bootstrap intervals (ratio of means over prompts)."""
    n_resamples: int = 2000
    bootstrap_seed: int = 0
    recipe: str
    """The command that recomputes the key."""


class AnswerKey(_Frozen):
    """The answer key of one behaviour of one model (see the module docstring)."""

    format: Literal[1] = 1
    name: str
    model: str
    """The model as `sleuth --model` names it (``organism-default``, ``gemma-3-270m``, a path)."""
    weights_hash: str | None = None
    """The weights the key holds for; the harness refuses a model whose weights differ."""
    behaviour: str
    """What behaviour, in words."""
    prompts: KeyPrompts
    """Where the key was computed, and where the harness re-measures claims and circuits."""
    components: tuple[str, ...]
    """The components that matter, largest effect first."""
    edges: tuple[Edge, ...] = ()
    """The edges that count."""
    planted: tuple[str, ...] = ()
    """The exact ground truth of a planted organism: the component(s) the mechanism was trained into."""
    method: KeyMethod | None = None
    """How the key was computed (None: a hand-written key)."""
    clean_logit_diff: float | None = None
    corrupted_logit_diff: float | None = None
    """Mean logit differences (answer − foil) of the clean and corrupted runs on the prompts."""
    component_table: tuple[ComponentEffect, ...] = ()
    """Every component's measured effects (brute-force keys)."""
    edge_table: tuple[Edge, ...] = ()
    """Every path measured (brute-force keys), counted or not."""

    @field_validator("components", "planted")
    @classmethod
    def _components(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if _kind(name) not in ("head", "mlp"):
                raise ValueError(f"{name!r}: a key lists heads (head.L.H) and MLPs (mlp.L)")
        if len(set(value)) != len(value):
            raise ValueError("lists a component twice")
        return value

    def check_model(self, model: "LoadedModel") -> None:
        """The key's components exist in ``model`` and its weights are the key's."""
        if self.weights_hash is not None and model.weights_hash != self.weights_hash:
            raise UserInputError(f"answer key {self.name!r} holds for weights {self.weights_hash[:12]}, but "
                                 f"{model.model_id!r} has weights {model.weights_hash[:12]}; recompute the key"
                                 + (f" ({self.method.recipe})" if self.method else ""))
        adapter = model.adapter
        names = list(self.components) + list(self.planted) + [e.sender for e in self.edges] + \
            [e.receiver.rpartition(".")[0] for e in self.edges if e.receiver != "logits"]
        for name in names:
            c = parse_component(name)
            if c.layer >= adapter.n_layers or (c.kind == "head" and c.head >= adapter.n_heads):
                raise UserInputError(f"answer key {self.name!r} names {name}, which {model.model_id!r} "
                                     f"({adapter.n_layers} layers × {adapter.n_heads} heads) does not have")


def load_key(reference: str, *, base: Path | None = None) -> AnswerKey:
    """A key by shipped name (``default-ioi``) or by path (relative to ``base``, the folder of
    the question file that names it).

    Raises:
        UserInputError: one line naming the key, for a missing, unparsable or invalid file.
    """
    path = Path(reference)
    if path.suffix.lower() != ".json":
        shipped = KEYS_DIR / f"{reference}.json"
        if not shipped.is_file():
            known = ", ".join(sorted(p.stem for p in KEYS_DIR.glob("*.json")))
            raise UserInputError(f"unknown answer key {reference!r}; shipped keys: {known} "
                                 "(or give the path of a key .json file)")
        path = shipped
    elif not path.is_absolute() and base is not None:
        path = base / path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"answer key {reference!r}: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"answer key {reference!r}: cannot read {path} ({type(error).__name__})") from None
    try:
        return AnswerKey.model_validate(json.loads(text))
    except json.JSONDecodeError as error:
        raise UserInputError(f"answer key {path}: not valid JSON (line {error.lineno}, column "
                             f"{error.colno}: {error.msg})") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise UserInputError(f"answer key {path}: {where}: {first['msg']}") from None


def save_key(key: AnswerKey, path: Path) -> Path:
    """Write ``key`` as indented JSON (atomically)."""
    from tools.atomic import atomic_write_text

    return atomic_write_text(path, key.model_dump_json(indent=1, exclude_none=False) + "\n")
