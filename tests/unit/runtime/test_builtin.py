"""The embedded generators: deterministic, disjoint splits, GSM8K-shaped answers."""

import re

import pytest

from llm_recipe.runtime.builtin import arithmetic, corpus, generate


def test_arithmetic_is_deterministic_and_sized():
    assert arithmetic("train", 50, seed=3) == arithmetic("train", 50, seed=3)
    assert len(arithmetic("test", 40)) == 40
    assert arithmetic("train", 50, seed=1) != arithmetic("train", 50, seed=2)


def test_splits_never_share_a_problem():
    train = {r["question"] for r in arithmetic("train", 2000, seed=0)}
    for seed in range(3):
        test = {r["question"] for r in arithmetic("test", 200, seed=seed)}
        assert not train & test


def test_answers_end_with_the_correct_number():
    for row in arithmetic("train", 300):
        working, final = row["answer"].rsplit("\n#### ", 1)
        # the last equation of the working gives the final number
        last = re.findall(r"(\d+(?: [-+*] \d+)+) = (\d+)", working)[-1]
        assert int(final) == eval(last[0]) == int(last[1])


def test_corpus_rows_are_text():
    rows = corpus(20, seed=5)
    assert len(rows) == 20 and all(isinstance(r["text"], str) and r["text"] for r in rows)
    assert generate("corpus", n=20, seed=5) == rows


def test_unknown_generator_and_split_are_refused():
    with pytest.raises(ValueError, match="no builtin dataset"):
        generate("wikipedia")
    with pytest.raises(ValueError, match="splits train and test"):
        arithmetic("validation", 5)
