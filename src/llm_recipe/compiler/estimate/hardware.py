"""Peak dense throughput of known accelerators, for model FLOPs utilisation (MFU).

MFU is the model FLOPs a run achieved per second (``flops.flops_per_token`` times the
tokens it processed, over wall time) divided by what its GPUs could do at most. The
peaks below are the vendors' dense tensor-core figures (no 2:4 sparsity) per GPU:

    GPU                  bf16 / fp16 TFLOP/s   fp32 TFLOP/s (no TF32)
    B200                 2250                   80
    H200, H100 SXM        989                   67
    H100 NVL              835                   60
    H100 PCIe             756                   51
    A100 (SXM, PCIe)      312                   19.5
    L40S                  362                   91.6
    RTX 4090              165 (fp32 accumulate) 82.6
    RTX 3090               71 (fp32 accumulate) 35.6
    A10                   125                   31.2
    L4                    121                   30.3
    V100                  125 (fp16 only)       15.7
    T4                     65 (fp16 only)        8.1
    MI300X               1307                  163

fp32 uses the plain fp32 figure: PyTorch does not use TF32 for matmuls unless told to
(``torch.backends.cuda.matmul.allow_tf32``). A GPU missing from the table gets TFLOP/s
but no MFU. ``compute.gpu.type`` in a recipe and ``torch.cuda.get_device_name()`` at
run time are matched by the same patterns.

Stdlib only: this module must never import torch.
"""

from __future__ import annotations

import re

# (pattern on the device name, bf16 peak, fp16 peak, fp32 peak) in TFLOP/s. Specific
# names come before the ones they contain (H100 PCIe before H100, L40S before L4).
_PEAKS: tuple[tuple[str, float | None, float, float], ...] = (
    (r"\bB200\b", 2250.0, 2250.0, 80.0),
    (r"\bH200\b", 989.0, 989.0, 67.0),
    (r"\bH100\b.*\bNVL\b", 835.0, 835.0, 60.0),
    (r"\bH100\b.*\bPCIe\b", 756.0, 756.0, 51.0),
    (r"\bH100\b", 989.0, 989.0, 67.0),
    (r"\bA100\b", 312.0, 312.0, 19.5),
    (r"\bL40S\b", 362.0, 362.0, 91.6),
    (r"\bRTX 4090\b", 165.2, 165.2, 82.6),
    (r"\bRTX 3090\b", 71.0, 71.0, 35.6),
    (r"\bA10\b", 125.0, 125.0, 31.2),
    (r"\bL4\b", 121.0, 121.0, 30.3),
    (r"\bV100\b", None, 125.0, 15.7),
    (r"\bT4\b", None, 65.0, 8.1),
    (r"\bMI300X\b", 1307.0, 1307.0, 163.4),
)


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """Peak dense TFLOP/s of one GPU named ``device_name`` in ``precision``; None if unknown.

    ``precision`` is a resolved mode (bf16-true, bf16-mixed, fp16-mixed, fp32): the
    bf16 modes use the bf16 peak, fp16-mixed the fp16 one, fp32 the plain fp32 one.
    """
    if not device_name:
        return None
    for pattern, bf16, fp16, fp32 in _PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            if precision.startswith("bf16"):
                return bf16
            return fp16 if precision.startswith("fp16") else fp32
    return None
