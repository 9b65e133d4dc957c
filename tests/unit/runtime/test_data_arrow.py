"""Datasets as cached Arrow (no torch): each file type, the cache, the split, error wording.

A stage context is built from a compiled recipe (the compiler and the context are
torch-free), so ``ctx.dataset`` / ``ctx.rows`` run exactly as in a stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.cache import RECORD, cache_problem, sweep_stale
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import arrow, files, split
from llm_recipe.runtime.data.formats import DataError, table_problem
from llm_recipe.runtime.log import StageLog

RECIPE = """\
recipe: 1
name: d
models:
  base: {{hub: sshleifer/tiny-gpt2, revision: main}}
datasets:
  data: {entry}
stages:
  sft:
    kind: sft
    model: base
    data: data
    train: {{max_steps: 1}}
"""


def context(root: Path, entry: str, stage: str = "", kind: str = "sft") -> StageContext:
    text = RECIPE.format(entry=entry).replace("kind: sft", f"kind: {kind}")
    (root / "r.yaml").write_text(text + stage)
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage_plan = plan.stage("sft")
    return StageContext(plan, stage_plan, root=root, log=StageLog(root / stage_plan.dir, "sft"))


def log_lines(ctx: StageContext) -> list[str]:
    return (ctx.dir / "train.log").read_text().splitlines()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(5)]


def write_all_types(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(root / "d.jsonl", ROWS)
    (root / "d.json").write_text(json.dumps({"data": ROWS}))
    (root / "d.csv").write_text("prompt,completion\n" + "".join(
        f'{r["prompt"]},"{r["completion"]}"\n' for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), root / "d.parquet")
    (root / "d.txt").write_text("one\n\n  \ntwo\r\nthree\rfour")


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.parquet"])
def test_each_file_type_loads_memory_mapped_from_the_workspace_cache(tmp_path, name):
    write_all_types(tmp_path)
    ctx = context(tmp_path, f"{{path: {name}, format: prompt_completion}}")
    dataset = ctx.dataset("data")
    assert dataset.to_list() == ROWS
    assert ctx.rows("data") == ROWS
    cached = [Path(f["filename"]) for f in dataset.cache_files]
    assert cached and all(p.is_relative_to(tmp_path / "outputs" / "d" / ".cache" / "datasets")
                          for p in cached)
    assert type(dataset._data).__name__ == "MemoryMappedTable"


def test_txt_lines_and_line_endings(tmp_path):
    write_all_types(tmp_path)
    ctx = context(tmp_path, "{path: d.txt, format: text}", kind="pretrain")
    assert [r["text"] for r in ctx.rows("data")] == ["one", "two", "three", "four"]


def test_csv_values_stay_text_and_quotes_and_line_breaks_survive(tmp_path):
    (tmp_path / "d.csv").write_bytes(b'prompt,completion\r\n"1+1, twice","2\r\nlines"\r\n'
                                     b'007,"say ""hi"""\r\n')
    ctx = context(tmp_path, "{path: d.csv, format: prompt_completion}")
    assert ctx.rows("data") == [{"prompt": "1+1, twice", "completion": "2\r\nlines"},
                                {"prompt": "007", "completion": 'say "hi"'}]


def test_columns_limit_and_builtin(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)])
    ctx = context(tmp_path, "{path: d.jsonl, format: gsm8k, limit: 3, "
                  "columns: {question: q, answer: a}}")
    assert ctx.rows("data") == [{"q": f"q{i}", "a": f"a{i}", "question": f"q{i}",
                                 "answer": f"a{i}"} for i in range(3)]
    ctx = context(tmp_path, "{builtin: arithmetic, n: 4, format: prompt_completion}")
    rows = ctx.rows("data")
    assert len(rows) == 4 and rows[0]["prompt"].startswith("Question: ")


def test_heterogeneous_rows_take_the_exact_path(tmp_path):
    """A column that appears only after pyarrow's first block, and ints among floats."""
    rows = [{"text": f"t{i}", "score": 1} for i in range(20_000)]
    rows.append({"text": "late", "score": 0.5, "extra": {"k": [1, 2]}})
    write_jsonl(tmp_path / "d.jsonl", rows)
    source = arrow.Source("d", {"path": str(tmp_path / "d.jsonl"), "format": "text"})
    out = arrow.load_rows(source)
    assert len(out) == 20_001 and out[-1] == {"text": "late", "score": 0.5,
                                              "extra": {"k": [1, 2]}}
    assert out[0] == {"text": "t0", "score": 1.0, "extra": None}


