"""Intake without an LLM: a plain-language question → `BehaviorSpec`, by fixed rules.

Two kinds of question are understood:

- a quoted prompt with its quoted expected completion, optionally a quoted foil and a quoted
  corrupted prompt: ``Why does the model complete "When Mary and John went to the store, John
  gave a drink to" with "Mary" rather than "John"?`` (straight or curly double quotes; single
  quotes when no apostrophe makes them ambiguous);
- a behaviour the task generators know by name (``IOI``, ``induction``, ``greater-than``,
  ``factual recall``, ``pronoun``), which becomes a task spec with ``n`` and ``seed``.

What the question leaves out is filled in by stated rules and written into the spec's notes: a
missing foil is the other name of an IOI-like prompt, else the prompt's most frequent one-token
word other than the answer; a missing corrupted prompt is the clean prompt with the answer and
foil words swapped (kept only if the token count stays the same; ``derived_corrupted`` then
says intake made it). A factual prompt that names an entity of a fact table (a country, a
landmark) whose fact is the answer is corrupted by naming another entity instead, whose fact is
the foil (`tools.tasks.perturb`): "The Eiffel Tower is located in the city of" -> "The
Colosseum is located in the city of", foil " Rome". Anything that cannot be grounded raises a one-line `UserInputError`
listing the accepted forms — intake never guesses a prompt.
"""

from __future__ import annotations

import re
from collections import Counter

from collections.abc import Mapping

from agents.behavior import BehaviorSpec
from tools.errors import TokenizationError, UserInputError
from tools.tasks import TaskGenerator, answer_token_id
from tools.tasks.perturb import derive_entity_corruption
from tools.tasks.declared import DECLARED_BEHAVIOURS

ACCEPTED_FORMS = (
    "ask about a quoted prompt and its quoted completion, e.g. Why does the model complete "
    "\"When Mary and John went to the store, John gave a drink to\" with \"Mary\"? (optionally "
    "followed by rather than \"John\" and corrupted: \"...\"), or name a known behaviour "
    "(indirect object identification/IOI, induction, greater-than, factual recall, pronoun), "
    "or give a YAML/JSON spec file"
)
"""The accepted question forms, appended to every error that says a question cannot be grounded."""

_BEHAVIOURS = (
    ("ioi", re.compile(r"\bioi\b|\bindirect[\s-]+object(?:[\s-]+identification)?\b", re.I)),
    ("induction", re.compile(r"\binduction\b", re.I)),
    ("greater_than", re.compile(r"\bgreater[\s_-]*than\b", re.I)),
    ("facts", re.compile(r"\bfactual(?:\s+recall)?\b|\bfacts?\s+recall\b|\bfacts\b", re.I)),
    ("pronoun", re.compile(r"\bpronouns?\b", re.I)),
    ("trigger", re.compile(r"\btrigger(?:\s+word)?\b|\bbackdoor\b|\btrojan\b", re.I)),
)
"""Task names and the phrases that name them (case-insensitive; synonyms included)."""

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"',
                         "\u00bb": '"', "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'"})
"""Curly and angle quotes → straight ones (one character each, so positions are kept)."""

_SINGLE_QUOTED = re.compile(r"(?<!\w)'(?=\S).*?(?<=\S)'(?!\w)")
"""A single-quoted span: the quotes sit at word edges, so apostrophes inside words are not quotes."""

_ROLE_MARKERS = (
    ("corrupted", r"corrupt(?:ed|ion)?(?:\s+(?:prompt|input|version|run))?|compared\s+(?:with|to)"
                  r"|versus|vs"),
    ("foil", r"than|instead\s+of|not"),
    ("answer", r"with|by|predicts?|says?|outputs?|produces?|prefers?|answers?|completion"
               r"|expected|expects?|chooses?|picks?"),
    ("prompt", r"after|following|given|complet(?:e|es|ing)|continu(?:e|es|ing)|prompt|finish(?:es)?"),
)
"""Which role a quoted string plays, from the words just before it (checked in this order)."""

