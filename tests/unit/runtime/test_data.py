"""Dataset loading from local files and builtin generators (no torch, no hub)."""

import json
import tracemalloc

import pytest

from llm_recipe.runtime.data import DataError, load_rows, read_file
from llm_recipe.runtime.data import files as data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "1+1?", "a": "2\n#### 2"}])
    entry = {"path": str(path), "format": "gsm8k", "columns": {"question": "q", "answer": "a"}}
    assert load_rows("d", entry)[0]["question"] == "1+1?"


def test_missing_column_names_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError) as caught:
        load_rows("d", {"path": str(path), "format": "prompt_completion"})
    text = caught.value.render()
    assert "d.jsonl: row 2 has no column 'completion'" in text
    assert "columns:" in text


def test_malformed_json_row_is_located(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match="row 2 is not valid JSON"):
        load_rows("d", {"path": str(path), "format": "text"})


def test_csv_txt_json_files(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\nhi,there\n")
    (tmp_path / "b.txt").write_text("one\n\ntwo\n")
    (tmp_path / "c.json").write_text(json.dumps({"data": [{"text": "x"}]}))
    assert read_file(tmp_path / "a.csv") == [{"prompt": "hi", "completion": "there"}]
    assert read_file(tmp_path / "b.txt") == [{"text": "one"}, {"text": "two"}]
    assert read_file(tmp_path / "c.json") == [{"text": "x"}]


def test_wrong_type_in_a_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": 5}])
    with pytest.raises(DataError, match="row 1: 'text' must be text"):
        load_rows("d", {"path": str(path), "format": "text"})


@pytest.mark.parametrize("fmt", ["gsm8k", "prompt_completion", "text", "messages"])
def test_builtin_arithmetic_renders_each_format(fmt):
    rows = load_rows("a", {"builtin": "arithmetic", "n": 5, "split": "test", "format": fmt})
    assert len(rows) == 5
    if fmt == "prompt_completion":
        assert rows[0]["prompt"].startswith("Question: ") and "####" in rows[0]["completion"]


def test_limit_and_stage_output(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"text": str(i)} for i in range(10)])
    rows = load_rows("s", {"format": "text", "limit": 3}, producer_path=str(path))
    assert [r["text"] for r in rows] == ["0", "1", "2"]


# --- hostile input: every data error names the file and the line (or element) ---


def render_error(path, file_format=None):
    with pytest.raises(DataError) as caught:
        read_file(path, file_format)
    return caught.value.render()


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.txt"])
def test_non_utf8_bytes_name_the_file_line_and_column(tmp_path, name):
    path = tmp_path / name
    first = b'{"text": "ok"}\n' if name.endswith("jsonl") else b"text\n"
    path.write_bytes(first + b"caf\xe9 au lait\n")
    text = render_error(path)
    assert f"{name}: line 2 is not valid UTF-8 (byte 0xe9 at column 4)" in text
    assert "hint: save the file as UTF-8" in text


def test_non_utf8_json_file_is_located(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n  {"text": "\xc3\xa9t\xe9"}\n]')
    assert "d.json: line 2 is not valid UTF-8 (byte 0xe9 at column 15)" in render_error(path)


