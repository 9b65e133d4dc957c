"""Plan-time rules of the continual stage (the cases folders hold the messages)."""

from __future__ import annotations

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError

RECIPE = """\
recipe: 1
name: cont
models:
  base:
    init: {architecture: gpt2, size: nano}
    tokenizer: {train: {data: a, vocab_size: 300}}
datasets:
  a: {builtin: corpus, format: text}
  b: {builtin: arithmetic, format: text}
stages:
  pre: {kind: pretrain, model: base, data: a, train: {max_steps: 2}}
  continual:
    kind: continual
    model: pre
    phases:
      - {name: first, data: a, steps: 10}
      - {name: second, data: b, steps: 10}
    probes: [{name: old, data: a, every: 5}]
"""


def test_a_valid_continual_stage_plans(write) -> None:
    plan = compile_recipe(write(RECIPE))
    assert plan.stage("continual").output.type == "patch"


@pytest.mark.parametrize(("extra", "message"), [
    ("    patch: {rank: 33}\n", "patch rank 33 is larger than the model's hidden size 32"),
    ("    patch: {layers: [0, 5]}\n", r"patch layers \[5\] do not exist: the model has 2 blocks"),
])
def test_the_patch_fits_the_model_a_stage_trained(write, extra: str, message: str) -> None:
    """The model comes through the pretrain stage's lineage, not only models: entries."""
    with pytest.raises(RecipeError, match=message):
        compile_recipe(write(RECIPE + extra))


def test_a_rank_equal_to_the_hidden_size_is_allowed(write) -> None:
    compile_recipe(write(RECIPE + "    patch: {rank: 32}\n"))
