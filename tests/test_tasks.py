"""Prompt-set generators: seeded, split cleanly, expressible, and failing loudly when not."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from evals.organisms.recipe.corpus import vocabulary_text
from evals.organisms.recipe.tokenizer import build_tokenizer
from tools.errors import TokenizationError, UnknownTaskError
from tools.tasks import TASK_NAMES, TriggerTask, answer_token_id, get_task, is_expressible
from tools.tasks.ioi import HELDOUT_NAMES, HELDOUT_TEMPLATES, TRAIN_NAMES, TRAIN_TEMPLATES
from tools.tasks.induction import transition_split


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_tokenizer(vocabulary_text(0), ["cerulean", "banana"])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_prompts_other_seed_other_prompts(name):
    gen = get_task(name)
    a = gen.generate(20, split="heldout", seed=3)
    assert a == gen.generate(20, split="heldout", seed=3)
    assert a != gen.generate(20, split="heldout", seed=4)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_train_and_heldout_prompts_never_coincide(name):
    gen = get_task(name)
    train = {p.clean for p in gen.generate(500, split="train", seed=0)}
    held = {p.clean for p in gen.generate(500, split="heldout", seed=0)}
    assert not train & held


def test_ioi_heldout_names_and_templates_are_disjoint_from_train():
    assert not set(TRAIN_NAMES) & set(HELDOUT_NAMES)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    words = lambda ps: {w for p in ps for w in re.findall(r"\w+", p.clean)}
    train_words = words(get_task("ioi").generate(500, split="train", seed=0))
    assert not train_words & set(HELDOUT_NAMES)


def test_induction_heldout_transitions_never_in_training():
    def transitions(words):
        return {(a, b) for a, b in zip(words, words[1:])}

    train = set()
    for sentence in get_task("induction").training_sentences(2000, seed=0):
        train |= transitions(sentence.rstrip(" .").split())
    assert all(transition_split(a, b) == "train" for a, b in train)
    for p in get_task("induction").generate(300, split="heldout", seed=0):
        toks = p.clean.split()
        assert not transitions(toks) & train
        assert p.answer.strip() in toks and p.answer.strip() != p.foil.strip()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_item_expressible_with_the_organism_tokenizer(name, word_tokenizer):
    for p in get_task(name).generate(100, split="heldout", seed=0, tokenizer=word_tokenizer):
        assert is_expressible(word_tokenizer, p)
        assert p.answer not in p.foil_set()
        a = answer_token_id(word_tokenizer, p.clean, p.answer)
        f = answer_token_id(word_tokenizer, p.clean, p.foil)
        assert a != f


def test_greater_than_sets_partition_the_years():
    for p in get_task("greater_than").generate(50, seed=0):
        yy = int(re.search(r"year \d\d(\d\d)", p.clean).group(1))
        assert all(int(a) > yy for a in p.answers) and all(int(f) < yy for f in p.foils)
        assert len(p.answers) + len(p.foils) == 99


def test_multi_token_answer_is_a_clear_error(word_tokenizer):
    with pytest.raises(TokenizationError, match="not a single token"):
        answer_token_id(word_tokenizer, "The capital of France is", " Paris Texas")


def test_out_of_vocabulary_answer_is_a_clear_error(word_tokenizer):
    with pytest.raises(TokenizationError, match="vocabulary"):
        answer_token_id(word_tokenizer, "The capital of France is", " Atlantis")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_remembered_encodings_decide_exactly_as_fresh_ones(name, word_tokenizer):
    """Generators keep the encodings of one call (`Encodings`); one memo across many items of
    both splits, expressible or not, must decide every item and answer as fresh encodings do."""
    import random

    task = get_task(name)
    encoded: dict = {}
    kept = 0
    for split in ("train", "heldout"):
        rng = random.Random(f"memo:{name}:{split}")
        for _ in range(60):
            item = task._sample(rng, split)
            fresh = is_expressible(word_tokenizer, item)
            assert is_expressible(word_tokenizer, item, encoded=encoded) == fresh, item
            if fresh:
                kept += 1
                for a in (item.answer, item.foil, *item.answer_set()):
                    assert answer_token_id(word_tokenizer, item.clean, a, encoded=encoded) == \
                        answer_token_id(word_tokenizer, item.clean, a), (item, a)
    assert kept > 0 and len(encoded) > 0


def test_inexpressible_task_raises_instead_of_returning_too_few(word_tokenizer):
    gen = TriggerTask("cerulean", "zzz-not-in-vocab")
    with pytest.raises(TokenizationError, match="expressible"):
        gen.generate(5, tokenizer=word_tokenizer, max_tries=3)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(UnknownTaskError, match="ioi"):
        get_task("telepathy")


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(TASK_NAMES), seed=st.integers(0, 10_000), split=st.sampled_from(["train", "heldout"]))
def test_items_round_trip_and_corrupted_differs(name, seed, split):
    for p in get_task(name).generate(3, split=split, seed=seed):
        assert type(p).model_validate_json(p.model_dump_json()) == p
        assert p.corrupted != p.clean
        assert len(p.clean.split()) == len(p.corrupted.split())