# ---------------------------------------------------------------------- the cache


def entry_of(ctx: StageContext) -> Path:
    folders = list((ctx.path(ctx.plan.workspace) / ".cache" / "datasets").iterdir())
    return next(f for f in folders if not f.name.startswith("."))


def test_cache_hit_miss_and_damaged_entry_rebuilt(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    ctx = context(tmp_path, "{path: d.jsonl, format: prompt_completion}")
    ctx.dataset("data")
    ctx.dataset("data")
    lines = [line for line in log_lines(ctx) if line.startswith("[data]")]
    assert "built in" in lines[0] and lines[1].endswith("reused)")
    folder = entry_of(ctx)
    assert cache_problem(folder) is None
    record = json.loads((folder / RECORD).read_text())
    assert record["key"]["format"] == "prompt_completion" and record["info"]["rows"] == 5

    (folder / arrow.DATA_FILE).write_bytes(b"torn")
    assert ctx.rows("data") == ROWS
    assert any("is damaged (data.arrow has 4 bytes" in line for line in log_lines(ctx))

    write_jsonl(tmp_path / "d.jsonl", ROWS[:2])  # new content: a new entry, never stale
    ctx = context(tmp_path, "{path: d.jsonl, format: prompt_completion}")
    assert ctx.rows("data") == ROWS[:2]
    assert len(list((folder.parent).iterdir())) == 2


def test_the_key_follows_content_format_columns_and_limit(tmp_path):
    source = arrow.Source("d", {"path": "x", "format": "text"})
    base = digest(arrow.dataset_key(source, "fp1"))
    assert digest(arrow.dataset_key(source, "fp2")) != base
    for change in ({"limit": 3}, {"columns": {"text": "body"}}, {"format": "gsm8k"},
                   {"file_format": "txt"}):
        changed = arrow.Source("d", {**source.entry, **change})
        assert digest(arrow.dataset_key(changed, "fp1")) != base, change


def test_a_stage_output_is_keyed_by_its_bytes(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"text": "a"}])
    source = arrow.Source("s", {"format": "text"}, producer_path=str(path))
    before = arrow.source_fingerprint(source, "stage-fp")
    write_jsonl(path, [{"text": "b"}])  # a forced re-run, same fingerprint, other rows
    assert arrow.source_fingerprint(source, "stage-fp") != before


