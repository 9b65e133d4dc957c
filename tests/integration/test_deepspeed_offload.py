"""ZeRO-Offload with the recipe's optimizer, through the HF Trainer, on the CPU.

The DeepSpeed config accelerate writes from a rendered accelerate.yaml (``offload_optimizer_
device: cpu``) has no ``optimizer`` section. transformers then hands DeepSpeed the Trainer's
own optimizer, which DeepSpeed refuses under ZeRO-Offload unless
``zero_force_ds_cpu_optimizer`` is false, and which accelerate therefore swaps for
DeepSpeedCPUAdam, whatever it was. For ``optimizer: sgd`` that would be silently Adam;
``compute.keep_optimizer_under_offload`` keeps SGD. A subprocess sets accelerate's
environment (what ``accelerate launch`` would) for one process with gloo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""\
    import os
    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from llm_recipe.runtime import compute

    train = {"lr": 1e-3, "batch_size": 2, "grad_accum": 1, "lr_scheduler": "constant",
             "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
             "optimizer": "sgd", "log_every": 1, "eval_every": 0, "save_every": 100,
             "keep_checkpoints": 1, "max_steps": 2}
    args = compute.training_args(TrainingArguments, {"train": train, "seed": 1},
                                 {"gpus_per_node": 0}, os.environ["OUT"])
    args.use_cpu = False  # accelerate's DeepSpeed path (CPU accelerator, gloo)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32,
                                       n_positions=16))
    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[1, 2, 3, 4]] * 4})
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    engine = trainer.model_wrapped
    print("RESULT", trainer.is_deepspeed_enabled, type(engine.basic_optimizer).__name__,
          trainer.state.global_step)
""")


def test_zero_offload_trains_with_the_recipes_sgd(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29571", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
           "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
           "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
           "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT")]
    assert lines, done.stdout[-2000:] + done.stderr[-4000:]
    assert lines[-1] == "RESULT True SGD 2"
