"""Answer extraction and scoring on hand-made examples whose right verdict is known (no torch)."""

import math

import pytest

from llm_recipe.runtime.metrics import (
    accuracy,
    exact_match,
    extract_answer,
    first_line,
    format_number,
    gsm8k_correct,
    normalize_text,
    perplexity,
    render_prompt,
    score_example,
    summarize,
)

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("#### 1,234", "1234"),
        ("The total is $5", "5"),
        ("#### $5", "5"),
        ("It dropped to -3 degrees", "-3"),
        ("#### -3", "-3"),
        ("5.0", "5"),
        ("#### 5.50", "5.5"),
        ("#### 1,234,567.00", "1234567"),
        ("The answer is 7.", "7"),
        ("First 3 + 4 = 7. Then 7 * 2 = 14", "14"),  # no '####': the last number
        ("#### 12\n#### 99", "12"),  # the first '####' wins
        ("#### 12 apples, not 13", "12"),  # the number right after '####'
        ("Ada has 4 apples.\n#### ", "4"),  # '####' without a number: the last number
        ("She has 10 - 3 = 7 left", "7"),  # '- 3' in an expression is not -3
        ("5-3", "3"),
        ("#### .5", "0.5"),
        (GSM8K_ANSWER, "72"),
    ],
)
def test_extract_answer(text, number):
    assert format_number(extract_answer(text)) == number


@pytest.mark.parametrize("text", ["", "no number here", "####", "#### none"])
def test_no_number_means_no_answer(text):
    assert extract_answer(text) is None


def test_gsm8k_correct_compares_numbers_not_strings():
    assert gsm8k_correct(" #### 5.0", "x\n#### 5") == ("5", "5", True)
    assert gsm8k_correct("#### $1,234", "#### 1234") == ("1234", "1234", True)
    assert gsm8k_correct("#### -3", "#### 3") == ("-3", "3", False)
    assert gsm8k_correct("I do not know", "#### 3") == (None, "3", False)
    assert gsm8k_correct("#### 3", "no reference number") == ("3", None, False)
    assert gsm8k_correct("48/2 = 24, 48+24 = 72. #### 72", GSM8K_ANSWER)[2]
    assert not gsm8k_correct("48/2 = 24 so 24", GSM8K_ANSWER)[2]


def test_gsm8k_accuracy_over_a_known_set():
    completions = ["#### 1,234", "$5", "-3", "5.0", "no number", "1, 2 and finally 9", "#### 8"]
    answers = ["#### 1234", "#### 5", "#### -3", "#### 5", "#### 0", "#### 9", "#### 80"]
    verdicts = [gsm8k_correct(c, a)[2] for c, a in zip(completions, answers, strict=True)]
    assert verdicts == [True, True, True, True, False, True, False]
    assert accuracy(verdicts) == pytest.approx(5 / 7)


def test_exact_match_normalisation():
    assert normalize_text("  Neutral \n\t Stance ") == "neutral stance"
    assert exact_match(" neutral", " Neutral ")
    assert exact_match("neutral\nPremise: another example", " neutral")  # first line counts
    assert exact_match("\n\nentailment\nmore", "entailment")  # blank lines are skipped
    assert exact_match("a  b\nc", "A B C")  # or the whole text
    assert not exact_match("neutral.", "neutral")
    assert not exact_match("not neutral", "neutral")
    assert not exact_match("", "neutral")
    assert first_line("  \n x \n y") == "x"


def test_accuracy_and_perplexity_edge_cases():
    assert accuracy([]) == 0.0
    assert accuracy([True, False, False, True]) == 0.5
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert math.isnan(perplexity(0.0, 0))
    assert math.isfinite(perplexity(1e9, 1))  # capped, not an OverflowError


def test_render_prompt_leaves_other_braces_alone():
    template = 'Reply as JSON {"plan": ...}.\nQuestion: {question}\nAnswer:'
    text = render_prompt(template, {"question": "1+1?", "answer": "#### 2"})
    assert text == 'Reply as JSON {"plan": ...}.\nQuestion: 1+1?\nAnswer:'
    assert render_prompt("{prompt}", {"prompt": "Premise: p", "completion": " x"}) == "Premise: p"


def test_score_example_gsm8k_record_and_summary():
    row = {"question": "Ada has 2 apples and gets 3. How many?", "answer": "2 + 3 = 5\n#### 5"}
    good = score_example("gsm8k", row, " 2 + 3 = 5\n#### 5", ["gsm8k_accuracy", "exact_match"])
    assert good == {"question": row["question"], "reference": "5",
                    "completion": " 2 + 3 = 5\n#### 5", "prediction": "5", "correct": True,
                    "exact_match": True}
    bad = score_example("gsm8k", row, " many", ["gsm8k_accuracy", "exact_match"])
    assert (bad["prediction"], bad["correct"], bad["exact_match"]) == (None, False, False)
    near = score_example("gsm8k", row, "#### 5.0", ["gsm8k_accuracy", "exact_match"])
    assert (near["correct"], near["exact_match"]) == (True, False)
    summary = summarize([good, bad, near], ["gsm8k_accuracy", "exact_match", "perplexity"])
    assert summary == {"gsm8k_accuracy": 2 / 3, "correct": 2, "total": 3,
                       "exact_match": 1 / 3, "no_answer": 1}


def test_score_example_prompt_completion():
    row = {"prompt": "Premise: a. Hypothesis: b. Relation:", "completion": " neutral"}
    record = score_example("prompt_completion", row, " Neutral\nPremise: c", ["exact_match"])
    assert record["correct"] is True
    assert (record["prediction"], record["reference"]) == ("Neutral", "neutral")
    assert summarize([record], ["exact_match"]) == {"exact_match": 1.0, "correct": 1, "total": 1}
    assert summarize([record], ["perplexity"]) == {}
    with pytest.raises(ValueError, match="gsm8k_accuracy"):
        score_example("prompt_completion", row, "x", ["gsm8k_accuracy"])