def test_a_failed_build_leaves_no_entry(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    ctx = context(tmp_path, "{path: d.jsonl, format: prompt_completion}")

    def broken(source, target):
        target.write_bytes(b"half an arrow file")
        raise KeyboardInterrupt

    monkeypatch.setattr(arrow, "convert", broken)
    with pytest.raises(KeyboardInterrupt):
        ctx.dataset("data")
    cache = ctx.path(ctx.plan.workspace) / ".cache" / "datasets"
    assert list(cache.iterdir()) == []


def test_a_kill_mid_build_leaves_no_trusted_entry(tmp_path):
    """SIGKILL while converting: only a temporary folder remains; the next load builds the
    entry, and the temporary is swept once its writer is gone and it has aged."""
    rows = [{"text": "x" * 200 + str(i)} for i in range(300_000)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    ctx = context(tmp_path, "{path: d.jsonl, format: text}", kind="pretrain")
    cache = ctx.path(ctx.plan.workspace) / ".cache" / "datasets"
    script = (
        "import sys, time\n"
        "from llm_recipe.runtime.data import arrow, convert\n"
        "real = convert._write\n"
        "def slow(target, batches, source):\n"
        "    def pace():\n"
        "        for b in batches:\n"
        "            yield b\n"
        "            print('batch', flush=True); time.sleep(30)\n"
        "    return real(target, pace(), source)\n"
        "convert._write = slow\n"
        f"src = arrow.Source('data', {{'path': {str(tmp_path / 'd.jsonl')!r}, "
        "'format': 'text'})\n"
        f"arrow.load(src, 'fp', __import__('pathlib').Path({str(cache.parent)!r}))\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "batch"
    child.kill()
    child.wait()
    left = list(cache.iterdir())
    assert len(left) == 1 and ".tmp-" in left[0].name  # never an entry
    source = arrow.Source("data", {"path": str(tmp_path / "d.jsonl"), "format": "text"})
    loaded = arrow.load(source, "fp", cache.parent)
    assert not loaded.reused and len(loaded.dataset) == 300_000
    assert left[0].exists()  # too young to sweep: it could be a live writer elsewhere
    old = time.time() - 2 * 3600
    os.utime(left[0], (old, old))
    sweep_stale(cache)
    assert not left[0].exists() and len(list(cache.iterdir())) == 1


# ---------------------------------------------------------------------- the split


def test_split_arithmetic():
    assert split.validation_rows(1000, 0.05) == 50
    assert split.validation_rows(10, 0.01) == 1  # rounded up: never an empty validation set
    assert split.validation_rows(1000, 100) == 100
    with pytest.raises(DataError, match="leaving no rows to train on"):
        split.check_split(10, 10, "d")
    with pytest.raises(DataError, match=r"0\.5 of 1 rows holds out 1, leaving"):
        split.check_split(1, 0.5, "d")
    train, held = split.split_indices(1000, 0.1, seed=3)
    assert len(held) == 100 and len(train) == 900
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(1000))
    assert list(train) == sorted(train) and list(held) == sorted(held)
    _, held_again = split.split_indices(1000, 0.1, seed=3)
    assert held.tolist() == held_again.tolist()
    assert held.tolist() != split.split_indices(1000, 0.1, seed=4)[1].tolist()
    assert split.describe({"size": 0.05, "seed": 1}, "c") == "5% of c (seed 1)"
    assert split.describe({"size": 20}, "c") == "20 rows of c"


def test_a_stage_split_is_disjoint_seeded_and_logged(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(40)])
    entry = "{path: d.jsonl, format: prompt_completion}"
    ctx = context(tmp_path, entry, "    validation_split: {size: 0.25, seed: 9}\n")
    assert ctx.has_validation and not ctx.has_input("validation")
    train = [r["prompt"] for r in ctx.rows("data")]
    held = [r["prompt"] for r in ctx.rows("validation")]
    assert len(train) == 30 and len(held) == 10 and not set(train) & set(held)
    assert train == sorted(train, key=lambda p: int(p[1:]))  # original order kept
    assert any("validation split: 10 of 40 rows held out (25% of data (seed 9))" in line
               for line in log_lines(ctx))
    other = context(tmp_path, entry, "    validation_split: {size: 0.25}\n")  # stage seed
    assert [r["prompt"] for r in other.rows("validation")] != held


# ---------------------------------------------------------------------- malformed rows


def render(source: arrow.Source) -> str:
    with pytest.raises(DataError) as caught:
        arrow.load_rows(source)
    text = caught.value.render()
    assert "Traceback" not in text and "pyarrow" not in text.lower()
    return text


def test_a_bad_row_near_the_end_of_100k_rows_is_located(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(100_000):
            handle.write(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n")
            if i == 99_990:
                handle.write('{"prompt": "p", "completion": oops}\n')
    text = render(arrow.Source("big", {"path": str(path), "format": "prompt_completion"}))
    assert "big.jsonl: row 99992 is not valid JSON (Expecting value at column 31)" in text

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(100_000)]
    del rows[99_950]["completion"]
    write_jsonl(path, rows)
    text = render(arrow.Source("big", {"path": str(path), "format": "prompt_completion"}))
    assert "big.jsonl: row 99,951 has no column 'completion' (format prompt_completion)" in text

    rows[99_950]["completion"] = 7
    write_jsonl(path, rows)
    text = render(arrow.Source("big", {"path": str(path), "format": "prompt_completion"}))
    assert "big.jsonl: row 99,951: 'completion' must be text, got int" in text


def test_a_csv_with_a_bad_quote_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(5000))
                    + 'p,"never closed\n' + "".join(f"q{i},d{i}\n" for i in range(100)))
    text = render(arrow.Source("d", {"path": str(path), "format": "prompt_completion"}))
    assert "d.csv: the record on lines 5002-" in text or "d.csv: line 5002" in text


