"""Shared test options and helpers.

Golden files (``tests/cases/*/*/expected.*``) are compared, never written, unless
pytest runs with ``--update-golden``; then the case runner rewrites them from the
current output and the diff is reviewed like any other change.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/cases/*/*/expected.txt and expected.json from the current output",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


MINIMAL = """\
recipe: 1
name: demo
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
    n: 64
stages:
  sft:
    kind: sft
    model: base
    data: math
    train:
      max_steps: 10
      lr: 1e-4
"""
"""A small valid recipe (one sft stage) that unit tests extend or break."""


TINY_PRETRAIN = "max_steps: 12, batch_size: 8, max_seq_len: 64, lr: 3.0e-3, log_every: 2"
TINY_SFT = "max_steps: 8, batch_size: 8, max_seq_len: 160, lr: 1.0e-3, log_every: 2"


def tiny_recipe(pretrain: str = TINY_PRETRAIN, sft: str = TINY_SFT,
                max_new_tokens: int | None = 8, tail: str = "") -> str:
    """The tiny pretrain -> sft -> eval recipe the run, report, status and matrix tests
    share (a nano llama, builtin data, seconds on a CPU); ``pretrain`` and ``sft`` are
    their ``train:`` flow mappings, ``tail`` top-level YAML appended (e.g. a matrix)."""
    generation = ("" if max_new_tokens is None
                  else f"    generation: {{max_new_tokens: {max_new_tokens}}}\n")
    return f"""\
recipe: 1
name: tiny
seed: 7
models:
  scratch:
    init: {{architecture: llama, size: nano, context_length: 192}}
    tokenizer: {{train: {{data: corpus, vocab_size: 300}}}}
datasets:
  corpus: {{builtin: corpus, n: 300, format: text}}
  train: {{builtin: arithmetic, split: train, n: 64, format: gsm8k}}
  test: {{builtin: arithmetic, split: test, n: 8, format: gsm8k}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{{pretrain}}}
  sft:
    kind: sft
    model: pretrain
    data: train
    train: {{{sft}}}
  eval:
    kind: eval
    models: [pretrain, sft]
    data: test
{generation}{tail}"""


@pytest.fixture
def minimal() -> str:
    return MINIMAL


@pytest.fixture
def write(tmp_path: Path):
    """Write a file under tmp_path (dedented) and return its path: ``write(text, "r.yaml")``."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), "utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for stage tests: nano models gain nothing from intra-op
    threads, and on a shared 2-core machine two OpenMP threads per process spin against
    other jobs (measured 5-10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
