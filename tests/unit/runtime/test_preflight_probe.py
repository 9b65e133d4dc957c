"""The torch-free machine probe and the check rendered stage scripts run first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_recipe.runtime.preflight import visible_gpus

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("present", "visible", "seen"), [
    (8, None, 8), (8, "", 0), (8, "0,1", 2), (8, "-1", 0), (8, "0,-1,2", 1),
    (2, "0,1,2,3", 2), (0, "0", 0), (4, "GPU-5f2a,GPU-77c1", 2),
])
def test_cuda_visible_devices_narrows_what_a_process_sees(present, visible, seen) -> None:
    assert visible_gpus(present, visible) == seen


def test_a_rendered_multi_process_stage_without_its_gpus_stops_once(tmp_path: Path) -> None:
    """bash launch/stages/01-sft.sh of the 8-GPU Abel recipe, on a machine without GPUs:
    one error and exit 2, before accelerate starts a process."""
    out = tmp_path / "launch"
    subprocess.run([sys.executable, "-m", "llm_recipe", "render", "recipes/abel.yaml",
                    "-o", str(out)], cwd=ROOT, check=True, capture_output=True)
    done = subprocess.run(["bash", str(out / "stages" / "01-sft.sh")], cwd=ROOT,
                          capture_output=True, text=True, env={
                              "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                              "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "error: stage sft cannot run on this machine: it asks for 8 GPU(s) per node "
        "and this machine has 0")
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
