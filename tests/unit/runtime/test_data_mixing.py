"""A mixture's rows at run time (no torch): members through the Arrow cache, seeded draws,
realised counts in train.log, content keys for the tokenization caches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import inputs, mixture
from llm_recipe.runtime.data.formats import DataError
from llm_recipe.runtime.log import StageLog

RECIPE = """\
recipe: 1
name: mx
models:
  base: {{hub: sshleifer/tiny-gpt2, revision: main}}
datasets:
  a: {{path: a.jsonl, format: prompt_completion}}
  b: {{path: b.jsonl, format: prompt_completion}}
  mix:
{mix}
stages:
  sft:
    kind: sft
    model: base
    data: mix
    train: {{max_steps: 1}}
{extra}"""

WEIGHTS = "    mixture:\n      - {data: a, weight: 0.75}\n      - {data: b, weight: 0.25}\n"
COUNTS = "    mixture:\n      - {data: a, count: 30}\n      - {data: b, count: 25}\n"


def context(root: Path, mix: str = WEIGHTS, extra: str = "", a: int = 300,
            b: int = 40) -> StageContext:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("a", a), ("b", b)):
        (root / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": f"{name}{i}", "completion": " x", "id": i}) + "\n"
            for i in range(rows)))
    (root / "r.yaml").write_text(RECIPE.format(mix=mix, extra=extra))
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage("sft")
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, "sft"))


def members(rows: list[dict]) -> Counter:
    return Counter(r["prompt"][0] for r in rows)


def mixture_lines(ctx: StageContext) -> list[str]:
    return [line for line in (ctx.dir / "train.log").read_text().splitlines()
            if line.startswith("[data] mixture")]


def test_weights_interleave_until_the_first_member_runs_out(tmp_path):
    ctx = context(tmp_path)
    rows = ctx.rows("data")
    counts = members(rows)
    assert counts["b"] == 40  # the member that ran out gave all its rows, once each
    assert 80 < counts["a"] < 160  # ~120 expected (3 a for each b)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert set(rows[0]) == {"prompt", "completion"}  # the format's fields only
    assert mixture_lines(ctx) == [
        f"[data] mixture mix: {counts['a']} a + 40 b (seed 0, first_exhausted)"]
    log = (ctx.dir / "train.log").read_text()
    assert "[data] a: 300 rows as Arrow" in log and "[data] b: 40 rows as Arrow" in log


def test_all_exhausted_repeats_the_members_that_run_out(tmp_path):
    ctx = context(tmp_path, WEIGHTS + "    stopping: all_exhausted\n")
    counts = members(ctx.rows("data"))
    assert counts["a"] == 300 and 60 < counts["b"] < 140  # ~100: b repeated
    assert "x its 40 rows" in mixture_lines(ctx)[0]


def test_the_same_seed_gives_the_same_rows_and_another_seed_another_order(tmp_path):
    first = context(tmp_path / "one").rows("data")
    again = context(tmp_path / "two").rows("data")
    other = context(tmp_path / "three", WEIGHTS + "    seed: 1\n").rows("data")
    assert first == again
    assert other != first and [r["prompt"] for r in other[:20]] != [
        r["prompt"] for r in first[:20]]


def test_members_are_shuffled_before_they_are_interleaved(tmp_path):
    rows = context(tmp_path, a=300, b=300).rows("data")
    taken = [int(r["prompt"][1:]) for r in rows if r["prompt"][0] == "b"]
    assert taken != sorted(taken)  # not b's first rows in file order


def test_counts_take_exactly_that_many_rows_and_repeat_a_small_member(tmp_path):
    ctx = context(tmp_path, COUNTS, a=300, b=10)
    rows = ctx.rows("data")
    counts = members(rows)
    assert counts == {"a": 30, "b": 25}
    a_rows = [r["prompt"] for r in rows if r["prompt"][0] == "a"]
    assert len(set(a_rows)) == 30  # drawn without repeats while the member lasts
    b_rows = Counter(r["prompt"] for r in rows if r["prompt"][0] == "b")
    assert sorted(b_rows.values()) == [2] * 5 + [3] * 5  # 2.5 passes over 10 rows
    assert [r["prompt"][0] for r in rows[:10]] != ["a"] * 10  # shuffled together
    assert mixture_lines(ctx) == ["[data] mixture mix: 30 a + 25 b (2.5x its 10 rows) "
                                  "(seed 0, counts)"]
    assert context(tmp_path / "again", COUNTS, a=300, b=10).rows("data") == rows


def test_the_content_key_follows_members_weights_seed_and_stopping(tmp_path):
    def key(mix: str = WEIGHTS, a: int = 300) -> str:
        return inputs.load(context(tmp_path, mix, a=a), "data")[1]

    base = key()
    assert key() == base
    assert key(WEIGHTS.replace("0.75", "0.7")) != base
    assert key(WEIGHTS + "    seed: 3\n") != base
    assert key(WEIGHTS + "    stopping: all_exhausted\n") != base
    assert key(a=299) != base  # a member's content
    assert key(WEIGHTS.replace("0.75", "3").replace("0.25", "1")) == base


def test_the_member_caches_are_left_as_they_were_published(tmp_path):
    ctx = context(tmp_path)
    ctx.rows("data")
    context(tmp_path, COUNTS).rows("data")
    cache = tmp_path / "outputs" / "mx" / ".cache" / "datasets"
    assert sorted(sorted(p.name for p in entry.iterdir()) for entry in cache.iterdir()) == [
        ["cache.json", "data.arrow"], ["cache.json", "data.arrow"]]


def test_a_validation_split_carves_from_the_mixture(tmp_path):
    ctx = context(tmp_path, COUNTS, extra="    validation_split: {size: 5}\n")
    train, held = ctx.rows("data"), ctx.rows("validation")
    assert len(train) == 50 and len(held) == 5
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}  # rows are unique
    everything = sorted(r["prompt"] for r in train + held)
    assert everything == sorted(r["prompt"] for r in context(tmp_path, COUNTS).rows("data"))


def test_an_empty_member_is_named(tmp_path):
    ctx = context(tmp_path, b=0)
    with pytest.raises(DataError, match="mixture 'mix': member 'b' has no rows"):
        ctx.rows("data")


def test_describe_realised():
    planned = {"mixture": [{"data": "gsm8k_train"}, {"data": "nli_train"}], "seed": 0,
               "stopping": "first_exhausted"}
    assert mixture.describe_realised("mix", planned, [700, 300], [7473, 1000]) == (
        "mixture mix: 700 gsm8k_train + 300 nli_train (seed 0, first_exhausted)")


STREAMED = """\
recipe: 1
name: st
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  web: {path: web.jsonl, format: text, streaming: true}
  books: {builtin: corpus, format: text, n: 12, streaming: true}
  mix:
    mixture:
      - {data: web, weight: 0.5}
      - {data: books, weight: 0.5}
    seed: 3
