"""Intake (question → BehaviorSpec), BehaviorSpec checks and spec files, on real tokenizers.

Tokenizers: the shipped organism's word-level tokenizer (loaded alone from its folder, which
is much faster than loading the model), the 64-word tokenizer ``w0 .. w61`` of the adapter
tests, and a small byte-level BPE built here whose sentence-initial and mid-sentence forms
of a name differ, as in GPT-2 style tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from agents.behavior import BehaviorSpec, load_spec_file, with_prompt_count
from agents.intake import intake
from tests.test_adapters import tiny_tokenizer
from tools.errors import TokenizationError, UnknownTaskError, UserInputError
from tools.experiments import PromptPairs

ORGANISM = Path(__file__).resolve().parents[1] / "evals" / "organisms" / "default"
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_FLIPPED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def organism_tok():
    return AutoTokenizer.from_pretrained(ORGANISM)


@pytest.fixture(scope="module")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    """Byte-level BPE: ``Mary``/`` Mary`` and `` Bob`` are one token each, ``Bob`` is three."""
    merges = [("Ġ", "M"), ("ĠM", "a"), ("ĠMa", "r"), ("ĠMar", "y"), ("M", "a"), ("Ma", "r"),
              ("Mar", "y"), ("Ġ", "B"), ("ĠB", "o"), ("ĠBo", "b")]
    vocab = {"<unk>": 0}
    for piece in [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,.Ġ", *(a + b for a, b in merges)]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def without_question(spec: BehaviorSpec) -> dict:
    return spec.model_dump(exclude={"question"})


# --- accepted question forms ---------------------------------------------------------------


def test_quoted_prompt_and_completion(organism_tok):
    spec = intake(f'Why does the model complete "{IOI}" with "Mary"?', tokenizer=organism_tok)
    assert spec.task is None
    assert spec.prompts == (IOI,)
    assert spec.answers == (" Mary",)
    assert spec.foils == (" John",)
    assert spec.metric == "logit_diff"
    assert spec.question.startswith("Why does the model complete")


def test_the_seed_reaches_a_quoted_prompt_and_draws_its_variants(organism_tok):
    from agents.steps import draw_user_prompt_sets

    question = f'Why does the model complete "{IOI}" with "Mary"?'
    specs = {seed: intake(question, tokenizer=organism_tok, n=8, seed=seed) for seed in (0, 1)}
    assert (specs[0].seed, specs[1].seed) == (0, 1)
    drawn = {seed: draw_user_prompt_sets(spec, organism_tok) for seed, spec in specs.items()}
    assert drawn[0][0].clean[0] == drawn[1][0].clean[0] == IOI  # the user's own prompt comes first
    assert drawn[0][0].clean != drawn[1][0].clean  # other variants for discovery ...
    assert drawn[0][1].clean != drawn[1][1].clean  # ... and for the critic
    assert draw_user_prompt_sets(specs[1], organism_tok) == drawn[1]  # seeded


def test_n_reaches_a_quoted_prompt_and_sets_how_many_variants_are_drawn(organism_tok):
    from agents.steps import draw_user_prompt_sets

    spec = intake(f'Why does the model complete "{IOI}" with "Mary"?', tokenizer=organism_tok, n=8)
    assert spec.n == 8
    discovery, fresh = draw_user_prompt_sets(spec, organism_tok)
    assert len(discovery.clean) == len(fresh.clean) == 8


def test_curly_and_single_quotes_read_like_straight_double_quotes(organism_tok):
    straight = intake(f'Why does the model complete "{IOI}" with "Mary"?', tokenizer=organism_tok)
    curly = intake(f"Why does the model complete \u201c{IOI}\u201d with \u201cMary\u201d?",
                   tokenizer=organism_tok)
    curly_single = intake(f"Why does the model complete \u2018{IOI}\u2019 with \u2018Mary\u2019?",
                          tokenizer=organism_tok)
    # the apostrophe of "doesn't" is not a quote
    single = intake(f"Why doesn't the model complete '{IOI}' with 'Mary'?", tokenizer=organism_tok)
    for other in (curly, curly_single, single):
        assert without_question(other) == without_question(straight)


def test_quoted_text_is_kept_as_typed(tiny_tok):
    spec = intake("complete \u201cw1 don\u2019t w1\u201d with \u201cw3\u201d", tokenizer=tiny_tok)
    assert spec.prompts == ("w1 don\u2019t w1",)


@pytest.mark.parametrize("connector", ["rather than", "instead of", ", not", "and not", "more likely than"])
def test_quoted_foil(organism_tok, connector):
    spec = intake(f'Why does the model complete "{IOI}" with "Mary" {connector} "Tom"?',
                  tokenizer=organism_tok)
    assert spec.answers == (" Mary",)
    assert spec.foils == (" Tom",)
    assert any("read from the question" in note for note in spec.notes)


@pytest.mark.parametrize("connector", ["corrupted:", "compared with", "Corrupted prompt:", "compared to"])
def test_quoted_corrupted_prompt_is_used_as_given(organism_tok, connector):
    spec = intake(f'Why does the model complete "{IOI}" with "Mary" rather than "John", '
                  f'{connector} "{IOI_FLIPPED}"?', tokenizer=organism_tok)
    assert spec.corrupted == (IOI_FLIPPED,)
    assert spec.foils == (" John",)
    assert spec.derived_corrupted is False


def test_completion_may_come_before_the_prompt(organism_tok):
    spec = intake(f'Why does the model predict "Mary" after "{IOI}"?', tokenizer=organism_tok)
    assert (spec.prompts, spec.answers) == ((IOI,), (" Mary",))


def test_answers_get_a_leading_space_unless_the_prompt_ends_with_one(organism_tok, tiny_tok):
    assert intake('complete "w1 w2 w1" with "w3"', tokenizer=tiny_tok).answers == (" w3",)
    spec = intake(f'Why does the model complete "{IOI} " with "Mary" rather than "John"?',
                  tokenizer=organism_tok)
    assert spec.prompts == (IOI + " ",)
    assert (spec.answers, spec.foils) == (("Mary",), ("John",))


def test_byte_level_prompt_ending_in_a_space_leaves_the_answer_more_than_one_token(bpe_tok):
    prompt = "Mary met Bob and Bob gave it to"
    assert intake(f'complete "{prompt}" with "Mary" rather than "Bob"', tokenizer=bpe_tok).answers == (" Mary",)
    with pytest.raises(TokenizationError, match="answers\\[0\\]"):
        intake(f'complete "{prompt} " with "Mary" rather than "Bob"', tokenizer=bpe_tok)


@pytest.mark.parametrize(("question", "task"), [
    ("Why does the model do indirect object identification?", "ioi"),
    ("How does the model solve Indirect-Object Identification?", "ioi"),
    ("Which heads implement IOI?", "ioi"),
    ("explain ioi", "ioi"),
    ("Where are the INDUCTION heads?", "induction"),
    ("How does the model do greater-than?", "greater_than"),
    ("how does it know a year is Greater Than another", "greater_than"),
    ("Where does factual recall happen?", "facts"),
    ("How does the model store facts?", "facts"),
    ("Why does the model get gender pronouns right?", "pronoun"),
    ("pronoun agreement", "pronoun"),
])
def test_named_behaviours_become_task_specs(organism_tok, question, task):
    spec = intake(question, tokenizer=organism_tok, n=12, seed=5)
    assert (spec.task, spec.n, spec.seed) == (task, 12, 5)
    assert spec.prompts == spec.answers == spec.foils == spec.corrupted == ()
    assert spec.derived_corrupted is False
    assert spec.to_prompt_pairs() == PromptPairs(task=task, n=12, seed=5)
    assert spec.to_prompt_pairs("train").split == "train"


def test_quoted_prompt_wins_over_a_named_behaviour(organism_tok):
    spec = intake(f'Is this IOI: why does the model complete "{IOI}" with "Mary"?', tokenizer=organism_tok)
    assert spec.task is None and spec.prompts == (IOI,)
    assert any("ioi" in note for note in spec.notes)


# --- foil inference -----------------------------------------------------------------------


def test_ioi_like_prompt_takes_the_other_name_as_foil(organism_tok):
    prompt = "When Mary and John went to the park and the store, Tom gave the ball to"
    assert prompt.split().count("the") == 3  # the most frequent word, which must not win here
    spec = intake(f'complete "{prompt}" with "Mary"', tokenizer=organism_tok)
    assert spec.foils == (" John",)
    assert any("John" in note and "other name" in note for note in spec.notes)


def test_other_name_that_is_not_one_token_falls_back_to_the_most_frequent_word(organism_tok):
    prompt = "When Mary and Zorblax went to the park and the store, Tom gave the ball to"
    spec = intake(f'complete "{prompt}" with "Mary"', tokenizer=organism_tok)
    assert spec.foils == (" the",)
    assert any("most frequent" in note for note in spec.notes)


@pytest.mark.parametrize(("prompt", "foil"), [
    ("w5 w7 w5 w8 w5 w7", " w5"),
    ("zz w7 zz w8 zz w7", " w7"),  # zz is the most frequent word but not a token
    ("w9 w9 w9 w4 w4 w2", " w4"),  # the answer itself is never the foil
])
def test_foil_is_the_most_frequent_single_token_word_other_than_the_answer(tiny_tok, prompt, foil):
    spec = intake(f'complete "{prompt}" with "w9"', tokenizer=tiny_tok)
    assert spec.foils == (foil,)


# --- corrupted prompt derivation ----------------------------------------------------------


def test_derived_corrupted_swaps_the_answer_carrying_tokens_and_keeps_the_length(organism_tok):
    spec = intake(f'Why does the model complete "{IOI}" with "Mary"?', tokenizer=organism_tok)
    assert spec.derived_corrupted is True
    assert any("derived" in note for note in spec.notes)
    clean, corrupted = ids(organism_tok, IOI), ids(organism_tok, spec.corrupted[0])
    assert len(clean) == len(corrupted)
    mary, john = organism_tok.convert_tokens_to_ids(["Mary", "John"])
    carrying = [i for i, t in enumerate(clean) if t in (mary, john)]
    assert len(carrying) == 3
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        if i in carrying:
            assert {a, b} == {mary, john}
        else:
            assert a == b
    # the subject is now Mary, so the corrupted prompt points at the foil John
    assert spec.corrupted[0].endswith("Mary gave a drink to")


def test_derived_corrupted_with_a_quoted_foil_absent_from_the_prompt(tiny_tok):
    spec = intake('complete "w1 w2 w3 w4 w1 w2 w3" with "w4" rather than "w9"', tokenizer=tiny_tok)
    assert spec.corrupted == ("w1 w2 w3 w9 w1 w2 w3",)
    assert len(ids(tiny_tok, spec.corrupted[0])) == len(ids(tiny_tok, spec.prompts[0]))


def test_a_factual_prompt_is_corrupted_by_naming_another_entity(organism_tok):
    spec = intake('Why does the model complete "The capital of France is" with "Paris" rather than "London"?',
                  tokenizer=organism_tok)
    assert spec.corrupted == ("The capital of England is",) and spec.derived_corrupted is True
    assert spec.foils == (" London",)
    unforced = intake('Why does the model complete "The capital of France is" with "Paris"?', tokenizer=organism_tok)
    assert unforced.derived_corrupted and unforced.corrupted[0] != unforced.prompts[0]
    assert unforced.foils[0] != " Paris" and any("entity 'France'" in note for note in unforced.notes)


def test_no_corrupted_prompt_when_the_answer_is_not_in_the_prompt(organism_tok):
    spec = intake('Why does the model complete "Mary said that" with "she" rather than "he"?',
                  tokenizer=organism_tok)
    assert spec.corrupted == () and spec.derived_corrupted is False
    assert any("no corrupted prompt" in note for note in spec.notes)


def test_no_corrupted_prompt_when_the_swap_changes_the_token_count(bpe_tok):
    prompt = "Mary met Bob and Bob gave it to"
    spec = intake(f'complete "{prompt}" with "Mary" rather than "Bob"', tokenizer=bpe_tok)
    assert len(ids(bpe_tok, "Bob met Mary and Mary gave it to")) != len(ids(bpe_tok, prompt))
    assert spec.corrupted == () and spec.derived_corrupted is False
    assert any("token count" in note for note in spec.notes)


# --- questions intake cannot ground -------------------------------------------------------

GROUNDING = 'with "Mary"'  # the accepted forms are listed in every grounding error


@pytest.mark.parametrize(("question", "fragment", "kwargs"), [
    ("", "empty", {}),
    ("   ", "empty", {}),
    ("Why does the model do that?", "quotes no prompt", {}),
    (f'Why does the model complete "{IOI}"?', "completion is missing", {}),
    ('Why does the model say "Mary"?', "no prompt", {}),
    ('Why does the model complete "" with "Mary"?', "prompt is empty", {}),
    (f'Why does the model complete "{IOI}" with ""?', "completion is empty", {}),
    (f'Why does the model complete "{IOI} with "Mary"?', "unmatched double quote", {}),
    (f"Why does the model complete '{IOI}' with 'Mary?", "ambiguous", {}),
    (f'complete "{IOI}" with "Mary" "Tom" "John"', "cannot tell what the quoted", {}),
    (f'complete "{IOI}" with "Mary" corrupted: "{IOI_FLIPPED}" corrupted: "{IOI}"', "two corrupted", {}),
    ("Is it induction or IOI?", "several behaviours", {}),
    (f'complete "{IOI}" with "Mary" rather than "Mary"', "answer itself", {}),
    (f'complete "{IOI}" with "Mary" rather than ""', "foil is empty", {}),
    (f'complete "{IOI}" with "Mary" corrupted: "{IOI}"', "clean prompt itself", {}),
    (f'complete "{IOI}" with "Mary Jane"', "not a single token", {}),
    (f'complete "{IOI}" with "Zorblax" rather than "John"', "vocabulary", {}),
    (f'complete "{IOI}" with "Mary" corrupted: "When Mary went"', "tokens but its prompt has", {}),
    (f'complete "{IOI}" with "Mary"', "context of 5", {"max_length": 5}),
    ("explain IOI", "n must be at least 2", {"n": 0}),
    ("explain IOI", "n must be at least 2", {"n": 1}),
])
def test_bad_questions_raise_one_line_user_errors(organism_tok, question, fragment, kwargs):
    with pytest.raises(UserInputError) as caught:
        intake(question, tokenizer=organism_tok, **kwargs)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("question", [
    "", "Why does the model do that?", f'Why does the model complete "{IOI}"?',
    'Why does the model complete "" with "Mary"?', f"complete '{IOI}' with 'Mary?",
])
def test_ungroundable_questions_list_the_accepted_forms(organism_tok, question):
    with pytest.raises(UserInputError) as caught:
        intake(question, tokenizer=organism_tok)
    assert GROUNDING in str(caught.value) and "IOI" in str(caught.value)


def test_no_foil_can_be_inferred(tiny_tok):
    with pytest.raises(UserInputError, match="cannot infer a foil"):
        intake('complete "zz yy zz" with "w1"', tokenizer=tiny_tok)


def test_named_behaviour_the_tokenizer_cannot_express(tiny_tok):
    with pytest.raises(TokenizationError, match="'ioi'"):
        intake("explain IOI", tokenizer=tiny_tok, n=2)


# --- BehaviorSpec ------------------------------------------------------------------------


def explicit(**changes) -> dict:
    return dict(question="q", prompts=("w1 w2 w3",), answers=(" w4",), foils=(" w5",)) | changes


def test_explicit_spec_to_prompt_pairs():
    spec = BehaviorSpec(**explicit(corrupted=("w6 w2 w3",), metric="prob"))
    assert spec.to_prompt_pairs() == PromptPairs(clean=("w1 w2 w3",), corrupted=("w6 w2 w3",),
                                                 answer=(" w4",), foil=(" w5",))


def test_spec_check_passes_a_good_spec(tiny_tok):
    BehaviorSpec(**explicit(corrupted=("w6 w2 w3",))).check(tiny_tok, max_length=3)


@pytest.mark.parametrize(("changes", "max_length", "error", "fragment"), [
    ({"answers": (" w4 w5",)}, None, TokenizationError, "answers[0]"),
    ({"foils": (" Mary",)}, None, TokenizationError, "foils[0]"),
    ({"corrupted": ("w6 w2",)}, None, TokenizationError, "corrupted[0]"),
    ({}, 2, UserInputError, "context of 2"),
])
def test_spec_check_rejects(tiny_tok, changes, max_length, error, fragment):
    with pytest.raises(error) as caught:
        BehaviorSpec(**explicit(**changes)).check(tiny_tok, max_length)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("changes", "error", "fragment"), [
    ({"answers": (" w4", " w5")}, UserInputError, "answers: has 2 entries for 1 prompts"),
    ({"corrupted": ("a", "b")}, UserInputError, "corrupted: has 2"),
    ({"prompts": ("  ",)}, UserInputError, "prompts[0]: is empty"),
    ({"task": "ioi"}, UserInputError, "not both"),
    ({"prompts": (), "answers": (), "foils": ()}, UserInputError, "no prompts"),
    ({"prompts": (), "answers": (), "foils": (), "task": "ioii"}, UnknownTaskError, "unknown task"),
    ({"derived_corrupted": True}, UserInputError, "no corrupted prompts"),
])
def test_inconsistent_specs_cannot_be_built(changes, error, fragment):
    with pytest.raises(error) as caught:
        BehaviorSpec(**explicit(**changes))
    assert fragment in str(caught.value)


def test_task_names_are_normalised():
    assert BehaviorSpec(question="q", task="Greater-Than").task == "greater_than"


# --- spec files ---------------------------------------------------------------------------


def test_yaml_spec_file_gives_full_control(tmp_path, tiny_tok):
    path = tmp_path / "behaviour.yaml"
    path.write_text('question: why w4?\nprompts: ["w1 w2 w3", "w7 w8"]\nanswers: [" w4", " w9"]\n'
                    'foils: [" w5", " w1"]\ncorrupted: ["w6 w2 w3", "w3 w8"]\nmetric: accuracy\n')
    spec = load_spec_file(path)
    assert spec.question == "why w4?"
    assert spec.prompts == ("w1 w2 w3", "w7 w8")
    assert spec.answers == (" w4", " w9") and spec.foils == (" w5", " w1")
    assert spec.corrupted == ("w6 w2 w3", "w3 w8")
    assert spec.metric == "accuracy" and spec.derived_corrupted is False
    spec.check(tiny_tok, None)


@pytest.mark.parametrize(("in_file", "given", "settled"), [
    ({"n": 12}, None, 12),  # the spec's own n, explicit prompts or a task alike
    ({"n": 12}, 5, 5),  # --n wins over the file
    ({}, None, 32),  # neither: the model's default
])
@pytest.mark.parametrize("form", ["task", "prompts"])
def test_the_prompt_count_is_n_then_the_spec_then_the_default(in_file, given, settled, form):
    shape = {"task": "ioi"} if form == "task" else {"prompts": ("a b",), "answers": (" c",), "foils": (" d",)}
    spec = BehaviorSpec(question="q", **shape, **in_file)
    assert with_prompt_count(spec, given, 32).n == settled


def test_json_spec_file_with_a_task(tmp_path):
    path = tmp_path / "behaviour.json"
    path.write_text(json.dumps({"task": "induction", "n": 7, "seed": 3}))
    spec = load_spec_file(str(path))
    assert (spec.task, spec.n, spec.seed) == ("induction", 7, 3)
    assert "behaviour.json" in spec.question


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("missing.yaml", None, "no such spec file"),
    ("spec.txt", "task: ioi\n", "unknown spec file type"),
    ("bad.yaml", "prompts: [unclosed\n", "not valid YAML"),
    ("bad.json", '{"task": "ioi",}', "not valid JSON"),
    ("empty.yml", "", "empty"),
    ("list.yaml", "- task: ioi\n", "mapping"),
    ("unknown.yaml", "task: ioi\nprompt: [a]\n", "unknown field 'prompt'"),
    ("notes.json", '{"task": "ioi", "notes": ["mine"]}', "unknown field 'notes'"),
    ("type.yaml", "prompts: 5\nanswers: [' a']\nfoils: [' b']\n", "field 'prompts'"),
    ("item.json", '{"prompts": [1], "answers": [" a"], "foils": [" b"]}', "field 'prompts[0]'"),
    ("n.yaml", "task: ioi\nn: many\n", "field 'n'"),
    ("metric.yaml", "task: ioi\nmetric: kl\n", "field 'metric'"),
    ("seed.yaml", "task: ioi\nseed: -1\n", "field 'seed'"),
    ("big-seed.yaml", "task: ioi\nseed: 4294967296\n", "field 'seed'"),
    ("lengths.yaml", "prompts: [a, b]\nanswers: [' a']\nfoils: [' b', ' c']\n", "answers"),
    ("both.json", '{"task": "ioi", "prompts": ["a"]}', "prompts"),
    ("task.yaml", "task: ioii\n", "unknown task 'ioii'"),
])
def test_bad_spec_files_raise_one_line_errors_naming_file_and_field(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserInputError) as caught:
        load_spec_file(path)
    message = str(caught.value)
    assert fragment in message
    assert name in message
    assert "\n" not in message
