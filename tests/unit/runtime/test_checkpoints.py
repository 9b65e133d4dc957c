"""Checkpoint checks before resume: recorded sizes, file structure, newest intact first.

Checkpoints here are written by hand (safetensors via numpy, torch archives as the zip
files they are), so these tests need no torch.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from llm_recipe.runtime.checkpoints import (
    FILES,
    LATEST,
    checkpoint_problem,
    read_pointer,
    record_files,
    resume_candidates,
    write_pointer,
)


def make_checkpoint(folder: Path, step: int) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    save_file({"w": np.arange(64, dtype=np.float32)}, str(checkpoint / "model.safetensors"))
    with zipfile.ZipFile(checkpoint / "optimizer.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 50)
        archive.writestr("archive/data/0", bytes(range(256)) * 8)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    record_files(checkpoint)
    write_pointer(folder, LATEST, checkpoint, step=step)
    return checkpoint


def test_an_intact_checkpoint_has_no_problem(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path, 4)
    assert checkpoint_problem(checkpoint) is None
    assert set(json.loads((checkpoint / FILES).read_text())) == {
        "model.safetensors", "optimizer.pt", "trainer_state.json"}


@pytest.mark.parametrize(("name", "expected"), [
    ("model.safetensors", "model.safetensors has 100 bytes; the save wrote"),
    ("optimizer.pt", "optimizer.pt has 100 bytes; the save wrote"),
    ("trainer_state.json", "trainer_state.json has 100 bytes; the save wrote"),
])
def test_a_truncated_file_is_named(tmp_path: Path, name: str, expected: str) -> None:
    checkpoint = make_checkpoint(tmp_path, 4)
    with (checkpoint / name).open("r+b") as handle:
        handle.truncate(100)
    assert expected in checkpoint_problem(checkpoint)


@pytest.mark.parametrize(("name", "expected"), [
    ("model.safetensors", "model.safetensors is truncated"),
    ("optimizer.pt", "optimizer.pt is not a complete torch archive"),
    ("trainer_state.json", "trainer_state.json is unreadable"),
])
def test_damage_is_found_without_a_size_record(tmp_path: Path, name: str, expected: str) -> None:
    """A save from before files.json existed (or with files.json lost) is still checked."""
    checkpoint = make_checkpoint(tmp_path, 4)
    (checkpoint / FILES).unlink()
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2])
    assert expected in checkpoint_problem(checkpoint)


def test_a_flipped_byte_inside_a_torch_archive_fails_its_crc(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path, 4)
    data = bytearray((checkpoint / "optimizer.pt").read_bytes())
    at = data.index(bytes(range(256)))
    data[at + 10] ^= 0xFF
    (checkpoint / "optimizer.pt").write_bytes(bytes(data))
    assert "optimizer.pt is corrupt (member archive/data/0 fails its CRC)" in (
        checkpoint_problem(checkpoint))


def test_candidates_are_the_latest_then_older_complete_saves(tmp_path: Path) -> None:
    older = make_checkpoint(tmp_path, 4)
    latest = make_checkpoint(tmp_path, 8)
    half_written = tmp_path / "checkpoint-12"  # a kill mid-save: no files.json, no pointer
    half_written.mkdir()
    assert resume_candidates(tmp_path) == [latest, older]


@pytest.mark.parametrize("pointer", [
    {"checkpoint": "../../elsewhere", "step": 3}, {"checkpoint": 5}, {"checkpoint": "x"},
    ["checkpoint-4"], {"checkpoint": "checkpoint-4", "step": "4"},
])
def test_a_pointer_of_the_wrong_shape_names_nothing(tmp_path: Path, pointer) -> None:
    make_checkpoint(tmp_path, 4)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / LATEST).write_text(json.dumps(pointer))
    assert read_pointer(tmp_path, LATEST) is None
    assert resume_candidates(tmp_path) == []
