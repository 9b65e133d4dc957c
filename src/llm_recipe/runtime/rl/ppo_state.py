"""A ppo run's training state besides the weights, and the checkpoints that keep it.

What a resumed run needs to continue with exactly the numbers an uninterrupted one
would have produced, and how it is saved and read back:

- **the step schedule** (:func:`step_rows`, :func:`step_seed`): the prompts, samples
  and mini-batch order of a step are a function of the seed and the step alone, so a
  checkpoint holds no data order and a resumed run draws exactly the batch an
  uninterrupted one would have drawn.
- **the optimizer and schedule** (:func:`make_optimizer`, :func:`make_scheduler`),
  built from the stage's config and restored from a checkpoint.
- **the progress** (:class:`Progress`): the KL controller, the best checkpoint so far,
  the last metrics row, and the rewards since the previous checkpoint, from which the
  best is chosen.
- **checkpoints** (:func:`save_checkpoint`): ``checkpoints/checkpoint-<step>/`` holds
  ``policy/`` (save_pretrained: the adapter or the full model, safetensors),
  ``value_head.safetensors`` (and ``value_model/``), ``optimizer.pt``, ``scheduler.pt``
  and ``rng_state.pth`` (state dicts of tensors, read back with
  ``torch.load(weights_only=True)``: nothing is unpickled) and :data:`STATE` (step, KL
  controller, best so far). Then ``files.json``, the ``latest`` pointer and the
  ``best`` pointer; ``keep_checkpoints`` step checkpoints are kept besides the best.
- **resume** (:func:`start`, :func:`restore`).

torch, transformers and safetensors are imported inside functions.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.runtime import training
from llm_recipe.runtime.checkpoints import BEST, LATEST, record_files, record_step, write_pointer
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.epochs import positions
from llm_recipe.runtime.workspace import atomic_write_json

if TYPE_CHECKING:
    from llm_recipe.runtime.rl.ppo import KLController
    from llm_recipe.runtime.stages.ppo import PpoConfig

STATE = "ppo_state.json"


# ------------------------------------------------------------------------ the steps


def step_rows(seed: int, step: int, size: int, n: int) -> list[int]:
    """The prompt rows of step ``step`` (from 1): positions ``(step-1)*size ..
    step*size-1`` of the seeded endless epochs over the prompts (runtime.epochs)."""
    return positions(seed, (step - 1) * size, size, n)


def step_seed(seed: int, step: int) -> int:
    """The torch seed of step ``step``'s sampling (plus 1: of its mini-batch order)."""
    return (seed * 1_000_003 + step * 7_919) % (2**63)


# ------------------------------------------------------------------ optimizer, schedule


def make_optimizer(config: PpoConfig, params: list[Any]) -> Any:
    """``train.optimizer`` over the trained parameters (policy or adapter, value head)."""
    return training.make_optimizer(config.optimizer, params, config.lr, config.weight_decay)


def make_scheduler(config: PpoConfig, optimizer: Any, updates: int) -> Any:
    """``train.lr_scheduler`` over every optimizer step of the stage."""
    from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * updates)
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup,
                         num_training_steps=updates)


# ---------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """Where a run stands between steps, besides the weights and the optimizer.

    ``best`` is ``{"step", "reward"}`` of the checkpoint with the highest mean reward
    over the steps since the checkpoint before it (ties go to the later one); ``last``
    is the last metrics row; ``rewards`` are the step rewards since the last checkpoint.
    """

    controller: KLController
    best: dict[str, Any] | None = None
    last: dict[str, Any] = field(default_factory=dict)
    rewards: list[float] = field(default_factory=list)

    def checkpoint(self, ctx: StageContext, config: PpoConfig, model: Any, optimizer: Any,
                   scheduler: Any, step: int, total: int) -> Path:
        """Move the best by the mean reward since the last checkpoint, then save
        ``checkpoint-<step>`` (:func:`save_checkpoint`)."""
        reward = sum(self.rewards) / len(self.rewards)
        if self.best is None or reward >= self.best["reward"]:
            self.best = {"step": step, "reward": reward}
        self.rewards = []
        return save_checkpoint(ctx, config, model, optimizer, scheduler, step, {
            "step": step, "max_steps": total, "kl": self.controller.state(), "best": self.best,
            "reward": reward, "last": self.last, "seed": config.seed})


def start(ctx: StageContext) -> dict[str, Any]:
    """The saved state of the checkpoint the run resumes from; or, starting afresh, {}
    and the checkpoints of an earlier run removed."""
    resume = ctx.resume_from
    if resume is None:
        shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    return read_state(resume) if resume is not None else {}


def restore(ctx: StageContext, config: PpoConfig, state: dict[str, Any], optimizer: Any,
            scheduler: Any, device: Any) -> tuple[int, Progress]:
    """(the last step done, the progress): 0 and a new KL controller on a fresh start;
    resuming, those of ``state`` (:func:`start`), with the optimizer, the schedule and
    the RNG loaded from the checkpoint."""
    from llm_recipe.runtime.rl.ppo import KLController

    resume = ctx.resume_from
    controller = KLController(config.kl_coef, config.kl_target, config.kl_horizon)
    step, best = 0, state.get("best")
    last: dict[str, Any] = state.get("last") or {}
    if resume is not None:
        step = int(state["step"])
        controller = KLController.from_state(state["kl"])
        if best and not (ctx.checkpoints / f"checkpoint-{best['step']}").is_dir():
            # Resumed from an older save than the one that last moved the best: the
            # best then known has been rotated away; this checkpoint stands in for it.
            best = {"step": step, "reward": state["reward"]}
        optimizer.load_state_dict(_load(resume / "optimizer.pt", device))
        scheduler.load_state_dict(_load(resume / "scheduler.pt", device))
        _set_rng(_load(resume / "rng_state.pth", "cpu"))
    return step, Progress(controller, best, last)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(ctx: StageContext, config: PpoConfig, model: Any, optimizer: Any,
                    scheduler: Any, step: int, state: dict[str, Any]) -> Path:
    """Write ``checkpoint-<step>``, then files.json, the latest and best pointers, and
    remove step checkpoints beyond ``keep_checkpoints`` (never the best)."""
    import torch
    from safetensors.torch import save_file

    folder = ctx.checkpoints / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    policy = model.policy
    if training.is_peft(policy):
        policy.save_pretrained(str(folder / "policy"), selected_adapters=["default"])
    else:
        policy.save_pretrained(str(folder / "policy"))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(folder / "value_head.safetensors"))
    if model.value_model is not None:
        model.value_model.save_pretrained(str(folder / "value_model"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / "rng_state.pth")
    atomic_write_json(folder / STATE, state)
    record_files(folder)
    write_pointer(ctx.checkpoints, LATEST, folder, step=step)
    best = state["best"]
    best_folder = ctx.checkpoints / f"checkpoint-{best['step']}"
    write_pointer(ctx.checkpoints, BEST, best_folder, step=best["step"],
                  metric=best["reward"], metric_name="reward")
    saved = sorted(ctx.checkpoints.glob("checkpoint-*"), key=record_step, reverse=True)
    for old in saved[config.keep_checkpoints:]:
        if old != best_folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE).read_text("utf-8"))


def _load(path: Path, device: Any) -> Any:
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def _set_rng(states: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

