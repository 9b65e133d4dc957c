"""The one place where a stage's compute section becomes trainer settings.

Stage modules never decide precision, devices or checkpointing themselves: they ask
:func:`trainer_kwargs` and pass the result to a transformers ``TrainingArguments`` or a
trl config. That is how a recipe runs on this CPU (fp32, no bf16, no gradient
checkpointing) and on 8 GPUs (bf16, checkpointing) from the same stage code.

Precision modes (the names Lightning and torchtune use): ``bf16-true`` loads the weights
in bf16 and trains them so (no autocast flag: gradients and AdamW moments follow the
parameters' dtype); ``bf16-mixed`` and ``fp16-mixed`` load fp32 weights and set the
TrainingArguments ``bf16``/``fp16`` flag, so accelerate autocasts the forward (fp16 with a
gradient scaler); ``fp32`` sets neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_recipe.compiler.world import precision_mode

OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit",
              "adafactor": "adafactor", "sgd": "sgd"}


def uses_gpu(compute: dict[str, Any]) -> bool:
    return int(compute.get("gpus_per_node") or 0) > 0



MODES = {
    # mode: (dtype the weights are loaded in, TrainingArguments flag that turns on autocast)
    "bf16-true": ("bfloat16", None),
    "bf16-mixed": ("float32", "bf16"),
    "fp16-mixed": ("float32", "fp16"),
    "fp32": ("float32", None),
}
ATTENTION = ("sdpa", "eager", "flash_attention_2")


def precision(compute: dict[str, Any]) -> str:
    """The precision mode a stage runs in (the compiler's rule: world.precision_mode)."""
    return precision_mode(compute)


def describe_precision(compute: dict[str, Any]) -> str:
    """One log line: the mode, what it means, and why, when it is not what was asked."""
    mode = precision(compute)
    asked = compute.get("precision") or "auto"
    what = {"bf16-true": "weights, gradients and optimizer states in bf16, no autocast",
            "bf16-mixed": "fp32 weights and optimizer states, bf16 autocast",
            "fp16-mixed": "fp32 weights and optimizer states, fp16 autocast, loss scaling",
            "fp32": "everything in fp32"}[mode]
    line = f"precision {mode}: {what}"
    if asked != mode:
        why = "on CPU" if not uses_gpu(compute) and mode == "fp32" else ""
        line += f" (asked: {asked}{', ' + why if why else ''})"
    return line


def attn_implementation(compute: dict[str, Any]) -> str:
    """The attention kernel models are loaded with; flash_attention_2 needs flash_attn
    and a GPU, and says so here instead of deep inside transformers."""
    value = compute.get("attn_implementation") or "sdpa"
    if value == "flash_attention_2":
        import importlib.util

        from llm_recipe.errors import RecipeError

        if importlib.util.find_spec("flash_attn") is None:
            raise RecipeError("compute.attn_implementation is flash_attention_2 but the "
                              "flash_attn package is not installed",
                              hint="pip install flash-attn, or use sdpa (the default)")
        if not uses_gpu(compute):
            raise RecipeError("compute.attn_implementation flash_attention_2 needs a CUDA GPU",
                              hint="use sdpa (the default) on CPU")
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
    """The dtype name to load weights in: bfloat16 for bf16-true, float32 for the mixed
    modes (fp32 master weights, autocast does the half-precision math) and fp32."""
    return MODES[precision(compute)][0]


def compute_dtype(compute: dict[str, Any]) -> str:
    """The dtype the math runs in: bfloat16 for both bf16 modes, float16 for fp16-mixed,
    float32 for fp32. QLoRA dequantises its 4-bit weights to it and vLLM serves in it
    (an fp32 master copy is for the optimizer, not for inference)."""
    mode = precision(compute)
    return {"bf16-true": "bfloat16", "bf16-mixed": "bfloat16", "fp16-mixed": "float16",
            "fp32": "float32"}[mode]


def trainer_kwargs(config: dict[str, Any], compute: dict[str, Any], output_dir: Path, *,
                   has_validation: bool = False) -> dict[str, Any]:
    """Keyword arguments shared by ``TrainingArguments`` and the trl configs."""
    train = config["train"]
    mode = precision(compute)
    eval_every, save_every = train.get("eval_every") or 0, train["save_every"]
    evaluates = has_validation and bool(eval_every)
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": not uses_gpu(compute),
        # Autocast only for the mixed modes; bf16-true trains the bf16 weights as they are.
        "bf16": MODES[mode][1] == "bf16",
        "fp16": MODES[mode][1] == "fp16",
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
        "save_strategy": "epoch" if save_every == "epoch" else "steps",
        "save_total_limit": int(train["keep_checkpoints"]),
        "eval_strategy": ("epoch" if eval_every == "epoch" else "steps") if evaluates else "no",
        "seed": int(config["seed"]),
        "data_seed": int(config["seed"]),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": int(train.get("dataloader_workers") or 0),
        # Every parameter gets a gradient in these models: skip DDP's extra graph pass.
        "ddp_find_unused_parameters": False,
        "save_safetensors": True,
        "include_num_input_tokens_seen": "non_padding",
    }
    if save_every != "epoch":
        kwargs["save_steps"] = int(save_every)
    if evaluates:
        if eval_every != "epoch":
            kwargs["eval_steps"] = int(eval_every)
        kwargs["metric_for_best_model"] = "eval_loss"
        kwargs["greater_is_better"] = False
    stopping = train.get("early_stopping")
    if stopping and evaluates:
        # HF's EarlyStoppingCallback watches metric_for_best_model and needs the best
        # checkpoint kept and loaded at the end (the plan made saves coincide with evals).
        kwargs["metric_for_best_model"] = stopping["metric"]
        kwargs["greater_is_better"] = early_stopping_mode(stopping) == "max"
        kwargs["load_best_model_at_end"] = True
        # The patience counter lives in the callback: a resumed run continues it.
        kwargs["restore_callback_states_from_checkpoint"] = True
    if train.get("neftune_noise_alpha"):
        kwargs["neftune_noise_alpha"] = float(train["neftune_noise_alpha"])
    if "max_steps" in train:
        kwargs["max_steps"] = int(train["max_steps"])
    else:
        kwargs["num_train_epochs"] = float(train.get("epochs", 1))
    return kwargs


