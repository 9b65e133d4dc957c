"""The one place where a stage's compute section becomes trainer settings.

Stage modules never decide precision, devices or checkpointing themselves: they ask
:func:`trainer_kwargs` and pass the result to a transformers ``TrainingArguments`` or a
trl config. That is how a recipe runs on this CPU (fp32, no bf16, no gradient
checkpointing) and on 8 GPUs (bf16, checkpointing) from the same stage code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
              "adafactor": "adafactor", "sgd": "sgd"}


def uses_gpu(compute: dict[str, Any]) -> bool:
    return int(compute.get("gpus_per_node") or 0) > 0


def precision(compute: dict[str, Any]) -> str:
    """bf16, fp16 or fp32; ``auto`` is bf16 on GPUs and fp32 on CPU."""
    value = compute.get("precision", "auto")
    if value == "auto":
        return "bf16" if uses_gpu(compute) else "fp32"
    return value


def activation_checkpointing(compute: dict[str, Any]) -> bool:
    value = (compute.get("distributed") or {}).get("activation_checkpointing", "auto")
    return uses_gpu(compute) if value == "auto" else bool(value)


def device(compute: dict[str, Any]) -> str:
    """Where inference runs: the first visible GPU when the compute asks for GPUs."""
    if not uses_gpu(compute):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(compute: dict[str, Any]) -> str:
    """The dtype name to load weights in for this compute."""
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision(compute)]


def trainer_kwargs(config: dict[str, Any], compute: dict[str, Any], output_dir: Path, *,
                   has_validation: bool = False) -> dict[str, Any]:
    """Keyword arguments shared by ``TrainingArguments`` and the trl configs."""
    train = config["train"]
    mode = precision(compute)
    eval_every = int(train.get("eval_every") or 0)
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": not uses_gpu(compute),
        "bf16": mode == "bf16",
        "fp16": mode == "fp16",
        "gradient_checkpointing": activation_checkpointing(compute),
        "learning_rate": float(train["lr"]),
        "per_device_train_batch_size": int(train["batch_size"]),
        "per_device_eval_batch_size": int(train["batch_size"]),
        "gradient_accumulation_steps": int(train["grad_accum"]),
        "lr_scheduler_type": train["lr_scheduler"],
        "warmup_ratio": float(train["warmup_ratio"]),
        "weight_decay": float(train["weight_decay"]),
        "max_grad_norm": float(train["max_grad_norm"]),
        "optim": OPTIMIZERS[train["optimizer"]],
        "logging_steps": int(train["log_every"]),
        "save_strategy": "steps",
        "save_steps": int(train["save_every"]),
        "save_total_limit": int(train["keep_checkpoints"]),
        "eval_strategy": "steps" if has_validation and eval_every else "no",
        "seed": int(config["seed"]),
        "data_seed": int(config["seed"]),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # Every parameter gets a gradient in these models: skip DDP's extra graph pass.
        "ddp_find_unused_parameters": False,
        "save_safetensors": True,
        "include_num_input_tokens_seen": "non_padding",
    }
    if has_validation and eval_every:
        kwargs["eval_steps"] = eval_every
        kwargs["metric_for_best_model"] = "eval_loss"
        kwargs["greater_is_better"] = False
    if "max_steps" in train:
        kwargs["max_steps"] = int(train["max_steps"])
    else:
        kwargs["num_train_epochs"] = float(train.get("epochs", 1))
    return kwargs


REMOVED_ARGS = frozenset({"save_safetensors"})
"""Arguments newer transformers dropped because their value became the only behaviour."""


def fit_args(args_class: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` spelled the way the installed ``args_class`` (TrainingArguments or a trl
    config) names them.

    transformers 5 renamed or removed fields the generic kwargs use (``warmup_ratio``
    became a fractional ``warmup_steps``, ``gradient_checkpointing`` became
    ``activation_checkpointing``, safetensors is the only format). trl configs also
    default to bf16 and checkpointing, so both are always passed explicitly: leaving one
    out would silently turn it on, also on a CPU.
    """
    import dataclasses

    fields = {f.name for f in dataclasses.fields(args_class)}
    out = {k: v for k, v in kwargs.items() if not (k in REMOVED_ARGS and k not in fields)}
    if "warmup_ratio" in out and "warmup_ratio" not in fields:
        # A float below 1 is a ratio of the total steps; 1.0 would read as one step.
        out["warmup_steps"] = min(float(out.pop("warmup_ratio")), 0.999999)
    if "gradient_checkpointing" in out and "activation_checkpointing" in fields:
        out["activation_checkpointing"] = out.pop("gradient_checkpointing")
    unknown = sorted(set(out) - fields)
    if unknown:
        raise TypeError(f"{args_class.__name__} has no field(s) {', '.join(unknown)}")
    return out


def training_args(args_class: type, config: dict[str, Any], compute: dict[str, Any],
                  output_dir: Path, *, has_validation: bool = False, **extra: Any) -> Any:
    """An ``args_class`` instance (``TrainingArguments``, ``SFTConfig``, ``DPOConfig``...)
    from the stage's train block and compute, plus the kind's own fields in ``extra``.

    This is the one constructor stage code uses, so the CPU/GPU and precision rules of
    :func:`trainer_kwargs` cannot be bypassed by a trl default.
    """
    kwargs = trainer_kwargs(config, compute, output_dir, has_validation=has_validation)
    return args_class(**fit_args(args_class, {**kwargs, **extra}))
