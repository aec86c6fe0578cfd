"""One root error; subclasses say whose fault it is.

``UserInputError`` and its children are mistakes the user can fix (a bad model path, an
unknown task, an answer that is not one token). The CLI prints their message on one line and
exits with code 2. Ctrl-C is not a bug either: the CLI says on one line where the run was left
(``Interrupted``) and exits with 130. Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class SleuthError(Exception):
    """Root of every error circuitsleuth raises on purpose."""


class UserInputError(SleuthError):
    """The user's input cannot be used; the message says what is wrong and what to do."""


class ModelNotFoundError(UserInputError):
    """A model path or hub id that cannot be resolved (offline, missing, mistyped)."""


class NotAModelError(UserInputError):
    """A folder or file that exists but does not hold a loadable causal LM."""


class UnsupportedArchitectureError(UserInputError):
    """A model whose family has no architecture adapter."""


class UnknownTaskError(UserInputError):
    """A task (behaviour) name the prompt-set generators do not know."""


class TokenizationError(UserInputError):
    """An answer or foil that is not exactly one token for this tokenizer."""


class ModelError(SleuthError):
    """The model itself failed (shape mismatch, out of memory, a broken checkpoint)."""


class SpecError(UserInputError):
    """An experiment spec that cannot run on this model, raised before any forward pass.

    ``field`` names the offending field as a dotted path (``"layers"``,
    ``"prompts.corrupted[3]"``, ``"component_sets[0][1]"``); the message says what is
    wrong and what to do.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # keep the two-argument constructor picklable
        return (type(self), (self.field, self.message))


class StorageError(UserInputError):
    """A workspace that cannot be read or written: missing, not writable, full, locked, damaged.

    The message names the path and what to do; nothing stored before the failure is changed.
    """


class SetupError(UserInputError):
    """A required offline component is not installed (the embedding model, a server binary)."""


def first_problem(error: Exception) -> str:
    """A pydantic ``ValidationError`` in one line: where its first problem is and what it is
    (``questions.0.seeds.1: Input should be ...``), without pydantic's ``Value error, `` prefix."""
    first = error.errors()[0]  # type: ignore[attr-defined]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"


def stored_reason(error: BaseException) -> str:
    """What stopped a run, for ``run.json``'s ``error``: a user error's own first line, else the
    exception's type with its first line (at most 300 characters)."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if not isinstance(error, UserInputError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:300]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with something stored to go on from; the message says what and the command to go on."""
