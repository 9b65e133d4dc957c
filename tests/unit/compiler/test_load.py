"""Load pass: YAML 1.2 scalars, safety limits and the source map."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest

from llm_recipe.compiler import load, reading
from llm_recipe.compiler.load import load_text, parse_scalar, read_file
from llm_recipe.errors import Location, RecipeError

POSITIONS = """\
recipe: 1
name: demo
stages:
  sft:
    kind: sft
    train:
      lr: 1e-4
    adapter: {type: lora, r: 8}
  eval:
    models:
      - base
      - sft
    metrics: [exact_match, perplexity]
"""


def at(doc, *path, key: bool = False) -> tuple[int, int]:
    table = doc.where.keys if key else doc.where.values
    loc = table[tuple(path)]
    return loc.line, loc.col


@pytest.fixture
def positions():
    return load_text(POSITIONS, "r.yaml")


def test_nested_key_and_value_positions(positions) -> None:
    assert at(positions, "stages", "sft", "train", "lr") == (7, 11)
    assert at(positions, "stages", "sft", "train", "lr", key=True) == (7, 7)
    assert at(positions, "stages", "sft", key=True) == (4, 3)
    assert at(positions, "recipe") == (1, 9)


def test_block_list_item_positions(positions) -> None:
    assert at(positions, "stages", "eval", "models", 0) == (11, 9)
    assert at(positions, "stages", "eval", "models", 1) == (12, 9)


def test_flow_collection_positions(positions) -> None:
    assert at(positions, "stages", "sft", "adapter", "type") == (8, 21)
    assert at(positions, "stages", "sft", "adapter", "r", key=True) == (8, 27)
    assert at(positions, "stages", "eval", "metrics", 1) == (13, 28)


def test_location_carries_the_file_name(positions) -> None:
    loc = positions.where.values[("name",)]
    assert loc == Location("r.yaml", 2, 7)


def test_locate_falls_back_to_the_nearest_ancestor(positions) -> None:
    loc = positions.where.locate(("stages", "sft", "train", "missing", "deeper"))
    assert (loc.line, loc.col) == at(positions, "stages", "sft", "train")
    assert positions.where.locate(("stages", "sft"), key=True).line == 4


def test_snippet_points_at_the_column(positions) -> None:
    snippet = positions.where.snippet(Location("r.yaml", 7, 11))
    assert snippet == "    7 |       lr: 1e-4\n      |           ^"
    assert positions.where.snippet(Location("other.yaml", 1, 1)) is None
    assert positions.where.snippet(Location("r.yaml", 99, 1)) is None


ALIASES = """\
recipe: 1
shared: &train
  lr: 1e-4
  steps: 10
copy: *train
merged:
  <<: *train
  steps: 20
several:
  <<: [*train, {extra: 1}]
