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
