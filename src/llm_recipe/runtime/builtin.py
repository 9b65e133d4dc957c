"""Embedded dataset generators: offline data for the quickstart, the tiny profiles and tests.

``arithmetic`` makes word problems in GSM8K's format (``question``; ``answer`` with the
working and a final ``#### <number>`` line). Train and test splits are disjoint by
construction: a problem's split is decided by a hash of its text, so the same problem
can never appear in both, whatever ``n`` and ``seed`` are.

``corpus`` makes plain English text: short passages about everyday counting, numbers
written in words and digits, and simple sums, so a model pretrained on it has seen the
vocabulary of the word problems without having seen the problems.

Pure Python, deterministic for a given (generator, split, n, seed).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

NAMES = [
    "Ada",
    "Ben",
    "Cleo",
    "Dev",
    "Emma",
    "Finn",
    "Gia",
    "Hugo",
    "Iris",
    "Jon",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
]
THINGS = [
    "apples",
    "books",
    "marbles",
    "pencils",
    "stickers",
    "cookies",
    "shells",
    "coins",
    "cards",
    "stamps",
    "eggs",
    "buttons",
]
WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
TEST_SHARE = 10
"""One problem in TEST_SHARE belongs to the test split."""


def _split_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % TEST_SHARE
    return "test" if bucket == 0 else "train"


def _problem(rng: random.Random) -> dict[str, Any]:
    name, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    op = rng.choice(["add", "sub", "mul", "add3"])
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    if op == "add":
        q = (f"{name} has {a} {thing}. {other} gives {name} {b} more. "
             f"How many {thing} does {name} have now?")
        work, result = f"{name} has {a} + {b} = {a + b} {thing}.", a + b
    elif op == "sub":
        a, b = max(a, b), min(a, b)
        q = (f"{name} had {a} {thing} and gave {b} of them to {other}. "
             f"How many {thing} does {name} have left?")
        work, result = f"{name} has {a} - {b} = {a - b} {thing} left.", a - b
    elif op == "mul":
        a = rng.randint(2, 9)
        q = f"{name} buys {a} bags with {c} {thing} in each bag. How many {thing} does {name} buy?"
        work, result = f"{name} buys {a} * {c} = {a * c} {thing}.", a * c
    else:
        q = (
            f"{name} has {a} {thing}, finds {b} more and then {other} gives {name} {c} more. "
            f"How many {thing} does {name} have?"
        )
        work = f"First {a} + {b} = {a + b}. Then {a + b} + {c} = {a + b + c}."
        result = a + b + c
    return {"question": q, "answer": f"{work}\n#### {result}"}


def arithmetic(split: str = "train", n: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct word problems of ``split`` ('train' or 'test')."""
    if split not in ("train", "test"):
        raise ValueError(f"builtin arithmetic has splits train and test, not {split!r}")
    rng = random.Random(f"arithmetic:{seed}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(n * TEST_SHARE * 50):
        row = _problem(rng)
        if row["question"] in seen or _split_of(row["question"]) != split:
            continue
        seen.add(row["question"])
        rows.append(row)
        if len(rows) == n:
            return rows
    raise ValueError(f"builtin arithmetic cannot make {n} distinct {split} problems")


def _sentences(rng: random.Random) -> Iterator[str]:
    while True:
        name, other = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS)
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        yield rng.choice(
            [
                f"{name} counted the {thing} on the table and found {WORDS[a]} of them.",
                f"{WORDS[a].capitalize()} plus {WORDS[b]} is {WORDS[a + b]}.",
                f"{a} + {b} = {a + b}, and {a + b} is a number.",
                f"{name} and {other} like to share {thing} after school.",
                f"There were {a} {thing} in the box, and {name} put {b} more in it.",
                f"If you have {WORDS[a]} {thing} and get {WORDS[b]} more, you have {WORDS[a + b]}.",
                f"{name} keeps the {thing} in a small bag by the door.",
                f"The teacher asked {other} how many {thing} were left, and {other} answered.",
                f"{name} gave some {thing} to {other}, who said thank you.",
                f"Counting {thing} is easy when you group them in tens.",
            ]
        )


def corpus(n: int = 1000, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """``n`` short passages of English text (rows with a ``text`` field)."""
    rng = random.Random(f"corpus:{seed}:{split}")
    sentences = _sentences(rng)
    return [{"text": " ".join(next(sentences) for _ in range(rng.randint(2, 5)))} for _ in range(n)]


GENERATORS = {"arithmetic": arithmetic, "corpus": corpus}


def generate(
    name: str, *, split: str = "train", n: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows of a builtin dataset in its native shape."""
    if name not in GENERATORS:
        raise ValueError(f"no builtin dataset {name!r}; there are {', '.join(GENERATORS)}")
    return GENERATORS[name](split=split, n=n or 1000, seed=seed)