word: &w hello
again: *w
"""


def test_aliases_copy_values_and_point_at_the_anchor_source() -> None:
    doc = load_text(ALIASES, "r.yaml")
    assert doc.data["copy"] == {"lr": 1e-4, "steps": 10}
    assert doc.data["again"] == "hello"
    assert at(doc, "copy") == (5, 7)
    assert at(doc, "copy", "lr") == (3, 7)
    assert at(doc, "again") == (12, 8)


def test_alias_values_are_independent_copies() -> None:
    doc = load_text(ALIASES, "r.yaml")
    doc.data["copy"]["lr"] = 1.0
    assert doc.data["shared"]["lr"] == 1e-4


def test_merge_keys() -> None:
    doc = load_text(ALIASES, "r.yaml")
    assert doc.data["merged"] == {"lr": 1e-4, "steps": 20}
    assert doc.data["several"] == {"lr": 1e-4, "steps": 10, "extra": 1}
    assert "<<" not in doc.data["merged"]
    assert at(doc, "merged", "steps") == (8, 10)
    assert at(doc, "merged", "lr") == (3, 7)
    assert ("merged", "<<") not in doc.where.values


def test_merge_of_a_scalar_is_refused() -> None:
    with pytest.raises(RecipeError, match="'<<' merges a mapping"):
        load_text("a: &x 1\nb:\n  <<: *x\n", "r.yaml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("1E+3", 1000.0),
        ("3.0", 3.0),
        (".5", 0.5),
        ("-2", -2),
        ("+7", 7),
        ("010", 10),
        ("0x1F", 31),
        ("0o17", 15),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("null", None),
        ("~", None),
        ("", None),
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("y", "y"),
        ("1_000", "1_000"),
        ("0b101", "0b101"),
        ("1:30", "1:30"),
        ("gpt2", "gpt2"),
    ],
)
def test_yaml_12_core_scalars(text: str, value: object) -> None:
    parsed = parse_scalar(text)
    assert parsed == value
    assert type(parsed) is type(value)


def test_special_floats() -> None:
    assert parse_scalar(".inf") == math.inf
    assert parse_scalar("-.Inf") == -math.inf
    assert math.isnan(parse_scalar(".nan"))


def test_quoted_scalars_stay_strings() -> None:
    doc = load_text("a: '1e-4'\nb: \"true\"\nc: 'null'\nd: |\n  12\n", "r.yaml")
    assert doc.data == {"a": "1e-4", "b": "true", "c": "null", "d": "12\n"}


def test_scalars_in_a_document() -> None:
    doc = load_text("lr: 1e-4\nflag: yes\nmask: 0x1F\nn: 8\n", "r.yaml")
    assert doc.data == {"lr": 1e-4, "flag": "yes", "mask": 31, "n": 8}
    assert isinstance(doc.data["lr"], float)


def test_core_tags_are_allowed() -> None:
    doc = load_text("a: !!str 1\nb: !!int '3'\nc: !!float 2\nd: !!bool true\ne: !!null ''\n", "r")
    assert doc.data == {"a": "1", "b": 3, "c": 2.0, "d": True, "e": None}
    assert isinstance(doc.data["c"], float)


def test_core_tag_with_a_wrong_value() -> None:
    with pytest.raises(RecipeError, match="'abc' is not a valid int") as info:
        load_text("a: !!int abc\n", "r.yaml")
    assert info.value.location == Location("r.yaml", 1, 4)


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/name:os.system ''\n",
        "a: !custom x\n",
        "a: !!set {x, y}\n",
        "a: !!binary aGVsbG8=\n",
        "a: !!timestamp 2024-01-01\n",
    ],
)
def test_other_tags_are_refused(text: str) -> None:
    with pytest.raises(RecipeError, match="is not allowed") as info:
        load_text(text, "r.yaml")
    assert info.value.location.line == 1
    assert "tag:yaml.org" not in info.value.message


def test_unquoted_dates_stay_strings() -> None:
    assert load_text("d: 2024-01-01\n", "r").data == {"d": "2024-01-01"}


def test_duplicate_key_points_at_the_second_one() -> None:
    with pytest.raises(RecipeError, match=r"duplicate key 'lr' \(first defined at line 2\)") as i:
        load_text("train:\n  lr: 1\n  steps: 2\n  lr: 3\n", "r.yaml")
    assert i.value.location == Location("r.yaml", 4, 3)
    assert i.value.path == ("train", "lr")


def test_merged_keys_may_be_overridden_without_a_duplicate_error() -> None:
    doc = load_text("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n", "r")
    assert doc.data["b"] == {"x": 2}


def test_nested_mapping_key_is_refused() -> None:
    with pytest.raises(RecipeError, match="a key must be a plain string"):
        load_text("? [a, b]\n: 1\n", "r.yaml")


def test_alias_as_key_is_refused() -> None:
    with pytest.raises(RecipeError, match="an alias cannot be a key"):
        load_text("a: &k x\n*k : 1\n", "r.yaml")


def test_unknown_alias() -> None:
    with pytest.raises(RecipeError) as info:
        load_text("a: *nope\n", "r.yaml")
    assert "alias" in info.value.message
    assert info.value.hint and "anchor" in info.value.hint


def test_two_documents_are_refused() -> None:
    with pytest.raises(RecipeError, match="more than one YAML document") as info:
        load_text("a: 1\n---\nb: 2\n", "r.yaml")
    assert info.value.location.line == 2


def test_depth_limit() -> None:
    ok = "a: " + "[" * (load.MAX_DEPTH - 2) + "]" * (load.MAX_DEPTH - 2) + "\n"
    load_text(ok, "r.yaml")
    deep = "a: " + "[" * 200 + "]" * 200 + "\n"
    with pytest.raises(RecipeError, match="nesting deeper"):
        load_text(deep, "r.yaml")


def test_alias_expansion_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "MAX_NODES", 5_000)
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    with pytest.raises(RecipeError, match="expands to more than"):
        load_text("\n".join(lines) + "\n", "r.yaml")


def test_syntax_error_location_and_context() -> None:
    with pytest.raises(RecipeError) as info:
        load_text("a:\n  b: [1, 2\n  c: 3\n", "r.yaml")
    error = info.value
    assert error.message.startswith("invalid YAML: ")
    assert "starts at line 2" in error.message
    assert error.location.line == 3
    assert error.hint


def test_tab_indentation_gets_a_tab_hint() -> None:
    with pytest.raises(RecipeError) as info:
        load_text("a:\n\tb: 1\n", "r.yaml")
    assert info.value.location == Location("r.yaml", 2, 1)
    assert "tab" in info.value.message
    assert "spaces" in info.value.hint


def test_colon_in_value_hint() -> None:
    with pytest.raises(RecipeError) as info:
        load_text("a: b: c\n", "r.yaml")
    assert "quoted" in info.value.hint


def test_conflict_markers() -> None:
    with pytest.raises(RecipeError, match="merge-conflict marker") as info:
        load_text("a: 1\n<<<<<<< HEAD\nb: 2\n=======\nb: 3\n>>>>>>> x\n", "r.yaml")
    assert info.value.location == Location("r.yaml", 2, 1)


def test_a_block_scalar_line_of_equals_signs_is_refused_too() -> None:
    # Conservative: a line of exactly seven '=' at column 1 is always a marker.
    with pytest.raises(RecipeError, match="merge-conflict"):
        load_text("a: 1\n=======\n", "r.yaml")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n"])
def test_empty_recipe(text: str) -> None:
    with pytest.raises(RecipeError, match="the recipe is empty") as info:
        load_text(text, "r.yaml")
    assert info.value.location == Location("r.yaml", 1, 1)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n", "list"), ("hello\n", "string"), ("3\n", "int")]
)
def test_root_must_be_a_mapping(text: str, kind: str) -> None:
    with pytest.raises(RecipeError, match=f"the top level is a {kind}"):
        load_text(text, "r.yaml")


def test_read_file_missing(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"no such file: nope\.yaml"):
        read_file(tmp_path / "nope.yaml", display="nope.yaml")


def test_read_file_directory(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="is a directory"):
        read_file(tmp_path)


def test_read_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * load.MAX_BYTES)
    with pytest.raises(RecipeError, match="over the 1,000,000-byte limit") as info:
        read_file(path, display="big.yaml")
    assert info.value.location == Location("big.yaml", 1, 1)


def test_read_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(RecipeError, match="not valid UTF-8") as info:
        read_file(path, display="latin1.yaml")
    assert info.value.location == Location("latin1.yaml", 2, 1)


def test_read_file_uses_the_display_name(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("a: 1\n")
    doc = read_file(path, display="recipes/r.yaml")
    assert doc.file == "recipes/r.yaml"
    assert doc.where.values[("a",)].file == "recipes/r.yaml"


def test_control_characters_are_located() -> None:
    with pytest.raises(RecipeError, match="unacceptable character #x0007") as info:
        load_text("a: 1\nb: x\x07y\n", "r.yaml")
    assert info.value.location == Location("r.yaml", 2, 5)
    assert info.value.hint


def test_byte_order_mark_and_crlf() -> None:
    doc = load_text("\ufeffa: 1\r\nb:\r\n  c: 2\r\n", "r.yaml")
    assert doc.data == {"a": 1, "b": {"c": 2}}
    assert at(doc, "b", "c") == (3, 6)


# Bounded reads: what is *read* is bounded, not what stat says (devices, pipes, /proc).


def test_read_file_reads_at_most_the_limit_plus_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * (3 * load.MAX_BYTES))
    read = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        chunk = real_read(fd, n)
        read.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(RecipeError, match="over the 1,000,000-byte limit"):
        read_file(path, display="big.yaml")
    assert 0 < sum(read) <= load.MAX_BYTES + 1


def test_read_file_of_an_endless_device_stops_at_the_limit() -> None:
    started = time.monotonic()
    with pytest.raises(RecipeError, match="more than 1,000,000 bytes, over the limit") as info:
        read_file(Path("/dev/zero"))
    assert time.monotonic() - started < 5
    assert info.value.location == Location("/dev/zero", 1, 1)
    assert info.value.hint


def test_fifo_without_a_writer_times_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reading, "READ_TIMEOUT", 0.3)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(RecipeError, match=r"nothing to read from pipe\.yaml: a pipe with no"):
        read_file(fifo, display="pipe.yaml")
    assert time.monotonic() - started < 3


def test_fifo_with_a_writer_is_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(reading, "READ_TIMEOUT", 5)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.2)  # the reader is already waiting
        with open(fifo, "w") as handle:
            handle.write("a: 1\n")
            handle.flush()
            time.sleep(0.2)  # data in two parts: the reader waits for the rest
            handle.write("b: [x, y]\n")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        doc = read_file(fifo, display="pipe.yaml")
    finally:
        thread.join()
    assert doc.data == {"a": 1, "b": ["x", "y"]}


def test_extends_bases_are_read_through_the_bounded_reader(tmp_path: Path, monkeypatch) -> None:
    from llm_recipe.compiler.compose import compose

    (tmp_path / "base.yaml").write_bytes(b"recipe: 1\nname: b\n" + b"#" * load.MAX_BYTES)
    (tmp_path / "r.yaml").write_text("recipe: 1\nextends: base.yaml\nname: r\n")
    calls = []
    real = load.read_bytes

    def spy(path: Path, name: str) -> bytes:
        calls.append(name)
        return real(path, name)

    monkeypatch.setattr(load, "read_bytes", spy)
    with pytest.raises(RecipeError, match="over the 1,000,000-byte limit") as info:
        compose(tmp_path / "r.yaml", display="r.yaml")
    assert info.value.location.file == "base.yaml"
    assert calls == ["r.yaml", "base.yaml"]