def test_a_parquet_missing_a_column_names_the_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}] * 10), tmp_path / "d.parquet")
    text = render(arrow.Source("d", {"path": str(tmp_path / "d.parquet"),
                                     "format": "prompt_completion"}))
    assert "d.parquet: row 1 has no column 'completion' (format prompt_completion)" in text
    assert "the row has prompt" in text


def test_not_utf8_and_long_lines_are_located_through_arrow(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' * 3 + b'{"text": "caf\xe9"}\n')
    text = render(arrow.Source("d", {"path": str(path), "format": "text"}))
    assert "d.jsonl: line 4 is not valid UTF-8 (byte 0xe9 at column 14)" in text

    monkeypatch.setattr(files, "MAX_ROW_BYTES", 1000)
    write_jsonl(path, [{"text": "a"}, {"text": "x" * 1500}])
    text = render(arrow.Source("d", {"path": str(path), "format": "text"}))
    assert "d.jsonl: line 2 is longer than 1,000 bytes" in text
    (tmp_path / "d.txt").write_text("a\n" + "y" * 1500 + "\n")
    text = render(arrow.Source("d", {"path": str(tmp_path / "d.txt"), "format": "text"}))
    assert "d.txt: line 2 is longer than 1,000 bytes" in text


def test_a_column_that_changes_type_is_named(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "n": 1}, {"text": "b", "n": "two"}])
    text = render(arrow.Source("d", {"path": str(tmp_path / "d.jsonl"), "format": "text"}))
    assert "d.jsonl: row 2: column 'n' is text here but a number in row 1" in text


def test_table_checks_word_errors_like_row_checks():
    import pyarrow as pa

    table = pa.Table.from_pylist([{"messages": [{"role": "u", "content": "c"}]},
                                  {"messages": [{"role": "u"}]}])
    problem = table_problem(table, "messages", "m.jsonl")
    assert problem is not None and problem.message == (
        "m.jsonl: row 2: messages must be a list of {role, content}")
    table = pa.Table.from_pylist([{"text": "a"}, {"text": None}])
    assert "row 2 has no column 'text'" in table_problem(table, "text", "t").message
    assert table_problem(pa.Table.from_pylist([{"text": "a"}]), "text", "t") is None


def test_loading_data_imports_no_torch(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    script = ("import sys; from llm_recipe.runtime.data import load_rows; "
              f"rows = load_rows('d', {{'path': {str(tmp_path / 'd.jsonl')!r}, "
              "'format': 'prompt_completion'}); "
              "assert len(rows) == 5; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", script], check=True)


# ---------------------------------------------------------------------- tokenized keys


def small_tokenizer(words: str = "the cat sat on the mat"):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([words] * 10, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>",
                                   unk_token="<unk>")


def test_the_tokenizer_key_is_its_content():
    from llm_recipe.runtime.data.tokenize import tokenizer_digest

    first, same = small_tokenizer(), small_tokenizer()
    assert tokenizer_digest(first) == tokenizer_digest(same)  # where it came from: irrelevant
    assert tokenizer_digest(small_tokenizer("a dog ran in the park")) != tokenizer_digest(first)
    same.chat_template = "{{ messages }}"
    assert tokenizer_digest(same) != tokenizer_digest(first)
    other = small_tokenizer()
    other.add_special_tokens({"pad_token": "<eos>"})
    assert tokenizer_digest(other) != tokenizer_digest(first)


def test_blocks_match_the_reference_packing(tmp_path):
    """The cached Arrow path and the list reference agree, packed and not, and a text
    shorter than one block is kept whole."""
    from datasets import Dataset

    from llm_recipe.runtime.data.blocks import pretrain_reference, pretrain_sequences

    tokenizer = small_tokenizer()
    texts = ["the cat sat", "", "  ", "on the mat the cat", "mat"] * 7
    dataset = Dataset.from_dict({"text": texts})
    for size, packing in ((4, True), (5, False), (1000, True)):
        built, info = pretrain_sequences(dataset, tokenizer, size=size, packing=packing,
                                         data_key="k", cache=tmp_path / "c", workers=1,
                                         log=lambda _line: None)
        expected = pretrain_reference(texts, tokenizer, size, packing)
        assert [list(x) for x in built["input_ids"]] == expected, (size, packing)
        assert info["sequences"] == len(expected) and info["rows"] == len(texts)
