"""Atomic writes, the manifest marker and stage locks, on a real file system."""

import json
import os
import socket
import subprocess
import sys

import pytest

from llm_recipe.runtime.workspace import (
    StageLock,
    StageLockedError,
    atomic_dir,
    atomic_write_json,
    clear_manifest,
    read_json,
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


def test_second_lock_names_the_live_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}))
        with pytest.raises(StageLockedError) as caught:
            StageLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(caught.value)
        assert socket.gethostname() in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "x"}))
    with StageLock(tmp_path) as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_lock_is_exclusive_within_a_process(tmp_path):
    with StageLock(tmp_path), pytest.raises(StageLockedError):
        StageLock(tmp_path).acquire()
