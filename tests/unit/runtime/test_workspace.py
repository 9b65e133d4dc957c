"""Atomic writes and the manifest marker, on a real file system (locks: test_locks.py)."""

import pytest

from llm_recipe.compiler.status import read_json
from llm_recipe.runtime.workspace import (
    atomic_dir,
    atomic_write_json,
    clear_manifest,
    write_manifest,
)


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2})
    assert read_json(target) == {"v": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_torn_manifest_reads_as_absent(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "compl')
    assert read_json(tmp_path / "manifest.json") is None
    write_manifest(tmp_path, {"status": "complete"})
    assert read_json(tmp_path / "manifest.json") == {"status": "complete"}
    clear_manifest(tmp_path)
    assert not (tmp_path / "manifest.json").exists()

