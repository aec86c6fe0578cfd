"""The behaviour an investigation studies: a typed `BehaviorSpec`, and loading one from a file.

A `BehaviorSpec` is what intake hands the planner: either a named behaviour that
`tools.tasks` generates prompts for (``task`` with ``n`` and ``seed``), or explicit lists of
clean prompts with their answers, foils and (optionally) corrupted prompts. Structural
mistakes (both forms at once, lists of different lengths, an empty prompt, an unknown task)
raise `UserInputError` when the spec is built; what needs the model's tokenizer (one-token
answers, equal clean/corrupted token counts, the context length) is checked by
`BehaviorSpec.check`, before any forward pass.

A spec file (YAML or JSON, by suffix) gives the user full control over the same fields; see
`load_spec_file`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.errors import TokenizationError, UserInputError
from tools.experiments.prompts import PromptPairs
from tools.tasks import MAX_SEED, TaskGenerator, answer_token_id, get_task
from tools.tasks.declared import DECLARED_BEHAVIOURS

Metric = Literal["logit_diff", "prob", "accuracy"]

_LISTS = ("prompts", "answers", "foils", "corrupted")


class BehaviorSpec(BaseModel):
    """What behaviour to explain: a named task, or explicit prompts with answers and foils."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    """The researcher's question, as asked (or the spec file it came from)."""
    task: str | None = None
    """A `tools.tasks` name (``ioi``, ``induction``, ...) when the behaviour is a named one."""
    prompts: tuple[str, ...] = ()
    """Clean prompts on which the model shows the behaviour (empty when ``task`` is set)."""
    answers: tuple[str, ...] = ()
    """The expected continuation of each prompt, as it follows the prompt (``" Mary"``)."""
    foils: tuple[str, ...] = ()
    """The most tempting wrong continuation of each prompt."""
    corrupted: tuple[str, ...] = ()
    """One same-length prompt per clean prompt with the answer-selecting information changed (may be empty)."""
    metric: Metric = "logit_diff"
    """The headline metric: logit difference answer − foil, answer probability, or top-1 accuracy."""
    n: int = Field(64, ge=2)
    """Prompts per set: how many ``task`` generates, or how many variants of explicit prompts
    the investigation draws (`agents.steps.draw_user_prompt_sets`); see `with_prompt_count`."""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Seed of the task generator, or of the variants drawn of explicit prompts."""
    derived_corrupted: bool = False
    """True when intake made the corrupted prompts itself; the report must say so."""
    notes: tuple[str, ...] = ()
    """What intake decided, in words (inferred foils, derived corrupted prompts, ...)."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str | None) -> str | None:
        """Normalise a task name (``Greater-Than`` → ``greater_than``); an unknown one raises."""
        if task is None:
            return None
        if task.strip().lower() in DECLARED_BEHAVIOURS:  # generated from the model folder's ground truth
            return task.strip().lower()
        return get_task(task).name

    @model_validator(mode="after")
    def _check_shape(self) -> "BehaviorSpec":
        if self.task is not None:
            given = [name for name in _LISTS if getattr(self, name)]
            if given:
                raise UserInputError(f"{given[0]}: give either a task or explicit prompt lists, not both")
            if self.derived_corrupted:
                raise UserInputError("derived_corrupted: a task generates its own corrupted prompts")
            return self
        if not self.prompts:
            raise UserInputError("prompts: no prompts; give at least one prompt with its answer and "
                                 "foil, or a task name")
        for name in ("answers", "foils"):
            count = len(getattr(self, name))
            if count != len(self.prompts):
                raise UserInputError(f"{name}: has {count} entries for {len(self.prompts)} prompts; "
                                     "give one per prompt")
        if self.corrupted and len(self.corrupted) != len(self.prompts):
            raise UserInputError(f"corrupted: has {len(self.corrupted)} entries for "
                                 f"{len(self.prompts)} prompts; give one per prompt (or none)")
        if self.derived_corrupted and not self.corrupted:
            raise UserInputError("derived_corrupted: is set but there are no corrupted prompts")
        for name in _LISTS:
            for i, text in enumerate(getattr(self, name)):
                if not text.strip():
                    raise UserInputError(f"{name}[{i}]: is empty; give the text")
        return self

    def to_prompt_pairs(self, split: Literal["train", "heldout"] = "heldout", *, seed: int | None = None,
                        generator: TaskGenerator | None = None, tokenizer=None) -> PromptPairs:
        """The spec as the prompt input of an experiment (``split`` and ``seed`` matter only for
        a task). A behaviour the model folder declares (``trigger``) needs its ``generator``
        (`tools.tasks.declared.declared_tasks`) and the tokenizer; its prompts are listed."""
        seed = self.seed if seed is None else seed
        if self.task is not None and self.task in DECLARED_BEHAVIOURS:
            if generator is None:
                raise UserInputError(f"task {self.task!r} is declared by a model folder; this model declares "
                                     "none (no ground_truth.json)")
            items = generator.generate(self.n, split=split, seed=seed, tokenizer=tokenizer)
            return PromptPairs(clean=[i.clean for i in items], corrupted=[i.corrupted for i in items],
                               answer=[i.answer for i in items], foil=[i.foil for i in items])
        if self.task is not None:
            return PromptPairs(task=self.task, n=self.n, split=split, seed=seed)
        return PromptPairs(clean=self.prompts, corrupted=self.corrupted, answer=self.answers,
                           foil=self.foils, split=split)

    def check(self, tokenizer, max_length: int | None = None, *, generator: TaskGenerator | None = None) -> None:
        """Check the spec against a model's tokenizer and context length, before any forward pass.

        For a task, its held-out prompts are generated with ``tokenizer`` (which fails if the
        behaviour cannot be expressed with it) and checked against ``max_length``.

        Raises:
            TokenizationError: an answer or foil that is not exactly one token after its
                prompt, a corrupted prompt whose token count differs from its clean prompt's,
                or a task this tokenizer cannot express.
            UserInputError: a prompt that tokenises to nothing or exceeds ``max_length``.
        """
        if self.task is not None:
            if self.task in DECLARED_BEHAVIOURS and generator is None:
                raise UserInputError(f"task {self.task!r} is declared by a model folder; this model declares "
                                     "none (no ground_truth.json)")
            source = generator if self.task in DECLARED_BEHAVIOURS else get_task(self.task)
            items = source.generate(self.n, split="heldout", seed=self.seed, tokenizer=tokenizer)
            rows = [(p.clean, p.answer, p.foil, p.corrupted) for p in items]
            label = f"task {self.task!r}: generated "
        else:
            corrupted = self.corrupted or (None,) * len(self.prompts)
            rows = list(zip(self.prompts, self.answers, self.foils, corrupted))
            label = ""
        for i, (prompt, answer, foil, corrupt) in enumerate(rows):
            ids = _encode(tokenizer, prompt)
            if not ids:
                raise UserInputError(f"{label}prompts[{i}]: {prompt!r} tokenises to no tokens; "
                                     "give a prompt with text in it")
            if max_length is not None and len(ids) > max_length:
                raise UserInputError(f"{label}prompts[{i}]: has {len(ids)} tokens, more than the "
                                     f"model's context of {max_length}; shorten it")
            for field, text in (("answers", answer), ("foils", foil)):
                try:
                    answer_token_id(tokenizer, prompt, text)
                except TokenizationError as error:
                    raise TokenizationError(f"{label}{field}[{i}]: {error}") from None
            if corrupt is not None and len(_encode(tokenizer, corrupt)) != len(ids):
                raise TokenizationError(
                    f"{label}corrupted[{i}]: has {len(_encode(tokenizer, corrupt))} tokens but its "
                    f"prompt has {len(ids)}; patching compares positions one to one, so make "
                    "them tokenise to the same length")


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens, as the experiments encode prompts."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


