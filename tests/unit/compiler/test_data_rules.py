"""Plan-time rules of validation_split and streaming, and what the fingerprint covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError, RecipeErrors

RECIPE = """\
recipe: 1
name: d
models:
  base:
    init: {{architecture: llama, size: nano}}
    tokenizer: {{train: {{data: corpus, vocab_size: 300}}}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 100}}
  web: {{path: web.jsonl, format: text{streaming}}}
  held: {{builtin: corpus, format: text, n: 10, split: test}}
stages:
  pretrain:
    kind: pretrain
    model: base
    data: {data}
{extra}    train: {{{train}}}
"""


def plan(tmp_path: Path, data: str = "corpus", extra: str = "", train: str = "max_steps: 5",
         streaming: bool = False):
    (tmp_path / "web.jsonl").write_text('{"text": "a"}\n')
    text = RECIPE.format(data=data, extra=extra, train=train,
                         streaming=", streaming: true" if streaming else "")
    (tmp_path / "r.yaml").write_text(text)
    return compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)


def messages(tmp_path: Path, **kwargs) -> list[str]:
    with pytest.raises((RecipeError, RecipeErrors)) as caught:
        plan(tmp_path, **kwargs)
    errors = getattr(caught.value, "errors", [caught.value])
    return [e.message for e in errors]


def test_the_split_is_in_the_plan_and_its_fingerprint(tmp_path):
    base = plan(tmp_path).stage("pretrain")
    split = plan(tmp_path, extra="    validation_split: {size: 0.1}\n").stage("pretrain")
    assert split.config["validation_split"] == {"size": 0.1}
    assert split.fingerprint != base.fingerprint
    seeded = plan(tmp_path, extra="    validation_split: {size: 0.1, seed: 4}\n")
    assert seeded.stage("pretrain").fingerprint != split.fingerprint
    counted = plan(tmp_path, extra="    validation_split: {size: 10}\n")
    assert counted.stage("pretrain").fingerprint != split.fingerprint


def test_streaming_is_in_the_dataset_fingerprint(tmp_path):
    read = plan(tmp_path, data="web").stage("pretrain")
    streamed = plan(tmp_path, data="web", streaming=True).stage("pretrain")
    assert read.fingerprint != streamed.fingerprint
    assert "data_workers" not in read.compute  # no default written: nothing changes


def test_split_and_validation_exclude_each_other(tmp_path):
    found = messages(tmp_path, extra="    validation: held\n    validation_split: {size: 5}\n")
    assert found == ["validation_split and validation cannot both be set"]


@pytest.mark.parametrize("size", [0, 1.5, -1])
def test_a_split_size_is_a_fraction_or_a_count(tmp_path, size):
    assert messages(tmp_path, extra=f"    validation_split: {{size: {size}}}\n")


def test_a_stream_needs_max_steps_and_cannot_be_split(tmp_path):
    found = messages(tmp_path, data="web", streaming=True, train="epochs: 1",
                     extra="    validation_split: {size: 0.1}\n")
    assert any("cannot be carved from 'web', which streams" in m for m in found)
    assert any("the number of steps in an epoch cannot be known" in m for m in found)
    assert plan(tmp_path, data="web", streaming=True).stage("pretrain")  # max_steps: fine


def test_a_stream_read_whole_is_refused_where_it_is_named(tmp_path):
    found = messages(tmp_path, data="corpus", streaming=True,
                     extra="    validation: web\n")
    assert found == ["dataset 'web' streams (streaming: true), and pretrain reads its "
                     "validation whole"]
