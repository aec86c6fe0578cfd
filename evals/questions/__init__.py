"""Benchmark question files: questions as users ask them, each tied to an answer key.

A question file is YAML (``.yaml``/``.yml``) or JSON holding ``questions:``, a list of::

    id: default-ioi                      # unique; letters, digits, '.', '_', '-'
    question: "indirect object identification"   # what a user would type after `sleuth ask`
    spec: specs/pronoun.yaml             # ... or a behaviour spec file instead (relative to this file)
    key: default-ioi                     # a shipped key (evals/keys/<name>.json) or a key .json path
    model: organism-default              # optional: defaults to the key's model
    seeds: [0, 1, 2, 3, 4]               # optional: one investigation per `sleuth ask --seed` (default [0];
                                         #   it samples a named behaviour's prompts and a quoted
                                         #   prompt's variants; a spec file's own seed wins)
    n: 64                                # optional: prompts per set (default: as `sleuth ask`)
    judge_n: 128                         # optional: re-measure on the first judge_n key prompts
                                         #   (default all of them; smaller for quick smoke runs)

A question scored against a key must ask about the key's contrast (the same corruption): a
quoted IOI prompt left to intake gets both names swapped everywhere, a different contrast from
the IOI keys' (only the repeated name changes), so quote the corrupted prompt.

`sleuth eval --seed-shift K` (`shift_seeds`) asks a file's questions again with other seeds: each
question's seeds move by K times their span (largest − smallest + 1), so shifts 0, 1, 2, ... give
every question disjoint sets of as many seeds, spaced as in the file (K = 0: the file's own).
The benchmark's single-seed questions then run with seed K, its planted question (seeds 0–4) with
5K to 5K + 4.

`load_questions` checks everything it can before any model loads: the file parses, every
field is known, ids are unique, each question has a question or a spec (not both), spec
files exist, and every key loads (`evals.keys.load_key`). Mistakes are one `UserInputError`
line naming the file and the question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.behavior import read_data_file
from evals.keys.schema import AnswerKey, load_key
from tools.errors import UserInputError, first_problem
from tools.tasks import MAX_SEED

QUESTIONS_DIR = Path(__file__).resolve().parent
BENCHMARK = QUESTIONS_DIR / "benchmark.yaml"
"""The shipped benchmark (`sleuth eval`'s default question file)."""


class Question(BaseModel):
    """One benchmark question (see the module docstring for the file format)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
    question: str | None = None
    spec: str | None = None
    key: str
    model: str | None = None
    seeds: tuple[Annotated[int, Field(ge=0, le=MAX_SEED)], ...] = Field((0,), min_length=1)
    n: int | None = Field(None, ge=2)
    judge_n: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _one_form(self) -> "Question":
        if (self.question is None) == (self.spec is None):
            raise ValueError("give either question (the text a user asks) or spec (a behaviour spec file)")
        if self.question is not None and not self.question.strip():
            raise ValueError("question is empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds lists a seed twice")
        return self


class BenchmarkQuestion(BaseModel):
    """A question with its key loaded and its paths resolved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: Question
    key: AnswerKey
    spec_path: Path | None
    model: str
    """The model to investigate: the question's, else the key's."""

    @property
    def id(self) -> str:
        return self.question.id

    @property
    def text(self) -> str:
        return self.question.question or f"spec file {self.question.spec}"


def load_questions(path: str | Path) -> list[BenchmarkQuestion]:
    """The questions of a file, checked (see the module docstring).

    Raises:
        UserInputError: one line naming the file (and the question) for anything wrong.
    """
    path = Path(path)
    data = read_data_file(path, "question file")
    if not isinstance(data, dict) or set(data) != {"questions"} or not isinstance(data["questions"], list) \
            or not data["questions"]:
        raise UserInputError(f"{path}: a question file is a mapping with one field, questions: a non-empty "
                             "list of questions (id, question or spec, key, ...)")
    out: list[BenchmarkQuestion] = []
    for i, entry in enumerate(data["questions"]):
        label = entry.get("id") if isinstance(entry, dict) and isinstance(entry.get("id"), str) else f"#{i + 1}"
        try:
            question = Question.model_validate(entry)
        except ValidationError as error:
            raise UserInputError(f"{path}: question {label}: {first_problem(error)}") from None
        if any(q.id == question.id for q in out):
            raise UserInputError(f"{path}: question id {question.id!r} is used twice")
        spec_path = None
        if question.spec is not None:
            spec_path = Path(question.spec) if Path(question.spec).is_absolute() else path.parent / question.spec
            if not spec_path.is_file():
                raise UserInputError(f"{path}: question {question.id}: no spec file {spec_path}")
        try:
            key = load_key(question.key, base=path.parent)
        except UserInputError as error:
            raise UserInputError(f"{path}: question {question.id}: {error}") from None
        out.append(BenchmarkQuestion(question=question, key=key, spec_path=spec_path,
                                     model=question.model or key.model))
    return out


def select_questions(questions: list[BenchmarkQuestion], only: Sequence[str], path: str | Path) -> list[BenchmarkQuestion]:
    """The questions whose id or model contains one of ``only`` (all of them when it is empty).

    Raises:
        UserInputError: when ``only`` keeps none.
    """
    if not only:
        return list(questions)
    kept = [q for q in questions if any(t in q.id or t in q.model for t in only)]
    if not kept:
        raise UserInputError(f"--only {' '.join(only)}: no question of {path} has that in its id or model")
    return kept


def eval_questions(path: str | Path, only: Sequence[str] = (), seed_shift: int = 0) -> list[BenchmarkQuestion]:
    """What an eval of ``path`` asks: its questions (`load_questions`), those ``only`` keeps
    (`select_questions`), their seeds shifted by ``seed_shift`` (`shift_seeds`). A new eval and a
    resumed one both read their questions through here, so resume compares like with like."""
    return shift_seeds(select_questions(load_questions(path), only, path), seed_shift)


def shift_seeds(questions: Sequence[BenchmarkQuestion], shift: int) -> list[BenchmarkQuestion]:
    """The questions asked again with other seeds (``sleuth eval --seed-shift``): each question's
    seeds moved by ``shift`` times their span (largest − smallest + 1), so that different shifts
    never share a seed of one question.

    Raises:
        UserInputError: for a negative shift.
    """
    if shift < 0:
        raise UserInputError(f"--seed-shift must be 0 or more, not {shift}")
    out = []
    for q in questions:
        step = shift * (max(q.question.seeds) - min(q.question.seeds) + 1)
        if max(q.question.seeds) + step > MAX_SEED:
            raise UserInputError(f"--seed-shift {shift}: question {q.id}'s seeds would pass {MAX_SEED}, "
                                 "the largest seed")
        moved = q.question.model_copy(update={"seeds": tuple(s + step for s in q.question.seeds)})
        out.append(q.model_copy(update={"question": moved}))
    return out
