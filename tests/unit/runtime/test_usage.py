"""Peak memory and throughput a stage records (no torch: CPU stages measure RSS)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_recipe.runtime import usage
from llm_recipe.runtime.log import StageLog, read_metrics


def stage(gpus: int = 0, per_token: float | None = 6e9, total_gb: float = 1.5):
    estimate = {"flops_per_token": per_token, "memory_gb": {"total": total_gb},
                "setup": {"precision": "bf16-true"}}
    return SimpleNamespace(compute={"gpus_per_node": gpus}, estimate=estimate)


def test_tflops_and_mfu_from_tokens_per_second() -> None:
    rate = usage.Throughput(flops_per_token=6e9, peak_tflops=312.0, device="A100")
    assert rate.values(10_000) == {"tflop/s": 60.0, "mfu": pytest.approx(60 / 312, abs=1e-4)}
    rate.values(20_000)
    rate.values(30_000)
    record = rate.record()  # the first row (start-up) is left out of the mean
    assert record["tflops_per_s"] == pytest.approx(150.0)
    assert record["mfu"] == pytest.approx(150 / 312, abs=1e-4)


def test_no_mfu_without_a_known_gpu_and_no_throughput_without_flops() -> None:
    cpu = usage.Throughput.for_stage(stage())
    assert cpu is not None and cpu.device == "cpu" and cpu.peak_tflops is None
    assert "mfu" not in cpu.values(1000.0)
    assert usage.Throughput.for_stage(stage(per_token=None)) is None


def test_train_rows_gain_tflops(tmp_path: Path) -> None:
    log = StageLog(tmp_path, "sft")
    log.throughput = usage.Throughput(flops_per_token=1e9, peak_tflops=None, device="cpu")
    log.metrics(10, {"loss": 1.0, "tok/s": 2000})
    log.metrics(10, {"loss": 0.9}, prefix="eval")
    train, evaluation = read_metrics(tmp_path)
    assert train["tflop/s"] == pytest.approx(2.0) and "mfu" not in train
    assert "tflop/s" not in evaluation
    assert "tflop/s=2.0000" in (tmp_path / "train.log").read_text()


def test_peak_rss_is_reset_per_stage() -> None:
    first = usage.PeakMemory(stage())
    block = bytearray(300 * 1024**2)  # touched: resident
    block[::4096] = b"x" * len(block[::4096])
    high = first.record(1.5)
    del block
    second = usage.PeakMemory(stage())
    low = second.record(None)
    assert high["device"] == "cpu" and high["measure"] == "peak RSS"
    assert high["peak_gb"] - low["peak_gb"] > 0.25  # the reset forgot the 300 MiB
    assert high["ratio"] == pytest.approx(1.5 / high["peak_gb"], abs=1e-3)
    assert low["estimate_gb"] is None and low["ratio"] is None


def test_describe_and_manifest_record() -> None:
    used = usage.stage_usage(stage(), usage.PeakMemory(stage()),
                             usage.Throughput(6e9, 312.0, "NVIDIA A100", [(0.1, None)]))
    json.dumps(used)  # goes into manifest.json
    text = usage.describe({"memory": {"peak_gb": 1.234, "measure": "max_memory_allocated",
                                      "estimate_gb": 1.1},
                           "compute": {"tflops_per_s": 150.0, "mfu": 0.48,
                                       "device": "NVIDIA A100"}})
    assert text == ("peak memory 1.23 GiB (max_memory_allocated; estimate 1.10 GiB), "
                    "150 TFLOP/s, MFU 48.0% of NVIDIA A100")
