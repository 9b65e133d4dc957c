"""What the executor does to a stage folder before a run: sweep, clean, log, and how
it names a full disk. No torch: these are file operations."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.integrity import clean_start, disk_full, sweep_temporaries
from llm_recipe.runtime.log import StageLog, read_metrics, truncate_metrics


def test_temporaries_a_kill_left_are_swept(tmp_path: Path) -> None:
    (tmp_path / ".model.tmp-123-456").mkdir()
    (tmp_path / ".model.tmp-123-456" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".latest.tmp-9-9").write_text("{")
    (tmp_path / "model").mkdir()
    (tmp_path / ".keep").write_text("not ours")
    sweep_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "checkpoints", "model"]
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_clean_start_refuses_to_delete_through_a_linked_checkpoints_folder(
        tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(RecipeError, match="is a symbolic link"):
        clean_start(stage)
    assert (elsewhere / "precious").read_text() == "keep"


def test_a_clean_start_removes_a_linked_log_as_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "train.log").symlink_to(outside)
    clean_start(stage)
    assert not (stage / "train.log").exists() and outside.read_text() == "keep"


def test_logs_are_never_appended_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "train.log").symlink_to(outside)
    log = StageLog(stage, "sft")
    with pytest.raises(RecipeError, match=r"train\.log is a symbolic link"):
        log.header("starting")
    (stage / "metrics.jsonl").symlink_to(outside)
    (stage / "train.log").unlink()
    with pytest.raises(RecipeError, match=r"metrics\.jsonl is a symbolic link"):
        log.metrics(1, {"loss": 1.0})
    assert outside.read_text() == "keep\n"


def test_a_resume_keeps_only_the_rows_up_to_its_checkpoint(tmp_path: Path) -> None:
    log = StageLog(tmp_path, "sft")
    for step in (2, 4, 6, 8):
        log.metrics(step, {"loss": 1.0 / step})
    log.metrics(4, {"loss": 0.3}, prefix="eval")
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 10, "lo')  # torn by a kill
    truncate_metrics(tmp_path, 4)
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["phase"]) for r in rows] == [(2, "train"), (4, "train"), (4, "eval")]
    assert all(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    RuntimeError("Error while serializing: IoError(No space left on device (os error 28))"),
])
def test_a_full_disk_is_named_with_its_mount(tmp_path: Path, error: Exception) -> None:
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        message = disk_full(outer, tmp_path)
    assert message.startswith("no space left on /")
    assert str(tmp_path) in message and "resumes from its last complete checkpoint" in message


def test_other_errors_are_not_a_full_disk(tmp_path: Path) -> None:
    assert disk_full(ValueError("bad shape"), tmp_path) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None


def test_an_earlier_output_is_removed_but_never_outside_the_stage(tmp_path: Path) -> None:
    from llm_recipe.runtime.integrity import remove_output

    stage = tmp_path / "sft"
    (stage / "adapter").mkdir(parents=True)
    (stage / "adapter" / "adapter_model.safetensors").write_text("old")
    remove_output(stage / "adapter", stage)
    assert not (stage / "adapter").exists() and stage.exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (stage / "model").symlink_to(outside)
    remove_output(stage / "model", stage)  # a link is removed as a link
    assert not (stage / "model").is_symlink() and (outside / "keep.txt").exists()
    remove_output(outside, stage)  # not in the stage's folder: left alone
    assert (outside / "keep.txt").exists()
