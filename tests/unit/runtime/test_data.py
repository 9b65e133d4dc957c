"""Dataset loading from local files and builtin generators (no torch, no hub)."""

import json

import pytest

from llm_recipe.runtime.data import DataError, load_rows, read_file


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
