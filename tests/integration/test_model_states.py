"""The plan's model states against what torch, bitsandbytes, peft and DeepSpeed hold (CPU).

- QLoRA: an sft stage with a QLoRA adapter is built by the runtime's own path (4-bit
  load, ``prepare_model_for_kbit_training``, trl's peft wrapping, which casts the
  adapter to bf16); the bytes of its parameters by dtype, plus bitsandbytes'
  quantisation state, are compared with the estimate's 'weights'. A lone
  ``bnb.nn.Linear4bit`` checks QLORA_LINEAR_BYTES.
- The optimizer step: torch's AdamW with foreach=True (the CUDA default) is stepped under
  MemTracker and the most it allocates beyond its states is compared with
  'optimizer_step'; DDP's all-reduce buckets likewise with 'gradients'.
- DeepSpeed's own parameter counting (``model_to_params``: total and largest layer) on
  real models, against Architecture.parameter_count / largest_layer_parameter_count.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Any

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.architectures import Architecture, from_hf_config, from_init
from llm_recipe.compiler.estimate import (
    QLORA_LINEAR_BYTES,
    Setup,
    memory_bytes,
    resolve_setup,
)
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes (the qlora extra) is not installed")

RECIPE = """\
recipe: 1
name: states
seed: 3
models:
  scratch:
    init: {{architecture: llama, size: small, kv_heads: 2}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 200}}
  arith: {{builtin: arithmetic, split: train, n: 16, format: gsm8k}}
compute: {{launcher: local, gpus_per_node: 0, precision: {precision}}}
stages:
  qlora:
    kind: sft
    model: scratch
    data: arith
    adapter: {{type: qlora, r: 16, alpha: 32, target_modules: all-linear,
              double_quant: {double}}}
    train: {{max_steps: 1, lr: 1.0e-3, batch_size: 2, max_seq_len: 64}}
