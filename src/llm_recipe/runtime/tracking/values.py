"""What a run logs, computed from the plan: params, metric names, tags; and what it never logs.

- :func:`stage_params`: the stage's resolved config flattened (``train.lr``,
  ``adapter.r``), plus the names the planner training template asks for, mapped from it
  (``learning_rate``,
  ``batch_size`` (the global batch), ``epochs``, ``dataset_version``, ``model_base``,
  ``fine_tuning_method``, ``lora_r``, ``lora_alpha``);
- :func:`metric_names`: a metrics.jsonl row as tracker metrics (``train_loss``,
  ``val_loss``, ``train_tokens_per_s``, ``sft/exact_match``);
- :func:`git_info`: the commit of the recipe file's repository and whether its tree
  is dirty (``git`` run without a shell, with a timeout, fsmonitor off; no repository,
  no ``git`` or any failure: None);
- :class:`Redactor`: secrets never reach a tracker or a log. The values of every
  variable the plan references as ``${env:NAME}`` and of every variable whose name
  looks like a secret (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``) are masked in every
  param, tag and message, and so is the user:password part of a URL.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.source import SECRET_KEY
from llm_recipe.compiler.world import replicas

MASK = "****"
MAX_PARAM = 500
"""Longer param values are cut (MLflow refuses values over 6000 characters)."""
RENAMES = {"tok/s": "tokens_per_s"}
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_MIN_SECRET = 4
"""Shorter values are not masked: '1' or 'true' would be masked everywhere."""


class Redactor:
    """Masks secret values read from the environment in any text."""

    def __init__(self, plan: Plan | None = None, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        names = {n for n in env if SECRET_KEY.search(n)}
        if plan is not None:
            names |= set(_env_refs(plan.to_dict()))
        values = {env[n] for n in names if n in env and len(env[n]) >= _MIN_SECRET}
        self.values = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)

    def mapping(self, values: Mapping[str, Any]) -> dict[str, str]:
        return {self(str(k)): self(str(v)) for k, v in values.items()}


def _env_refs(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield from _ENV_REF.findall(node)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _env_refs(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _env_refs(value)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}``; lists as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif value is not None:
            text = json.dumps(value) if isinstance(value, list | tuple | bool) else str(value)
            out[name] = text[:MAX_PARAM]
    return out


def stage_params(plan: Plan, stage: StagePlan) -> dict[str, str]:
    """The stage's config flattened, the compute that changes the math, and the planner
    template's names."""
    config = {k: v for k, v in stage.config.items() if k not in ("description", "tracking")}
    params = flatten(config)
    params["compute.precision"] = str(stage.compute.get("precision"))
    params["compute.processes"] = str(replicas(stage.compute))
    params.update(seed_params(plan, stage))
    return params


def seed_params(plan: Plan, stage: StagePlan) -> dict[str, str]:
    """Seed 004's parameter names, mapped from the resolved config (only those that apply)."""
    config = stage.config
    train = config.get("train") if isinstance(config.get("train"), dict) else None
    out: dict[str, Any] = {}
    if train is not None:
        out["learning_rate"] = train.get("lr")
        per_device = train.get("batch_size")
        if per_device is not None:
            out["batch_size"] = (int(per_device) * int(train.get("grad_accum") or 1)
                                 * replicas(stage.compute))
        out["epochs"] = train.get("epochs")
        if train.get("max_steps"):
            out["max_steps"] = train["max_steps"]
        adapter = config.get("adapter")
        if isinstance(adapter, dict):
            out["fine_tuning_method"] = adapter.get("type")
            out["lora_r"] = adapter.get("r")
            out["lora_alpha"] = adapter.get("alpha")
        elif stage.output.type == "adapter":
            out["fine_tuning_method"] = "lora"  # continues training an adapter
        else:
            out["fine_tuning_method"] = "full"
    base = model_base(plan, stage)
    if base is not None:
        out["model_base"] = base
    version = dataset_version(plan, stage)
    if version is not None:
        out["dataset_version"] = version
    return {k: str(v) for k, v in out.items() if v is not None}


def model_base(plan: Plan, stage: StagePlan) -> str | None:
    """What the stage's policy sits on: a hub id, a local path or an init spec."""
    for item in stage.inputs:
        if item.type not in ("model", "adapter", "patch") or item.field.startswith("models."):
            continue
        name = item.base or item.ref
        entry = plan.models.get(name)
        if not isinstance(entry, dict):
            return name
        if entry.get("hub"):
            revision = entry.get("revision")
            return f"{entry['hub']}@{revision}" if revision else str(entry["hub"])
        if entry.get("path"):
            return str(entry["path"])
        init = entry.get("init")
        if isinstance(init, dict):
            return "init:" + "/".join(str(init[k]) for k in ("architecture", "size") if k in init)
        return name
    return None


def dataset_version(plan: Plan, stage: StagePlan) -> str | None:
    """The recipe's ``dataset_version`` tag if it has one, else the data's content hash."""
    tag = (plan.tracking.get("tags") or {}).get("dataset_version")
    if tag is not None:
        return str(tag)
    for item in stage.inputs:
        if item.field == "data":
            return item.fingerprint[:12]
    return None


def metric_names(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as tracker metrics.

    Train rows: ``train_<key>``; the trainer's eval rows: ``val_<key>`` (``val_loss``);
    an eval stage's rows (they name their model): ``<model>/<key>``.
    """
    model = values.get("model")
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(float(value)):
            continue
        name = RENAMES.get(key, key)
        if isinstance(model, str):
            name = f"{model}/{name}"
        elif prefix == "eval":
            name = f"val_{name}"
        else:
            name = f"{prefix}_{name}"
        out[_METRIC_CHARS.sub("_", name)] = float(value)
    return out


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics mapping, by their own (sanitized) names."""
    return {_METRIC_CHARS.sub("_", str(k)): float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def stage_tags(plan: Plan, stage: StagePlan, root: Path) -> dict[str, str]:
    tags = {"recipe": str(plan.recipe["name"]), "stage": stage.name, "kind": stage.kind,
            "fingerprint": stage.fingerprint}
    return {**tags, **git_tags(plan, root)}


def git_tags(plan: Plan, root: Path) -> dict[str, str]:
    info = git_info(recipe_file(plan, root))
    if info is None:
        return {}
    return {"git_commit": info["commit"], "git_dirty": "true" if info["dirty"] else "false",
            "mlflow.source.git.commit": info["commit"]}


def recipe_file(plan: Plan, root: Path) -> Path:
    file = Path(str(plan.recipe.get("file") or "."))
    return file if file.is_absolute() else root / file


@functools.lru_cache(maxsize=8)
def git_info(file: Path) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the repository holding ``file``; None outside one.

    ``dirty``: a tracked file differs from the commit, or the recipe file itself is not
    committed. Run once per process and file (the runtime's own outputs are usually
    ignored by git, and a run should not pay for ``git status`` per stage).
    """
    git = shutil.which("git")
    folder = file.parent if not file.is_dir() else file
    if git is None or not folder.is_dir():
        return None
    base = [git, "-c", "core.fsmonitor=false", "-C", str(folder)]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=10,
                                  env=env, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = run("rev-parse", "--verify", "HEAD")
    if not commit or not re.fullmatch(r"[0-9a-f]{40,64}", commit.strip()):
        return None
    changed = run("status", "--porcelain", "--untracked-files=no")
    recipe = run("status", "--porcelain", "--", file.name) if file.is_file() else ""
    if changed is None or recipe is None:
        return None
    return {"commit": commit.strip(), "dirty": bool(changed.strip() or recipe.strip())}
