"""Variants of a user's prompt (other names, other entities) and factual corruption."""

from __future__ import annotations

import pytest

from tools.loading import load_model
from tools.tasks.base import TaskPrompt, is_expressible
from tools.tasks.perturb import derive_entity_corruption, find_entity, vary_prompt

IOI = TaskPrompt(clean="When Mary and John went to the store, John gave a drink to", answer=" Mary", foil=" John",
                 corrupted="When Mary and John went to the store, Mary gave a drink to")


@pytest.fixture(scope="module")
def tok():
    return load_model("organism-default").tokenizer


def test_name_variants_replace_the_pair_everywhere_and_keep_the_structure(tok):
    variants = vary_prompt(IOI, tok, 20, seed=1)
    assert len(variants) == 20 and len({v.clean for v in variants}) == 20
    for v in variants:
        a, b = v.answer.strip(), v.foil.strip()
        assert v.clean == IOI.clean.replace("Mary", "<A>").replace("John", "<B>").replace("<A>", a).replace("<B>", b)
        assert v.corrupted.endswith(f"{a} gave a drink to") and is_expressible(tok, v)
    assert vary_prompt(IOI, tok, 20, seed=1) == variants  # seeded
    assert vary_prompt(IOI, tok, 20, seed=2) != variants
    excluded = vary_prompt(IOI, tok, 5, seed=1, exclude=[v.clean for v in variants[:3]])
    assert not {v.clean for v in excluded} & {v.clean for v in variants[:3]}


def test_a_factual_prompt_is_varied_and_corrupted_through_its_fact_table(tok):
    prompt = "The capital of France is"
    assert find_entity(prompt, "Paris") == ("capital", "France")
    assert find_entity(prompt, "Rome") is None  # the answer must be the named entity's fact
    corrupted, foil, entity = derive_entity_corruption(prompt, "Paris", tok)
    assert entity == "France" and foil != "Paris" and corrupted == prompt.replace("France", corrupted.split()[-2])
    forced = derive_entity_corruption(prompt, "Paris", tok, foil_word="Rome")
    assert forced == ("The capital of Italy is", "Rome", "France")
    item = TaskPrompt(clean=prompt, corrupted=corrupted, answer=" Paris", foil=" " + foil)
    variants = vary_prompt(item, tok, 10, seed=0)
    assert len(variants) == 10
    for v in variants:
        assert v.clean.startswith("The capital of ") and v.answer != v.foil and is_expressible(tok, v)


def test_a_prompt_that_cannot_be_varied_gives_none(tok):
    plain = TaskPrompt(clean="apple river table apple river", answer=" table", foil=" apple",
                       corrupted="apple river table apple river")
    assert vary_prompt(plain, tok, 5, seed=0) == []
    assert derive_entity_corruption("apple river table", "table", tok) is None


def test_bystander_names_are_varied_when_the_answer_is_not_a_name(tok):
    item = TaskPrompt(clean="We saw Mary at the park and the cerulean", answer=" banana", foil=" .",
                      corrupted="We saw Mary at the park and the green")
    variants = vary_prompt(item, tok, 6, seed=0)
    assert len(variants) == 6 and len({v.clean for v in variants}) == 6
    for v in variants:
        name = v.clean.split()[2]
        assert name != "Mary" and v.corrupted == f"We saw {name} at the park and the green"
        assert (v.answer, v.foil) == (" banana", " .") and is_expressible(tok, v)


def test_bystander_names_keep_their_gender_so_a_pronoun_stays_right(tok):
    from tools.tasks.vocab import FEMALE_NAMES, MALE_NAMES

    item = TaskPrompt(clean="Mary said that", answer=" she", foil=" he", corrupted="John said that")
    variants = vary_prompt(item, tok, 8, seed=0)
    assert len(variants) == 8
    for v in variants:
        clean_name, corrupted_name = v.clean.split()[0], v.corrupted.split()[0]
        assert clean_name in FEMALE_NAMES and clean_name != "Mary"
        assert corrupted_name in MALE_NAMES and corrupted_name != "John"
        assert (v.answer, v.foil) == (" she", " he")


def test_a_quoted_prompt_the_critic_cannot_retest_is_refused_before_a_run(tmp_path, capsys):
    from agents.cli import main as sleuth

    question = 'Why does the model complete "the cerulean" with "banana" rather than "." corrupted: "the green"'
    assert sleuth(["ask", question, "--model", "organism-planted", "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the critic needs at least 2 prompts" in err
    assert not (tmp_path / "ws" / "runs").exists()