stages:
  pretrain: {kind: pretrain, model: base, data: mix, train: {max_steps: 4}}
"""


def test_a_mixture_of_streams_interleaves_and_resumes_where_it_was(tmp_path):
    """Members read in order, drawn with their proportions; the interleaved stream's
    position (every member's and the generator's) resumes exactly, across passes."""
    from llm_recipe.runtime.data import stream

    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": f"web {i}"}) + "\n"
                                                for i in range(20)))
    (tmp_path / "r.yaml").write_text(STREAMED)
    plan = compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    stage = plan.stage("pretrain")
    ctx = StageContext(plan, stage, root=tmp_path, log=StageLog(tmp_path / stage.dir, "p"))
    assert inputs.is_streaming(ctx, "data")
    open_rows, key = inputs._rows_stream(ctx, ctx.input("data"))
    rows = [r["text"] for r in open_rows()]
    webs = [r for r in rows if r.startswith("web")]
    assert webs == [f"web {i}" for i in range(len(webs))]  # each member in its order
    assert len(rows) - len(webs) == 12 or len(webs) == 20  # until the first runs out

    def blocks(state=None):
        return stream.ResumableStream(
            lambda: open_rows().map(lambda r: {"input_ids": [r["text"]]}), "mix", state)

    def take(source, n):
        out = []
        for example in source:
            out.append(example["input_ids"][0])
            if len(out) == n:
                return out
        return out

    whole = blocks()
    first = take(whole, len(rows) + 7)  # into a second pass
    assert first[:len(rows)] == rows and first[len(rows):] == rows[:7]
    for cut in (5, len(rows) + 2):
        assert take(blocks(whole.state_at(cut)), 5) == first[cut:cut + 5]
    assert key == inputs._rows_stream(ctx, ctx.input("data"))[1]  # a content key, stable
