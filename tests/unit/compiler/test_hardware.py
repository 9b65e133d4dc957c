"""The GPU peak table MFU divides by: names as torch reports them (no torch)."""

import pytest

from llm_recipe.compiler.estimate.hardware import peak_tflops


@pytest.mark.parametrize(("name", "precision", "peak"), [
    ("NVIDIA H100 80GB HBM3", "bf16-true", 989.0),
    ("NVIDIA H100 PCIe", "bf16-mixed", 756.0),
    ("NVIDIA H100 NVL", "bf16-true", 835.0),
    ("NVIDIA H200", "bf16-true", 989.0),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
    ("NVIDIA L40S", "bf16-true", 362.0),
    ("NVIDIA L4", "bf16-true", 121.0),
    ("NVIDIA GeForce RTX 4090", "bf16-true", 165.2),
    ("Tesla V100-SXM2-16GB", "fp16-mixed", 125.0),
    ("Tesla T4", "fp16-mixed", 65.0),
    ("H100", "bf16-true", 989.0),  # compute.gpu.type as a recipe writes it
])
def test_known_gpus(name: str, precision: str, peak: float) -> None:
    assert peak_tflops(name, precision) == peak


def test_unknown_gpu_or_no_bf16_has_no_peak() -> None:
    assert peak_tflops("NVIDIA Quadro P1000", "bf16-true") is None
    assert peak_tflops(None, "bf16-true") is None
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16-true") is None  # V100 has no bf16
    # L4 must not match L40S and the other way round
    assert peak_tflops("NVIDIA L40S", "bf16-true") != peak_tflops("NVIDIA L4", "bf16-true")