_FILE_FIELDS = tuple(name for name in BehaviorSpec.model_fields
                     if name not in ("derived_corrupted", "notes"))
"""Fields a spec file may set; what intake decides (notes, derived corruption) is not among them."""


SMALL_MODEL_PARAMETERS = 100_000_000
"""Models with fewer parameters get 64 prompts per set by default, larger ones 32."""


def default_prompt_count(hf_model) -> int:
    """Prompts per set when the user says nothing: 64 for a model (a torch module) under
    `SMALL_MODEL_PARAMETERS` parameters, else 32."""
    return 64 if sum(p.numel() for p in hf_model.parameters()) < SMALL_MODEL_PARAMETERS else 32


def with_prompt_count(behavior: BehaviorSpec, n: int | None, default: int) -> BehaviorSpec:
    """``behavior`` with its prompts per set settled: ``--n`` when given, else the ``n`` the spec
    (a spec file, or intake) set itself, else ``default`` (`default_prompt_count`)."""
    if n is not None:
        return behavior.model_copy(update={"n": n})
    return behavior if "n" in behavior.model_fields_set else behavior.model_copy(update={"n": default})


def load_spec_file(path: str | Path) -> BehaviorSpec:
    """A `BehaviorSpec` from a YAML (``.yaml``/``.yml``) or JSON (``.json``) file.

    The file is a mapping with either ``prompts``, ``answers``, ``foils`` (and optionally
    ``corrupted``) or ``task``, and optionally ``metric``, ``n``, ``seed`` and ``question``
    (``n`` and ``seed``: see `BehaviorSpec`). Answers are used exactly as written (give the
    leading space).

    Raises:
        UserInputError: one line naming the file and the field, for a missing or unreadable
            file, an unparsable one, an unknown field, a wrong type, or an inconsistent spec.
    """
    path = Path(path)
    data = read_data_file(path, "spec file")
    if data is None:
        raise UserInputError(f"{path}: the spec file is empty; give prompts, answers and foils, "
                             "or a task")
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: the spec file must hold a mapping of fields "
                             f"({', '.join(_FILE_FIELDS)}), not a {type(data).__name__}")
    unknown = [str(key) for key in data if key not in _FILE_FIELDS]
    if unknown:
        raise UserInputError(f"{path}: unknown field {unknown[0]!r}; known fields: "
                             f"{', '.join(_FILE_FIELDS)}")
    fields = {"question": f"spec file {path.name}", **data,
              "notes": (f"behaviour read from spec file {path.name}",)}
    try:
        return BehaviorSpec(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        got = type(first["input"]).__name__ if "input" in first else "?"
        raise UserInputError(f"{path}: field {where!r}: {first['msg']} (got {got})") from None
    except UserInputError as error:
        raise type(error)(f"{path}: {error}") from None


def read_data_file(path: str | Path, what: str) -> object:
    """The content of a YAML (``.yaml``/``.yml``) or JSON (``.json``) file as Python data.

    Raises:
        UserInputError: one line naming the file (``what``: "spec file", "question file"...) when
            its type is not one of those, it is missing or unreadable, or it does not parse.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise UserInputError(f"{path}: unknown {what} type {suffix or '(no suffix)'!r}; "
                             "use a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such {what}; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot read the {what} ({type(error).__name__}); "
                             "give a readable UTF-8 text file") from None
    return _parse(path, text, suffix)


def _parse(path: Path, text: str, suffix: str) -> object:
    """The file's content as Python data; a syntax error becomes a one-line `UserInputError`."""
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{path}: not valid JSON (line {error.lineno}, column "
                                 f"{error.colno}: {error.msg})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UserInputError(f"{path}: not valid YAML ({where}{problem})") from None
