"""Status from disk: outputs checked against their manifest, wrong shapes read as absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.compiler.fingerprint import digest, file_table
from llm_recipe.compiler.status import output_problem, resumable_step, stage_status


def write_stage(root: Path) -> Path:
    stage = root / "outputs" / "r" / "sft"
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "model.safetensors").write_bytes(b"w" * 1000)
    (stage / "model" / "config.json").write_text("{}")
    files = file_table(stage / "model")
    manifest = {"status": "complete", "fingerprint": "f", "config": {},
                "output": {"path": "outputs/r/sft/model", "sha256": digest(files),
                           "files": files}}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    return stage


def test_an_intact_output_is_fresh(tmp_path: Path) -> None:
    stage = write_stage(tmp_path)
    assert stage_status(stage, "f", {}, tmp_path)["state"] == "fresh"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert output_problem(manifest, tmp_path, hashes=True) is None


def test_sizes_on_every_plan_hashes_when_consumed(tmp_path: Path) -> None:
    stage = write_stage(tmp_path)
    (stage / "model" / "model.safetensors").write_bytes(b"x" * 1000)  # same size
    manifest = json.loads((stage / "manifest.json").read_text())
    assert stage_status(stage, "f", {}, tmp_path)["state"] == "fresh"
    assert output_problem(manifest, tmp_path, hashes=True) == (
        "outputs/r/sft/model/model.safetensors does not match the sha256 its manifest recorded")


def test_a_deleted_output_folder_is_stale_and_named(tmp_path: Path) -> None:
    stage = write_stage(tmp_path)
    for path in (stage / "model").iterdir():
        path.unlink()
    (stage / "model").rmdir()
    status = stage_status(stage, "f", {}, tmp_path)
    assert status["state"] == "stale"
    assert status["damaged"] == "outputs/r/sft/model/config.json is missing"


def test_a_manifest_without_a_file_table_checks_that_the_output_exists(tmp_path: Path) -> None:
    stage = write_stage(tmp_path)
    manifest = json.loads((stage / "manifest.json").read_text())
    del manifest["output"]["files"]
    assert output_problem(manifest, tmp_path) is None
    manifest["output"]["path"] = "outputs/r/sft/gone"
    assert output_problem(manifest, tmp_path) == "outputs/r/sft/gone is missing"


@pytest.mark.parametrize("started", ['["f"]', '{"fingerprint": 3}', '"f"', "{"])
def test_a_stage_json_of_the_wrong_shape_is_not_resumable(tmp_path: Path, started: str) -> None:
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text(
        json.dumps({"checkpoint": "checkpoint-4", "step": 4}))
    (tmp_path / "stage.json").write_text('{"fingerprint": "f"}')
    assert resumable_step(tmp_path, "f") == 4
    (tmp_path / "stage.json").write_text(started)
    assert resumable_step(tmp_path, "f") is None


def test_a_changed_input_is_named_as_the_recipe_names_it(tmp_path: Path) -> None:
    stage_dir = tmp_path / "eval"
    stage_dir.mkdir()
    inputs = [{"field": "models.0", "ref": "base", "fingerprint": "a"},
              {"field": "models.1", "ref": "sft", "fingerprint": "b"},
              {"field": "reference", "ref": "sft", "fingerprint": "b"},
              {"field": "data", "fingerprint": "c"}]  # an older manifest: no ref
    manifest = {"status": "complete", "fingerprint": "old", "config": {"k": 1},
                "inputs": inputs}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))
    status = stage_status(stage_dir, "new", {"k": 1}, tmp_path,
                          {"models.0": "a", "models.1": "B", "reference": "B", "data": "C"})
    assert status == {"state": "stale", "reason": "input changed: sft, data"}
