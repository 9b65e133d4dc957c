"""The dtype the math runs in per precision mode: QLoRA's compute dtype and vLLM's (no torch)."""

import pytest

from llm_recipe.runtime import compute


@pytest.mark.parametrize(("precision", "load", "math"), [
    ("bf16-true", "bfloat16", "bfloat16"),
    ("bf16-mixed", "float32", "bfloat16"),  # fp32 master weights, bf16 math
    ("fp16-mixed", "float32", "float16"),
    ("fp32", "float32", "float32"),
    ("bf16", "bfloat16", "bfloat16"),  # the alias: bf16-true
])
def test_load_and_compute_dtypes(precision: str, load: str, math: str) -> None:
    gpu = {"gpus_per_node": 1, "precision": precision}
    assert compute.torch_dtype(gpu) == load
    assert compute.compute_dtype(gpu) == math


def test_cpu_auto_is_fp32() -> None:
    assert compute.compute_dtype({"gpus_per_node": 0}) == "float32"
