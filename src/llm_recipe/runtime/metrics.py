"""Scoring of evaluation outputs: answer extraction, exact match, accuracy, perplexity.

Pure functions on strings and numbers (no torch), so every rule that decides whether an
answer counts is unit-tested on hand-made examples and shared by every stage that
scores answers (eval today; rollout rewards and GRPO's ``gsm8k_correctness`` can reuse
:func:`gsm8k_correct` so that "correct" means the same thing everywhere).

GSM8K answers end with ``#### <number>``. A model's completion is read the same way:
the number after the first ``####`` if there is one, else the last number in the text
(a model that never learned the ``####`` convention still gets credit for a final
answer). Numbers are compared as decimals after dropping thousands separators and
currency signs, so ``$1,234.00`` equals ``1234``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

ANSWER_MARK = "####"
NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>-)?(?:\$\s?)?"  # a minus glued to the number, not "5-3" or "5 - 3"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
"""A number as people write it: ``-3``, ``$5``, ``1,234``, ``5.0``, ``.5``."""
MAX_MEAN_NLL = 700.0
"""exp() overflows a float above ~709.8; a mean NLL this high is 'infinitely' bad anyway."""


def parse_numbers(text: str) -> list[Decimal]:
    """Every number in ``text``, in order, as an exact decimal."""
    out = []
    for match in NUMBER.finditer(text):
        try:
            value = Decimal(match["digits"].replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern only matches decimals
            continue
        out.append(-value if match["sign"] else value)
    return out


def extract_answer(text: str) -> Decimal | None:
    """The final answer of a completion or a reference: after the first '####', else last.

    Only the text after the first ``####`` is searched first, because models trained on
    GSM8K often keep generating (a second problem, another '####') after the answer.
    """
    if ANSWER_MARK in text:
        after = parse_numbers(text.split(ANSWER_MARK, 1)[1])
        if after:
            return after[0]
    numbers = parse_numbers(text)
    return numbers[-1] if numbers else None


def format_number(value: Decimal | None) -> str | None:
    """A canonical string for a number (``5.0`` and ``5`` both give ``'5'``), or None."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def gsm8k_correct(completion: str, answer: str) -> tuple[str | None, str | None, bool]:
    """(prediction, reference, correct) for a completion against a GSM8K-style answer.

    A row whose reference has no number can never be correct; it is not skipped, so
    the accuracy's denominator is always the number of examples evaluated.
    """
    predicted, reference = extract_answer(completion), extract_answer(answer)
    correct = predicted is not None and reference is not None and predicted == reference
    return format_number(predicted), format_number(reference), correct


def normalize_text(text: str) -> str:
    """Text as compared by exact match: stripped, lower case, runs of whitespace as one space."""
    return " ".join(text.split()).lower()


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (a label followed by more generation)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_match(generated: str, reference: str) -> bool:
    """Whether the generation is the reference, in full or as its first line.

    The first-line rule exists because generation runs until EOS or ``max_new_tokens``:
    a classifier asked for ``neutral`` may answer ``neutral`` and then keep writing.
    """
    target = normalize_text(reference)
    return normalize_text(generated) == target or normalize_text(first_line(generated)) == target


def accuracy(correct: Sequence[bool]) -> float:
    """Share of True values; 0.0 for no examples (the caller reports the count beside it)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp of the mean token negative log-likelihood (token-weighted over the whole set)."""
    if tokens <= 0:
        return float("nan")
    return math.exp(min(nll_sum / tokens, MAX_MEAN_NLL))


def render_prompt(template: str, row: dict[str, Any]) -> str:
    """The template with ``{question}`` / ``{prompt}`` replaced by the row's fields.

    Plain replacement rather than ``str.format``: prompts such as planner or JSON
    instructions contain other braces, which ``format`` would reject or mangle.
    """
    text = template
    for key in ("question", "prompt"):
        if key in row:
            text = text.replace("{" + key + "}", str(row[key]))
    return text


GENERATION_METRICS = ("gsm8k_accuracy", "exact_match")
"""Metrics scored on generated text (perplexity needs no generation)."""


def score_example(fmt: str, row: dict[str, Any], completion: str,
                  metrics: Sequence[str]) -> dict[str, Any]:
    """One eval.jsonl record (without model and index) for a generated completion.

    ``correct`` is the verdict of the first generation metric in ``metrics``, so
    ``jq .correct`` counts what the report's first metric counts; when both generation
    metrics are asked for, the other verdict is kept under its own name.
    """
    wanted = [m for m in metrics if m in GENERATION_METRICS]
    verdicts: dict[str, bool] = {}
    if fmt == "gsm8k":
        source = {"question": row["question"]}
        prediction, reference, verdicts["gsm8k_accuracy"] = gsm8k_correct(completion,
                                                                          row["answer"])
        verdicts["exact_match"] = exact_match(completion, row["answer"])
        if wanted and wanted[0] == "exact_match":
            prediction, reference = first_line(completion), row["answer"].strip()
    elif fmt == "prompt_completion":
        source = {"prompt": row["prompt"]}
        prediction, reference = first_line(completion), row["completion"].strip()
        verdicts["exact_match"] = exact_match(completion, row["completion"])
    else:
        raise ValueError(f"no generation metric is defined for format {fmt!r}")
    missing = [m for m in wanted if m not in verdicts]
    if missing:
        raise ValueError(f"metric {missing[0]} cannot be computed on format {fmt!r}")
    record: dict[str, Any] = {**source, "reference": reference, "completion": completion,
                              "prediction": prediction,
                              "correct": verdicts[wanted[0]] if wanted else None}
    for metric in wanted[1:]:
        record[metric] = verdicts[metric]
    return record


def summarize(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Report values of the generation metrics from a model's eval.jsonl records.

    Computed from the records themselves, so the report and eval.jsonl cannot disagree.
    """
    wanted = [m for m in metrics if m in GENERATION_METRICS]
    if not wanted:
        return {}
    correct = [bool(r["correct"]) for r in records]
    out: dict[str, Any] = {wanted[0]: accuracy(correct), "correct": sum(correct),
                           "total": len(records)}
    for metric in wanted[1:]:
        out[metric] = accuracy([bool(r[metric]) for r in records])
    if wanted[0] == "gsm8k_accuracy":  # predictions are extracted numbers (None: no number)
        out["no_answer"] = sum(1 for r in records if r["prediction"] is None)
    return out