def early_stopping_mode(stopping: dict[str, Any]) -> str:
    """min or max: as written, else min for a loss (the plan refuses other metrics without)."""
    return stopping.get("mode") or ("min" if str(stopping["metric"]).endswith("loss") else "max")


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
    args = args_class(**fit_args(args_class, {**kwargs, **extra}))
    if hasattr(args, "mixed_precision"):
        # TrainingArguments starts from ACCELERATE_MIXED_PRECISION, which `accelerate
        # launch` sets from its config file: the mode decides, not the launcher.
        args.mixed_precision = MODES[precision(compute)][1] or "no"
    keep_optimizer_under_offload(args)
    return args


KEPT_UNDER_OFFLOAD = ("sgd", "adafactor")
"""train.optimizer values that ZeRO-Offload must run as they are (torch ops on the CPU)."""


def keep_optimizer_under_offload(args: Any) -> bool:
    """Under DeepSpeed ZeRO-Offload, keep the recipe's optimizer; True when it had to be said.

    The DeepSpeed config accelerate writes from its YAML (``offload_optimizer_device:
    cpu``) has no ``optimizer`` section, so transformers' ``deepspeed_optim_sched`` creates
    the Trainer's own. DeepSpeed's engine refuses such a client optimizer under
    ZeRO-Offload unless ``zero_force_ds_cpu_optimizer`` is false; accelerate (1.x,
    ``Accelerator._prepare_deepspeed``) avoids that by replacing it with DeepSpeedCPUAdam,
    whatever it was. For AdamW that is the same update, faster (``adamw_mode``); SGD or
    Adafactor would silently become Adam. For those the flag is set instead, so DeepSpeed
    steps the recipe's optimizer on the CPU copy. (adamw_8bit is left to accelerate: its
    8-bit states are CUDA-only, so the offloaded copy gets DeepSpeedCPUAdam.)
    A config that names an optimizer or the flag itself is left as it is.
    """
    plugin = getattr(args, "deepspeed_plugin", None)
    config = getattr(getattr(plugin, "hf_ds_config", None), "config", None)
    if not isinstance(config, dict) or "optimizer" in config:
        return False
    device = ((config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get(
        "device")
    optim = str(getattr(getattr(args, "optim", ""), "value", getattr(args, "optim", "")))
    if device not in ("cpu", "nvme") or "zero_force_ds_cpu_optimizer" in config or \
            optim not in KEPT_UNDER_OFFLOAD:
        return False
    config["zero_force_ds_cpu_optimizer"] = False
    return True