_ROLE_WORDS = {"prompt": "prompt", "answer": "completion", "foil": "foil",
               "corrupted": "corrupted prompt"}

_WORD = re.compile(r"\w+")


def intake(question: str, *, tokenizer, n: int = 64, seed: int = 0,
           max_length: int | None = None, declared: Mapping[str, TaskGenerator] | None = None) -> BehaviorSpec:
    """The `BehaviorSpec` a question asks about, checked against ``tokenizer``.

    Args:
        question: the researcher's question in plain language.
        tokenizer: the target model's tokenizer (answers and foils must be one token).
        n, seed: prompts per set and their seed: a named behaviour's generated prompts, or the
            variants drawn of a quoted prompt.
        max_length: the model's context length, if prompts must fit it.
        declared: behaviours the model folder declares (`tools.tasks.declared.declared_tasks`):
            a question about the trigger of a planted organism is grounded only when it has one.

    Raises:
        UserInputError: one line saying what is missing or wrong and the accepted forms.
        TokenizationError: an answer or foil that is not one token, or a given corrupted
            prompt of another token count than the clean one.
    """
    if not question.strip():
        raise UserInputError(f"the question is empty; {ACCEPTED_FORMS}")
    if n < 2:
        raise UserInputError(f"n must be at least 2 prompts (the critic's bootstrap needs two), not {n}")
    text = question.translate(_QUOTES)
    # contents come from the question as typed: only the delimiting quotes are normalised
    spans = [(start, end, question[start + 1: end - 1]) for start, end in _quoted(text)]
    outside = text
    for start, end, _ in reversed(spans):
        outside = outside[:start] + " " + outside[end:]
    named = [task for task, pattern in _BEHAVIOURS if pattern.search(outside)]
    if spans:
        spec = _from_quotes(question, text, spans, named, tokenizer, n=n, seed=seed)
    elif len(named) > 1:
        raise UserInputError(f"the question names several behaviours ({', '.join(named)}); ask "
                             "about one at a time")
    elif named and named[0] in DECLARED_BEHAVIOURS and named[0] not in (declared or {}):
        raise UserInputError(f"the question asks about a {named[0]} behaviour, but this model declares none "
                             "(no ground_truth.json); quote the prompt and its completion instead")
    elif named:
        spec = BehaviorSpec(question=question, task=named[0], n=n, seed=seed, notes=(
            f"named behaviour {named[0]!r}: {n} prompts from the task generator (seed {seed}), which "
            "also makes the corrupted prompts and foils",))
    else:
        raise UserInputError(f"the question quotes no prompt and names no known behaviour; "
                             f"{ACCEPTED_FORMS}")
    spec.check(tokenizer, max_length, generator=(declared or {}).get(spec.task or ""))
    return spec