def test_malformed_json_file_names_line_column_and_problem(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": }\n]')
    text = render_error(path)
    assert "d.json: line 3, column 12: not valid JSON (Expecting value)" in text
    assert "expected: a JSON list of objects" in text


def test_json_lines_in_a_json_file_hint_at_jsonl(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    text = render_error(path)
    assert "line 2, column 1: not valid JSON (Extra data)" in text
    assert "file_format: jsonl" in text


@pytest.mark.parametrize(("data", "problem"), [
    (5, "the top level is a number, not a list of rows"),
    ("rows", "the top level is a string, not a list of rows"),
    (None, "the top level is null, not a list of rows"),
    ({"rows": [{"text": "a"}]}, 'the top level is an object without a "data" list'),
    ({"data": {"text": "a"}}, '"data" is an object, not a list of rows'),
    ([{"text": "a"}, {"text": "b"}, "c"], "element 2 of the list (counting from 0) is a string"),
    ({"data": [{"text": "a"}, [1]]}, 'element 1 of the "data" list (counting from 0) is a list'),
])
def test_json_file_that_is_not_rows(tmp_path, data, problem):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    text = render_error(path)
    assert f"d.json: {problem}" in text
    assert "hint:" in text


def test_json_list_of_rows_still_reads(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert read_file(path) == [{"text": "a"}, {"text": "b"}]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt", "shards"])
def test_a_directory_is_not_a_data_file(tmp_path, name):
    (tmp_path / name).mkdir()
    assert f"{name} is a directory, not a data file" in render_error(tmp_path / name)


def test_a_directory_as_stage_output_is_a_data_error(tmp_path):
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load_rows("s", {"format": "text"}, producer_path=str(tmp_path / "out.jsonl"))


def test_jsonl_row_that_is_not_an_object(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n"b"\n')
    assert "d.jsonl: row 2 is a string, not an object" in render_error(tmp_path / "d.jsonl")


def test_nested_too_deep_json_is_a_data_error(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n' + "[" * 100_000 + "\n")
    (tmp_path / "d.json").write_text("[" * 100_000)
    assert "d.jsonl: row 2 is JSON nested too deeply" in render_error(tmp_path / "d.jsonl")
    assert "d.json: the document is JSON nested too deeply" in render_error(tmp_path / "d.json")


def test_csv_row_with_too_many_fields_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nhi,there\n\nhello, world,again\n")
    text = render_error(path)
    assert "d.csv: line 4 has 3 fields, the header has 2" in text
    assert "expected: 2 comma-separated fields, like the header on line 1" in text


def test_csv_row_with_too_few_fields_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"a\nmulti-line prompt"\n')
    assert "d.csv: line 2 has 1 field, the header has 2" in render_error(path)


def test_csv_field_over_the_csv_limit_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nhi,there\n"' + "x" * 200_000 + '",b\n')
    text = render_error(path)
    assert "d.csv: line 3 has a field over csv's limit" in text
    assert "hint:" in text


def test_csv_unclosed_quote_names_where_the_record_starts(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nhi,"there\n' + "more text,\n" * 20_000)
    assert "d.csv: the record on lines 2-" in render_error(path)


def test_csv_quoted_fields_and_line_endings_still_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\r\n"a, b","two\r\nlines"\r\nx,"say ""hi"""\r\n')
    assert read_file(path) == [{"prompt": "a, b", "completion": "two\r\nlines"},
                               {"prompt": "x", "completion": 'say "hi"'}]


def test_lone_carriage_returns_still_end_lines(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"prompt,completion\rhi,there\r")
    (tmp_path / "b.txt").write_bytes(b"one\rtwo\r\nthree")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "a"}\r{"text": "b"}')
    assert read_file(tmp_path / "a.csv") == [{"prompt": "hi", "completion": "there"}]
    assert read_file(tmp_path / "b.txt") == [{"text": t} for t in ("one", "two", "three")]
    assert read_file(tmp_path / "c.jsonl") == [{"text": "a"}, {"text": "b"}]


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert read_file(path) == [{"text": "a\u2028b\x85c"}]


def test_parquet_reads_and_a_corrupt_one_is_a_data_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a"}]), tmp_path / "d.parquet")
    assert read_file(tmp_path / "d.parquet") == [{"text": "a"}]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "bad.parquet: cannot be read as parquet" in render_error(tmp_path / "bad.parquet")


# --- bounded memory: a huge line is refused before it is read whole ---

LIMIT = 1000


@pytest.fixture
def small_rows(monkeypatch):
    monkeypatch.setattr(data, "MAX_ROW_BYTES", LIMIT)


def huge_line_file(tmp_path, name, size):
    path = tmp_path / name
    head = {"jsonl": '{"text": "ok"}\n', "csv": "text\nok\n", "txt": "ok\n"}[name.split(".")[1]]
    with path.open("w") as handle:
        handle.write(head)
        handle.write("x" * size + "\n")
    return path


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.txt"])
def test_a_line_over_the_limit_is_refused_with_file_line_and_limit(tmp_path, small_rows, name):
    text = render_error(huge_line_file(tmp_path, name, LIMIT + 1))
    line = 3 if name.endswith("csv") else 2
    assert f"{name}: line {line} is longer than 1,000 bytes" in text
    assert "MAX_ROW_BYTES" in text
    assert "hint: split the document" in text


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.txt"])
def test_a_huge_line_is_never_held_in_memory(tmp_path, small_rows, name):
    path = huge_line_file(tmp_path, name, 8_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="is longer than 1,000 bytes"):
            read_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_line_exactly_at_the_limit_is_read(tmp_path, small_rows, ending):
    path = tmp_path / "d.txt"
    path.write_bytes(("x" * LIMIT + ending).encode() * 3)
    assert read_file(path) == [{"text": "x" * LIMIT}] * 3


def test_a_csv_record_spanning_lines_is_bounded(tmp_path, small_rows):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\nhi,"' + "a line of text\n" * 100 + '"\n')
    text = render_error(path)
    assert "d.csv: the record starting on line 2 is over 1,000 bytes by line" in text


def test_a_json_file_over_its_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_JSON_BYTES", 100)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "x" * 200}]))
    text = render_error(path)
    assert "d.json: a .json file is parsed whole and this one is over 100 bytes" in text
    assert "jsonl" in text.split("hint:")[1]
