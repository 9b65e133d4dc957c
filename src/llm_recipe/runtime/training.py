"""Glue every training stage shares: callbacks, the train/resume call, the final save.

pretrain, sft and later dpo/grpo differ in how they build their trainer; what happens
around ``trainer.train()`` is the same for all of them and lives here, so that logs,
checkpoint pointers, resume and the output folder behave identically in every kind:

- :func:`callbacks` writes ``[train] step=...`` lines and metrics.jsonl rows, feeds the
  progress bar, forces a log and a checkpoint at the last step (a finished stage always
  has ``checkpoints/latest`` and a final loss) and maintains the checkpoint pointers;
- :func:`train` resumes from ``ctx.resume_from`` and evaluates at the end when there is
  validation data, then returns the :class:`StageResult`;
- :func:`save_output` writes the model or adapter atomically to the stage's output.

transformers, torch and peft are imported inside functions: importing this module is
cheap, like every runtime module.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.checkpoints import checkpoint_callback, record_step
from llm_recipe.runtime.workspace import atomic_dir

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext, StageResult
    from llm_recipe.runtime.log import StageLog


def callbacks(ctx: StageContext, *, metrics: tuple[str, ...] = ()) -> list[Any]:
    """The TrainerCallbacks every training stage passes to its trainer.

    ``metrics`` names trainer log keys a kind keeps beside loss, lr and grad_norm (dpo:
    ``rewards/margins``; reward_model: ``accuracy``), in train rows and, as ``eval_<key>``,
    in eval rows.
    """
    found = [log_callback(ctx.log, ctx.stage.kind, metrics=metrics), last_step_callback(),
             checkpoint_callback(ctx.checkpoints)]
    stopping = (ctx.config.get("train") or {}).get("early_stopping")
    if stopping:
        from transformers import EarlyStoppingCallback

        found.append(EarlyStoppingCallback(early_stopping_patience=int(stopping["patience"]),
                                           early_stopping_threshold=float(
                                               stopping.get("threshold") or 0.0)))
    return found


def log_callback(log: StageLog, description: str, *, metrics: tuple[str, ...] = ()) -> Any:
    """A TrainerCallback that turns the trainer's logs into train.log, metrics.jsonl and
    progress updates.

    Tokens/s counts non-padding input tokens (the trainer's ``num_input_tokens_seen``,
    restored on resume) over wall time between two log steps, so it measures this run's
    throughput, not the average since step 0 of an earlier, interrupted run.
    """
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_time = time.monotonic()
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time = time.monotonic()
            self.last_tokens = state.num_input_tokens_seen or 0
            if state.is_world_process_zero:
                log.start(state.max_steps, description)
                if state.global_step:
                    log.update(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            step = state.global_step
            if "eval_loss" in logs:
                extra = {k: float(logs[f"eval_{k}"]) for k in metrics if f"eval_{k}" in logs}
                log.metrics(step, {"loss": float(logs["eval_loss"]), **extra}, prefix="eval")
            if "loss" not in logs:
                return
            now, tokens = time.monotonic(), state.num_input_tokens_seen or 0
            tok_s = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
            self.last_time, self.last_tokens = now, tokens
            values = {"loss": float(logs["loss"]), "lr": _float(logs.get("learning_rate")),
                      "tok/s": round(tok_s), "grad_norm": _float(logs.get("grad_norm"))}
            # trl logs None for a metric with no valid value in the window (e.g. a reward
            # function that returned None for every completion)
            values.update({k: float(logs[k]) for k in metrics if logs.get(k) is not None})
            log.metrics(step, values)
            log.update(step, loss=values["loss"], tok_s=values["tok/s"])

    return LogCallback()


def last_step_callback() -> Any:
    """Log and save at the last step, whatever log_every and save_every are.

    A completed run must leave a final loss and a ``checkpoints/latest`` pointing at its
    last step; the trainer's own end-of-training save depends on version and strategy.
    """
    from transformers import TrainerCallback

    class LastStepCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True
                control.should_save = True

    return LastStepCallback()


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def train(ctx: StageContext, trainer: Any, *, has_validation: bool = False) -> StageResult:
    """Run (or resume) ``trainer`` and report the final train loss, eval loss and steps."""
    from transformers.trainer_callback import PrinterCallback

    from llm_recipe.runtime.context import StageResult

    # The trainer prints every log dict to stdout; our LogCallback already reports them.
    trainer.remove_callback(PrinterCallback)
    # trl writes a model card (README.md, "generated_from_trainer") into its output_dir,
    # our checkpoints/ folder, at every save: boilerplate about the trainer, not the run.
    trainer.create_model_card = lambda *args, **kwargs: None
    resume = ctx.resume_from
    if resume is None:
        # A fresh start: checkpoints left by an earlier run (another config) must neither
        # be resumed from later nor outlive this run's in the trainer's rotation.
        shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    train_config = ctx.config.get("train") or {}
    if resume is not None and _finished(resume, train_config):
        # The run was cut off after its last save: training again would take one more
        # step (the trainer never stops at "0 steps left"); the weights are all there.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        ctx.log.line(f"{resume.name} is the final step: writing the output from it")
        _load_best(ctx, trainer, resume)
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    state = trainer.state
    history = state.log_history
    metrics: dict[str, Any] = {"steps": state.global_step}
    losses = [row["loss"] for row in history if "loss" in row]
    if losses:
        metrics["loss"] = float(losses[-1])
    if has_validation:
        evals = [row for row in history if "eval_loss" in row]
        at = state.global_step
        if getattr(trainer.args, "load_best_model_at_end", False) and state.best_model_checkpoint:
            at = record_step(Path(state.best_model_checkpoint))  # the weights written out
        evals = [row for row in evals if row.get("step") == at]
        if not evals:
            evals = [trainer.evaluate()]
        metrics["eval_loss"] = float(evals[-1]["eval_loss"])
    stopped = early_stopping_record(ctx, state) if train_config.get("early_stopping") else None
    if stopped is not None:
        metrics.update({k: v for k, v in stopped.items()
                        if k in ("stopped_early_at", "best_step") and v is not None})
    return StageResult(metrics=metrics, key_metric="loss", steps=state.global_step,
                       early_stopping=stopped)


def early_stopping_record(ctx: StageContext, state: Any) -> dict[str, Any]:
    """What early stopping did, for the manifest (and a log line): whether and where it
    stopped, and the best checkpoint the output comes from."""
    stopping = ctx.config["train"]["early_stopping"]
    total = int(state.max_steps or 0)
    stopped = bool(total) and state.global_step < total
    best = state.best_model_checkpoint
    record = {"stopped": stopped, "stopped_early_at": state.global_step if stopped else None,
              "max_steps": total, "metric": stopping["metric"],
              "patience": int(stopping["patience"]),
              "best_step": record_step(Path(best)) if best else None,
              "best": state.best_metric}
    if stopped:
        ctx.log.line(f"[train] early stopping at step {state.global_step} of {total}: "
                     f"{stopping['metric']} did not improve for {stopping['patience']} "
                     f"evaluation(s); the output is the best checkpoint (step "
                     f"{record['best_step']}, {stopping['metric']} {state.best_metric})")
    return record


def _load_best(ctx: StageContext, trainer: Any, resume: Any) -> None:
    """With early stopping the output is the best checkpoint, as the trainer's own
    ``load_best_model_at_end`` makes it when training ends without interruption."""
    if not getattr(trainer.args, "load_best_model_at_end", False):
        return
    from llm_recipe.runtime.checkpoints import BEST, read_pointer

    best = read_pointer(ctx.checkpoints, BEST)
    if best is not None and best != resume:
        trainer._load_from_checkpoint(str(best))
        ctx.log.line(f"the best checkpoint is {best.name}: writing the output from it")


def _finished(checkpoint: Any, train: dict[str, Any] | None = None) -> bool:
    """Whether a checkpoint ends its stage: saved at the step this config trains to
    (``train.max_steps``, else its own run's last step), or where early stopping stopped.
    """
    from llm_recipe.runtime.checkpoints import trainer_state

    state = trainer_state(checkpoint)
    step, total = state.get("global_step", 0), state.get("max_steps")
    train = train or {}
    control = ((state.get("stateful_callbacks") or {}).get("TrainerControl") or {}).get(
        "args") or {}
    if train.get("early_stopping") and control.get("should_training_stop") is True and (
            total and step < total):
        return True
    if train.get("max_steps"):
        return step >= int(train["max_steps"])
    return bool(total) and step >= total


def fit_and_save(ctx: StageContext, trainer: Any, tokenizer: Any) -> StageResult:
    """What every trainer-based stage does: train (or resume), then write its output."""
    result = train(ctx, trainer, has_validation=ctx.has_validation)
    save_output(ctx, trainer.model, tokenizer)
    return result


def save_output(ctx: StageContext, model: Any, tokenizer: Any) -> None:
    """Write the trained model (or adapter) and its tokenizer to the stage's output path.

    What is written follows the plan, not the model object: an adapter output must be a
    PEFT model (adapter_config.json + adapter_model.safetensors), a model output full
    weights in safetensors. The folder appears in one rename, so a crash never leaves a
    half-written output that looks complete.
    """
    wanted = ctx.stage.output.type
    if wanted not in ("model", "adapter"):
        raise RecipeError(f"stage {ctx.stage.name}: a training stage cannot write {wanted}")
    if (wanted == "adapter") != is_peft(model):
        got = "an adapter" if is_peft(model) else "full weights"
        raise RecipeError(f"stage {ctx.stage.name}: the plan expects {wanted} output but "
                          f"training produced {got}")
    model = getattr(model, "module", model)
    from llm_recipe.runtime.distributed import is_main

    if not is_main():
        return
    with atomic_dir(ctx.output_path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(getattr(model, "module", model), PeftModel)


@dataclass(frozen=True)
class CausalLMCollator:
    """Pads token id lists into a batch; labels are the inputs, ignored (-100) on padding.

    Padding is recognised from lengths, not from the pad id, so a tokenizer that pads
    with its eos token still learns to predict eos.
    """

    pad_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_optimizer(name: str, params: list[Any], lr: float, weight_decay: float) -> Any:
    """``train.optimizer`` for loops the runtime writes itself (PPO, continual); Trainer
    stages get the same choice through ``compute.OPTIMIZERS``."""
    import torch

    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise RecipeError("optimizer adamw_8bit needs bitsandbytes, which is not installed",
                          hint="pip install bitsandbytes, or use adamw_torch") from exc
    return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else eos (hub tokenizers such as GPT-2 have none)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise RecipeError("the tokenizer has neither a pad nor an eos token",
                          hint="use a tokenizer with an eos token")
    return int(tokenizer.eos_token_id)
