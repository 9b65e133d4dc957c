"""``recipe clean`` on workspaces laid out by hand: what goes, what stays, and why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llm_recipe import cli
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.clean import KEPT, REMOVED, STALE, clean_candidates, remove
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.runtime.locks import LOCK_DIR, boot_id

RECIPE = """\
recipe: 1
name: tiny
models:
  scratch:
    init: {architecture: llama, size: nano}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 300, format: text}
  train: {builtin: arithmetic, split: train, n: 64, format: gsm8k}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {max_steps: 12, batch_size: 8, max_seq_len: 64}
  sft:
    kind: sft
    model: pretrain
    data: train
    train: {max_steps: 8, batch_size: 8, max_seq_len: 64}
"""


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan(root: Path, *sets: str) -> Plan:
    return compile_recipe(root / "tiny.yaml", overrides=list(sets), cwd=root)


def complete(directory: Path, fingerprint: str, size: int = 1000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stage.json").write_text(json.dumps({"fingerprint": fingerprint}))
    (directory / "model.safetensors").write_bytes(b"\0" * size)
    (directory / "manifest.json").write_text(json.dumps({
        "status": "complete", "fingerprint": fingerprint,
        "output": {"type": "model", "path": "x", "files": {}}}))
    return directory


def partial(directory: Path, fingerprint: str) -> Path:
    (directory / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (directory / "checkpoints" / "latest").write_text(
        json.dumps({"checkpoint": "checkpoint-4", "step": 4}))
    (directory / "stage.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return directory


def live_lease(directory: Path) -> None:
    """A lease of another kernel with a fresh heartbeat: live."""
    (directory / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    (directory / LOCK_DIR / "4242-abc.lease").write_text(json.dumps(
        {"pid": 4242, "host": "node-7", "boot_id": "another-kernel", "flock": True,
         "started": "2026-01-01T00:00:00+00:00", "lease_s": 120.0}))


def by_stage(found) -> dict[str, tuple[str, str]]:
    return {c.stage: (c.action, c.reason) for c in found}


def test_fresh_and_missing_stages_are_left_alone(ws: Path) -> None:
    p = plan(ws)
    complete(ws / p.stage("pretrain").dir, p.stage("pretrain").fingerprint)
    assert clean_candidates(p, ws) == []


def test_stale_stage_goes_with_its_size(ws: Path) -> None:
    old = plan(ws, "stages.pretrain.train.lr=1e-3")
    directory = complete(ws / old.stage("pretrain").dir, old.stage("pretrain").fingerprint)
    found = clean_candidates(plan(ws), ws)
    assert by_stage(found)["pretrain"][0] == STALE
    assert "another config" in by_stage(found)["pretrain"][1]
    assert found[0].bytes >= 1000
    remove(found[0], ws)
    assert not directory.exists()


def test_interrupted_run_of_another_config_is_stale(ws: Path) -> None:
    old = plan(ws, "stages.sft.train.lr=1e-3")
    partial(ws / old.stage("sft").dir, old.stage("sft").fingerprint)
    assert by_stage(clean_candidates(plan(ws), ws))["sft"] == (
        STALE, f"an interrupted run of another config ({old.stage('sft').fingerprint[:12]})")


def test_partial_checkpoints_of_the_current_config_are_kept(ws: Path) -> None:
    p = plan(ws)
    partial(ws / p.stage("sft").dir, p.stage("sft").fingerprint)
    assert clean_candidates(p, ws) == []


def test_removed_stage_folder_goes_but_workspace_files_stay(ws: Path) -> None:
    p = plan(ws)
    workspace = ws / p.workspace
    complete(workspace / "dpo", "f" * 64)
    for name in (".cache/tokenizers/x", "launch", "mlruns", "notes"):
        (workspace / name).mkdir(parents=True)
    (workspace / "plan.json").write_text("{}")
    (workspace / "launch" / "stage.json").write_text("{}")  # reserved, whatever it holds
    found = clean_candidates(p, ws)
    assert [(c.stage, c.action) for c in found] == [("dpo", REMOVED)]
    assert clean_candidates(p, ws, removed=False) == []
    assert clean_candidates(p, ws, stale=False)[0].stage == "dpo"


def test_a_live_lock_keeps_a_stale_or_removed_folder(ws: Path) -> None:
    old = plan(ws, "stages.pretrain.train.lr=1e-3")
    p = plan(ws)
    live_lease(complete(ws / old.stage("pretrain").dir, old.stage("pretrain").fingerprint))
    live_lease(complete(ws / p.workspace / "dpo", "f" * 64))
    found = by_stage(clean_candidates(p, ws))
    assert found["pretrain"][0] == KEPT and "holds its lock" in found["pretrain"][1]
    assert found["dpo"][0] == KEPT


def test_a_dead_lease_does_not_keep_a_folder(ws: Path) -> None:
    p = plan(ws)
    directory = complete(ws / p.workspace / "dpo", "f" * 64)
    (directory / LOCK_DIR).mkdir()
    (directory / LOCK_DIR / "1-abc.lease").write_text(json.dumps(
        {"pid": 1, "host": "here", "boot_id": boot_id(), "flock": True, "lease_s": 120.0}))
    assert by_stage(clean_candidates(p, ws))["dpo"][0] == REMOVED


def test_symlinks_are_never_followed_or_removed(ws: Path, tmp_path_factory) -> None:
    p = plan(ws)
    outside = complete(tmp_path_factory.mktemp("other") / "dpo", "f" * 64)
    workspace = ws / p.workspace
    workspace.mkdir(parents=True)
    os.symlink(outside, workspace / "dpo")
    old = plan(ws, "stages.pretrain.train.lr=1e-3")
    elsewhere = complete(tmp_path_factory.mktemp("other2") / "pretrain",
                         old.stage("pretrain").fingerprint)
    os.symlink(elsewhere, ws / p.stage("pretrain").dir)
    found = clean_candidates(p, ws)
    assert {c.stage: c.action for c in found} == {"pretrain": KEPT, "dpo": KEPT}
    assert all("symlink" in c.reason for c in found)
    for candidate in found:
        remove(candidate, ws)
    assert (outside / "manifest.json").exists() and (elsewhere / "manifest.json").exists()


def test_cli_clean_dry_run_then_clean(ws: Path, capsys) -> None:
    old = plan(ws, "stages.pretrain.train.lr=1e-3")
    p = plan(ws)
    stale = complete(ws / old.stage("pretrain").dir, old.stage("pretrain").fingerprint, 3000)
    gone = complete(ws / p.workspace / "dpo", "f" * 64, 2048)
    fresh = complete(ws / p.stage("sft").dir, p.stage("sft").fingerprint)

    assert cli.main(["clean", "tiny.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove  outputs/tiny/pretrain" in out and "stale:" in out
    assert "would remove  outputs/tiny/dpo" in out and "no stage with this folder" in out
    assert "2 folder(s), would free" in out
    assert stale.exists() and gone.exists()

    assert cli.main(["clean", "tiny.yaml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["freed_bytes"] >= 5048 and not data["dry_run"]
    assert not stale.exists() and not gone.exists() and fresh.exists()

    assert cli.main(["clean", "tiny.yaml"]) == 0
    assert "nothing to clean in outputs/tiny/" in capsys.readouterr().out