def _quoted(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each quoted string, quotes included; double quotes if any, else single."""
    if '"' in text:
        if text.count('"') % 2:
            raise UserInputError(f"the question has an unmatched double quote; close every quoted "
                                 f"string; {ACCEPTED_FORMS}")
        return [m.span() for m in re.finditer(r'"[^"]*"', text)]
    spans = [m.span() for m in _SINGLE_QUOTED.finditer(text)]
    edges = sum(1 for i, c in enumerate(text) if c == "'" and not _inside_word(text, i))
    if edges != 2 * len(spans):
        raise UserInputError("the single quotes in the question are ambiguous (an apostrophe or an "
                             f"unmatched quote); quote the prompt and completion with double quotes; "
                             f"{ACCEPTED_FORMS}")
    return spans


def _inside_word(text: str, i: int) -> bool:
    """Whether position ``i`` has word characters on both sides (an apostrophe, as in don't)."""
    return 0 < i < len(text) - 1 and bool(_WORD.match(text[i - 1]) and _WORD.match(text[i + 1]))


def _role(before: str) -> str | None:
    """The role a quoted string plays, from the text just before it (None: not said)."""
    tail = before.lower().rstrip(" \t\n,:;(-\u2013\u2014.")
    for role, markers in _ROLE_MARKERS:
        if re.search(rf"(?:^|\W)(?:{markers})$", tail):
            return role
    return None


def _from_quotes(question: str, text: str, spans: list[tuple[int, int, str]], named: list[str],
                 tokenizer, *, n: int, seed: int) -> BehaviorSpec:
    """An explicit one-prompt spec from the quoted strings of ``text``; ``n`` and ``seed`` set
    how many variants of the prompt are drawn and which (`agents.steps.draw_user_prompt_sets`)."""
    roles: dict[str, str] = {}
    unlabelled: list[str] = []
    previous_end = 0
    for start, end, content in spans:
        role = _role(text[previous_end:start])
        previous_end = end
        if role is None:
            unlabelled.append(content)
        elif role in roles:
            raise UserInputError(f"the question quotes two {_ROLE_WORDS[role]}s ({roles[role]!r} "
                                 f"and {content!r}); quote one of each; {ACCEPTED_FORMS}")
        else:
            roles[role] = content
    for content in unlabelled:
        slot = next((r for r in ("prompt", "answer") if r not in roles), None)
        if slot is None:
            raise UserInputError(f"cannot tell what the quoted {content!r} is (prompt and "
                                 f"completion are already quoted); {ACCEPTED_FORMS}")
        roles[slot] = content
    prompt = roles.get("prompt")
    if prompt is None:
        raise UserInputError(f"the question quotes no prompt for the model to complete; "
                             f"{ACCEPTED_FORMS}")
    if not prompt.strip():
        raise UserInputError(f"the quoted prompt is empty; quote the text the model completes; "
                             f"{ACCEPTED_FORMS}")
    if roles.get("answer") is None or not roles["answer"].strip():
        what = "is empty" if "answer" in roles else "is missing"
        raise UserInputError(f"the expected completion {what}; quote it after the prompt, as in "
                             f"with \"Mary\"; {ACCEPTED_FORMS}")
    answer_word = roles["answer"].strip()
    answer = _continuation(prompt, answer_word)
    notes = [f"prompt and completion read from the quoted strings; the answer is {answer!r} "
             "(as it follows the prompt)"]
    if named:
        notes.append(f"the question also names {', '.join(named)}; the quoted prompt is used "
                     "(ask without quotes for generated prompts of that behaviour)")
    foil_word = roles["foil"].strip() if "foil" in roles else None
    if "foil" in roles and not foil_word:
        raise UserInputError("the quoted foil is empty; quote the wrong completion to compare "
                             "with, as in rather than \"John\"")
    entity = None if "corrupted" in roles else derive_entity_corruption(prompt, answer_word, tokenizer, foil_word)
    if entity is not None:
        corrupted_text, entity_foil, replaced = entity
        if foil_word is None:
            foil_word = entity_foil
            notes.append(f"foil {_continuation(prompt, foil_word)!r} inferred: the fact of the entity the "
                         f"corrupted prompt names instead of {replaced!r}")
        else:
            notes.append(f"foil {_continuation(prompt, foil_word)!r} read from the question")
        notes.append(f"corrupted prompt derived by intake, not given: {corrupted_text!r}, the clean prompt "
                     f"with the entity {replaced!r} (whose fact is the answer) replaced by one whose fact is "
                     f"the foil; same token count")
        return BehaviorSpec(question=question, prompts=(prompt,), answers=(answer,),
                            foils=(_continuation(prompt, foil_word),), corrupted=(corrupted_text,),
                            derived_corrupted=True, n=n, seed=seed, notes=tuple(notes))
    if foil_word is not None:
        notes.append(f"foil {_continuation(prompt, foil_word)!r} read from the question")
    else:
        foil_word, note = _infer_foil(prompt, answer_word, tokenizer)
        notes.append(note)
    if foil_word == answer_word:
        raise UserInputError(f"the foil {foil_word!r} is the answer itself; quote a different "
                             "wrong completion, as in rather than \"John\"")
    derived = False
    corrupted: tuple[str, ...] = ()
    if "corrupted" in roles:
        if roles["corrupted"] == prompt:
            raise UserInputError("the corrupted prompt is the clean prompt itself; change the part "
                                 "that selects the answer (e.g. swap the names)")
        corrupted = (roles["corrupted"],)
        notes.append("corrupted prompt read from the question")
    else:
        made, note = _derive_corrupted(prompt, answer_word, foil_word, tokenizer)
        notes.append(note)
        if made is not None:
            corrupted, derived = (made,), True
    return BehaviorSpec(question=question, prompts=(prompt,), answers=(answer,),
                        foils=(_continuation(prompt, foil_word),), corrupted=corrupted,
                        derived_corrupted=derived, n=n, seed=seed, notes=tuple(notes))


def _continuation(prompt: str, word: str) -> str:
    """``word`` as it follows ``prompt``: with a leading space unless the prompt ends with one."""
    return word if prompt[-1:].isspace() else " " + word


def _is_one_token(tokenizer, prompt: str, word: str) -> bool:
    try:
        answer_token_id(tokenizer, prompt, _continuation(prompt, word))
    except TokenizationError:
        return False
    return True


def _infer_foil(prompt: str, answer_word: str, tokenizer) -> tuple[str, str]:
    """A foil word for a prompt whose question gives none, and the note that says how."""
    names = r"[A-Z][\w'-]*"
    for m in re.finditer(rf"(?<!\w)({names})\s+(?:and|or)\s+({names})(?!\w)", prompt):
        pair = m.group(1), m.group(2)
        if answer_word in pair and pair[0] != pair[1]:
            other = pair[1] if pair[0] == answer_word else pair[0]
            if _is_one_token(tokenizer, prompt, other):
                return other, (f"foil {_continuation(prompt, other)!r} inferred: the other name in "
                               f"the prompt ({m.group(0)!r}, an IOI-like prompt)")
    words = [m.group() for m in _WORD.finditer(prompt)]
    counts = Counter(words)
    last = {w: i for i, w in enumerate(words)}
    for word in sorted(counts, key=lambda w: (-counts[w], -last[w])):
        if word.lower() != answer_word.lower() and _is_one_token(tokenizer, prompt, word):
            return word, (f"foil {_continuation(prompt, word)!r} inferred: the most frequent word "
                          f"of the prompt ({counts[word]} occurrence{'s' if counts[word] > 1 else ''}) that is one "
                          "token and not the answer")
    raise UserInputError(f"cannot infer a foil: no word of the prompt other than the answer is one "
                         f"token for this tokenizer; quote one, as in with \"{answer_word}\" rather "
                         "than \"...\"")


def _derive_corrupted(prompt: str, answer_word: str, foil_word: str,
                      tokenizer) -> tuple[str | None, str]:
    """The prompt with answer and foil words swapped, so that it points at the foil.

    None (with a note saying why) when the answer does not occur in the prompt or the swap
    changes the token count.
    """
    hint = "give one (corrupted: \"...\") for experiments that patch"
    if not re.search(rf"(?<!\w){re.escape(answer_word)}(?!\w)", prompt):
        return None, (f"no corrupted prompt: the answer {answer_word!r} does not occur in the prompt, "
                      f"so intake cannot tell which tokens select it; {hint}")
    swap = {answer_word: foil_word, foil_word: answer_word}
    alternatives = "|".join(re.escape(w) for w in sorted(swap, key=len, reverse=True))
    corrupted, count = re.subn(rf"(?<!\w)(?:{alternatives})(?!\w)", lambda m: swap[m.group()], prompt)
    clean_len, corrupted_len = (len(tokenizer(t, add_special_tokens=True)["input_ids"])
                                for t in (prompt, corrupted))
    if corrupted_len != clean_len:
        return None, (f"no corrupted prompt: swapping {answer_word!r} and {foil_word!r} changes the "
                      f"token count ({clean_len} → {corrupted_len}); {hint}")
    return corrupted, (f"corrupted prompt derived by intake, not given: {corrupted!r}, the clean "
                       f"prompt with {answer_word!r} and {foil_word!r} swapped ({count} "
                       f"replacement{'s' if count > 1 else ''}), so it points at the foil; same "
                       f"token count ({clean_len})")