"""


def tensor_bytes(t: Any) -> int:
    return t.numel() * t.element_size()


def quant_state_bytes(param: Any) -> int:
    """bitsandbytes' quantisation state of a Params4bit: absmax, code book and, with
    double quantisation, the nested absmax, code book and offset."""
    qs = param.quant_state
    total = tensor_bytes(qs.absmax) + tensor_bytes(qs.code)
    if qs.nested:
        total += tensor_bytes(qs.state2.absmax) + tensor_bytes(qs.state2.code)
        total += tensor_bytes(qs.offset)
    return total


@needs_bnb
@pytest.mark.parametrize("double", [True, False])
def test_qlora_linear_bytes_are_bitsandbytes_storage(double: bool) -> None:
    import bitsandbytes as bnb
    import torch

    fan_in, fan_out = 1024, 2048
    linear = bnb.nn.Linear4bit(fan_in, fan_out, bias=False, compute_dtype=torch.bfloat16,
                               compress_statistics=double, quant_type="nf4").to("cpu")
    weight = linear.weight
    assert weight.dtype == torch.uint8 and weight.quant_state.blocksize == 64
    assert weight.quant_state.nested is double
    stored = tensor_bytes(weight.data) + quant_state_bytes(weight)
    per_tensor = 16 * 4 + (256 * 4 + 4 if double else 0)  # code books (and offset)
    assert stored == pytest.approx(fan_in * fan_out * QLORA_LINEAR_BYTES[double] + per_tensor)


@needs_bnb
@pytest.mark.parametrize(("precision", "double"), [("bf16-true", True), ("fp32", True),
                                                   ("bf16-true", False)])
def test_qlora_weights_as_the_runtime_holds_them(tmp_path: Path, precision: str,
                                                 double: bool) -> None:
    import torch

    from llm_recipe.runtime.stages import sft

    (tmp_path / "r.yaml").write_text(RECIPE.format(precision=precision,
                                                   double=str(double).lower()))
    plan = compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    stage = plan.stage("qlora")
    ctx = StageContext(plan, stage, root=tmp_path, log=StageLog(tmp_path / stage.dir, "qlora"))
    trainer, _ = sft.build_trainer(ctx)
    model = trainer.model
    by_dtype: dict[torch.dtype, int] = {}
    quant = 0
    for p in model.parameters():
        by_dtype[p.dtype] = by_dtype.get(p.dtype, 0) + tensor_bytes(p)
        if type(p).__name__ == "Params4bit":
            quant += quant_state_bytes(p)
    # the estimate, for the shapes the runtime built (the trained tokenizer's vocabulary)
    arch = from_hf_config(model.base_model.model.config.to_dict(), "built")
    assert arch is not None
    s = resolve_setup("sft", ctx.compute)
    assert s.precision == precision
    weights = memory_bytes("sft", ctx.config, arch, s)["weights"]
    real = sum(by_dtype.values()) + quant
    # 4-bit block Linears (two weights a byte), the rest of the base cast to fp32 by
    # prepare_model_for_kbit_training, the LoRA weights cast to bf16 by trl's trainer
    assert set(by_dtype) == {torch.uint8, torch.float32, torch.bfloat16}
    assert by_dtype[torch.uint8] == arch.linear_parameter_count() // 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == arch.lora_parameter_count(16, "all-linear")
    assert by_dtype[torch.bfloat16] == 2 * trainable
    frozen_fp32 = arch.parameter_count() - arch.linear_parameter_count()
    assert by_dtype[torch.float32] == 4 * frozen_fp32
    assert weights == pytest.approx(real, rel=0.05)
    print(f"\nqlora {precision} double_quant={double}: estimate {weights:,.0f} B, "
          f"bitsandbytes+peft {real:,.0f} B ({weights / real - 1:+.2%})")


def _setup(precision: str, strategy: str = "single", processes: int = 1) -> Setup:
    return Setup(devices=processes, processes=processes, gpu=True, precision=precision,
                 strategy=strategy, shard=0, offload="none", checkpointing=False)


ARCH = from_init({"architecture": "llama", "size": "small", "kv_heads": 2}, 512)
STEP_CASES = [("fp32", "full"), ("bf16-true", "full"), ("bf16-mixed", "full"),
              ("bf16-true", "lora")]


def _model(arch: Architecture, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from llm_recipe.runtime.models import hf_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config(arch)).to(dtype)


def _backward(model: Any, arch: Architecture) -> None:
    import torch

    ids = torch.randint(0, arch.vocab_size, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()


@pytest.mark.parametrize(("precision", "method"), STEP_CASES)
def test_foreach_adamw_step_temporary(precision: str, method: str) -> None:
    """torch's AdamW(foreach=True) allocates one temporary the size of the parameters it
    steps (``torch._foreach_sqrt(exp_avg_sqs)``), in their dtype."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    model = _model(ARCH, dtype)
    config: dict[str, Any] = {"train": {"batch_size": 2, "max_seq_len": 32,
                                        "optimizer": "adamw_torch"}}
    if method == "lora":
        from peft import get_peft_model

        from llm_recipe.runtime.adapters import lora_config

        adapter = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0,
                   "target_modules": "all-linear"}
        model = get_peft_model(model, lora_config(adapter))
        config["adapter"] = adapter
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    _backward(model, ARCH)
    optimizer.step()  # the states exist from here on, as in every later step
    optimizer.zero_grad()
    _backward(model, ARCH)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    cpu = torch.device("cpu")
    with tracker:
        before = tracker.get_tracker_snapshot("current")[cpu]["Total"]
        optimizer.step()
        peak = tracker.get_tracker_snapshot("peak")[cpu]["Total"]
    measured = peak - before
    estimate = memory_bytes("sft", config, ARCH, _setup(precision))["optimizer_step"]
    assert estimate == pytest.approx(measured, rel=0.15)
    print(f"\nAdamW foreach step {precision} {method}: estimate {estimate:,.0f} B, "
          f"measured {measured:,.0f} B ({estimate / measured - 1:+.2%})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_buckets_copy_the_gradients(monkeypatch) -> None:
    """DDP (gradient_as_bucket_view=False, the Trainer's default) allocates all-reduce
    buckets as large as the gradients; one gloo process allocates them as eight would."""
    import torch
    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_model(ARCH, torch.float32))
        tracker = MemTracker()
        tracker.track_external(ddp)
        with tracker:
            before = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
            _backward(ddp, ARCH)
            after = tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"]
    finally:
        dist.destroy_process_group()
    measured = after - before  # gradients + buckets (the activations are freed)
    config = {"train": {"batch_size": 2, "max_seq_len": 32, "optimizer": "adamw_torch"}}
    mem = memory_bytes("sft", config, ARCH, _setup("fp32", "ddp", 8))
    # the buckets outlive the step: a held buffer, counted under extra
    assert mem["gradients"] + mem["extra"] == pytest.approx(measured, rel=0.05)
    assert mem["extra"] == mem["gradients"] == 4 * ARCH.parameter_count()


@pytest.mark.parametrize("arch", [
    from_init({"architecture": "gpt2", "size": "tiny"}, 1000),  # tied head, biases
    from_init({"architecture": "llama", "size": "tiny", "intermediate_size": 512}, 100),
    from_init({"architecture": "qwen2", "size": "tiny", "kv_heads": 2}, 800),
], ids=["gpt2-embedding", "llama-mlp", "qwen2-embedding"])
def test_parameter_counts_as_deepspeed_counts_them(arch: Architecture) -> None:
    """DeepSpeed's model_to_params (total, largest layer) on the model the runtime builds."""
    import torch
    from deepspeed.runtime.zero import stage3 as zero3

    model = _model(arch, torch.float32)
    total, largest = zero3.model_to_params(model)
    assert (total, largest) == (arch.parameter_count(), arch.largest_layer_parameter_count())
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".h." in n or ".layers." in n)
    assert total - blocks == arch.root_parameter_count()
